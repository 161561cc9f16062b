"""Fidelity: every fact a user reads, against ground truth that the test makes itself, on both
of the collector's paths.

Two real collectors run side by side for the whole module, one per path (`--correlation raw`
and `--correlation semantic`), each writing JSON lines (`--output FILE`). Each test makes the
kernel do something whose truth it knows (the exit codes and signals it chose, the pids and
thread ids the kernel gave it, the bytes it wrote and read, the ports it got, its own clocks
around every act) and finds exactly that in the output of the path under test.

Durations are bounded by causality: the kernel's clock (CLOCK_BOOTTIME) and the test's
(CLOCK_MONOTONIC) run at the same rate, so a duration lies between what the test measured
inside the act and what it measured around it, give or take CLOCK_TOLERANCE_NS (the two clocks
are read through different accessors). Wall-clock timestamps carry the collector's boot-to-wall
offset, sampled once when it started: they get WALL_TOLERANCE_NS.

On the semantic path, repeats (one process, one destination, one result) may be collapsed into
one event with `count` > 1 whose `collapsed` object holds the exact sums and ranges of what it
stands for: the totals per destination must still be exact.
"""
import os
import pwd
import signal
import socket
import struct
import sys
import threading
import time

import pytest

from tests.helpers import CollectorProcess, recv_exactly, require_ebpf, tcp_bytes_acked, wait_until

pytestmark = pytest.mark.kernel

PATHS = ("raw", "semantic")
CLOCK_TOLERANCE_NS = 100_000
WALL_TOLERANCE_NS = 100_000_000
ECONNREFUSED, ECONNRESET, ETIMEDOUT = 111, 104, 110
PYTHON_COMM = os.path.basename(sys.executable)[:15]


@pytest.fixture(scope="module")
def collectors(tmp_path_factory):
    require_ebpf()
    out = tmp_path_factory.mktemp("fidelity")
    procs = {}
    try:
        for path in PATHS:
            procs[path] = CollectorProcess(out / f"{path}.jsonl", ["--correlation", path])
            procs[path].path = path
        for proc in procs.values():
            proc.wait_attached()
        yield procs
    finally:
        codes = {path: proc.stop() for path, proc in procs.items()}
    assert codes == {path: 0 for path in PATHS}, {path: procs[path].log() for path in PATHS}


@pytest.fixture(params=PATHS)
def collector(request, collectors):
    return collectors[request.param]


def within(value, low, high, tolerance, what):
    assert low - tolerance <= value <= high + tolerance, (
        f"{what}: {value} is not within [{low}, {high}] (tolerance {tolerance})")


def own_cgroup():
    """The cgroup v2 path and id (kernfs inode) of this process; its children start there."""
    with open("/proc/self/cgroup") as f:
        path = next(line.split(":", 2)[2].strip() for line in f if line.startswith("0::"))
    for root in ("/sys/fs/cgroup/unified", "/sys/fs/cgroup"):
        if os.path.exists(f"{root}/cgroup.controllers"):
            return path, os.stat(root + path).st_ino
    pytest.fail("no cgroup v2 hierarchy is mounted")


def own_comm():
    with open("/proc/self/comm") as f:
        return f.read().strip()


def spawn(argv):
    """posix_spawn(argv); reaped with os.waitpid so that the whole wait status is known."""
    return os.posix_spawn(argv[0], argv, os.environ)


def reap(pid):
    try:
        return os.waitpid(pid, 0)[1]
    except BaseException:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise


# -- processes ------------------------------------------------------------------------------

# The child stamps CLOCK_MONOTONIC and the wall clock as it starts and again as it is about to
# end, so that its lifetime is known from inside as well as from outside.
CHILD = """
import ctypes, os, resource, signal, sys, time
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
stamps, how = sys.argv[1], sys.argv[2]
for _ in range(2):
    with open(stamps, "a") as f:
        f.write(f"{time.monotonic_ns()} {time.time_ns()}\\n")
if how.startswith("exit-"):
    os._exit(int(how[5:]))
if how == "SIGSEGV":
    ctypes.string_at(0)
if how == "SIGABRT":
    os.abort()
signal.pause()      # SIGKILL: until the test kills it
"""

