"""The correlation engine on synthetic event streams: the rules of each group kind, out-of-order
arrival (failed exits are sent ahead of the rest), collapsed repeats (count), bounds, and the
configuration file. Events are built with the protobuf library and decoded by the compiled codec,
exactly as the server receives them; time is the events' own, moved on by a clock the test holds."""
import signal

import pytest

from tapio._fast.correlate import Correlator, match_records
from tapio.flags import ConfigError
from tapio.server.correlation import CorrelationConfig, CorrelationEngine, load_config
from tapio.server.correlation.config import from_dict
from tapio.v1 import events_pb2
from tests.correlation_fixtures import CONTAINER, POD_UID, SEC, Events, FakeMonotonic, State, pod_context


class Harness:
    """An engine with a fake monotonic clock, collecting what it emits."""

    def __init__(self, config=None, collector="node-a"):
        self.clock = FakeMonotonic()
        self.emitted = []
        self.engine = CorrelationEngine(config or CorrelationConfig(), on_group=self._on,
                                        monotonic=self.clock, timer=False)
        self.ev = Events(collector=collector, node=collector)
        self.state = State(collector, collector)

    def _on(self, group, closed):
        self.emitted.append((group, closed))

    def feed(self, *events):
        self.engine.consume(self.ev.batch(*events), self.state)

    def tick(self, seconds=0.0):
        self.clock.advance(seconds)
        self.engine.tick()

    def closed(self, kind=None):
        return [g for g, closed in self.emitted if closed and (kind is None or g["kind"] == kind)]

    def versions(self, kind):
        return [g for g, _ in self.emitted if g["kind"] == kind]


def config(**sections):
    return from_dict(sections, "test")


# ---- process trees ------------------------------------------------------------------------------

def test_a_shell_and_three_children_is_one_tree_nested_as_they_ran():
    h = Harness()
    ev = h.ev
    h.feed(ev.exec(500, 1, "sh", args=["sh", "-c", "a; b; c"]))
    for pid, comm, code in ((501, "ls", 0), (502, "grep", 1), (503, "sleep", 0)):
        ev.at(0.1)
        h.feed(ev.exec(pid, 500, comm))
        ev.at(0.2)
        h.feed(ev.exit(pid, 500, comm, code=code))
    ev.at(0.1)
    h.feed(ev.exit(500, 1, "sh"))
    h.tick(1)
    assert not h.closed(), "a finished tree waits for its grace period (late events)"
    h.tick(3)
    [tree] = h.closed("process_tree")
    processes = tree["attributes"]["processes"]
    assert [p["comm"] for p in processes][0] == "sh"
    assert sorted(p["comm"] for p in processes[1:]) == ["grep", "ls", "sleep"]
    assert all(p["parent"] == 0 for p in processes[1:])
    grep = next(p for p in processes if p["comm"] == "grep")
    assert grep["exit_code"] == 1 and grep["state"] == "exited"
    assert grep["end_ns"] - grep["start_ns"] == int(0.2 * SEC)
    assert grep["executable"] == "/usr/bin/grep"
    assert tree["severity"] == "info" and "grep (pid 502) exit code 1" == tree["root_cause"]
    assert tree["attributes"]["process_count"] == 4
    assert len(tree["event_ids"]) == 8 and tree["attributes"]["events_total"] == 8
    assert tree["start_ns"] == processes[0]["start_ns"] and tree["end_ns"] == processes[0]["end_ns"]
    assert "and 3 descendant(s)" in tree["summary"]


def shim(h, pid, root_code=0, child=("readlink", 1), child2=("grep", 1), sig=0, core=False):
    """A pyenv-style shim: sh, its readlink and grep children, then the real program."""
    ev = h.ev
    h.feed(ev.exec(pid, 1, "python3", filename="/root/.pyenv/shims/python3"))
    for n, (comm, code) in enumerate((child, child2)):
        h.feed(ev.exec(pid + 1 + n, pid, comm))
        ev.at(0.01)
        e = ev.exit(pid + 1 + n, pid, comm, code=code, signal=sig if n == 1 else 0)
        e.exit.core_dumped = core and n == 1
        h.feed(e)
    ev.at(0.01)
    h.feed(ev.exit(pid, 1, "python3", code=root_code))
    ev.at(1)


def test_routine_non_zero_exits_of_shell_tools_are_no_warning():
    h = Harness()
    for n in range(30):
        shim(h, 20000 + 10 * n)
    h.tick(5)
    trees = h.closed("process_tree")
    assert len(trees) == 30 and all(t["attributes"]["failed"] == 2 for t in trees)
    assert [t for t in h.emitted if t[0]["severity"] != "info"] == []


