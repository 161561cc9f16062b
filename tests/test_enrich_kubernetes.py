"""KubernetesPods against a real HTTP server that speaks the pod LIST + WATCH API.

The index is driven by the official kubernetes client configured from a kubeconfig in tmp_path
that points at tests/fixtures/enrich/apiserver.py on 127.0.0.1. Outages are real: the server is
stopped (every connection cut) and a new one started on the same port.
"""
import logging
import time
from types import MappingProxyType

import pytest

from tapio.collector.enrich.kubernetes import (ContainerMeta, KubernetesPods, PodInfo, pod_info_from_json,
                                               split_container_id)
from tests.fixtures.enrich.apiserver import FakeApiServer, make_pod, write_kubeconfig
from tests.helpers import wait_until

ID_A = "c7c603c79cd328588d937f1e05e0a465e7569183ed25fb1078af8a5f5f6e16cd"
ID_B = "1a9ceef18aca9744e75ffabcb0ac25846db2289fb70d9463cc428ce216bfd3fb"
ID_C = "78ac8ae36a1d878f651045eef2efc27fe55aadcf97faaf179fe60ad27d6cfdc5"
UID_1 = "e547c52f-de8c-4beb-8011-00a62d0936aa"
UID_2 = "b1ee2e81-1803-4e88-9119-9388d5caae5f"
UID_3 = "6755b95a-fbf4-47b0-af04-61f32e38b520"
LOGGER = "tapio.collector.enrich.kubernetes"


# -- pure parsing ---------------------------------------------------------------------------------

@pytest.mark.parametrize("value,expected", [
    ("containerd://" + ID_A, ("containerd", ID_A)),
    ("cri-o://" + ID_A, ("cri-o", ID_A)),
    ("docker://" + ID_A, ("docker", ID_A)),
    ("frakti://abc", ("frakti", "abc")),
    ("", ("", "")),
    (None, ("", "")),
    (42, ("", "")),
    (ID_A, ("", "")),
    ("containerd://", ("", "")),
    ("containerd://a/b", ("", "")),
])
def test_split_container_id(value, expected):
    assert split_container_id(value) == expected


def test_pod_info_from_a_real_pod():
    pod = make_pod(UID_1, "web-7d4b9c-x2x9q", "shop", labels={"tier": "web", "app": "shop"}, qos="Burstable",
                   containers=[("nginx", "containerd://" + ID_A, "docker.io/library/nginx:1.27"),
                               ("sidecar", "containerd://" + ID_B, "ghcr.io/acme/sidecar:2")])
    pod["status"]["initContainerStatuses"] = [
        {"name": "init", "containerID": "containerd://" + ID_C, "image": "busybox:1.36",
         "state": {"terminated": {"exitCode": 0}}}]
    info = pod_info_from_json(pod)
    assert info == PodInfo(
        uid=UID_1, name="web-7d4b9c-x2x9q", namespace="shop", labels=(("app", "shop"), ("tier", "web")),
        qos_class="Burstable", node_name="node-a",
        containers=MappingProxyType({
            ID_C: ContainerMeta("init", "busybox:1.36", "containerd"),
            ID_A: ContainerMeta("nginx", "docker.io/library/nginx:1.27", "containerd"),
            ID_B: ContainerMeta("sidecar", "ghcr.io/acme/sidecar:2", "containerd")}))


def test_a_restarted_container_keeps_its_previous_id():
    pod = make_pod(UID_1, "crashy", containers=[("app", "cri-o://" + ID_B, "quay.io/acme/app:1")])
    pod["status"]["containerStatuses"][0]["restartCount"] = 3
    pod["status"]["containerStatuses"][0]["lastState"] = {
        "terminated": {"exitCode": 137, "reason": "OOMKilled", "containerID": "cri-o://" + ID_A}}
    containers = pod_info_from_json(pod).containers
    assert containers[ID_A] == containers[ID_B] == ContainerMeta("app", "quay.io/acme/app:1", "cri-o")


def test_a_pending_pod_has_no_containers_yet_and_images_come_from_the_spec():
    pod = make_pod(UID_1, "pending", containers=[("app", "", "acme/app:1")])
    pod["status"] = {"phase": "Pending", "qosClass": "BestEffort"}
    info = pod_info_from_json(pod)
    assert info.containers == {} and info.qos_class == "BestEffort"
    pod["status"]["containerStatuses"] = [{"name": "app", "containerID": "docker://" + ID_A}]
    assert pod_info_from_json(pod).containers[ID_A] == ContainerMeta("app", "acme/app:1", "docker")