ENDINGS = [  # (what the child does, its exit code, its terminating signal)
    ("exit-0", 0, 0),
    ("exit-3", 3, 0),
    ("exit-255", 255, 0),
    ("SIGSEGV", 0, signal.SIGSEGV),
    ("SIGABRT", 0, signal.SIGABRT),
    ("SIGKILL", 0, signal.SIGKILL),   # sent by this test
]


@pytest.fixture(scope="module")
def child_dir(tmp_path_factory):
    """A short directory (exec args are cut at 256 bytes) holding the child's script."""
    path = tmp_path_factory.mktemp("c")
    (path / "c.py").write_text(CHILD)
    return path


def run_child(child_dir, how):
    """Run CHILD until it ends as `how` says. Returns its argv, pid and wait status, the test's
    own stamps around it (monotonic and wall, before and after) and the child's from inside."""
    stamps = child_dir / f"{how}-{time.monotonic_ns()}"
    argv = [sys.executable, "-I", str(child_dir / "c.py"), str(stamps), how]
    mono0, wall0 = time.monotonic_ns(), time.time_ns()
    pid = spawn(argv)
    if how == "SIGKILL":
        try:
            wait_until(lambda: stamps.exists() and len(stamps.read_text().splitlines()) >= 2,
                       what="the child to start")
        finally:
            os.kill(pid, signal.SIGKILL)
    status = reap(pid)
    mono1, wall1 = time.monotonic_ns(), time.time_ns()
    inside = [tuple(map(int, line.split())) for line in stamps.read_text().splitlines()]
    return argv, pid, status, (mono0, wall0, mono1, wall1), inside


@pytest.mark.parametrize("how,exit_code,sig", ENDINGS, ids=[e[0] for e in ENDINGS])
def test_process_facts(collector, child_dir, how, exit_code, sig):
    me, (cgroup_path, cgroup_id) = os.getpid(), own_cgroup()
    argv, pid, status, (mono0, wall0, mono1, wall1), inside = run_child(child_dir, how)
    # what the kernel told the parent
    if sig:
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == sig
    else:
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == exit_code
    header = (pid, pid, me, os.getuid(), os.getgid(), cgroup_id, PYTHON_COMM)

    def header_of(e):
        return tuple(e[k] for k in ("pid", "tid", "ppid", "uid", "gid", "cgroup_id", "comm"))

    execs = collector.wait_for(lambda e: e["type"] == "exec" and e["pid"] == pid, what=f"the exec of {pid}")
    assert len(execs) == 1, execs
    assert header_of(execs[0]) == header
    assert execs[0]["exec"] == {"filename": sys.executable, "args": argv, "args_count": len(argv),
                                "args_truncated": False}
    within(execs[0]["timestamp_ns"], wall0, inside[0][1], WALL_TOLERANCE_NS, "exec time")

    exits = collector.wait_for(lambda e: e["type"] == "exit" and e["pid"] == pid, what=f"the exit of {pid}")
    assert len(exits) == 1 and exits[0].get("count", 1) == 1, exits
    assert header_of(exits[0]) == header
    d = exits[0]["exit"]
    assert (d["exit_code"], d["signal"], d["core_dumped"]) == (exit_code, sig, os.WCOREDUMP(status))
    assert d["signal_name"] == (signal.Signals(sig).name if sig else None)
    # alive from its first stamp to its last, and within the test's stamps around it
    within(d["duration_ns"], inside[-1][0] - inside[0][0], mono1 - mono0, CLOCK_TOLERANCE_NS,
           "the process's lifetime")
    within(d["start_time_ns"], wall0, inside[0][1], WALL_TOLERANCE_NS, "the process's start")
    within(exits[0]["timestamp_ns"], inside[-1][1], wall1, WALL_TOLERANCE_NS, "exit time")

    if collector.path == "semantic":   # enriched: who the process is, and where it runs
        for e in execs + exits:
            assert e["context"]["cgroup_path"] == cgroup_path, e
            process = e["process"]
            assert (process["executable"], process["command_line"], process["user"]) == (
                sys.executable, " ".join(argv), pwd.getpwuid(os.getuid()).pw_name), e
            assert process["ancestors"][:2] == [me, os.getppid()], e
            within(process["start_time_ns"], wall0, inside[0][1], WALL_TOLERANCE_NS, "the process's start")

    # the exit event came after any signal event of the process: all of them are in by now
    signals = [e for e in collector.events() if e["type"] == "signal" and e["pid"] == pid]
    assert len(signals) == (1 if sig else 0), signals
    if not sig:
        return
    assert header_of(signals[0])[:2] == (pid, pid) and signals[0]["ppid"] == me
    d = signals[0]["signal"]
    assert (d["signal"], d["signal_name"]) == (sig, signal.Signals(sig).name)
    if sig == signal.SIGKILL:         # kill(2) from this test: SI_USER
        assert (d["sender_pid"], d["sender_comm"], d["code"]) == (me, own_comm(), 0)
    elif sig == signal.SIGABRT:       # abort(3) raises it with tgkill(2): SI_TKILL
        assert (d["sender_pid"], d["sender_comm"], d["code"]) == (pid, PYTHON_COMM, -6)
    else:                             # a fault: the kernel sends it on the task's behalf
        assert (d["sender_pid"], d["sender_comm"]) == (pid, PYTHON_COMM)
        assert d["code"] == 1         # SEGV_MAPERR: nothing is mapped at address 0