def test_a_tree_where_a_process_crashed_is_a_warning():
    h = Harness()
    shim(h, 21000, child2=("app", 0), sig=signal.SIGSEGV, core=True)
    shim(h, 21100, child2=("worker", 0), sig=signal.SIGKILL)
    shim(h, 21200, child2=("sleep", 0), sig=signal.SIGTERM)      # stopped: routine
    h.tick(5)
    by_root = {t["attributes"]["pid"]: t for t in h.closed("process_tree")}
    assert by_root[21000]["severity"] == "warning"
    assert by_root[21000]["root_cause"] == "app (pid 21002) killed by SIGSEGV (core dumped)"
    assert by_root[21100]["severity"] == "warning"
    assert by_root[21200]["severity"] == "info"


def test_a_script_that_fails_every_time_it_runs_is_routine():
    """A shell script ending in a grep that finds nothing fails on every run: repetition outside
    a container or unit is no crash loop, and a tree never warns for it."""
    h = Harness()
    for n in range(10):
        shim(h, 22000 + 10 * n, root_code=1)
        h.tick(5)
    trees = h.closed("process_tree")
    assert len(trees) == 10 and {t["severity"] for t in trees} == {"info"}
    assert all(t["root_cause"] for t in trees), "the info group still says what failed"
    assert h.closed("crash_loop") == []


def test_small_trees_without_failures_are_not_groups():
    h = Harness()
    ev = h.ev
    h.feed(ev.exec(600, 1, "ls"), ev.exit(600, 1, "ls"))
    h.feed(ev.exec(610, 1, "sh"), ev.exec(611, 610, "cat"), ev.exit(611, 610, "cat"), ev.exit(610, 1, "sh"))
    h.tick(10)
    assert h.closed() == []
    stats = h.engine.stats()["collectors"]["node-a"]
    assert stats["trees_closed"] == 2 and stats["trees_emitted"] == 0 and stats["processes"] == 0


def test_a_failure_makes_a_two_process_tree_a_group():
    h = Harness()
    ev = h.ev
    h.feed(ev.exec(700, 1, "make"), ev.exec(701, 700, "cc"), ev.exit(701, 700, "cc", code=2),
           ev.exit(700, 1, "make", code=2))
    h.tick(10)
    [tree] = h.closed("process_tree")
    assert tree["attributes"]["failed"] == 2


def test_failed_exits_sent_ahead_of_their_execs_still_nest():
    """The collector sends failed exits in a priority batch before the routine batch that holds
    the execs of the same round."""
    h = Harness()
    ev = h.ev
    t = ev.now
    exec_sh = ev.exec(800, 1, "sh", ts=t)
    exec_a = ev.exec(801, 800, "a", ts=t + 1000)
    exec_b = ev.exec(802, 800, "b", ts=t + 2000)
    exit_a = ev.exit(801, 800, "a", ts=t + 3000, code=1, start_ns=t + 900)
    exit_b = ev.exit(802, 800, "b", ts=t + 4000)
    exit_sh = ev.exit(800, 1, "sh", ts=t + 5000, code=1, start_ns=t - 100)
    h.feed(exit_a, exit_sh)                  # priority batch first
    h.feed(exec_sh, exec_a, exec_b, exit_b)  # then the routine one
    h.tick(5)
    [tree] = h.closed("process_tree")
    processes = tree["attributes"]["processes"]
    assert processes[0]["pid"] == 800 and processes[0]["exec_event"] == exec_sh.id
    assert {p["pid"]: p["parent"] for p in processes} == {800: -1, 801: 0, 802: 0}
    a = next(p for p in processes if p["pid"] == 801)
    assert a["start_ns"] == t + 1000 and a["exit_code"] == 1
    assert h.engine.stats()["collectors"]["node-a"]["open_trees"] == 0


def test_forks_that_never_exec_are_placeholders_from_the_ancestors():
    """sh forks a subshell (no exec event), whose child execs: the process facts list the
    ancestors, so the child nests under a placeholder for the subshell."""
    h = Harness()
    ev = h.ev
    h.feed(ev.exec(900, 1, "sh"))
    h.feed(ev.exec(902, 901, "cat", ancestors=[901, 900, 1]))
    h.feed(ev.exit(902, 901, "cat"), ev.exit(901, 900, "sh"), ev.exit(900, 1, "sh"))
    h.tick(5)
    [tree] = h.closed("process_tree")
    processes = tree["attributes"]["processes"]
    by_pid = {p["pid"]: p for p in processes}
    assert set(by_pid) == {900, 901, 902}
    assert processes[by_pid[902]["parent"]]["pid"] == 901
    assert processes[by_pid[901]["parent"]]["pid"] == 900
    assert by_pid[901]["comm"] == "sh" and by_pid[901]["exec_event"] is None