@pytest.mark.parametrize("junk", [
    None, [], "pod", {}, {"metadata": None}, {"metadata": {"uid": 5}},
    {"metadata": {"uid": "u", "labels": ["a"]}, "status": {"containerStatuses": "x"}},
    {"metadata": {"uid": "u", "labels": {"a": 1, 2: "b", "ok": "yes"}},
     "spec": {"containers": [None, 3, {"name": None}]},
     "status": {"containerStatuses": [None, {"containerID": 7}, {"lastState": "x"}], "qosClass": 9}},
])
def test_pod_info_from_junk_never_raises(junk):
    info = pod_info_from_json(junk)
    assert info is None or (info.uid == "u" and info.labels in ((), (("ok", "yes"),)))


# -- against a real server ------------------------------------------------------------------------

@pytest.fixture
def apiserver():
    servers = [FakeApiServer()]
    yield servers
    for server in servers:
        server.stop()


@pytest.fixture
def start_index(tmp_path, apiserver):
    started = []

    def start(**options):
        kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", apiserver[0].url)
        options.setdefault("backoff_initial_s", 0.02)
        options.setdefault("backoff_max_s", 0.1)
        index = KubernetesPods("node-a", kubeconfig=str(kubeconfig), **options)
        index.start()
        started.append(index)
        return index

    yield start
    for index in started:
        assert index.stop(timeout=5.0), "the watch thread did not end within 5 s"


def test_list_then_watch_keeps_the_index_of_this_nodes_pods(apiserver, start_index):
    server = apiserver[0]
    server.set_pods([make_pod(UID_1, "web", labels={"app": "web"}, containers=[("c", "containerd://" + ID_A, "web:1")]),
                     make_pod(UID_2, "elsewhere", node="node-b")])
    changes = []
    index = start_index(deleted_grace_s=0)
    index.add_listener(changes.append)
    assert index.wait_synced(10)
    assert index.pod(UID_1).name == "web"
    assert index.pod(UID_2) is None
    pod, container = index.container(ID_A)
    assert (pod.uid, container.name, container.image, container.runtime) == (UID_1, "c", "web:1", "containerd")
    # Only this node's pods are asked for.
    wait_until(lambda: any(q.get("watch") == "true" for _, q in server.requests), what="the watch request")
    assert {q.get("fieldSelector") for _, q in server.requests} == {"spec.nodeName=node-a"}

    server.emit("ADDED", make_pod(UID_3, "api", "shop", qos="Guaranteed"))
    assert wait_until(lambda: index.pod(UID_3), what="ADDED").qos_class == "Guaranteed"
    server.emit("MODIFIED", make_pod(UID_3, "api", "shop", labels={"v": "2"}, qos="Guaranteed",
                                     containers=[("api", "containerd://" + ID_B, "api:2")]))
    wait_until(lambda: index.container(ID_B), what="MODIFIED")
    assert index.pod(UID_3).labels == (("v", "2"),)
    server.emit("MODIFIED", make_pod(UID_1, "web", containers=[("c", "containerd://" + ID_C, "web:1")]))
    wait_until(lambda: index.container(ID_C), what="the new container id")
    assert index.container(ID_A) is None   # the old id left with the change
    server.emit("DELETED", make_pod(UID_3, "api", "shop"))
    wait_until(lambda: index.pod(UID_3) is None, what="DELETED")
    assert index.container(ID_B) is None
    assert UID_3 in changes and None in changes
    stats = index.stats()
    assert stats["lists"] == 1 and stats["events"] == 4 and stats["api_errors"] == 0


def test_deleted_pods_stay_for_the_late_events_of_their_processes(apiserver, start_index):
    apiserver[0].set_pods([make_pod(UID_1, "web", containers=[("c", "containerd://" + ID_A, "web:1")])])
    index = start_index(deleted_grace_s=60)
    assert index.wait_synced(10)
    apiserver[0].emit("DELETED", make_pod(UID_1, "web"))
    wait_until(lambda: index.stats()["events"] == 1, what="the DELETED event")
    assert index.pod(UID_1).name == "web" and index.container(ID_A) is not None


