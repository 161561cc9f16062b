"""Semantic groups from real kernel events, through real processes: a `tapio-server` (SQLite store,
OTLP trace export to a real OTLP/gRPC receiver in this test process) and a
`tapio-collector --enable-ebpf` streaming to it. Each test makes the kernel do something (a crash
loop in a fake Kubernetes container, an OOM kill, refused connects, a shell and its children) and
reads the resulting groups through the server's TapioQuery gRPC service and their traces from the
receiver. The last test restarts the server on the same database."""
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid

import grpc
import pytest

from tapio.server.follow import group_dict
from tapio.v1 import events_pb2, query_pb2, query_pb2_grpc
from tests.correlation_fixtures import OtlpReceiver
from tests.fixtures.enrich.cgroups import CgroupTree, require_cgroup_root
from tests.helpers import ServerProcess, StreamingCollector, read_in_background, require_ebpf, wait_until

pytestmark = pytest.mark.kernel

CONFIG = """
[process_tree]
grace = "1s"
max_groups_per_minute = 100000     # the host's other activity must not crowd the tests' trees out
[crash_loop]
window = "30s"
close_after = "3s"
[connectivity]
close_after = "2s"
[oom_kill]
follow = "1s"
[limits]
tick = "100ms"
"""


class Stack:
    def __init__(self, tmp):
        self.tmp = tmp
        self.db = tmp / "groups.db"
        self.config = tmp / "correlation.toml"
        self.config.write_text(CONFIG)
        self.receiver = OtlpReceiver()
        self.server = None
        self.collector = None

    def start_server(self, name="server"):
        self.server = ServerProcess(self.tmp, ["--db", str(self.db), "--trace-export", "otlp",
                                               "--otlp-endpoint", self.receiver.endpoint,
                                               "--correlation-config", str(self.config)], name=name)
        self.server.wait_listening()
        return self.server

    def start_collector(self):
        self.collector = StreamingCollector(self.tmp, self.server.address)
        self.collector.wait_log(f"Connected to Tapio server at {self.server.address}")

    def stop(self):
        codes = []
        for proc in (self.collector, self.server):
            if proc is not None:
                codes.append((proc, proc.stop()))
        self.receiver.stop()
        return codes

    @classmethod
    def running(cls, tmp):
        """A module fixture's body: server and collector started, yielded, stopped; both must
        exit 0."""
        s = cls(tmp)
        try:
            s.start_server()
            s.start_collector()
        except BaseException:
            s.stop()
            raise
        yield s
        for proc, code in s.stop():
            assert code == 0, proc.log()

    # -- reading the server ---------------------------------------------------------------------
    def stub(self):
        channel = grpc.insecure_channel(self.server.address)
        return channel, query_pb2_grpc.TapioQueryStub(channel)

    def groups(self, kind=None):
        channel, stub = self.stub()
        with channel:
            page = stub.ListGroups(query_pb2.ListGroupsRequest(kind=kind or "", limit=1000), timeout=10)
        return [group_dict(g) for g in page.groups]

    def wait_group(self, kind, predicate, what, timeout=30):
        return wait_until(lambda: [g for g in self.groups(kind) if predicate(g)], timeout,
                          interval=0.1, what=what)[0]

    def full(self, group_id):
        channel, stub = self.stub()
        with channel:
            return group_dict(stub.GetGroup(query_pb2.GetGroupRequest(id=group_id), timeout=10))

    def wait_trace(self, trace_id, count, what):
        return wait_until(lambda: len(self.receiver.trace(trace_id)) >= count and self.receiver.trace(trace_id),
                          20, interval=0.1, what=what)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    require_ebpf()
    yield from Stack.running(tmp_path_factory.mktemp("correlation"))


# ---- crash loop -----------------------------------------------------------------------------------