def test_a_process_entering_another_cgroup_starts_its_own_tree():
    """A container's entrypoint: exec'd by the runtime, moved into the container's cgroup."""
    h = Harness()
    ev = h.ev
    h.feed(ev.exec(1000, 1, "shim", cgroup_id=10))
    h.feed(ev.exec(1001, 1000, "runc", cgroup_id=10))
    h.feed(ev.exec(1001, 1000, "app", cgroup_id=20))     # same process, new image, new cgroup
    h.feed(ev.exec(1002, 1001, "worker", cgroup_id=20), ev.exec(1003, 1001, "worker", cgroup_id=20))
    h.feed(ev.exit(1002, 1001, "worker", cgroup_id=20), ev.exit(1003, 1001, "worker", cgroup_id=20),
           ev.exit(1001, 1000, "app", cgroup_id=20))
    h.tick(5)
    [tree] = h.closed("process_tree")
    assert [p["comm"] for p in tree["attributes"]["processes"]][0] == "app"
    assert tree["attributes"]["process_count"] == 3
    assert h.engine.stats()["collectors"]["node-a"]["open_trees"] == 1   # the shim's, still running


def test_trees_open_too_long_are_closed_as_they_are():
    h = Harness(config(process_tree={"max_duration": "30s"}))
    ev = h.ev
    h.feed(ev.exec(1100, 1, "sshd"), ev.exec(1101, 1100, "bash"), ev.exec(1102, 1101, "vim"))
    h.tick(31)
    h.tick(1)
    [tree] = h.closed("process_tree")
    assert tree["attributes"]["partial"] is True and tree["attributes"]["running"] == 3
    assert all(p["state"] == "running" for p in tree["attributes"]["processes"])
    assert "still running" in tree["summary"]


def test_tree_groups_are_rate_limited():
    h = Harness(config(process_tree={"max_groups_per_minute": 2}))
    ev = h.ev
    for n in range(5):
        base = 2000 + 10 * n
        h.feed(ev.exec(base, 1, "sh"), ev.exec(base + 1, base, "a"), ev.exec(base + 2, base, "b"),
               ev.exit(base + 1, base, "a"), ev.exit(base + 2, base, "b"), ev.exit(base, 1, "sh"))
    h.tick(5)
    assert len(h.closed("process_tree")) == 2
    assert h.engine.stats()["trees_rate_limited"] == 3


def test_the_process_table_is_bounded():
    core = Correlator(max_processes=16, min_processes=1)
    ev = Events()
    batch = ev.batch(*[ev.exec(3000 + i, 1, "x") for i in range(40)])
    core.feed(batch)
    stats = core.stats()
    assert stats["processes"] == 16 and stats["processes_untracked"] == 24
    trees, _, _ = core.tick(ev.now + 1000 * SEC)           # past max_duration: closed as they are
    assert len(trees) == 16 and core.stats()["processes"] == 0
    assert core.stats()["trees_forced"] == 16


def test_shutdown_drops_unfinished_trees_and_flushes_finished_ones():
    h = Harness()
    ev = h.ev
    h.feed(ev.exec(3100, 1, "sh"), ev.exec(3101, 3100, "a"), ev.exec(3102, 3100, "b"),
           ev.exit(3101, 3100, "a"), ev.exit(3102, 3100, "b"), ev.exit(3100, 1, "sh"))
    h.feed(ev.exec(3200, 1, "bash"), ev.exec(3201, 3200, "vim"), ev.exec(3202, 3200, "top"))
    h.engine.close()            # before the finished tree's grace period is over
    [tree] = h.closed("process_tree")
    assert tree["attributes"]["pid"] == 3100
    assert h.engine.stats()["collectors"]["node-a"]["trees_dropped_unfinished"] == 1


def test_one_tree_records_at_most_max_processes():
    h = Harness(config(process_tree={"max_processes": 5}))
    ev = h.ev
    h.feed(ev.exec(4000, 1, "sh"), *[ev.exec(4001 + i, 4000, "x") for i in range(10)])
    h.feed(*[ev.exit(4001 + i, 4000, "x") for i in range(10)], ev.exit(4000, 1, "sh"))
    h.tick(5)
    [tree] = h.closed("process_tree")
    assert tree["attributes"]["process_count"] == 5 and tree["attributes"]["not_recorded"] == 6


# ---- crash loops ----------------------------------------------------------------------------------

def crash(h, pid, code=1, sig=0, context=None, executable="/app/payment"):
    h.feed(h.ev.exit(pid, 1, "payment", code=code, signal=sig, context=context or pod_context(),
                     executable=executable))


