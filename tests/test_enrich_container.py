"""cgroup path -> container, runtime, pod, QoS and systemd unit: one table of real-world shapes.

The shapes come from the runtimes' own naming rules (kubelet's cgroup drivers, containerd's CRI
plugin and its "slice:prefix:id" form, cri-o, docker, podman and quadlet, nerdctl, ctr) and from
/proc/<pid>/cgroup lines seen on real hosts, including kind/k3d nodes and cgroup namespaces.
"""
import json

import pytest

from tapio.collector.enrich.container import ContainerInfo, parse_cgroup_path, pod_uid_from_cgroup_name
from tapio.collector.enrich.runtime_state import RuntimeState, podman_graphroot
from tapio.v1 import events_pb2

ID = "c7c603c79cd328588d937f1e05e0a465e7569183ed25fb1078af8a5f5f6e16cd"
ID2 = "1a9ceef18aca9744e75ffabcb0ac25846db2289fb70d9463cc428ce216bfd3fb"
NODE = "78ac8ae36a1d878f651045eef2efc27fe55aadcf97faaf179fe60ad27d6cfdc5"
UID = "e547c52f-de8c-4beb-8011-00a62d0936aa"
UID_ = UID.replace("-", "_")
STATIC_UID = "89a582c3fdb8a241fe84432f0cc66635"   # static pods: md5 of the manifest, no dashes

BURSTABLE = f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice"
BESTEFFORT = f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice"
GUARANTEED = f"/kubepods.slice/kubepods-pod{UID_}.slice"
KIND = (f"/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/"
        f"kubelet-kubepods-besteffort-pod{UID_}.slice")


def info(container_id="", runtime="", pod_uid="", qos_class="", systemd_unit=""):
    return ContainerInfo(container_id, runtime, pod_uid, qos_class, systemd_unit)