# -- connections ----------------------------------------------------------------------------

class Truth:
    """What the test knows of one connection: the bytes each side wrote (and the other read),
    how it ends, the ports and thread ids, and the test's stamps (monotonic in `t`, wall in
    `w`) that bound each side's lifetime."""

    def __init__(self, client_sends, server_sends, hold_ns, ending):
        self.client_sends, self.server_sends = client_sends, server_sends
        self.hold_ns, self.ending = hold_ns, ending
        self.client_port = self.server_port = self.client_tid = self.server_tid = 0
        self.client_error = 0
        self.t, self.w = {}, {}

    def stamp(self, name):
        self.t[name], self.w[name] = time.monotonic_ns(), time.time_ns()

    # A side's lifetime runs from its connect (established) or accept to its socket's move to
    # CLOSE, which is never before that side called close(), or the server reset it, and never
    # after the test saw the close events ("end": the last moves to CLOSE may happen in a
    # softirq after both applications are done).
    def closed(self, side):
        return "server_close" if side == "server" or self.ending == "reset" else "client_close"

    def lifetime(self, side):
        if side == "client":
            return self.t[self.closed(side)] - self.t["connected"], self.t["end"] - self.t["connect"]
        return self.t["server_close"] - self.t["accepted"], self.t["end"] - self.t["accept"]

    def close_time(self, side):
        return self.w[self.closed(side)], self.w["end"]

    def sent(self, side):
        return self.client_sends if side == "client" else self.server_sends

    def received(self, side):
        return self.server_sends if side == "client" else self.client_sends

    def port(self, side):
        return self.client_port if side == "client" else self.server_port

    def peer_port(self, side):
        return self.server_port if side == "client" else self.client_port