def test_five_failed_exits_in_a_container_are_a_crash_loop():
    h = Harness()
    for n in range(4):
        crash(h, 5000 + n)
        h.ev.at(2)
    assert not h.versions("crash_loop"), "four failures are below the threshold"
    crash(h, 5004)
    [opened] = h.versions("crash_loop")
    assert opened["status"] == "open" and opened["severity"] == "error"
    a = opened["attributes"]
    assert a["container_id"] == CONTAINER and a["pod_uid"] == POD_UID
    assert a["executable"] == "/app/payment" and a["restarts"] == 5
    assert a["exit_codes"] == {"1": 5} and a["intervals_s"] == [2.0, 2.0, 2.0, 2.0]
    assert [e["exit_code"] for e in a["exits"]] == [1] * 5
    assert len(opened["event_ids"]) == 5
    assert "failed 5 times in 8.0 s (exit code 1 ×5)" in opened["summary"]
    assert "container payment-api of pod default/payment-7d9" in opened["summary"]
    # it grows while the loop goes on, and closes once quiet
    h.ev.at(3)
    crash(h, 5005, code=0, sig=signal.SIGSEGV)
    latest = h.versions("crash_loop")[-1]
    assert latest["id"] == opened["id"] and latest["attributes"]["restarts"] == 6
    assert latest["attributes"]["exit_codes"] == {"1": 5, "SIGSEGV": 1}
    h.tick(299)
    assert not h.closed("crash_loop")
    h.tick(5)
    [closed] = h.closed("crash_loop")
    assert closed["id"] == opened["id"] and closed["status"] == "closed"


def test_failures_spread_wider_than_the_window_are_no_crash_loop():
    h = Harness(config(crash_loop={"window": "10s"}))
    for n in range(8):
        crash(h, 5100 + n)
        h.ev.at(3)
    assert not h.versions("crash_loop")


def test_collapsed_exits_count_as_many():
    h = Harness()
    ev = h.ev
    e = ev.exit(5200, 1, "payment", code=1, context=pod_context(), executable="/app/payment")
    e.count = 5
    h.feed(e)
    [group] = h.versions("crash_loop")
    assert group["attributes"]["restarts"] == 5


def test_crash_loops_are_per_executable_and_scope():
    h = Harness()
    other = pod_context(container="f" * 64, container_name="other")
    for n in range(3):
        crash(h, 5300 + n)
        crash(h, 5400 + n, context=other)
        crash(h, 5500 + n, executable="/app/other")
    assert not h.versions("crash_loop")


def test_a_pods_container_restarted_under_new_ids_is_one_crash_loop():
    h = Harness()
    for n in range(5):
        crash(h, 5800 + n, context=pod_context(container=f"{n:064x}"))
        h.ev.at(2)
    [group] = h.versions("crash_loop")
    assert group["attributes"]["restarts"] == 5 and group["attributes"]["pod_uid"] == POD_UID


def test_login_sessions_are_not_a_scope_by_default():
    h = Harness()
    session = pod_context(container="", pod_uid="", pod_name="", namespace="", container_name="")
    session.systemd_unit = "session-3.scope"
    for n in range(6):
        crash(h, 5600 + n, context=session, executable="/usr/bin/grep")
    assert not h.versions("crash_loop")
    service = pod_context(container="", pod_uid="", pod_name="", namespace="", container_name="")
    service.systemd_unit = "payment.service"
    for n in range(5):
        crash(h, 5700 + n, context=service)
    [group] = h.versions("crash_loop")
    assert group["attributes"]["systemd_unit"] == "payment.service"
    assert "unit payment.service" in group["summary"]


def test_a_crash_loop_after_oom_kills_names_them_as_its_cause():
    h = Harness()
    ctx = pod_context()
    for n in range(5):
        h.feed(h.ev.oom(5800 + n, "payment", context=ctx),
               h.ev.exit(5800 + n, 1, "payment", signal=9, context=ctx, executable="/app/payment"))
        h.ev.at(1)
    [group] = [g for g in h.versions("crash_loop")][:1]
    assert group["root_cause"].startswith("OOM kills: memory limit 512 MiB")


# ---- OOM kills ------------------------------------------------------------------------------------

def test_an_oom_kill_holds_the_victim_and_the_container_exits_right_after():
    h = Harness()
    ev = h.ev
    ctx = pod_context()
    h.feed(ev.exec(6000, 1, "payment", filename="/app/payment", context=ctx, cgroup_id=77))
    ev.at(5)
    oom = ev.oom(6000, "payment", context=ctx, cgroup_id=77)
    kill = ev.signal(6000, "payment", 9, sender_pid=6001, sender_comm="stress")
    ev.at(0.01)
    gone = ev.exit(6000, 1, "payment", signal=9, context=ctx, cgroup_id=77, start_ns=ev.now - 5 * SEC)
    ev.at(0.5)
    helper = ev.exit(6002, 1, "sidecar", code=0, context=ctx, cgroup_id=77)   # exit 0: routine
    elsewhere = ev.exit(6003, 1, "other", code=0, cgroup_id=78)
    h.feed(gone, oom, kill)          # the exit may come first
    h.feed(helper, elsewhere)
    [opened] = h.versions("oom_kill")
    assert opened["status"] == "open" and opened["severity"] == "critical"
    h.tick(6)
    [group] = h.closed("oom_kill")
    a = group["attributes"]
    assert a["memcg_name"] == "payment" and a["memcg_limit_bytes"] == 512 << 20
    assert a["victim_exited"] is True and a["followers"] == 1 and a["pids"] == [6000, 6002]
    assert a["container_id"] == CONTAINER and a["pod_name"] == "payment-7d9"
    assert set(group["event_ids"]) >= {oom.id, kill.id, gone.id, helper.id}
    assert elsewhere.id not in group["event_ids"]
    victim = a["processes"][0]
    assert victim["pid"] == 6000 and victim["signal"] == 9 and victim["state"] == "exited"
    assert victim["executable"] == "/app/payment"
    assert group["summary"].startswith("payment (pid 6000, container payment-api of pod "
                                       "default/payment-7d9) OOM-killed at 500 MiB RSS of a 512 MiB limit")
    assert "1 more process(es)" in group["summary"]
    assert "memory cgroup payment reached its limit" in group["root_cause"]
    assert group["intent"] == "memory_exhaustion_investigation"