CASES = [
    # --- Kubernetes, systemd cgroup driver ---
    ("k8s systemd containerd burstable", f"{BURSTABLE}/cri-containerd-{ID}.scope",
     info(ID, "containerd", UID, "Burstable")),
    ("k8s systemd cri-o besteffort", f"{BESTEFFORT}/crio-{ID}.scope", info(ID, "cri-o", UID, "BestEffort")),
    ("k8s systemd docker (dockershim) guaranteed", f"{GUARANTEED}/docker-{ID}.scope",
     info(ID, "docker", UID, "Guaranteed")),
    ("k8s systemd cri-dockerd (docker scopes too)", f"{BURSTABLE}/docker-{ID}.scope",
     info(ID, "docker", UID, "Burstable")),
    ("k8s cri-o with crun's container sub-cgroup", f"{BURSTABLE}/crio-{ID}.scope/container",
     info(ID, "cri-o", UID, "Burstable")),
    ("k8s cri-o conmon is not the container", f"{BURSTABLE}/crio-conmon-{ID}.scope",
     info("", "", UID, "Burstable", f"crio-conmon-{ID}.scope")),
    ("k8s process in the pod slice itself", GUARANTEED, info("", "", UID, "Guaranteed")),
    ("k8s static pod uid", f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{STATIC_UID}.slice/"
     f"cri-containerd-{ID}.scope", info(ID, "containerd", STATIC_UID, "Burstable")),
    ("k8s pod uid in upper case", f"/kubepods.slice/kubepods-pod{UID_.upper()}.slice/cri-containerd-{ID}.scope",
     info(ID, "containerd", UID, "Guaranteed")),
    ("kind node, --cgroup-root=/kubelet", f"{KIND}/cri-containerd-{ID}.scope",
     info(ID, "containerd", UID, "BestEffort")),
    ("kind on docker, seen from the host", f"/system.slice/docker-{NODE}.scope{KIND}/cri-containerd-{ID}.scope",
     info(ID, "containerd", UID, "BestEffort")),
    ("kind on podman, seen from the host",
     f"/machine.slice/libpod-{NODE}.scope/container{KIND}/cri-containerd-{ID}.scope",
     info(ID, "containerd", UID, "BestEffort")),
    # --- kubelet with systemd, runtime with cgroupfs: "slice:prefix:id" used as a directory ---
    ("colon form under containerd.service",
     f"/system.slice/containerd.service/kubepods-burstable-pod{UID_}.slice:cri-containerd:{ID}",
     info(ID, "containerd", UID, "Burstable")),
    ("colon form cri-o guaranteed", f"/kubepods-pod{UID_}.slice:crio:{ID}", info(ID, "cri-o", UID, "Guaranteed")),
    ("colon form besteffort docker", f"/kubepods-besteffort-pod{UID_}.slice:docker:{ID}",
     info(ID, "docker", UID, "BestEffort")),
    # --- Kubernetes, cgroupfs driver ---
    ("k8s cgroupfs burstable (runtime not in the path)", f"/kubepods/burstable/pod{UID}/{ID}",
     info(ID, "", UID, "Burstable")),
    ("k8s cgroupfs guaranteed", f"/kubepods/pod{UID}/{ID}", info(ID, "", UID, "Guaranteed")),
    ("k8s cgroupfs besteffort cri-o", f"/kubepods/besteffort/pod{UID}/crio-{ID}",
     info(ID, "cri-o", UID, "BestEffort")),
    ("k8s cgroupfs cri-o conmon", f"/kubepods/besteffort/pod{UID}/crio-conmon-{ID}",
     info("", "", UID, "BestEffort")),
    ("k3d node seen from the host", f"/system.slice/docker-{NODE}.scope/kubepods/burstable/pod{UID}/{ID}",
     info(ID, "", UID, "Burstable")),
    ("cgroup namespace hides the QoS level", f"/../../pod{UID}/{ID}", info(ID, "", UID, "")),
    ("cgroup namespace, cri-o scope", f"/../crio-{ID}.scope", info(ID, "cri-o")),
    ("docker in a pod", f"/kubepods/burstable/pod{UID}/{NODE}/docker/{ID}", info(ID, "docker", UID, "Burstable")),
    # --- Docker ---
    ("docker cgroupfs", f"/docker/{ID}", info(ID, "docker")),
    ("docker systemd", f"/system.slice/docker-{ID}.scope", info(ID, "docker")),
    ("docker in docker", f"/docker/{NODE}/docker/{ID}", info(ID, "docker")),
    ("docker --cgroup-parent of GitHub Actions", f"/actions_job/{ID}", info(ID, "docker")),
    ("docker daemon itself", "/system.slice/docker.service", info(systemd_unit="docker.service")),
    ("docker compose unit is a unit", "/system.slice/system-docker\\x2dcompose.slice/docker-compose@app.service",
     info(systemd_unit="docker-compose@app.service")),
    # --- Podman ---
    ("podman rootful", f"/machine.slice/libpod-{ID}.scope", info(ID, "podman")),
    ("podman with crun's container sub-cgroup", f"/machine.slice/libpod-{ID}.scope/container", info(ID, "podman")),
    ("podman rootless", f"/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope/container",
     info(ID, "podman", systemd_unit="user@1000.service")),
    ("podman pod (not a Kubernetes pod)", f"/machine.slice/machine-libpod_pod_{NODE}.slice/libpod-{ID}.scope",
     info(ID, "podman")),
    ("podman conmon", f"/machine.slice/libpod-conmon-{ID}.scope", info(systemd_unit=f"libpod-conmon-{ID}.scope")),
    ("podman cgroupfs", f"/libpod_parent/libpod-{ID}", info(ID, "podman")),
    ("quadlet payload inside its service", f"/system.slice/nginx.service/libpod-payload-{ID}",
     info(ID, "podman", systemd_unit="nginx.service")),
    ("quadlet conmon", "/system.slice/nginx.service/runtime", info(systemd_unit="nginx.service")),
    # --- containerd without Kubernetes ---
    ("nerdctl systemd", f"/system.slice/nerdctl-{ID}.scope", info(ID, "containerd")),
    ("ctr default namespace, any name", "/default/redis-1", info("redis-1", "containerd")),
    ("containerd cgroupfs k8s.io namespace", f"/k8s.io/{ID}", info(ID, "containerd")),
    ("containerd daemon and shims", "/system.slice/containerd.service", info(systemd_unit="containerd.service")),
    ("a namespace-like name deeper down is not one", "/srv/default/redis-1", info()),
    ("not a containerd namespace", "/mydefault/redis-1", info()),
    ("invalid containerd id", "/default/-redis", info()),
    # --- systemd units ---
    ("service", "/system.slice/nginx.service", info(systemd_unit="nginx.service")),
    ("login session", "/user.slice/user-1000.slice/session-3.scope", info(systemd_unit="session-3.scope")),
    ("user manager", "/user.slice/user-1000.slice/user@1000.service/init.scope", info(systemd_unit="init.scope")),
    ("user app scope", "/user.slice/user-1000.slice/user@1000.service/app.slice/app-org.gnome.Terminal.slice/"
     "vte-spawn-1b2c.scope", info(systemd_unit="vte-spawn-1b2c.scope")),
    ("template instance", "/system.slice/system-getty.slice/getty@tty1.service",
     info(systemd_unit="getty@tty1.service")),
    ("escaped unit name", "/system.slice/system-systemd\\x2dfsck.slice/systemd-fsck@dev-disk-by\\x2duuid-12.service",
     info(systemd_unit="systemd-fsck@dev-disk-by\\x2duuid-12.service")),
    ("pid 1", "/init.scope", info(systemd_unit="init.scope")),
    ("systemd's control sub-cgroup", "/system.slice/foo.service/.control", info(systemd_unit="foo.service")),
    ("socket unit helpers", "/system.slice/dbus.socket", info(systemd_unit="dbus.socket")),
    ("systemd inside a container", f"/system.slice/docker-{ID}.scope/system.slice/nginx.service",
     info(ID, "docker", systemd_unit="nginx.service")),
    ("sloppy slashes", "//system.slice//nginx.service/", info(systemd_unit="nginx.service")),
    # --- junk and near-misses ---
    ("root", "/", info()),
    ("empty", "", info()),
    ("id one digit short", f"/docker/{ID[:-1]}", info()),
    ("id one digit long", f"/docker/{ID}0", info()),
    ("id in upper case", f"/docker/{ID.upper()}", info()),
    ("id with a trailing newline", f"/docker/{ID}\n", info()),
    ("scope suffix misspelt", f"/system.slice/docker-{ID}.scop", info()),
    ("unknown scope prefix", f"/system.slice/foo-{ID}.scope", info(systemd_unit=f"foo-{ID}.scope")),
    ("pod uid too short", f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1234.slice/"
     f"cri-containerd-{ID}.scope", info(ID, "containerd")),
    ("pod directory without a uid", f"/kubepods/burstable/podnotauid/{ID}", info(ID, "")),
    ("kubepods slice alone", "/kubepods.slice", info()),
    ("QoS slice alone", "/kubepods.slice/kubepods-burstable.slice", info()),
    ("colon form with a bad id", f"/kubepods-pod{UID_}.slice:cri-containerd:{ID[:10]}", info()),
    ("slice is not a unit", "/system.slice", info()),
    ("absurdly long", "/a" * 3000, info()),
]


