"""The collector's ledger closes: on SIGINT during a burst, every event it saw is in exactly one
count (delivered, filtered, collapsed, dropped in the kernel / processor / send buffer, or not
delivered at exit), checked against what the server stored; and a collector leaves within its
shutdown timeout whatever the load.

The collectors run the synthetic source on the raw path: event n is `ebpf-<n>`, so the test
knows every event the collector read (ebpf-1 .. ebpf-<seen - dropped_kernel>) and which of them
the server has."""
import collections
import os
import re
import signal
import subprocess
import time

import pytest

from tapio.collector.spool import HEADER
from tests.helpers import (BIN, ManagedProcess, ServerProcess, free_port, http_get, http_json,
                           read_json_lines, wait_until)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FATES = ("delivered", "filtered", "collapsed", "dropped_kernel", "dropped_processor",
         "dropped_buffer", "throttled", "undelivered")
_SUMMARY = {
    "seen": r"(\d+) events seen", "dropped_kernel": r"(\d+) dropped in the kernel",
    "filtered": r"(\d+) filtered", "collapsed": r"(\d+) collapsed into repeats",
    "delivered": r"(\d+) delivered", "dropped_buffer": r"(\d+) dropped from the send buffer",
    "dropped_processor": r"(\d+) dropped by the processor",
    "throttled": r"(\d+) held back by the cgroup budget",
    "undelivered": r"(\d+) not delivered at exit",
}


def ledger_of(log):
    """The counts of the collector's exit summary (a missing one fails the test)."""
    lines = [line for line in log.splitlines() if "events seen" in line]
    assert lines, f"no exit summary in the collector's log:\n{log[-3000:]}"
    line = lines[-1]
    counts = {}
    for name, pattern in _SUMMARY.items():
        m = re.search(pattern, line)
        assert m, f"the exit summary does not say {name}: {line}"
        counts[name] = int(m.group(1))
    return counts, line


def assert_every_event_in_one_count(counts, line, server_ids, acks_outstanding=False):
    """Each event the collector read is at the server exactly once, or counted as not there.
    acks_outstanding: the collector left before the server had answered for every batch it
    sent; those batches count as not delivered, and the server may still have stored them."""
    assert counts["seen"] == sum(counts[f] for f in FATES), f"the ledger does not close: {line}"
    assert "the ledger closes" in line, line
    read = counts["seen"] - counts["dropped_kernel"]
    ids = collections.Counter(server_ids)
    twice = [i for i, n in ids.items() if n > 1]
    assert not twice, f"{len(twice)} events stored twice, e.g. {twice[:5]}"
    numbers = {int(i[len("ebpf-"):]) for i in ids}
    assert numbers <= set(range(1, read + 1)), "the server has events the collector never read"
    assert counts["filtered"] == counts["collapsed"] == 0, "the raw path neither filters nor collapses"
    missing = read - len(numbers)
    if acks_outstanding:
        assert counts["delivered"] <= len(numbers) <= counts["delivered"] + counts["undelivered"], line
        assert counts["dropped_buffer"] + counts["undelivered"] >= missing, line
    else:
        assert counts["delivered"] == len(numbers), line
        assert counts["dropped_buffer"] + counts["undelivered"] == missing, line


def collector_argv(server, *flags):
    return [os.path.join(BIN, "tapio-collector"), "--source", "synthetic", "--server", server,
            "--correlation", "raw", "--flush-interval", "20ms", "--backoff-initial", "100ms",
            "--backoff-max", "500ms", "--connect-timeout", "1s", "--metrics-interval", "0",
            "--http-port", "0", *flags]