def test_repeated_oom_kills_are_counted_in_the_summary():
    h = Harness()
    for n in range(3):
        h.feed(h.ev.oom(6100 + n, "payment", context=pod_context()))
        h.ev.at(20)
    h.tick(10)
    last = h.closed("oom_kill")[-1]
    assert last["attributes"]["kills_in_history"] == 3
    assert "OOM-killed 3 times in 2.0 min" in last["summary"]


def cgroup(path, unit=""):
    """The context of a process outside any container: its cgroup v2 path (and unit)."""
    return events_pb2.Context(cgroup_path=path, systemd_unit=unit)


def test_an_oom_kill_outside_any_container_claims_nothing_of_the_root_cgroup():
    """A process OOM-killed in a cgroup-v1 memory child lives in the root cgroup of v2: the
    unrelated processes there that exit right after are not its followers."""
    h = Harness()
    ev = h.ev
    root = cgroup("/")
    h.feed(ev.oom(6200, "python3", memcg="tapio-test-1", cgroup_id=1, context=root),
           ev.exit(6200, 6199, "python3", signal=9, cgroup_id=1, context=root))
    ev.at(0.2)
    h.feed(*[ev.exit(6300 + n, 1, "sleep", cgroup_id=1, context=root) for n in range(20)])
    h.tick(6)
    [group] = h.closed("oom_kill")
    a = group["attributes"]
    assert a["followers"] == 0 and a["pids"] == [6200] and len(a["processes"]) == 1
    assert "more process" not in group["summary"]
    assert h.engine.stats()["collectors"]["node-a"]["hot_events"] == 2, \
        "the root cgroup is not watched: its routine exits stay in C"


@pytest.mark.parametrize("path", ["/user.slice", "/system.slice", "/init.scope", "/kubepods.slice"])
def test_an_oom_kill_claims_nothing_of_a_shared_slice(path):
    h = Harness()
    ev = h.ev
    h.feed(ev.oom(6210, "java", memcg=path.rsplit("/", 1)[-1], memcg_id=55, cgroup_id=55,
                  context=cgroup(path)))
    ev.at(0.1)
    h.feed(*[ev.exit(6220 + n, 1, "bash", cgroup_id=55, context=cgroup(path)) for n in range(5)])
    h.tick(6)
    [group] = h.closed("oom_kill")
    assert group["attributes"]["followers"] == 0 and group["attributes"]["pids"] == [6210]


def test_an_oom_kill_in_a_service_cgroup_claims_the_service_processes():
    """cgroup v2: the memory cgroup is the victim's own cgroup (the same id), a unit's."""
    h = Harness()
    ev = h.ev
    unit = cgroup("/system.slice/payment.service", "payment.service")
    h.feed(ev.exec(6230, 1, "payment", cgroup_id=90, context=unit))
    h.feed(ev.exec(6231, 6230, "worker", cgroup_id=90, context=unit))
    ev.at(1)
    h.feed(ev.oom(6231, "worker", memcg="payment.service", memcg_id=90, cgroup_id=90, context=unit,
                  ppid=6230),
           ev.exit(6231, 6230, "worker", signal=9, cgroup_id=90, context=unit))
    ev.at(0.1)
    h.feed(ev.exit(6230, 1, "payment", code=0, cgroup_id=90, context=unit),
           ev.exit(6240, 1, "bash", code=0, cgroup_id=1, context=cgroup("/")))
    h.tick(6)
    [group] = h.closed("oom_kill")
    a = group["attributes"]
    assert a["pids"] == [6231, 6230] and a["followers"] == 1
    assert a["victim_role"] == "worker"
    assert "a worker of unit payment.service" in group["summary"]
    assert "1 more process(es) of unit payment.service exited right after" in group["summary"]