POD_UID = str(uuid.uuid4())
CONTAINER_ID = uuid.uuid4().hex + uuid.uuid4().hex
CONTAINER_PATH = ("kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice/"
                  "cri-containerd-{c}.scope").format(u=POD_UID.replace("-", "_"), c=CONTAINER_ID)


@pytest.fixture
def kube_container():
    tree = CgroupTree(require_cgroup_root())
    try:
        tree.mkdir(CONTAINER_PATH)
        yield tree.directory(CONTAINER_PATH)
    finally:
        tree.cleanup()


def test_a_program_that_keeps_failing_in_a_container_is_a_crash_loop(stack, kube_container):
    procs = os.path.join(kube_container, "cgroup.procs")
    for _ in range(5):
        # the shell moves itself into the container's cgroup, then becomes the failing program
        run = subprocess.run(["sh", "-c", f'echo $$ > {procs} && exec false'], timeout=30)
        assert run.returncode == 1
    group = stack.wait_group("crash_loop", lambda g: g["attributes"].get("container_id") == CONTAINER_ID,
                             "the crash-loop group of the container")
    a = group["attributes"]
    assert a["pod_uid"] == POD_UID
    assert (a.get("executable") or "").endswith("false") or a.get("comm") == "false"
    assert a["restarts"] == 5 and a["exit_codes"] == {"1": 5}
    assert [e["exit_code"] for e in a["exits"]] == [1] * 5 and len(a["intervals_s"]) == 4
    assert len(group["event_ids"]) == 5
    assert group["intent"] == "service_reliability_incident" and group["severity"] == "error"
    assert f"pod {POD_UID}" in group["summary"] and "failed 5 times" in group["summary"]
    assert group["root_cause"].endswith("exit code 1 every time")
    # it closes once the loop stops (3 s here), and is then exported as a trace
    closed = stack.wait_group("crash_loop", lambda g: g["id"] == group["id"] and g["status"] == "closed",
                              "the crash loop to close")
    spans = stack.wait_trace(closed["trace_id"], 6, "the crash loop's trace")
    exits = [s for s in spans if s["name"].startswith("process ")]
    assert len(exits) == 5 and all(s["attributes"]["process.exit.code"] == 1 for s in exits)
    assert all(s["attributes"]["k8s.pod.uid"] == POD_UID for s in exits)


# ---- OOM kill -------------------------------------------------------------------------------------

def test_an_oom_kill_is_a_group_and_a_trace_with_the_victim(stack, memory_cgroup):
    child = subprocess.run(["sh", "-c", f'echo $$ > {memory_cgroup}/cgroup.procs && exec "$0" -c '
                            '"b = bytearray(256 << 20)"', sys.executable], timeout=60)
    assert child.returncode == -signal.SIGKILL
    name = os.path.basename(memory_cgroup)
    group = stack.wait_group("oom_kill", lambda g: g["attributes"].get("memcg_name") == name
                             and g["status"] == "closed", "the closed OOM group")
    a = group["attributes"]
    assert a["memcg_limit_bytes"] == 32 << 20 and a["rss_bytes"] > 0
    assert a["victim_exited"] is True
    victim = a["processes"][0]
    assert victim["signal"] == signal.SIGKILL and victim["state"] == "exited"
    assert group["severity"] == "critical" and group["intent"] == "memory_exhaustion_investigation"
    assert "OOM-killed" in group["summary"] and name in group["root_cause"]
    full = stack.full(group["id"])
    assert {e["type"] for e in full["events"]} >= {"oom_kill", "exit"}
    spans = stack.wait_trace(group["trace_id"], 3, "the OOM trace")
    root = next(s for s in spans if s["name"] == "semantic.memory_exhaustion_investigation")
    assert root["parent_span_id"] == "" and root["attributes"]["tapio.group.id"] == group["id"]
    assert root["attributes"]["tapio.intent"] == "memory_exhaustion_investigation"
    assert root["attributes"]["tapio.severity"] == "critical"
    span = next(s for s in spans if s["name"].startswith("process ")
                and s["attributes"]["process.pid"] == victim["pid"])
    assert span["parent_span_id"] == root["span_id"]
    assert span["attributes"]["process.exit.code"] == 128 + signal.SIGKILL
    assert span["attributes"]["tapio.process.exit.signal"] == "SIGKILL"
    assert span["end_ns"] > span["start_ns"]


