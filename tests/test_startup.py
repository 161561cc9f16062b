"""Start stays fast: from exec of `tapio-collector` to its first kernel event stored by a running
server, and what the collector imports to get there."""
import os
import statistics
import subprocess
import time

from tests.helpers import BIN, ManagedProcess, ServerProcess, StreamingCollector, require_ebpf, wait_until

# What a node's collector runs with: eBPF, one server, no Kubernetes API (no cluster here), no
# HTTP surface (its port would collide between tests).
FLAGS = ["--enable-k8s=false", "--flush-interval", "1s", "--http-port", "0"]

# 0.85 s (median) on an idle 2-core machine, 1.5-2.2 s on the same machine at a load average of 10.
# The bound leaves room for such load and still fails when start-up grows by a second or more.
BOUND_S = 3.0
RUNS = 3


def _time_to_first_event(tmp_path, server, n):
    """Seconds from exec of the collector to the first event of its in the server's archive."""
    collector_id = f"startup-{n}"
    trigger = None
    started = time.monotonic()
    collector = StreamingCollector(tmp_path, server.address, [*FLAGS, "--collector-id", collector_id],
                                   name=f"collector-{n}")
    try:
        def stored():
            nonlocal trigger
            # something for the kernel to report once the probes are in: one exec per poll
            if trigger is None or trigger.poll() is not None:
                trigger = subprocess.Popen(["/bin/true"])
            for event in server.events():
                if event.get("collector_id", collector_id) == collector_id and event.get("type"):
                    return time.monotonic()
            if collector.proc.poll() is not None:
                raise AssertionError(f"collector exited:\n{collector.log()}")
            return None
        ended = wait_until(stored, timeout=30, interval=0.01, what="the first event at the server")
    finally:
        assert collector.stop() == 0, collector.log()
        if trigger is not None:
            trigger.wait(5)
    return ended - started


def test_exec_to_first_stored_event_stays_fast(tmp_path):
    require_ebpf()
    times = []
    for n in range(RUNS):
        # a fresh archive per run: the first line in it is this run's
        server = ServerProcess(tmp_path, name=f"server-{n}").wait_listening()
        try:
            times.append(_time_to_first_event(tmp_path, server, n))
        finally:
            assert server.stop() == 0, server.log()
    median = statistics.median(times)
    print(f"exec to first stored event: median {median:.2f} s of {[round(t, 2) for t in times]}")
    assert median < BOUND_S, f"start took {times} s (median {median:.2f} s, bound {BOUND_S} s)"


def _imports(log):
    """{module: cumulative import microseconds} from `python -X importtime` lines."""
    out = {}
    for line in log.splitlines():
        if line.startswith("import time:") and "|" in line:
            _, cumulative, name = line[len("import time:"):].split("|")
            if cumulative.strip().isdigit():
                out[name.strip()] = int(cumulative)
    return out


def test_collector_imports_only_what_its_flags_need(tmp_path):
    """The real collector, eBPF to a server with no HTTP and no Kubernetes, under
    `python -X importtime`: nothing of the HTTP stack, the Kubernetes client or the server's side
    is loaded."""
    require_ebpf()
    server = ServerProcess(tmp_path).wait_listening()
    collector = ManagedProcess([os.path.join(BIN, "python"), "-X", "importtime",
                                os.path.join(BIN, "tapio-collector"), "--enable-ebpf", "--server",
                                server.address, "--metrics-interval", "0", *FLAGS],
                               str(tmp_path / "collector.log"))
    try:
        collector.wait_log(f"Connected to Tapio server at {server.address}")
    finally:
        assert collector.stop() == 0, collector.log()
        assert server.stop() == 0, server.log()
    imported = _imports(collector.log())
    assert "tapio.collector.app" in imported, collector.log()[-2000:]
    top = sorted(((us, name) for name, us in imported.items() if "." not in name), reverse=True)[:8]
    print("slowest top-level imports (ms):", ", ".join(f"{n} {us / 1000:.0f}" for us, n in top))
    for heavy in ("hypercorn", "kubernetes", "tapio.server", "tapio.http", "opentelemetry", "sqlite3"):
        assert not any(m == heavy or m.startswith(heavy + ".") for m in imported), \
            f"{heavy} is imported by a collector that does not need it"
