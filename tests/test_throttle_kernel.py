"""--cgroup-budget with real eBPF, a real server and real cgroups: an exec and loopback-connect
storm in a cgroup of its own next to a quiet workload in another, both counting what they did.

With a small budget every event of the quiet cgroup reaches the server; of the noisy one, what
reached the server plus what its `throttled` events say was held back is exactly what the storm
did; its exits and its SIGSEGV are all delivered (never throttled); and the collector's ledger
closes with the throttled count the summaries add up to. With the budget off nothing is throttled.

Correlation: a process tree and a connectivity group of the noisy cgroup, whose events were held
back, are marked incomplete for throttling; those of the quiet cgroup, running at the same time,
are not.
"""
import json
import os
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from tests.fixtures.enrich.cgroups import CgroupTree, require_cgroup_root
from tests.helpers import ServerProcess, StreamingCollector, http_get, http_json, require_ebpf, wait_until
from tests.test_ledger_e2e import ledger_of

pytestmark = pytest.mark.kernel

ROUTINE = ("exec", "tcp_connect", "tcp_accept", "tcp_close")

# A workload that waits until it is in its cgroup, then runs `execs` fork+execs of /bin/true (and,
# with `crash`, one Python child that dies of SIGSEGV) and `connects` loopback connections to its
# own listener, `pause` seconds apart; it prints what it did as JSON.
WORKLOAD = textwrap.dedent("""
    import json, os, socket, sys, time
    cgroup, execs, connects, pause, crash = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), sys.argv[5] == "1"
    deadline = time.monotonic() + 10
    while not open("/proc/self/cgroup").read().rstrip().endswith(":" + cgroup):
        if time.monotonic() > deadline:
            sys.exit("never moved into " + cgroup)
        time.sleep(0.005)
    done = {"exec": 0, "exit": 0, "tcp_connect": 0, "tcp_accept": 0, "sigsegv": 0}
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    for i in range(max(execs, connects)):
        if i < execs:
            pid = os.posix_spawn("/bin/true", ["true"], os.environ)
            done["exec"] += 1
            os.waitpid(pid, 0)
            done["exit"] += 1
        if i < connects:
            client = socket.create_connection(listener.getsockname())
            done["tcp_connect"] += 1
            server, _ = listener.accept()
            done["tcp_accept"] += 1
            client.close()
            server.close()
        if pause:
            time.sleep(pause)
    if crash:
        pid = os.posix_spawn(sys.executable, [sys.executable, "-c", "import ctypes; ctypes.string_at(0)"], os.environ)
        done["exec"] += 1
        _, status = os.waitpid(pid, 0)
        done["exit"] += 1
        done["sigsegv"] += os.WIFSIGNALED(status) and os.WTERMSIG(status) == 11
    listener.close()
    print(json.dumps(done), flush=True)
""")