def connection(listener, truth):
    """One connection to `listener` as `truth` says: the client (this thread) writes, the server
    (a thread) reads it all and answers; the connection is held for truth.hold_ns, then ends:
    the client closes first, the server closes first, or the server resets it (SO_LINGER 0)
    once each side's bytes are acknowledged, so that what each sent is exactly known."""
    client_acked = threading.Event()
    failures = []

    def serve():
        try:
            truth.server_tid = threading.get_native_id()
            truth.stamp("accept")
            conn, _ = listener.accept()
            truth.stamp("accepted")
            with conn:
                recv_exactly(conn, truth.client_sends)
                conn.sendall(b"s" * truth.server_sends)
                if truth.ending == "client closes":
                    while conn.recv(65536):
                        pass
                elif truth.ending == "reset":
                    wait_until(lambda: tcp_bytes_acked(conn) == truth.server_sends,
                               what="the client's ACK")
                    assert client_acked.wait(10)
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                truth.stamp("server_close")
        except BaseException as e:
            failures.append(e)

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        truth.client_tid = threading.get_native_id()
        truth.server_port = listener.getsockname()[1]
        truth.stamp("connect")
        client = socket.create_connection(("127.0.0.1", truth.server_port))
        truth.stamp("connected")
        with client:
            truth.client_port = client.getsockname()[1]
            client.sendall(b"c" * truth.client_sends)
            recv_exactly(client, truth.server_sends)
            # how long the connection lives is one of the facts: it is held, not waited for
            time.sleep(max(0, truth.t["connected"] + truth.hold_ns - time.monotonic_ns()) / 1e9)
            if truth.ending == "reset":
                wait_until(lambda: tcp_bytes_acked(client) == truth.client_sends + 1,  # + the SYN
                           what="the server's ACK")
                client_acked.set()
            if truth.ending != "client closes":
                try:
                    assert client.recv(1) == b""
                except ConnectionResetError as e:
                    truth.client_error = e.errno
            truth.stamp("client_close")
    finally:
        client_acked.set()
        thread.join(30)
    assert not thread.is_alive() and not failures, failures


def closes_of(collector, truths):
    """This process's close events of the connections in `truths`, both sides."""
    pairs = {frozenset((t.client_port, t.server_port)) for t in truths}
    return [e for e in collector.events() if e["type"] == "tcp_close" and e["pid"] == os.getpid()
            and frozenset((e["tcp_close"]["sport"], e["tcp_close"]["dport"])) in pairs]


def wait_closed(collector, truths):
    """Until the collector has reported both sides' closes of `truths`; stamps their end. When they
    do not come, the failure says what the collector did report of those connections, and
    whether the closes came late or not at all."""
    def closed():
        return count(closes_of(collector, truths)) >= 2 * len(truths)
    try:
        wait_until(closed, what=f"the closes of {len(truths)} connection(s)")
    except pytest.fail.Exception:
        deadline = time.monotonic() + 20
        while not closed() and time.monotonic() < deadline:
            time.sleep(0.1)
        late = closed()
        ports = {p for t in truths for p in (t.client_port, t.server_port)}
        seen = [e for e in collector.events() if e["type"].startswith("tcp_")
                and ports & {e[e["type"]].get("sport"), e[e["type"]].get("dport")}]
        pytest.fail(f"the closes of {len(truths)} connection(s) did not come within 10s "
                    f"({'they came within 20s more' if late else 'nor within 20s more'}); "
                    f"this process is {os.getpid()}; the collector reported of their ports: {seen}\n"
                    f"{collector.log()[-3000:]}")
    for t in truths:
        t.stamp("end")


def as_parts(events, what):
    """Each event as what it stands for: a dict of its count, byte sums, port range, duration
    min/max/total and first/last time; a collapsed event by its `collapsed` sums and ranges."""
    parts = []
    for e in events:
        tcp, count = e[e["type"]], e.get("count", 1)
        if count == 1:
            d = tcp["duration_ns"]
            parts.append({"count": 1, "sent": tcp["bytes_sent"], "received": tcp["bytes_received"],
                          "sport_min": tcp["sport"], "sport_max": tcp["sport"], "dmin": d, "dmax": d,
                          "dtotal": d, "first": e["timestamp_ns"], "last": e["timestamp_ns"]})
            continue
        c = e.get("collapsed")
        assert c, f"{what}: an event that stands for {count} carries no `collapsed` totals: {e}"
        parts.append({"count": count, "sent": c["bytes_sent"], "received": c["bytes_received"],
                      "sport_min": c["sport_min"], "sport_max": c["sport_max"],
                      "dmin": c["duration_min_ns"], "dmax": c["duration_max_ns"],
                      "dtotal": c["duration_total_ns"], "first": c["first_timestamp_ns"],
                      "last": c["last_timestamp_ns"]})
    return parts