@pytest.mark.parametrize("path,expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_parse_cgroup_path(path, expected):
    assert parse_cgroup_path(path) == expected


@pytest.mark.parametrize("junk", [None, 12345, b"/docker/" + ID.encode(), ["/docker", ID], object()])
def test_parse_cgroup_path_never_raises_on_non_strings(junk):
    assert parse_cgroup_path(junk) == ContainerInfo()


def test_fixture_ids_have_real_lengths():
    assert len(ID) == len(ID2) == len(NODE) == 64
    assert len(UID) == 36 and len(STATIC_UID) == 32


@pytest.mark.parametrize("name,uid", [
    (UID_, UID),
    (UID, UID),
    (UID_.upper(), UID),
    (STATIC_UID, STATIC_UID),
])
def test_pod_uid_from_cgroup_name(name, uid):
    assert pod_uid_from_cgroup_name(name) == uid


# ---- names and images from the runtimes' state files ----------------------------------------------
# The podman side runs against real containers in tests/test_podman_containers.py; docker does not
# run here, so its file is written in the shape dockerd writes it.

def podman_entry(cid, name, image):
    meta = {"image-name": image, "image-id": "ab" * 32, "name": name, "created-at": 1700000000}
    return {"id": cid, "names": [name], "image": "ab" * 32, "layer": "cd" * 32,
            "metadata": json.dumps(meta), "created": "2026-01-01T00:00:00Z"}


@pytest.fixture
def state_dirs(tmp_path):
    podman_root = tmp_path / "storage"
    (podman_root / "overlay-containers").mkdir(parents=True)
    docker_root = tmp_path / "docker"
    (docker_root / "containers").mkdir(parents=True)
    return podman_root, docker_root


def write_podman(root, entries):
    (root / "overlay-containers" / "containers.json").write_text(json.dumps(entries))


def test_podman_names_and_images_come_from_containers_json(state_dirs):
    podman_root, docker_root = state_dirs
    write_podman(podman_root, [podman_entry(ID, "web", "localhost/base:latest")])
    state = RuntimeState(str(podman_root), str(docker_root))
    assert state.lookup(ID, "podman") == ("web", "localhost/base:latest")
    assert state.lookup(ID, "podman") == ("web", "localhost/base:latest")
    assert state.stats()["hits"] == 1 and state.stats()["podman_reads"] == 1
    # an unknown id reads the list again only when the file has changed
    assert state.lookup(ID2, "podman") == ("", "")
    assert state.lookup(ID2, "podman") == ("", "")
    assert state.stats()["podman_reads"] == 1
    write_podman(podman_root, [podman_entry(ID, "web", "localhost/base:latest"),
                               podman_entry(ID2, "db", "localhost/db:1")])
    assert state.lookup(ID2, "podman") == ("db", "localhost/db:1")
    assert state.stats()["podman_reads"] == 2


def test_docker_names_and_images_come_from_config_v2(state_dirs):
    podman_root, docker_root = state_dirs
    (docker_root / "containers" / ID).mkdir()
    (docker_root / "containers" / ID / "config.v2.json").write_text(json.dumps(
        {"ID": ID, "Name": "/api", "Image": "sha256:" + "ef" * 32, "Config": {"Image": "nginx:1.25"}}))
    state = RuntimeState(str(podman_root), str(docker_root))
    assert state.lookup(ID, "docker") == ("api", "nginx:1.25")
    message = events_pb2.Context(container_id=ID)
    state.fill(message, ID, "docker")
    assert (message.container_name, message.image) == ("api", "nginx:1.25")
    # a name the API server gave (a pod's container) is not overwritten
    named = events_pb2.Context(container_id=ID, container_name="from-k8s")
    state.fill(named, ID, "docker")
    assert (named.container_name, named.image) == ("from-k8s", "nginx:1.25")


@pytest.mark.parametrize("content", [
    b"", b"{", b"[1, 2, 3]", b'{"id": 1}', b'[{"id": "../../etc"}]', b'[{"id": "%s", "names": 7, "metadata": 5}]' % ID.encode(),
    b'[{"id": "%s", "names": [], "metadata": "{not json"}]' % ID.encode(), b"\xff\xfe" * 100,
])
def test_damaged_state_files_give_empty_answers(state_dirs, content):
    podman_root, docker_root = state_dirs
    (podman_root / "overlay-containers" / "containers.json").write_bytes(content)
    (docker_root / "containers" / ID).mkdir()
    (docker_root / "containers" / ID / "config.v2.json").write_bytes(content)
    state = RuntimeState(str(podman_root), str(docker_root))
    for runtime in ("podman", "docker", ""):
        assert state.lookup(ID, runtime) == ("", "")
    assert state.lookup("../" + ID, "") == ("", "")


def test_the_cache_is_bounded(state_dirs):
    podman_root, docker_root = state_dirs
    ids = [f"{i:064x}" for i in range(50)]
    write_podman(podman_root, [podman_entry(cid, f"c{i}", "img") for i, cid in enumerate(ids)])
    state = RuntimeState(str(podman_root), str(docker_root), max_entries=10)
    assert state.lookup(ids[-1], "podman") == ("c49", "img")
    assert state.stats()["entries"] == 10


def test_graphroot_is_read_from_storage_conf(tmp_path):
    conf = tmp_path / "storage.conf"
    conf.write_text('[storage]\ndriver = "overlay"\n# graphroot = "/nope"\ngraphroot = "/srv/containers"\n')
    assert podman_graphroot(str(conf)) == "/srv/containers"
    assert podman_graphroot(str(tmp_path / "missing")) == "/var/lib/containers/storage"