def test_an_outage_is_counted_logged_once_and_survived(apiserver, start_index, caplog):
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    server = apiserver[0]
    port = server.port
    server.set_pods([make_pod(UID_1, "web", containers=[("c", "containerd://" + ID_A, "web:1")])])
    index = start_index()
    assert index.wait_synced(10)
    server.wait_for_watches(1)

    server.stop()
    wait_until(lambda: index.stats()["api_errors"] >= 5, what="several failed retries")
    # The index answers from what it knew.
    assert index.pod(UID_1).name == "web" and index.container(ID_A)[1].name == "c"
    assert index.stats()["failing"] == 1 and index.last_error
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert warnings[0].name == LOGGER and "unreachable" in warnings[0].getMessage()

    back = FakeApiServer(port)
    apiserver.append(back)
    back.set_pods([make_pod(UID_1, "web", containers=[("c", "containerd://" + ID_A, "web:1")]),
                   make_pod(UID_2, "new-after-outage")])
    assert wait_until(lambda: index.pod(UID_2), what="recovery").name == "new-after-outage"
    assert index.stats()["failing"] == 0 and index.stats()["lists"] >= 2
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == [warnings[0].getMessage()]
    assert any("reachable again" in r.getMessage() for r in caplog.records if r.levelno == logging.INFO)
    back.emit("ADDED", make_pod(UID_3, "watched-again"))
    wait_until(lambda: index.pod(UID_3), what="the watch after recovery")


def test_410_gone_on_the_watch_request_relists(apiserver, start_index):
    server = apiserver[0]
    index = start_index()
    assert index.wait_synced(10)
    server.wait_for_watches(1)
    server.gone_next_watch = True
    server.emit("ADDED", make_pod(UID_1, "while-gone"))   # reaches the index only by the re-list...
    server.end_watches()
    wait_until(lambda: index.stats()["relists_gone"] == 1, what="the re-list after 410")
    wait_until(lambda: index.pod(UID_1), what="the pod from the re-list")
    assert index.stats()["api_errors"] == 0


def test_410_gone_inside_the_watch_stream_relists(apiserver, start_index):
    server = apiserver[0]
    index = start_index()
    assert index.wait_synced(10)
    server.wait_for_watches(1)
    server.emit_error(410)
    wait_until(lambda: index.stats()["relists_gone"] == 1, what="the re-list after an ERROR 410 event")
    wait_until(lambda: index.stats()["lists"] == 2, what="the second LIST")


def test_a_watch_ended_by_the_server_resumes_from_its_resource_version(apiserver, start_index):
    server = apiserver[0]
    index = start_index()
    assert index.wait_synced(10)
    server.wait_for_watches(1)
    server.end_watches()
    wait_until(lambda: index.stats()["watches"] >= 2, what="the second watch")
    server.emit("ADDED", make_pod(UID_1, "after-resume"))
    wait_until(lambda: index.pod(UID_1), what="an event on the resumed watch")
    assert index.stats()["lists"] == 1   # resumed, not re-listed


def test_an_unreachable_api_from_the_start(apiserver, start_index, caplog):
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    apiserver[0].stop()
    index = start_index()
    wait_until(lambda: index.stats()["api_errors"] >= 3, what="failed attempts")
    assert not index.synced and index.pod(UID_1) is None and index.container(ID_A) is None
    assert index.pod(None) is None and index.container(["unhashable"]) is None
    assert "refused" in index.last_error.lower()
    assert len([r for r in caplog.records if r.levelno >= logging.WARNING]) == 1


def test_a_broken_kubeconfig_is_a_counted_failure_not_an_exception(tmp_path, caplog):
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    index = KubernetesPods("node-a", kubeconfig=str(tmp_path / "missing"), backoff_initial_s=0.02,
                           backoff_max_s=0.05)
    index.start()
    try:
        wait_until(lambda: index.stats()["api_errors"] >= 2, what="failed attempts")
        assert index.last_error and index.pod(UID_1) is None
    finally:
        assert index.stop(timeout=5.0)
    assert len([r for r in caplog.records if r.levelno >= logging.WARNING]) == 1


def test_stop_ends_a_thread_blocked_in_a_watch(apiserver, start_index):
    index = start_index()
    assert index.wait_synced(10)
    apiserver[0].wait_for_watches(1)
    started = time.monotonic()
    assert index.stop(timeout=5.0)
    assert index.stop(timeout=0.1)   # a second stop is harmless
    assert time.monotonic() - started < 5.0