def check_side(events, truths, side, what):
    """The close events of one side of `truths` (one destination): counts, byte sums, ports,
    durations and times over all of them, then each event that stands for one connection alone
    against that connection."""
    parts = as_parts(events, what)
    assert sum(p["count"] for p in parts) == len(truths), f"{what}: {parts}"
    assert sum(p["sent"] for p in parts) == sum(t.sent(side) for t in truths), f"{what}: bytes sent {parts}"
    assert sum(p["received"] for p in parts) == sum(t.received(side) for t in truths), (
        f"{what}: bytes received {parts}")
    for t in truths:
        assert any(p["sport_min"] <= t.port(side) <= p["sport_max"] for p in parts), (
            f"{what}: port {t.port(side)} is in none of {parts}")
    bounds = [t.lifetime(side) for t in truths]
    within(min(p["dmin"] for p in parts), min(b[0] for b in bounds), min(b[1] for b in bounds),
           CLOCK_TOLERANCE_NS, f"{what}: the shortest lifetime")
    within(max(p["dmax"] for p in parts), max(b[0] for b in bounds), max(b[1] for b in bounds),
           CLOCK_TOLERANCE_NS, f"{what}: the longest lifetime")
    within(sum(p["dtotal"] for p in parts), sum(b[0] for b in bounds), sum(b[1] for b in bounds),
           CLOCK_TOLERANCE_NS * len(bounds), f"{what}: the total lifetime")
    times = [t.close_time(side) for t in truths]
    within(min(p["first"] for p in parts), min(b[0] for b in times), min(b[1] for b in times),
           WALL_TOLERANCE_NS, f"{what}: the first close")
    within(max(p["last"] for p in parts), max(b[0] for b in times), max(b[1] for b in times),
           WALL_TOLERANCE_NS, f"{what}: the last close")
    # each connection is told apart by the client's port: the source on the client's side,
    # the destination on the server's
    by_client = {t.client_port: t for t in truths}
    for e in events:
        if e.get("count", 1) == 1:
            d = e["tcp_close"]
            t = by_client[d["sport"] if side == "client" else d["dport"]]
            assert (d["sport"], d["dport"]) == (t.port(side), t.peer_port(side)), (what, e)
            assert (d["bytes_sent"], d["bytes_received"]) == (t.sent(side), t.received(side)), (
                what, t.__dict__, e)
            within(d["duration_ns"], *t.lifetime(side), CLOCK_TOLERANCE_NS, f"{what}: lifetime of {e}")
            within(e["timestamp_ns"], *t.close_time(side), WALL_TOLERANCE_NS, f"{what}: time of {e}")


def side_events(collector, type_, side, truths):
    """This process's events of `type_` on one side of `truths` (connections to one listener):
    the client's connects and closes to the listener, or the listener's accepts and closes."""
    me, server_port, clients = os.getpid(), truths[0].server_port, {t.client_port for t in truths}
    if side == "client":
        def mine(d):
            return d["dport"] == server_port and not d["passive"]
    else:
        def mine(d):
            return d["sport"] == server_port and d["dport"] in clients and d["passive"]
    return [e for e in collector.events() if e["type"] == type_ and e["pid"] == me and mine(e[type_])]


def count(events):
    """How many events these stand for."""
    return sum(e.get("count", 1) for e in events)


# distinct sizes in both directions, below and above a segment, a window and 64 KiB
SIZES = [(1, 70_000), (10, 0), (100, 65_536), (1000, 1), (10_000, 3_333), (100_000, 7),
         (65_535, 200_001), (0, 12)]