def oom_in(memory_cgroup, v2_procs=None, *, worker=False):
    """A shell started here (so the collector sees its exec) runs a python that allocates past
    the 32 MiB limit of `memory_cgroup` (v1) and is OOM-killed. Also in the v2 cgroup whose
    cgroup.procs is `v2_procs`, when given. The victim is the main process of its cgroup: its
    parent stays outside; with `worker`, the shell moves in first and execs the shell that forks
    the victim, so the victim's parent is in the cgroup with it. Returns the launcher's pid."""
    alloc = f'"{sys.executable}" -c "b = bytearray(256 << 20)"'
    move = f"echo $$ > {memory_cgroup}/cgroup.procs" + (f" && echo $$ > {v2_procs}" if v2_procs else "")
    if worker:
        script = f"{move} && exec sh -c '{alloc}; exit 0'"
    else:
        script = f"sh -c '{move} && exec {alloc}'; exit 0"
    launcher = subprocess.Popen(["sh", "-c", script])
    assert launcher.wait(60) == 0
    return launcher.pid


def test_an_oom_kill_outside_any_container_names_only_its_victim(stack, memory_cgroup):
    """cgroup v1 memory child, v2 root cgroup: 20 unrelated processes of the root cgroup that
    exit right after the kill are none of the group's business."""
    sleepers = [subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
                for _ in range(20)]
    try:
        oom_in(memory_cgroup)
    finally:
        for s in sleepers:
            s.stdin.close()
        codes = [s.wait(10) for s in sleepers]
    assert codes == [0] * 20
    name = os.path.basename(memory_cgroup)
    group = stack.wait_group("oom_kill", lambda g: g["attributes"].get("memcg_name") == name
                             and g["status"] == "closed", "the closed OOM group")
    a = group["attributes"]
    assert a["followers"] == 0 and len(a["pids"]) == 1 and len(a["processes"]) == 1, a["pids"]
    assert not {s.pid for s in sleepers} & set(a["pids"])
    assert "more process" not in group["summary"]


OOM_CONTAINER_ID = uuid.uuid4().hex + uuid.uuid4().hex
OOM_CONTAINER_PATH = ("kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice/"
                      "cri-containerd-{c}.scope").format(u=str(uuid.uuid4()).replace("-", "_"),
                                                         c=OOM_CONTAINER_ID)


@pytest.mark.parametrize("worker", [False, True], ids=["main", "worker"])
def test_an_oom_victim_is_its_containers_main_process_or_a_worker(stack, memory_cgroup, worker):
    tree = CgroupTree(require_cgroup_root())
    try:
        tree.mkdir(OOM_CONTAINER_PATH)
        launcher = oom_in(memory_cgroup, os.path.join(tree.directory(OOM_CONTAINER_PATH), "cgroup.procs"),
                          worker=worker)
    finally:
        tree.cleanup()
    group = stack.wait_group("oom_kill", lambda g: g["attributes"].get("container_id") == OOM_CONTAINER_ID
                             and g["status"] == "closed" and g["attributes"].get("ppid") == launcher,
                             "the closed OOM group of the container")
    a = group["attributes"]
    if worker:
        assert a["victim_role"] == "worker" and "a worker of its container" in group["summary"]
        assert a["pids"][1:] == [launcher] and a["followers"] == 1    # the shell, right after
    else:
        assert a["victim_role"] == "main" and "the main process of its container" in group["summary"]
        assert a["followers"] == 0


# ---- connectivity ---------------------------------------------------------------------------------