def test_ctrl_c_under_run_local_stops_the_collector_before_the_server(tmp_path):
    """`./build.sh run` and Ctrl-C: the terminal sends SIGINT to the whole foreground process
    group. The collector must still deliver its last batches: the server leaves after it."""
    run = tmp_path / "run"
    env = {**os.environ, "TAPIO_RUN_DIR": str(run), "TAPIO_GRPC_PORT": str(free_port()),
           "TAPIO_HTTP_PORT": str(free_port()), "TAPIO_COLLECTOR_HTTP_PORT": str(free_port()),
           "TAPIO_SOURCE": "synthetic", "TAPIO_RATE": "30000", "TAPIO_CORRELATION": "raw",
           "TAPIO_METRICS_INTERVAL": "0", "TAPIO_FLUSH_INTERVAL": "20ms"}
    script = subprocess.Popen(["bash", os.path.join(ROOT, "scripts", "run-local.sh")], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              start_new_session=True)
    stderr = b""
    try:
        wait_until(lambda: len(read_json_lines(run / "events.jsonl")) >= 20_000, 60,
                   what="a burst of events at the server")
        os.killpg(script.pid, signal.SIGINT)            # what the terminal's Ctrl-C does
        _, stderr = script.communicate(timeout=60)
    finally:
        if script.poll() is None:
            # the server and the collector run in sessions of their own: kill those too
            with open(f"/proc/{script.pid}/task/{script.pid}/children") as f:
                children = [int(pid) for pid in f.read().split()]
            os.killpg(script.pid, signal.SIGKILL)
            for pid in children:
                try:
                    os.killpg(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            script.communicate(timeout=10)
        script.stderr.close()
    collector_log = (run / "collector.log").read_text()
    server_log = (run / "server.log").read_text()
    counts, line = ledger_of(collector_log)
    assert counts["undelivered"] == 0, f"the server left before the collector had delivered: {line}"
    assert counts["dropped_buffer"] == 0, line
    assert "without flushing" not in collector_log, "the collector was signalled twice"
    assert_every_event_in_one_count(counts, line, [e["id"] for e in read_json_lines(run / "events.jsonl")])
    # the collector was gone before the server began to drain
    gone = server_log.index("disconnected")
    assert gone < server_log.index(": draining"), server_log[-2000:]
    assert "Stopped after" in server_log
    assert "events seen" in stderr.decode(), "the summary is shown in the terminal"


def test_sigint_under_a_flood_leaves_within_the_shutdown_timeout(tmp_path):
    """A 1M events/s flood: the collector detaches, flushes what it holds, waits for acks at
    most --shutdown-timeout, and exits with every event counted."""
    server = ServerProcess(tmp_path).wait_listening()
    col = ManagedProcess(collector_argv(server.address, "--rate", "1000000", "--shutdown-timeout", "3s",
                                        "--batch-size", "1000"),
                         str(tmp_path / "collector.log"))
    try:
        wait_until(lambda: len(server.events()) >= 50_000, 60, what="the flood to reach the server")
        col.proc.send_signal(signal.SIGINT)
        started = time.monotonic()
        try:
            col.proc.wait(3 + 2)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the collector still runs {time.monotonic() - started:.0f}s after SIGINT "
                        f"(shutdown timeout 3s):\n{col.log()[-2000:]}")
        assert col.proc.returncode == 0, col.log()[-2000:]
    finally:
        col.stop()
        server.stop()
    counts, line = ledger_of(col.log())
    # the server is slower than the flood: batches it was still working on at the collector's
    # exit are counted as not delivered (the collector cannot know), and may be stored
    assert_every_event_in_one_count(counts, line, [e["id"] for e in server.events()],
                                    acks_outstanding=True)


def spooled_events(spool):
    """Events in the records of every spool segment that acked.log does not list."""
    acked = set()
    path = spool / "acked.log"
    if path.exists():
        data = path.read_bytes()
        acked = {int.from_bytes(data[i:i + 8], "little") for i in range(0, len(data) - 7, 8)}
    total = 0
    for name in os.listdir(spool):
        if not name.endswith(".seg"):
            continue
        data, pos = (spool / name).read_bytes(), 0
        while pos < len(data):
            _, batch_id, events, length, _ = HEADER.unpack_from(data, pos)
            pos += HEADER.size + length
            if batch_id not in acked:
                total += events
    return total