@pytest.mark.parametrize("path,memcg,followers", [
    ("/system.slice/payment.service", "payment.service", 1),
    ("/system.slice/" + "x" * 70 + ".service", "x" * 63, 1),   # a long name, cut by the kernel side
    ("/system.slice/payment.service", "tapio-test-7", 0),      # equal ids of two hierarchies
])
def test_a_cgroup_is_the_memory_cgroup_only_when_the_names_agree(path, memcg, followers):
    h = Harness()
    ev = h.ev
    h.feed(ev.oom(6270, "payment", memcg=memcg, memcg_id=91, cgroup_id=91, context=cgroup(path)))
    ev.at(0.1)
    h.feed(ev.exit(6271, 1, "helper", cgroup_id=91, context=cgroup(path)))
    h.tick(6)
    [group] = h.closed("oom_kill")
    assert group["attributes"]["followers"] == followers


def test_an_oom_victim_whose_parent_is_outside_its_container_is_its_main_process():
    h = Harness()
    ev = h.ev
    ctx = pod_context()
    h.feed(ev.exec(6250, 1, "containerd-shim", cgroup_id=10, context=cgroup("/system.slice/containerd.service")))
    h.feed(ev.exec(6251, 6250, "payment", cgroup_id=77, context=ctx))
    h.feed(ev.exec(6252, 6251, "payment", cgroup_id=77, context=ctx))
    ev.at(1)
    h.feed(ev.oom(6251, "payment", cgroup_id=77, context=ctx, ppid=6250))
    h.feed(ev.oom(6252, "payment", cgroup_id=77, context=ctx, ppid=6251))
    h.tick(6)
    main, worker = h.closed("oom_kill")
    assert main["attributes"]["victim_role"] == "main"
    assert "the main process of its container" in main["summary"]
    assert worker["attributes"]["victim_role"] == "worker"
    assert "a worker of its container (parent payment, pid 6251)" in worker["summary"]


def test_an_oom_victim_whose_parent_the_runtime_forked_is_its_main_process():
    """conmon or a shim forks the container's first process without an exec of its own: a
    parent never seen, while the victim's exec was, is outside the container."""
    h = Harness()
    ev = h.ev
    ctx = pod_context()
    h.feed(ev.exec(6281, 6280, "payment", cgroup_id=77, context=ctx))
    ev.at(1)
    h.feed(ev.oom(6281, "payment", cgroup_id=77, context=ctx, ppid=6280))
    h.tick(6)
    [group] = h.closed("oom_kill")
    assert group["attributes"]["victim_role"] == "main"


def kill_ahead_of_its_read(h, ctx, parent_exec, victim_exec, victim=6291, ppid=6290):
    """A victim that execs and is OOM-killed within one collector read: the kill comes in the
    read's priority batch, ahead of the routine batch with its exec and its parent's."""
    ev = h.ev
    t_parent, t_victim, t_kill = ev.at(0), ev.at(0.01), ev.at(0.02)
    h.feed(ev.oom(victim, "payment", cgroup_id=77, context=ctx, ppid=ppid, ts=t_kill))
    [opened] = h.versions("oom_kill")
    assert opened["attributes"]["victim_role"] == "unknown", "nothing can be said before the exec"
    routine = [parent_exec(t_parent)] if parent_exec else []
    if victim_exec:
        routine.append(ev.exec(victim, ppid, "payment", cgroup_id=77, context=ctx, ts=t_victim))
    h.feed(*routine, ev.exit(6299, 1, "bash", cgroup_id=1, context=cgroup("/")))
    h.tick(6)
    [group] = h.closed("oom_kill")
    return group


def test_an_oom_victim_killed_ahead_of_its_exec_is_judged_when_the_exec_comes():
    """The kill of a worker whose parent and itself were exec'd in the same read as the kill."""
    h = Harness()
    ctx = pod_context()
    group = kill_ahead_of_its_read(
        h, ctx, lambda ts: h.ev.exec(6290, 6289, "payment", cgroup_id=77, context=ctx, ts=ts), True)
    assert group["attributes"]["victim_role"] == "worker"
    assert "a worker of its container (parent payment, pid 6290)" in group["summary"]
    assert group["attributes"]["processes"][0]["executable"] == "/usr/bin/payment", "its exec joined"


def test_an_oom_main_process_killed_ahead_of_its_exec_is_judged_when_the_exec_comes():
    """The runtime's process (here a shim that exec'd outside the container) is the parent."""
    h = Harness()
    ctx = pod_context()
    shim = cgroup("/system.slice/containerd.service")
    group = kill_ahead_of_its_read(
        h, ctx, lambda ts: h.ev.exec(6290, 1, "containerd-shim", cgroup_id=10, context=shim, ts=ts), True)
    assert group["attributes"]["victim_role"] == "main"
    assert "the main process of its container" in group["summary"]