def test_twenty_connects_to_a_closed_port_are_one_connectivity_group(stack):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]        # bound, never listening, then closed: refused
    client = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        import socket
        for _ in range(20):
            with socket.socket() as s:
                try:
                    s.connect(("127.0.0.1", {port}))
                except ConnectionRefusedError:
                    pass
    """)], timeout=30)
    assert client.returncode == 0
    destination = f"127.0.0.1:{port}"
    group = stack.wait_group("connectivity_degradation",
                             lambda g: g["attributes"].get("destination") == destination
                             and g["status"] == "closed", f"the closed group of {destination}")
    a = group["attributes"]
    assert a["failures"] == 20 and a["results"] == {"refused": 20} and a["successes"] == 0
    assert a["server_address"] == "127.0.0.1" and a["server_port"] == port
    assert f"to {destination} 20 times" in group["summary"]
    assert group["root_cause"] == f"nothing listens on {destination} (connection refused)"
    assert len([g for g in stack.groups("connectivity_degradation")
                if g["attributes"].get("destination") == destination]) == 1
    spans = stack.wait_trace(group["trace_id"], 2, "the connectivity trace")
    connects = [s for s in spans if s["name"] == "tcp.connect"]
    assert sum(s["attributes"].get("tapio.event.count", 1) for s in connects) == 20
    assert all(s["attributes"]["server.port"] == port for s in connects)


# ---- process tree ---------------------------------------------------------------------------------

def test_a_shell_with_three_children_is_one_trace_nested_as_they_ran(stack):
    child = subprocess.Popen(["sh", "-c", "/bin/true; /bin/sleep 0.2; /bin/false; exit 0"])
    assert child.wait(30) == 0
    group = stack.wait_group("process_tree", lambda g: g["attributes"].get("pid") == child.pid,
                             f"the process tree of sh (pid {child.pid})")
    processes = group["attributes"]["processes"]
    assert processes[0]["pid"] == child.pid and processes[0]["comm"] == "sh"
    children = processes[1:]
    assert sorted(p["comm"] for p in children) == ["false", "sleep", "true"]
    assert all(p["parent"] == 0 and p["ppid"] == child.pid for p in children)
    assert next(p for p in children if p["comm"] == "false")["exit_code"] == 1
    spans = stack.wait_trace(group["trace_id"], 5, "the process tree's trace")
    root = next(s for s in spans if s["name"] == "semantic.process_lifecycle")
    sh = next(s for s in spans if s["name"] == "process sh")
    assert sh["parent_span_id"] == root["span_id"] and sh["attributes"]["process.pid"] == child.pid
    kids = [s for s in spans if s["parent_span_id"] == sh["span_id"]]
    assert sorted(s["attributes"]["process.executable.path"] for s in kids) == ["/bin/false", "/bin/sleep",
                                                                                 "/bin/true"]
    for s in kids:
        assert sh["start_ns"] <= s["start_ns"] <= s["end_ns"] <= sh["end_ns"]
        assert s["attributes"]["process.parent_pid"] == child.pid
    sleep = next(s for s in kids if s["attributes"]["process.executable.path"] == "/bin/sleep")
    assert sleep["end_ns"] - sleep["start_ns"] >= 150_000_000
    ordered = sorted(kids, key=lambda s: s["start_ns"])
    assert [s["attributes"]["process.executable.path"] for s in ordered] == ["/bin/true", "/bin/sleep", "/bin/false"]


SHIM = """#!/bin/sh
# a pyenv-style shim: looks for a version file and a link, finds neither (exit 1 twice), runs on
readlink /nonexistent-tapio-shim-$$ > /dev/null
grep -q tapio-shim-version /dev/null
exec true
"""


def test_shell_tools_that_exit_1_in_a_shim_raise_no_warning(stack, tmp_path):
    shim = tmp_path / "python3"
    shim.write_text(SHIM)
    shim.chmod(0o755)
    started = time.time_ns()
    pids = set()
    for _ in range(30):
        run = subprocess.Popen([str(shim)])
        assert run.wait(30) == 0
        pids.add(run.pid)

    def ours():
        return [g for g in stack.groups() if g["end_ns"] >= started
                and (g["attributes"].get("pid") in pids
                     or any(p.get("ppid") in pids for p in g["attributes"].get("processes") or ()))]
    trees = wait_until(lambda: len([g for g in ours() if g["kind"] == "process_tree"]) >= 30 and ours(),
                       30, interval=0.2, what="the 30 process trees of the shim")
    assert all(g["attributes"]["failed"] == 2 for g in trees if g["kind"] == "process_tree")
    loud = [(g["kind"], g["severity"], g["summary"]) for g in ours() if g["severity"] != "info"]
    assert loud == []


# ---- Subscribe, and a restart ----------------------------------------------------------------------

def test_subscribe_with_a_filter_sees_only_matching_events(stack, tmp_path):
    wanted = tmp_path / f"tapio-sub-{uuid.uuid4().hex[:6]}"
    other = tmp_path / f"tapio-other-{uuid.uuid4().hex[:6]}"
    for path in (wanted, other):
        shutil.copy("/bin/true", path)
    channel, stub = stack.stub()
    request = query_pb2.SubscribeRequest(events=True, allow_list=[query_pb2.Filter(
        event_types=[events_pb2.EVENT_TYPE_EXEC, events_pb2.EVENT_TYPE_EXIT], binary_regex="/tapio-(sub|other)-")],
        deny_list=[query_pb2.Filter(comm_regex="^tapio-other")])
    call = stub.Subscribe(request, timeout=60)
    got, done = read_in_background(call)
    try:
        # the subscription is live once an exec that matches shows up
        def seen_one():
            subprocess.run([str(wanted)], timeout=10)
            return any(r.event.type == events_pb2.EVENT_TYPE_EXEC for r in got)
        wait_until(seen_one, 20, interval=0.3, what="a matching exec through Subscribe")
        before = len(got)
        for _ in range(3):
            subprocess.run([str(other)], timeout=10)
        run = subprocess.Popen([str(wanted)])
        assert run.wait(10) == 0
        wait_until(lambda: any(r.event.pid == run.pid for r in got[before:]), 20,
                   what="the last matching exec")
    finally:
        call.cancel()
        done.wait(10)
        channel.close()
    assert got and all(r.HasField("event") for r in got)
    assert {r.event.comm for r in got} == {wanted.name[:15]}
    assert not any(r.event.comm.startswith("tapio-other") for r in got)


def test_groups_survive_a_server_restart(stack):
    # the collector stops first: what it still holds (up to a read interval of events) reaches
    # the server and may still change a group before the groups are read
    assert stack.collector.stop() == 0, stack.collector.log()
    before = {g["id"]: g for g in stack.groups()}
    assert {"crash_loop", "oom_kill", "connectivity_degradation", "process_tree"} <= {g["kind"] for g in before.values()}
    assert stack.server.stop() == 0, stack.server.log()
    stack.collector = None
    stack.start_server(name="server-again")
    after = {g["id"]: g for g in stack.groups()}
    assert set(before) <= set(after)
    for gid, g in before.items():
        assert after[gid]["summary"] == g["summary"] and after[gid]["kind"] == g["kind"]
    crash = next(g for g in before.values() if g["kind"] == "crash_loop")
    assert [e["id"] for e in stack.full(crash["id"])["events"]] == crash["event_ids"]
    listed = subprocess.run([os.path.join(os.path.dirname(sys.executable), "tapio-server"), "groups",
                             "--server", stack.server.address, "--kind", "crash_loop", "--limit", "50"],
                            capture_output=True, text=True, timeout=30)
    assert listed.returncode == 0, listed.stderr
    assert crash["id"][:12] in listed.stdout