def test_sigint_with_a_stopped_server_counts_and_spools_the_undelivered(tmp_path):
    """The server goes first: what the collector could not deliver is counted as such, kept in
    its spool, and the collector still leaves within its shutdown timeout."""
    server = ServerProcess(tmp_path).wait_listening()
    spool = tmp_path / "spool"
    col = ManagedProcess(collector_argv(server.address, "--rate", "50000", "--shutdown-timeout", "2s",
                                        "--spool-dir", str(spool)),
                         str(tmp_path / "collector.log"))
    try:
        wait_until(lambda: len(server.events()) >= 10_000, 60, what="a burst at the server")
        assert server.stop(signal.SIGTERM) == 0, server.log()[-2000:]
        col.wait_log("Failed to connect", timeout=20)       # the burst goes on without a server
        col.proc.send_signal(signal.SIGINT)
        try:
            col.proc.wait(2 + 2)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the collector still runs after SIGINT:\n{col.log()[-2000:]}")
        assert col.proc.returncode == 0, col.log()[-2000:]
    finally:
        col.stop()
        server.stop()
    counts, line = ledger_of(col.log())
    assert counts["undelivered"] > 0, line
    assert "(kept in the spool)" in line, line
    assert_every_event_in_one_count(counts, line, [e["id"] for e in server.events()])
    assert spooled_events(spool) == counts["undelivered"], "every undelivered event is in the spool"


def test_the_server_sees_the_gaps_and_the_ledger_of_each_collector(tmp_path):
    """A slow server and a small send buffer: the collector drops whole batches, and the server
    finds each dropped range as a gap in the collector's sequence, exactly; it shows the
    collector's ledger in /api/v1/collectors and /metrics."""
    server = ServerProcess(tmp_path, ["--debug-batch-delay", "40ms", "--ingest-queue", "8"],
                           http=True).wait_listening()
    total = 60_000
    # rounds of up to 5000 events (~0.5 MB) into a 1 MiB send buffer: a round that comes while
    # the buffer is 3/4 full pushes older batches out
    col = ManagedProcess(collector_argv(server.address, "--rate", "50000", "--count", str(total),
                                        "--batch-size", "500", "--max-memory", "1MiB",
                                        "--flush-interval", "200ms", "--ring-buffer-size", "4MiB",
                                        "--shutdown-timeout", "30s", "--collector-id", "gappy"),
                         str(tmp_path / "collector.log"))
    try:
        assert col.proc.wait(90) == 0, col.log()[-2000:]
        status, body = http_json(server.http_url + "/api/v1/collectors")
        _, _, metrics = http_get(server.http_url + "/metrics")
    finally:
        col.stop()
        server.stop()
    counts, line = ledger_of(col.log())
    assert_every_event_in_one_count(counts, line, [e["id"] for e in server.events()])
    assert counts["dropped_buffer"] > 0 and counts["undelivered"] == 0, line
    (collector,) = [c for c in body["collectors"] if c["id"] == "gappy"]
    ledger = collector["ledger"]
    reported = ledger["reported"]
    assert reported["seen"] == counts["seen"] == total, (reported, line)
    assert reported["dropped_kernel"] == counts["dropped_kernel"], (reported, line)
    assert ledger["missing_events"] == counts["dropped_buffer"], (ledger, line)
    assert ledger["gaps"] >= 1 and ledger["highest_seq"] == total - counts["dropped_kernel"]
    text = metrics.decode()
    assert f'tapio_collector_missing_events_total{{collector="gappy"}} {float(counts["dropped_buffer"])}' in text
    assert f'tapio_collector_ledger_events{{collector="gappy",fate="seen"}} {float(total)}' in text
