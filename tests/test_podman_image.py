"""The collector's own image, built and run: `./build.sh image collector` builds deploy/Containerfile
offline FROM a Debian base made on this host, and the collector runs in it the way the DaemonSet
runs it: the DaemonSet's capabilities only (drop ALL, add its list), its host paths read-only, the
host's PID namespace, no privilege escalation, a read-only root filesystem, and a cgroup namespace
of its own. Next to it, the same collector on the host; both must report the same host process
and the same other container's process with the same fields and cgroup paths.
"""
import json
import os
import subprocess
import uuid
from pathlib import Path

import pytest
import yaml

import tapio
from tests.helpers import read_json_lines, require_ebpf, wait_until
from tests.podman import LIMITS, Containers, base_image, podman, require_containers, unique_name

pytestmark = pytest.mark.kernel

ROOT = Path(__file__).resolve().parent.parent
DAEMONSET = ROOT / "deploy" / "kubernetes" / "base" / "collector-daemonset.yaml"
IMAGE_BUILD_TIMEOUT = 600

# What differs between two collectors by design: who reported it and when it was sent.
PER_COLLECTOR = {"id", "sequence", "batch", "collector", "node", "time"}


@pytest.fixture(scope="module")
def collector_image():
    require_ebpf()
    require_containers()
    base_image()
    try:
        run = subprocess.run([str(ROOT / "build.sh"), "image", "collector"], cwd=ROOT, capture_output=True,
                             text=True, timeout=IMAGE_BUILD_TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"./build.sh image collector did not finish in {IMAGE_BUILD_TIMEOUT}s")
    assert run.returncode == 0, run.stderr[-4000:]
    image = run.stdout.strip().splitlines()[-1]
    assert image.startswith("localhost/tapio/collector:")
    return image


