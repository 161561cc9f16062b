"""ContextResolver end to end: real cgroups shaped like a Kubernetes node, real processes in them,
their cgroup ids as the kernel reports them, and (with --enable-k8s) a real pod LIST + WATCH."""
import os

import pytest

from tapio.collector.enrich import CgroupPaths, ContextResolver
from tapio.collector.enrich.kubernetes import KubernetesPods
from tapio.v1 import events_pb2
from tests.fixtures.enrich.apiserver import FakeApiServer, make_pod, write_kubeconfig
from tests.fixtures.enrich.cgroups import CgroupTree, require_cgroup_root
from tests.helpers import wait_until

ID_POD = "c7c603c79cd328588d937f1e05e0a465e7569183ed25fb1078af8a5f5f6e16cd"
ID_GUARANTEED = "cd5ce42cd50d201c4a2fb25a3449ed11c4afec6fa1e1ddc0ab4e1aa32a8be434"
ID_DOCKER = "1a9ceef18aca9744e75ffabcb0ac25846db2289fb70d9463cc428ce216bfd3fb"
UID_BURSTABLE = "e547c52f-de8c-4beb-8011-00a62d0936aa"
UID_GUARANTEED = "b1ee2e81-1803-4e88-9119-9388d5caae5f"

BURSTABLE_CONTAINER = ("kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice/"
                       "cri-containerd-{c}.scope").format(u=UID_BURSTABLE.replace("-", "_"), c=ID_POD)
GUARANTEED_CONTAINER = "kubepods.slice/kubepods-pod{u}.slice/crio-{c}.scope".format(
    u=UID_GUARANTEED.replace("-", "_"), c=ID_GUARANTEED)
DOCKER_CONTAINER = f"system.slice/docker-{ID_DOCKER}.scope"
SERVICE = "system.slice/tapio-enrich-test.service"


@pytest.fixture
def node():
    """A kubepods-shaped tree with a sleeping process in each leaf; yields (tree, {leaf: cgroup id})."""
    tree = CgroupTree(require_cgroup_root())
    try:
        ids = {}
        for leaf in (BURSTABLE_CONTAINER, GUARANTEED_CONTAINER, DOCKER_CONTAINER, SERVICE):
            tree.mkdir(leaf)
            process = tree.spawn_in(leaf)
            ids[leaf] = cgroup_id_of(process.pid, tree.mount)
            # The id is the inode number of the directory the process is in.
            assert ids[leaf] == os.stat(tree.directory(leaf)).st_ino
        yield tree, ids
    finally:
        tree.cleanup()


def cgroup_id_of(pid, mount):
    """What the kernel reports: the "0::" line of /proc/<pid>/cgroup, as an inode number."""
    with open(f"/proc/{pid}/cgroup") as f:
        path = [line[3:] for line in f.read().splitlines() if line.startswith("0::")][0]
    return os.stat(os.path.join(mount, path.lstrip("/"))).st_ino


@pytest.fixture
def paths(node):
    tree, _ = node
    with CgroupPaths(tree.mount) as paths:
        yield paths


def test_kubernetes_docker_and_systemd_contexts(node, paths):
    tree, ids = node
    resolver = ContextResolver(paths, node_name="node-a")
    assert resolver.context(ids[BURSTABLE_CONTAINER]) == events_pb2.Context(
        container_id=ID_POD, container_runtime="containerd", pod_uid=UID_BURSTABLE, qos_class="Burstable",
        cgroup_path=tree.path(BURSTABLE_CONTAINER))
    assert resolver.context(ids[GUARANTEED_CONTAINER]) == events_pb2.Context(
        container_id=ID_GUARANTEED, container_runtime="cri-o", pod_uid=UID_GUARANTEED, qos_class="Guaranteed",
        cgroup_path=tree.path(GUARANTEED_CONTAINER))
    assert resolver.context(ids[DOCKER_CONTAINER]) == events_pb2.Context(
        container_id=ID_DOCKER, container_runtime="docker", cgroup_path=tree.path(DOCKER_CONTAINER))
    assert resolver.context(ids[SERVICE]) == events_pb2.Context(
        systemd_unit="tapio-enrich-test.service", cgroup_path=tree.path(SERVICE))
    # node_name travels once per batch, never per event.
    assert not resolver.context(ids[SERVICE]).node_name and resolver.node_name == "node-a"


def test_contexts_are_cached_wire_bytes(node, paths):
    _, ids = node
    resolver = ContextResolver(paths)
    first = resolver.context_bytes(ids[BURSTABLE_CONTAINER])
    assert resolver.context_bytes(ids[BURSTABLE_CONTAINER]) is first
    stats = resolver.stats()
    assert stats["hits"] == 1 and stats["misses"] == 1 and stats["entries"] == 1


def test_without_systemd_enrichment_there_is_no_unit(node, paths):
    _, ids = node
    resolver = ContextResolver(paths, enable_systemd=False)
    assert not resolver.context(ids[SERVICE]).systemd_unit


def test_unresolvable_ids_are_counted(node, paths):
    tree, _ = node
    resolver = ContextResolver(paths)
    gone = tree.mkdir("short-lived")
    tree.rmdir("short-lived")
    for bad in (gone, 0, None, "x"):
        assert resolver.context_bytes(bad) is None
    assert resolver.stats()["unresolved"] == 4 and resolver.stats()["entries"] == 0


def test_the_cache_is_bounded(node, paths):
    _, ids = node
    resolver = ContextResolver(paths, max_entries=2)
    for cgroup_id in ids.values():
        assert resolver.context_bytes(cgroup_id) is not None
    assert resolver.stats()["entries"] == 2 and resolver.stats()["evictions"] == 2


def test_pod_metadata_arrives_when_the_index_learns_the_pod(node, paths, tmp_path):
    tree, ids = node
    server = FakeApiServer()
    index = KubernetesPods("node-a", kubeconfig=str(write_kubeconfig(tmp_path / "kubeconfig", server.url)),
                           backoff_initial_s=0.02, backoff_max_s=0.1)
    try:
        index.start()
        assert index.wait_synced(10)
        resolver = ContextResolver(paths, index, node_name="node-a")
        # The container runs before its pod reaches the index: path facts only, for now.
        before = resolver.context(ids[BURSTABLE_CONTAINER])
        assert before.pod_uid == UID_BURSTABLE and not before.pod_name

        server.emit("ADDED", make_pod(UID_BURSTABLE, "web-0", "shop", labels={"zone": "b", "app": "web"},
                                      containers=[("nginx", "containerd://" + ID_POD, "docker.io/library/nginx:1.27")]))
        after = wait_until(lambda: resolver.context(ids[BURSTABLE_CONTAINER]).pod_name
                           and resolver.context(ids[BURSTABLE_CONTAINER]), what="the invalidated context")
        assert after == events_pb2.Context(
            container_id=ID_POD, container_runtime="containerd", pod_uid=UID_BURSTABLE, pod_name="web-0",
            namespace="shop", qos_class="Burstable", container_name="nginx", image="docker.io/library/nginx:1.27",
            labels=[events_pb2.Label(key="app", value="web"), events_pb2.Label(key="zone", value="b")],
            cgroup_path=tree.path(BURSTABLE_CONTAINER))
        assert resolver.stats()["invalidations"] >= 1
        # Other cgroups are untouched by the pod's arrival.
        assert not resolver.context(ids[DOCKER_CONTAINER]).pod_name
    finally:
        assert index.stop(timeout=5.0)
        server.stop()