def test_an_oom_victim_whose_exec_never_comes_stays_unknown():
    h = Harness()
    ctx = pod_context()
    group = kill_ahead_of_its_read(h, ctx, None, False)
    assert group["attributes"]["victim_role"] == "unknown"
    assert "main process" not in group["summary"] and "worker" not in group["summary"]


def test_an_exec_of_the_victims_pid_after_the_kill_says_nothing_of_its_role():
    """A pid used again after the kill is another process: its exec is not the victim's."""
    h = Harness()
    ev = h.ev
    ctx = pod_context()
    h.feed(ev.oom(6291, "payment", cgroup_id=77, context=ctx, ppid=6290))
    ev.at(0.5)
    h.feed(ev.exec(6291, 6290, "payment", cgroup_id=77, context=ctx))
    h.tick(6)
    [group] = h.closed("oom_kill")
    assert group["attributes"]["victim_role"] == "unknown"
    assert len(group["event_ids"]) == 1, "the later exec is not the victim's"


def test_an_oom_victim_of_unknown_descent_says_so():
    h = Harness()
    h.feed(h.ev.oom(6260, "python3", memcg="tapio-test-2", cgroup_id=1, context=cgroup("/"), ppid=6259))
    h.tick(6)
    [group] = h.closed("oom_kill")
    assert group["attributes"]["victim_role"] == "unknown"
    assert "main process" not in group["summary"] and "worker" not in group["summary"]


# ---- connectivity ---------------------------------------------------------------------------------

def test_twenty_refused_connects_are_one_group_with_their_count():
    h = Harness(config(connectivity={"close_after": "5s"}))
    ev = h.ev
    for n in range(4):
        h.feed(ev.connect(7000, "client", "10.0.0.9", 5432, count=4))
        ev.at(0.1)
    h.feed(ev.connect(7000, "client", "10.0.0.9", 5432, result="ok"))
    ev.at(0.1)
    h.feed(ev.connect(7001, "client", "10.0.0.9", 5432, count=4))
    h.feed(ev.connect(7000, "client", "10.0.0.10", 5432, count=4))     # another destination
    opened = h.versions("connectivity_degradation")
    assert len(opened) == 1 and opened[0]["attributes"]["failures"] == 8
    h.tick(1)
    assert h.versions("connectivity_degradation")[-1]["attributes"]["failures"] == 20
    h.tick(6)
    [group] = h.closed("connectivity_degradation")
    a = group["attributes"]
    assert a["destination"] == "10.0.0.9:5432" and a["server_port"] == 5432
    assert a["failures"] == 20 and a["successes"] == 1 and a["results"] == {"refused": 20}
    assert sorted(a["pids"]) == [7000, 7001]
    assert len(group["event_ids"]) == 6          # 5 collapsed failed events and the success
    assert "failed to connect to 10.0.0.9:5432 20 times" in group["summary"]
    assert "1 succeeded in between" in group["summary"]
    assert group["root_cause"] == "nothing listens on 10.0.0.9:5432 (connection refused)"
    assert group["intent"] == "connectivity_degradation"


def test_failures_slower_than_the_window_open_no_group():
    h = Harness(config(connectivity={"window": "1s"}))
    for n in range(10):
        h.feed(h.ev.connect(7100, "client", "10.0.0.9", 80, result="timed_out"))
        h.ev.at(0.5)
        h.tick(0.5)
    assert not h.versions("connectivity_degradation")


def test_ipv6_destinations_and_timeouts():
    h = Harness()
    h.feed(h.ev.connect(7200, "client", "fd00::1", 443, result="timed_out", count=5))
    [group] = h.versions("connectivity_degradation")
    assert group["attributes"]["destination"] == "[fd00::1]:443"
    assert group["attributes"]["network_type"] == "ipv6"
    assert "SYNs time out" in group["root_cause"]


# ---- fatal signals --------------------------------------------------------------------------------

def test_a_segfault_is_a_fatal_signal_group_with_its_parent():
    h = Harness()
    ev = h.ev
    h.feed(ev.exec(8000, 1, "bash"))
    h.feed(ev.exec(8001, 8000, "crashy", filename="/opt/crashy", context=pod_context()))
    ev.at(1)
    h.feed(ev.signal(8001, "crashy", signal.SIGSEGV, code=1),
           ev.exit(8001, 8000, "crashy", signal=signal.SIGSEGV, context=pod_context()))
    h.tick(1)
    [group] = h.closed("fatal_signal")
    a = group["attributes"]
    assert a["signal"] == "SIGSEGV" and a["ppid"] == 8000 and a["parent_comm"] == "bash"
    assert a["executable"] == "/opt/crashy" and a["container_id"] == CONTAINER
    assert group["root_cause"] == "a fault in the process itself: SIGSEGV (SEGV_MAPERR: address not mapped)"
    assert group["confidence"] == 1.0 and len(group["event_ids"]) == 3
    assert group["summary"].startswith("crashy (pid 8001, container payment-api of pod default/payment-7d9) "
                                       "killed by SIGSEGV; parent bash (pid 8000)")