def daemonset_container():
    daemonset = yaml.safe_load(DAEMONSET.read_text())
    spec = daemonset["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    return spec, container


SECCOMP_DEFAULT = Path("/usr/share/containers/seccomp.json")
BPF_SYSCALLS = {"bpf": "CAP_BPF", "perf_event_open": "CAP_PERFMON"}


def runtime_default_seccomp(directory):
    """The runtime's default seccomp profile as `seccompProfile: RuntimeDefault` gets it, with
    bpf(2) and perf_event_open(2) allowed to CAP_BPF and CAP_PERFMON, as the defaults of
    containerd and Docker allow them. Older containers-common profiles (Debian 12's podman 4.3)
    allow both only to CAP_SYS_ADMIN: with those, RuntimeDefault and the DaemonSet's
    capabilities cannot load BPF. Returns the profile's path, or None to use the runtime's own."""
    if not SECCOMP_DEFAULT.exists():
        return None
    profile = json.loads(SECCOMP_DEFAULT.read_text())
    rules = profile["syscalls"]
    if all(any(name in r["names"] and cap in (r.get("includes") or {}).get("caps", [])
               and r["action"] == "SCMP_ACT_ALLOW" for r in rules) for name, cap in BPF_SYSCALLS.items()):
        return None
    for rule in rules:
        if rule["action"] != "SCMP_ACT_ALLOW":
            rule["names"] = [n for n in rule["names"] if n not in BPF_SYSCALLS]
    rules[:] = [r for r in rules if r["names"]]
    rules += [{"names": [name], "action": "SCMP_ACT_ALLOW", "includes": {"caps": [cap]}}
              for name, cap in BPF_SYSCALLS.items()]
    path = directory / "seccomp.json"
    path.write_text(json.dumps(profile))
    return path


def daemonset_run_flags(spill_dir):
    """`podman run` flags for what the DaemonSet grants its container, read from the manifest."""
    spec, container = daemonset_container()
    security = container["securityContext"]
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    seccomp = runtime_default_seccomp(spill_dir.parent)
    flags = ["--user", f"{security['runAsUser']}:{security['runAsGroup']}", "--cgroupns", "private"]
    assert spec["hostPID"] is True and security["privileged"] is False
    flags += ["--pid", "host"]
    assert security["capabilities"]["drop"] == ["ALL"]
    flags += ["--cap-drop", "ALL", "--cap-add", ",".join(security["capabilities"]["add"])]
    if security["allowPrivilegeEscalation"] is False:
        flags += ["--security-opt", "no-new-privileges"]
    if security["readOnlyRootFilesystem"]:
        flags += ["--read-only"]
    if seccomp is not None:
        flags += ["--security-opt", f"seccomp={seccomp}"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    for mount in container["volumeMounts"]:
        volume = volumes[mount["name"]]
        if "hostPath" in volume:
            host = volume["hostPath"]["path"]
            if not mount.get("readOnly"):
                # the spool: a host directory of the test's, not the node's
                host = str(spill_dir)
            flags += ["--volume", f"{host}:{mount['mountPath']}:{'ro' if mount.get('readOnly') else 'rw'}"]
        elif "emptyDir" in volume:
            flags += ["--tmpfs", mount["mountPath"]]
        # secrets (TLS, token) serve --server; this collector writes to a file instead
    return flags


@pytest.fixture
def containers():
    box = Containers(None)
    try:
        yield box
    finally:
        box.remove_all()


def differ(a, b, where=""):
    """Where two events differ, but for wall-clock times (`*_ns`, `time`): each collector turns
    boot time into wall time on its own, and those may differ by microseconds."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b)):
            if key.endswith("_ns") and isinstance(a.get(key), int) and isinstance(b.get(key), int):
                if abs(a[key] - b[key]) > 10_000_000:
                    out.append((f"{where}.{key}", a[key], b[key]))
            else:
                out += differ(a.get(key), b.get(key), f"{where}.{key}")
        return out
    return [] if a == b else [(where, a, b)]


def comparable(event):
    return {k: v for k, v in event.items() if k not in PER_COLLECTOR}


def test_the_image_runs_the_collector_as_the_daemonset_does(collector_image, containers, collector_output,
                                                            tmp_path):
    out = tmp_path / "out"
    spool = tmp_path / "spool"
    out.mkdir()
    spool.mkdir()
    host = collector_output("--events", "exec,exit")
    name = unique_name("collector")
    flags = daemonset_run_flags(spool) + ["--volume", f"{out}:/out:rw"]
    run = containers.run(name, ["--enable-ebpf", "--output", "/out/events.jsonl", "--events", "exec,exit",
                                "--http-port", "0", "--metrics-interval", "0"],
                         *flags, detach=True, image=collector_image)
    assert run.returncode == 0, run.stderr

    def attached():
        logs = podman("logs", name, check=False)
        text = logs.stdout + logs.stderr
        if "eBPF probes attached" in text:
            return True
        state = containers.inspect(name)["State"]
        if not state["Running"]:
            pytest.fail(f"the collector's container exited with {state['ExitCode']}:\n{text[-4000:]}")
        return False
    wait_until(attached, 60, interval=0.2, what="the containerised collector to attach its probes")

    # its own cgroup namespace: it sees itself at the root, yet reports host paths from the mount
    inside = podman("exec", name, "cat", "/proc/self/cgroup").stdout
    assert "0::/\n" in inside, inside

    # a process on the host, and one in another container
    script = tmp_path / f"tapio-image-{uuid.uuid4().hex[:8]}"
    script.write_text("#!/bin/sh\nexit 5\n")
    script.chmod(0o755)
    assert subprocess.run([str(script)], timeout=30).returncode == 5
    other = unique_name("other")
    workload = containers.run(other, ["sh", "-c", "exit 7"], image=base_image())
    assert workload.returncode == 7, workload.stderr
    other_id = containers.inspect(other)["Id"]

    def pick(events):
        found = {}
        for e in events:
            if e["type"] == "exit" and e.get("exec") is None:
                context = e.get("context") or {}
                if e["exit"]["exit_code"] == 5 and e["comm"] == script.name[:15]:
                    found["host"] = e
                elif e["exit"]["exit_code"] == 7 and context.get("container_id") == other_id:
                    found["container"] = e
            elif e["type"] == "exec" and e["exec"]["filename"] == str(script):
                found["host_exec"] = e
        return found if len(found) == 3 else None

    in_image = wait_until(lambda: pick(read_json_lines(out / "events.jsonl")), 30, interval=0.2,
                          what="the host's and the other container's events from the image")
    on_host = wait_until(lambda: pick(host.events()), 30, what="the same events from the host's collector")
    for what in ("host", "host_exec", "container"):
        a, b = comparable(in_image[what]), comparable(on_host[what])
        context_a, context_b = a.pop("context", {}), b.pop("context", {})
        # podman's names and images come from /var/lib/containers, which the DaemonSet does not
        # mount (on Kubernetes they come from the API server): everything else is the same
        for key in ("container_name", "image"):
            context_b.pop(key, None)
            assert key not in context_a
        assert context_a == context_b, what
        differences = differ(a, b)
        assert not differences, (what, differences)
    assert on_host["container"]["context"]["cgroup_path"].endswith(f"libpod-{other_id}")
    assert on_host["container"]["context"]["container_runtime"] == "podman"


def test_the_image_is_built_from_the_imported_base(collector_image):
    info = json.loads(podman("image", "inspect", collector_image).stdout)[0]
    base = json.loads(podman("image", "inspect", base_image()).stdout)[0]
    # the base's layer is the image's first: FROM the imported base, nothing pulled
    assert info["RootFS"]["Layers"][:1] == base["RootFS"]["Layers"]
    assert info["Config"]["Entrypoint"] == ["/opt/tapio/current/bin/tapio-collector"]
    run = podman("run", "--rm", *LIMITS, collector_image, "--version", check=False)
    assert run.returncode == 0 and tapio.__version__ in run.stdout + run.stderr, run.stderr
    assert os.path.exists(ROOT / "build" / "image" / "wheels")