def test_connection_facts(collector):
    """N connections from this process to one listener, each with its own payload sizes in both
    directions and its own lifetime, half of them closed first by the client."""
    with socket.create_server(("127.0.0.1", 0), backlog=len(SIZES)) as listener:
        truths = []
        for i, (client_sends, server_sends) in enumerate(SIZES):
            truth = Truth(client_sends, server_sends, hold_ns=(i + 1) * 10_000_000,
                          ending=("client closes", "server closes")[i % 2])
            connection(listener, truth)
            wait_closed(collector, [truth])
            truths.append(truth)
    n, server_port = len(truths), truths[0].server_port
    clients = {t.client_port: t for t in truths}

    def of_type(type_, side):
        return side_events(collector, type_, side, truths)

    wait_until(lambda: all(count(of_type(type_, side)) >= n for type_, side in
                           [("tcp_connect", "client"), ("tcp_close", "client"),
                            ("tcp_accept", "server"), ("tcp_close", "server")]),
               what=f"{n} connects, accepts and closes on each side")

    for type_, side in [("tcp_connect", "client"), ("tcp_close", "client"),
                        ("tcp_accept", "server"), ("tcp_close", "server")]:
        events = of_type(type_, side)
        assert count(events) == n, (type_, side, events)
        tids = {t.client_tid if side == "client" else t.server_tid for t in truths}
        for e in events:
            d = e[type_]
            assert (d["family"], d["saddr"], d["daddr"], d["error"]) == ("ipv4", "127.0.0.1", "127.0.0.1", 0), e
            assert (e["tid"], e["ppid"], e["uid"], e["comm"]) in {
                (tid, os.getppid(), os.getuid(), own_comm()) for tid in tids}, e
            if side == "server":
                assert d["sport"] == server_port and e.get("count", 1) == 1
            else:
                assert d["dport"] == server_port
            if collector.path == "semantic":   # this process, as /proc tells it
                assert e["context"]["cgroup_path"] == own_cgroup()[0], e
                assert (e["process"]["executable"], e["process"]["user"]) == (
                    os.readlink("/proc/self/exe"), pwd.getpwuid(os.getuid()).pw_name), e
                assert e["process"]["ancestors"][0] == os.getppid(), e

    # the connects: one result, each handshake within the test's stamps around its connect()
    connects = of_type("tcp_connect", "client")
    assert {e["tcp_connect"]["result"] for e in connects} == {"ok"}
    for e in connects:
        if e.get("count", 1) == 1:
            t = clients[e["tcp_connect"]["sport"]]
            within(e["tcp_connect"]["duration_ns"], 0, t.t["connected"] - t.t["connect"],
                   CLOCK_TOLERANCE_NS, "the handshake")
    if collector.path == "raw":
        assert sorted(e["tcp_connect"]["sport"] for e in connects) == sorted(clients)

    accepts = of_type("tcp_accept", "server")
    assert sorted(e["tcp_accept"]["dport"] for e in accepts) == sorted(clients)

    # the closes: payload bytes, ports, lifetimes and times, exact per connection and per
    # destination; on the semantic path, the client's side may be collapsed
    client_closes = of_type("tcp_close", "client")
    if collector.path == "raw":
        assert all(e.get("count", 1) == 1 for e in client_closes), "the raw path collapsed"
    check_side(client_closes, truths, "client", f"{collector.path}: the client's closes")
    check_side(of_type("tcp_close", "server"), truths, "server", f"{collector.path}: the server's closes")