def test_sigkill_and_handled_signals_are_not_fatal_signal_groups():
    h = Harness()
    h.feed(h.ev.signal(8100, "sleep", signal.SIGKILL, sender_pid=8200, sender_comm="kill"),
           h.ev.exit(8100, 1, "sleep", signal=signal.SIGKILL))
    h.tick(5)
    assert not h.closed("fatal_signal")


def test_an_abort_names_the_process_itself():
    h = Harness()
    h.feed(h.ev.signal(8300, "app", signal.SIGABRT, code=-6))
    h.tick(3)
    [group] = h.closed("fatal_signal")
    assert "abort()" in group["root_cause"] and group["confidence"] == 0.8


# ---- collectors, config ----------------------------------------------------------------------------

def test_collectors_are_correlated_apart():
    h = Harness()
    other = Events(collector="node-b", node="node-b")
    for n in range(3):
        crash(h, 9000 + n)
        h.engine.consume(other.batch(other.exit(9100 + n, 1, "payment", code=1, context=pod_context(),
                                                executable="/app/payment")), State("node-b", "node-b"))
    assert not h.versions("crash_loop")
    assert set(h.engine.stats()["collectors"]) == {"node-a", "node-b"}


def test_match_records_filters_in_c():
    ev = Events()
    batch = ev.batch(ev.exec(1, 0, "sh", context=pod_context()), ev.exit(1, 0, "sh"),
                     ev.exec(2, 0, "ls"))
    assert match_records(batch) == [2, 1, 0]
    assert match_records(batch, 1) == [2, 0]
    assert match_records(batch, 0, 1) == [1, 0]
    assert match_records(batch, 0, 0, b"ls") == [2]
    assert match_records(batch, 0, 0, None, CONTAINER[:12].encode()) == [0]
    assert match_records(batch, 0, 0, None, b"payment-api") == [0]
    assert match_records(batch, limit=1) == [2]


def test_config_file(tmp_path):
    path = tmp_path / "correlation.toml"
    path.write_text('[crash_loop]\nthreshold = 3\nwindow = "10s"\nscopes = ["container"]\n'
                    '[connectivity]\nwindow = 2.5\nfailures = ["refused"]\n')
    cfg = load_config(str(path))
    assert cfg.crash_loop.threshold == 3 and cfg.crash_loop.window == 10.0
    assert cfg.connectivity.window == 2.5 and cfg.connect_failure_codes() == (1,)
    assert cfg.process_tree.min_processes == 3       # what the file leaves out keeps its default
    assert load_config(None) == CorrelationConfig()


@pytest.mark.parametrize("text,message", [
    ("[crash_loops]\n", "unknown section [crash_loops]"),
    ("[crash_loop]\nthresold = 3\n", "unknown key 'thresold'"),
    ("[crash_loop]\nwindow = \"10 parsecs\"\n", "is not a duration"),
    ("[connectivity]\nthreshold = 100\n", "within 1..64"),
    ("[fatal_signal]\nsignals = [\"SIGNOPE\"]\n", "not a signal name"),
    ("[crash_loop]\nscopes = [\"galaxy\"]\n", "not one of"),
    ("not toml at all = = =\n", "not valid TOML"),
])
def test_config_errors_say_what_is_wrong(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")):
        load_config(str(path))


def test_disabled_rules_emit_nothing():
    h = Harness(config(crash_loop={"enabled": False}, connectivity={"enabled": False},
                       process_tree={"enabled": False}, oom_kill={"enabled": False},
                       fatal_signal={"enabled": False}))
    ev = h.ev
    for n in range(6):
        crash(h, 9500 + n)
    h.feed(ev.connect(9600, "c", "10.0.0.1", 1, count=30), ev.oom(9700, "x"),
           ev.signal(9800, "y", signal.SIGSEGV, code=1), ev.exec(9900, 1, "sh"),
           ev.exec(9901, 9900, "a"), ev.exec(9902, 9900, "b"), ev.exit(9901, 9900, "a", code=1),
           ev.exit(9902, 9900, "b"), ev.exit(9900, 1, "sh"))
    h.tick(400)
    assert h.emitted == []


def test_only_signals_some_group_needs_leave_c():
    core = Correlator(hot_signals={signal.SIGSEGV, signal.SIGKILL})
    ev = Events()
    batch = ev.batch(ev.signal(10, "svc", signal.SIGTERM), ev.signal(11, "app", signal.SIGSEGV),
                     ev.signal(12, "victim", signal.SIGKILL), ev.signal(13, "svc", signal.SIGHUP))
    _, hot, _, _ = core.feed(batch)
    assert hot == [1, 2]
    with pytest.raises(ValueError, match="not a signal number"):
        Correlator(hot_signals={64})
