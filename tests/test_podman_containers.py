"""Real podman containers seen by a real collector (and a real server): events carry the container's
name and image, read from podman's own state, and an OOM kill under `podman run --memory` is one
`oom_kill` group that names the container.

The containers run FROM a Debian image made on this host (tests/podman.py); each is removed at the
end of the module.
"""
import pytest

from tests.helpers import require_ebpf, wait_until
from tests.podman import Containers, base_image, require_containers, unique_name
from tests.test_correlation_kernel import Stack

pytestmark = pytest.mark.kernel


@pytest.fixture(scope="module")
def containers():
    require_ebpf()
    require_containers()
    box = Containers(base_image())
    try:
        yield box
    finally:
        box.remove_all()


def of_container(cid, *types):
    return lambda e: (e.get("context") or {}).get("container_id") == cid and e["type"] in types


def test_a_named_containers_events_carry_its_name_image_and_runtime(containers, collector_output):
    collector = collector_output("--events", "exec,exit")
    name = unique_name("named")
    # a program of the image's and the shell itself, each with an exit code of its own
    run = containers.run(name, ["sh", "-c", "ls / >/dev/null; exit 3"])
    assert run.returncode == 3, run.stderr
    info = containers.inspect(name)
    cid, image = info["Id"], info["ImageName"]
    assert image == containers.image
    exits = collector.wait_for(lambda e: of_container(cid, "exit")(e) and e["exit"]["exit_code"] == 3,
                               what="the container's shell exiting with 3")
    assert exits
    events = [e for e in collector.events() if of_container(cid, "exec", "exit")(e)]
    execs = [e for e in events if e["type"] == "exec"]
    assert {"sh", "ls"} <= {e["exec"]["filename"].rsplit("/", 1)[-1] for e in execs}
    for event in events:
        context = event["context"]
        assert context["container_name"] == name, event
        assert context["image"] == image, event
        assert context["container_runtime"] == "podman"
        # podman's cgroupfs manager: /libpod_parent/libpod-<id> (the systemd one: machine.slice)
        assert context["cgroup_path"].endswith(f"libpod-{cid}") or \
            context["cgroup_path"].endswith(f"libpod-{cid}.scope"), context["cgroup_path"]


def test_every_event_of_a_busy_container_is_named(containers, collector_output):
    """Hundreds of execs in one container: every one named (the lookup is made once per cgroup,
    on its first event; tests/test_enrich_container.py counts the reads)."""
    collector = collector_output("--events", "exec,exit")
    name = unique_name("busy")
    run = containers.run(name, ["sh", "-c", "i=0; while [ $i -lt 200 ]; do /bin/true; i=$((i+1)); done"])
    assert run.returncode == 0, run.stderr
    cid = containers.inspect(name)["Id"]
    def all_execs():
        execs = [e for e in collector.events() if of_container(cid, "exec")(e)]
        return execs if sum(e["exec"]["filename"] == "/bin/true" for e in execs) >= 200 else None
    execs = wait_until(all_execs, 30, interval=0.2, what="the busy container's 200 execs")
    assert all(e["context"]["container_name"] == name for e in execs)


# ---- OOM kills in containers, through a server -------------------------------------------------

@pytest.fixture(scope="module")
def stack(tmp_path_factory, containers):
    yield from Stack.running(tmp_path_factory.mktemp("podman-oom"))


GROW = "b = bytearray(256 << 20)"


def oom_group(stack, containers, word, command):
    name = unique_name(word)
    run = containers.run(name, command, "--memory", "64m", "--memory-swap", "64m")
    info = containers.inspect(name)
    group = stack.wait_group("oom_kill", lambda g: g["attributes"].get("container_name") == name
                             and g["status"] == "closed", f"the closed OOM group of container {name}")
    groups = [g for g in stack.groups("oom_kill") if g["attributes"].get("container_id") == info["Id"]]
    assert len(groups) == 1, groups
    return run, info, group


def test_an_oom_killed_container_is_one_group_naming_it(stack, containers):
    # the container's main process (pid 1 in it) is the one that grows
    run, info, group = oom_group(stack, containers, "oom-main", ["python3", "-c", GROW])
    cid, name = info["Id"], info["Name"]
    assert run.returncode == 137 and info["State"]["ExitCode"] == 137, run.stderr
    a = group["attributes"]
    assert a["container_id"] == cid and a["image"] == containers.image
    assert a["memcg_limit_bytes"] == 64 << 20
    # the kernel event carries the memory cgroup's name in a fixed field: cut at 63 bytes
    assert len(a["memcg_name"]) >= 32 and f"libpod-{cid}".startswith(a["memcg_name"]), a["memcg_name"]
    assert a["victim_exited"] is True and a["processes"][0]["comm"] == "python3"
    assert f"container {name}" in group["summary"], group["summary"]
    assert group["severity"] == "critical"
    if "victim_role" in a:
        assert a["victim_role"] == "main", a["victim_role"]


def test_an_oom_killed_worker_is_told_from_the_main_process(stack, containers):
    # the shell (pid 1) stays; the python it started is the victim, and the shell goes on to exit 0
    run, info, group = oom_group(stack, containers, "oom-worker",
                                 ["sh", "-c", f'python3 -c "{GROW}"; echo survived'])
    assert run.returncode == 0 and "survived" in run.stdout, run.stderr
    a = group["attributes"]
    assert a["container_id"] == info["Id"]
    assert a["processes"][0]["comm"] == "python3"
    if "victim_role" in a:
        assert a["victim_role"] == "worker", a["victim_role"]