def test_a_burst_of_connections_keeps_its_sums(collector):
    """50 connections from this process to one listener, read by the collector in one round
    (it is stopped while they happen, as a busy collector would be): on the semantic path the
    client's connects and closes collapse, and the sums per destination stay exact."""
    n = 50
    truths = [Truth(1 + 1009 * i, 2 + 4001 * i, hold_ns=0, ending=("client closes", "server closes")[i % 2])
              for i in range(n)]
    collector.proc.send_signal(signal.SIGSTOP)
    try:
        with socket.create_server(("127.0.0.1", 0), backlog=n) as listener:
            for truth in truths:
                connection(listener, truth)
    finally:
        collector.proc.send_signal(signal.SIGCONT)
    wait_closed(collector, truths)

    def of_type(type_, side):
        return side_events(collector, type_, side, truths)

    wait_until(lambda: count(of_type("tcp_connect", "client")) >= n, what=f"{n} connects")
    connects = of_type("tcp_connect", "client")
    assert count(connects) == n and {e["tcp_connect"]["result"] for e in connects} == {"ok"}
    client_closes = of_type("tcp_close", "client")
    if collector.path == "raw":
        assert all(e.get("count", 1) == 1 for e in client_closes + connects), "the raw path collapsed"
    else:
        assert any(e.get("count", 1) > 1 for e in client_closes), "nothing collapsed: the test proves nothing"
    check_side(client_closes, truths, "client", f"{collector.path}: the client's closes")
    check_side(of_type("tcp_close", "server"), truths, "server", f"{collector.path}: the server's closes")
    # the connects stand for every client port, each handshake within its connect()
    parts = as_parts(connects, f"{collector.path}: the connects")
    assert all(p["sent"] == p["received"] == 0 for p in parts), parts
    for t in truths:
        assert any(p["sport_min"] <= t.client_port <= p["sport_max"] for p in parts), (t.client_port, parts)
    within(max(p["dmax"] for p in parts), 0, max(t.t["connected"] - t.t["connect"] for t in truths),
           CLOCK_TOLERANCE_NS, "the longest handshake")


def closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]   # bound, never listening, then closed: connects are refused


def failed_connect(port, syn_retries=None):
    """connect() to 127.0.0.1:port, which must fail; returns (errno, the port it had, monotonic
    and wall stamps before and after)."""
    with socket.socket() as s:
        if syn_retries is not None:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_SYNCNT, syn_retries)
        s.settimeout(30)    # the kernel gives up first: this bounds the test, not the connect
        before = time.monotonic_ns(), time.time_ns()
        try:
            s.connect(("127.0.0.1", port))
        except OSError as e:
            after = time.monotonic_ns(), time.time_ns()
            return e.errno, s.getsockname()[1], before, after
    pytest.fail(f"connect to 127.0.0.1:{port} succeeded")


def check_failed_connect(collector, port, result, error, sport, before, after, shortest):
    me = os.getpid()
    failed = collector.wait_for(lambda e: e["type"] == "tcp_connect" and e["pid"] == me
                                and e["tcp_connect"]["dport"] == port
                                and e["tcp_connect"]["result"] != "ok", what=f"the {result} connect")
    assert len(failed) == 1 and failed[0].get("count", 1) == 1, failed
    e = failed[0]
    assert (e["tid"], e["ppid"], e["comm"]) == (threading.get_native_id(), os.getppid(), own_comm())
    d = e["tcp_connect"]
    assert (d["result"], d["error"], d["family"], d["saddr"], d["daddr"], d["passive"]) == (
        result, error, "ipv4", "127.0.0.1", "127.0.0.1", False), d
    assert d["sport"] == sport
    within(d["duration_ns"], shortest, after[0] - before[0], CLOCK_TOLERANCE_NS, f"the {result} connect")
    within(e["timestamp_ns"], before[1], after[1], WALL_TOLERANCE_NS, f"the {result} connect's time")
    # a connection that never was has no close
    assert not [e for e in collector.events() if e["type"] == "tcp_close" and e["pid"] == me
                and e["tcp_close"]["dport"] == port and e["tcp_close"]["sport"] == d["sport"]]


def test_refused_connect(collector):
    port = closed_port()
    error, sport, before, after = failed_connect(port)
    assert error == ECONNREFUSED
    check_failed_connect(collector, port, "refused", ECONNREFUSED, sport, before, after, 0)