def start_in(tree, name, execs, connects, pause=0.0, crash=False):
    proc = subprocess.Popen([sys.executable, "-c", WORKLOAD, tree.path(name), str(execs), str(connects),
                             str(pause), "1" if crash else "0"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
    tree._processes.append(proc)          # killed by the tree's clean-up if the test fails
    with open(os.path.join(tree.directory(name), "cgroup.procs"), "w") as f:
        f.write(str(proc.pid))
    return proc


def finish(proc, timeout=120):
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out
    return json.loads(out)


def of_cgroup(events, cgroup_id, type_):
    return [e for e in events if e["cgroup_id"] == cgroup_id and e["type"] == type_]


def count(events, cgroup_id, type_, workload=None):
    """Events of a type from a cgroup, repeats the semantic path collapsed counted in. The
    workload's own exec may land in its cgroup (Popen returns once the exec has begun, the
    tracepoint fires at its end): with `workload`, its pid's exec is left out (the first event
    of a full bucket, it is never held back)."""
    return sum(e.get("count", 1) for e in of_cgroup(events, cgroup_id, type_)
               if not (type_ == "exec" and e["pid"] == workload))


@pytest.fixture
def cgroups():
    tree = CgroupTree(require_cgroup_root())
    try:
        yield tree
    finally:
        tree.cleanup()


def run(tmp_path, tree, flags, noisy_load, quiet_load):
    """Start a server and a collector, run both workloads, stop the collector (it drains), and
    return (server events, collector log, noisy id, quiet id, what each workload did, metrics)."""
    require_ebpf()
    noisy_id, quiet_id = tree.mkdir("noisy"), tree.mkdir("quiet")
    server = ServerProcess(tmp_path, http=True).wait_listening()
    collector = StreamingCollector(tmp_path, server.address, flags=flags, http=True)
    try:
        collector.wait_http()
        noisy = start_in(tree, "noisy", *noisy_load, crash=True)
        quiet = start_in(tree, "quiet", *quiet_load)
        did_noisy, did_quiet = finish(noisy), finish(quiet)
        did_noisy["pid"], did_quiet["pid"] = noisy.pid, quiet.pid
        # the noisy cgroup's last summary is due at the end of its interval: wait for it
        time.sleep(2.5)
        metrics = http_get(collector.http_url + "/metrics")[2].decode()
        assert collector.stop() == 0, collector.log()
        log = collector.log()
        time.sleep(0.5)
        server_metrics = http_get(server.http_url + "/metrics")[2].decode()
        reported = http_json(server.http_url + "/api/v1/collectors")[1]["collectors"]
    finally:
        collector.stop()
        server.stop()
    return (server.events(), log, noisy_id, quiet_id, did_noisy, did_quiet,
            metrics + server_metrics, reported)


@pytest.mark.parametrize("path", ["semantic", "raw"])
def test_a_noisy_cgroup_is_throttled_and_every_event_is_accounted_for(tmp_path, cgroups, path):
    events, log, noisy, quiet, did_noisy, did_quiet, metrics, reported = run(
        tmp_path, cgroups, ["--cgroup-budget", "100/s", "--cgroup-burst", "100", "--correlation", path],
        noisy_load=(800, 800), quiet_load=(20, 20, 0.1))
    assert did_noisy["sigsegv"] == 1

    # the quiet cgroup (about 50 routine events/s) lost nothing
    for type_ in ("exec", "tcp_connect", "tcp_accept"):
        assert count(events, quiet, type_, did_quiet["pid"]) == did_quiet[type_], type_
    assert count(events, quiet, "exit") == did_quiet["exit"] + 1   # and the workload's own
    assert not of_cgroup(events, quiet, "throttled")

    # the noisy one: what arrived + what its summaries held back == what it did
    summaries = [e["throttled"] for e in of_cgroup(events, noisy, "throttled")]
    assert summaries, "the storm was not throttled"
    held = {t: sum(s[t] for s in summaries) for t in ROUTINE}
    for type_ in ("exec", "tcp_connect", "tcp_accept"):
        arrived = count(events, noisy, type_, did_noisy["pid"])
        assert arrived + held[type_] == did_noisy[type_], (type_, arrived, held[type_])
        assert held[type_] > 0, type_
    # both ends of each loopback connection close in the storm's own process
    assert count(events, noisy, "tcp_close") + held["tcp_close"] == 2 * did_noisy["tcp_connect"]
    assert all(s["budget"] == 100 and s["burst"] == 100 and s["interval_ns"] == 10**9 for s in summaries)
    # about one summary per second of storm, each for its own interval
    stamps = sorted(e["timestamp_ns"] for e in of_cgroup(events, noisy, "throttled"))
    assert all(b - a >= 0.9e9 for a, b in zip(stamps, stamps[1:])), stamps
    # every exit (the storm's children and the storm itself) and the SIGSEGV came through
    assert count(events, noisy, "exit") == did_noisy["exit"] + 1
    segv = [e for e in of_cgroup(events, noisy, "signal") if e["signal"]["signal"] == 11]
    assert len(segv) == 1
    assert any(e["exit"]["signal"] == 11 for e in of_cgroup(events, noisy, "exit"))
    # on the semantic path summaries carry the cgroup's context, as the enrichment gives every
    # event of it; the raw path enriches nothing and names the cgroup by its id
    name = cgroups.path("noisy") if path == "semantic" else str(noisy)
    if path == "semantic":
        assert all(e["context"]["cgroup_path"] == name for e in of_cgroup(events, noisy, "throttled"))

    # the ledger closes, and its throttled count is what every summary at the server adds up to
    counts, line = ledger_of(log)
    assert "the ledger closes" in line, line
    everywhere = sum(sum(e["throttled"][t] for t in ROUTINE) for e in events if e["type"] == "throttled")
    assert counts["throttled"] == everywhere, line
    assert counts["dropped_kernel"] == 0, line
    # the server shows the collector's ledger with it, and what its summaries held back by type
    [collector] = reported
    assert collector["ledger"]["reported"]["throttled"] == counts["throttled"]
    assert sum(collector["throttled_by_type"].values()) == everywhere

    # metrics: the noisy cgroup by name among the top few, and the totals on both sides
    top = [line for line in metrics.splitlines()
           if line.startswith("tapio_cgroup_throttled_top_events{") and f'cgroup="{name}"' in line]
    assert {line.split('type="')[1].split('"')[0] for line in top} == set(ROUTINE), top
    assert "tapio_cgroup_throttled_events_total{" in metrics
    assert 'tapio_events_throttled_total{collector=' in metrics


def test_with_the_budget_off_nothing_is_throttled(tmp_path, cgroups):
    events, log, noisy, _, did_noisy, _, metrics, _ = run(
        tmp_path, cgroups, [], noisy_load=(300, 300), quiet_load=(5, 5, 0.0))
    assert not [e for e in events if e["type"] == "throttled"]
    for type_ in ("exec", "tcp_connect", "tcp_accept"):
        assert count(events, noisy, type_, did_noisy["pid"]) == did_noisy[type_], type_
    assert count(events, noisy, "tcp_close") == 2 * did_noisy["tcp_connect"]
    counts, line = ledger_of(log)
    assert counts["throttled"] == 0 and "the ledger closes" in line, line
    assert "tapio_cgroup_throttled_events_total" not in metrics


# ---- correlation: the groups of a throttled cgroup may miss facts, its neighbours' do not --------

CORRELATION = """
[process_tree]
grace = "1s"
max_groups_per_minute = 100000     # the host's other activity must not crowd the test's trees out
[connectivity]
close_after = "2s"
[limits]
tick = "100ms"
"""

# one tree per cgroup: a shell (moved into the cgroup before it execs the script) whose children
# are a Python that connects to a closed port, then `execs` runs of /bin/true (`pause` apart)
TREE = """
"$1" "$2" "$3" "$4" "$5"
i=0
while [ $i -lt "$6" ]; do
    /bin/true
    [ "$7" = 0 ] || sleep "$7"
    i=$((i+1))
done
exit 0
"""

CONNECTS = textwrap.dedent("""
    import socket, sys, time
    port, n, pause = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    for _ in range(n):
        with socket.socket() as s:
            try:
                s.connect(("127.0.0.1", port))
            except ConnectionRefusedError:
                pass
        time.sleep(pause)
""")


def closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]        # bound, never listening, then closed: refused


def tree_in(cgroups, name, tmp_path, port, connects, connect_pause, execs, exec_pause):
    """Start the tree in cgroup `name`; returns the Popen (its pid is the tree's root)."""
    script, client = tmp_path / "tree.sh", tmp_path / "connects.py"
    script.write_text(TREE)
    client.write_text(CONNECTS)
    procs = os.path.join(cgroups.directory(name), "cgroup.procs")
    proc = subprocess.Popen(["sh", "-c", f'echo $$ > {procs} && exec sh "$0" "$@"', str(script),
                             sys.executable, str(client), str(port), str(connects), str(connect_pause),
                             str(execs), str(exec_pause)], stdin=subprocess.DEVNULL)
    cgroups._processes.append(proc)       # killed by the tree's clean-up if the test fails
    return proc


def groups(server, kind):
    status, body = http_json(f"{server.http_url}/api/v1/groups?kind={kind}&limit=1000")
    assert status == 200, body
    return body["groups"]


def throttle_gaps(group, cgroup_id):
    return [g for g in group["attributes"].get("gaps", ())
            if g["reason"].startswith("throttled:") and g.get("cgroup_id") == cgroup_id]


def test_groups_of_a_throttled_cgroup_are_incomplete_and_their_neighbours_are_not(tmp_path, cgroups):
    require_ebpf()
    noisy_id, quiet_id = cgroups.mkdir("noisy"), cgroups.mkdir("quiet")
    config = tmp_path / "correlation.toml"
    config.write_text(CORRELATION)
    noisy_port, quiet_port = closed_port(), closed_port()
    server = ServerProcess(tmp_path, ["--correlation-config", str(config)], http=True).wait_listening()
    collector = StreamingCollector(tmp_path, server.address, http=True,
                                   flags=["--cgroup-budget", "100/s", "--cgroup-burst", "100"])
    try:
        collector.wait_http()
        # the same half a second or two in both cgroups: the noisy one far over its budget (300
        # connects, 400 execs), the quiet one well under it
        noisy = tree_in(cgroups, "noisy", tmp_path, noisy_port, 300, 0.001, 400, 0)
        quiet = tree_in(cgroups, "quiet", tmp_path, quiet_port, 6, 0.15, 6, 0.2)
        assert noisy.wait(120) == 0 and quiet.wait(120) == 0
        assert collector.proc.poll() is None, "the collector ended before the workloads:\n" + collector.log()
        # the collector sends what it still holds, the last throttled summaries too, as it stops
        assert collector.stop() == 0, collector.log()

        def tree_of(pid):
            return [g for g in groups(server, "process_tree") if g["attributes"].get("pid") == pid]

        def connects_to(port):
            return [g for g in groups(server, "connectivity_degradation")
                    if g["attributes"].get("destination") == f"127.0.0.1:{port}" and g["status"] == "closed"]
        # the noisy tree and connectivity group, once marked; the quiet ones once there
        noisy_tree = wait_until(lambda: [g for g in tree_of(noisy.pid) if throttle_gaps(g, noisy_id)], 30,
                                interval=0.2, what="the noisy cgroup's process tree, marked")[0]
        noisy_conns = wait_until(lambda: [g for g in connects_to(noisy_port) if throttle_gaps(g, noisy_id)], 30,
                                 interval=0.2, what="the noisy cgroup's connectivity group, marked")[0]
        [quiet_tree] = wait_until(lambda: tree_of(quiet.pid), 30, interval=0.2, what="the quiet tree")
        [quiet_conns] = wait_until(lambda: connects_to(quiet_port), 30, interval=0.2,
                                   what="the quiet connectivity group")
        events = server.events()
        metrics = http_get(server.http_url + "/metrics")[2].decode()
    finally:
        collector.stop()
        server.stop()

    summaries = [e["throttled"] for e in of_cgroup(events, noisy_id, "throttled")]
    assert sum(s["exec"] for s in summaries) > 0 and sum(s["tcp_connect"] for s in summaries) > 0
    assert not of_cgroup(events, quiet_id, "throttled")

    # the noisy cgroup's groups say why they may miss facts: the held-back types their kind reads
    assert noisy_tree["incomplete"] is True and noisy_tree["attributes"]["process_count"] >= 400
    assert all("exec" in g["reason"] for g in throttle_gaps(noisy_tree, noisy_id))
    assert noisy_conns["incomplete"] is True
    assert all("tcp_connect" in g["reason"] for g in throttle_gaps(noisy_conns, noisy_id))
    assert noisy_conns["attributes"]["cgroup_id"] == noisy_id

    # the quiet cgroup's groups ran while its neighbour was throttled, and stay complete
    windows = [(s["first_timestamp_ns"], s["last_timestamp_ns"]) for s in summaries]
    for group in (quiet_tree, quiet_conns):
        assert any(first <= group["end_ns"] and group["start_ns"] <= last for first, last in windows), \
            (group["kind"], "ran outside every throttle window: the test proves nothing")
        assert group["incomplete"] is False and "gaps" not in group["attributes"], \
            (group["kind"], group["attributes"].get("gaps"), group["attributes"].get("processes"))
    assert quiet_conns["attributes"]["cgroup_id"] == quiet_id

    marked = [line for line in metrics.splitlines()
              if line.startswith('tapio_groups_marked_incomplete_total{reason="throttled"}')]
    assert marked and float(marked[0].split()[-1]) >= 1, marked