def test_timed_out_connect(collector):
    # A listener whose accept queue is full drops new SYNs unanswered (tcp_conn_request's
    # "listen overflow"), so a connect to it times out: on 127.0.0.1, with no firewall rule, and
    # no packet leaving the machine. With one SYN retransmission the kernel gives up after the
    # initial RTO (1 s) and one backoff (2 s), less a few jiffies of timer granularity.
    with socket.create_server(("127.0.0.1", 0), backlog=0) as listener:
        port = listener.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)):     # the queue is full now
            error, sport, before, after = failed_connect(port, syn_retries=1)
    assert error == ETIMEDOUT
    check_failed_connect(collector, port, "timed_out", ETIMEDOUT, sport, before, after, 2_950_000_000)


def test_reset_connection(collector):
    # The handshake completes, so the connect succeeds; then the listener's side resets the
    # connection (SO_LINGER 0). The client's close says ECONNRESET, with the bytes before it.
    me = os.getpid()
    with socket.create_server(("127.0.0.1", 0)) as listener:
        truth = Truth(5000, 7, hold_ns=0, ending="reset")
        connection(listener, truth)
    assert truth.client_error == ECONNRESET
    wait_closed(collector, [truth])
    closes = closes_of(collector, [truth])
    assert len(closes) == 2, closes
    for e in closes:
        side = "server" if e["tcp_close"]["passive"] else "client"
        d = e["tcp_close"]
        assert (d["error"], d["bytes_sent"], d["bytes_received"], d["sport"]) == (
            ECONNRESET if side == "client" else 0, truth.sent(side), truth.received(side),
            truth.port(side)), (side, e)
        within(d["duration_ns"], *truth.lifetime(side), CLOCK_TOLERANCE_NS, f"the {side}'s lifetime")
    connects = [e for e in collector.events() if e["type"] == "tcp_connect" and e["pid"] == me
                and e["tcp_connect"]["dport"] == truth.server_port]
    assert [(e["tcp_connect"]["result"], e["tcp_connect"]["sport"]) for e in connects] == [
        ("ok", truth.client_port)]


# -- OOM ------------------------------------------------------------------------------------

def test_oom_victim_and_its_memory_cgroup(collector, memory_cgroup):
    me = os.getpid()
    # the shell moves itself into the limited cgroup, then becomes the process that runs out
    pid = spawn(["/bin/sh", "-c", f'echo $$ > {memory_cgroup}/cgroup.procs && exec "$0" -I -c '
                 '"b = bytearray(256 << 20)"', sys.executable])
    status = reap(pid)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    name = os.path.basename(memory_cgroup)
    ooms = collector.wait_for(lambda e: e["type"] == "oom_kill" and e["oom_kill"]["memcg_name"] == name,
                              what="the OOM kill")
    assert len(ooms) == 1, ooms
    oom = ooms[0]
    assert (oom["pid"], oom["tid"], oom["ppid"], oom["comm"]) == (pid, pid, me, PYTHON_COMM)
    d = oom["oom_kill"]
    assert d["memcg_id"] == os.stat(memory_cgroup).st_ino   # the kernfs id is the inode number
    assert d["memcg_limit_bytes"] == 32 << 20
    assert (d["trigger_pid"], d["trigger_comm"]) == (pid, PYTHON_COMM)   # it ran into the limit itself
    # the charge that failed was at most one huge page
    within(d["memcg_usage_bytes"], d["memcg_limit_bytes"] - (2 << 20), d["memcg_limit_bytes"], 0,
           "the memory cgroup's usage")
    assert d["total_vm_bytes"] >= 256 << 20            # the bytearray's mapping
    assert 0 < d["rss_bytes"] <= d["total_vm_bytes"]
    exits = collector.wait_for(lambda e: e["type"] == "exit" and e["pid"] == pid, what="the victim's exit")
    assert len(exits) == 1 and exits[0]["exit"]["signal"] == signal.SIGKILL
    assert exits[0]["timestamp_ns"] >= oom["timestamp_ns"]
