"""The collector's hard memory cap (--memory-limit): under a flood with its server gone, inside a
real cgroup v1 memory limit, it is never OOM-killed, and every event it sheds is counted."""
import os
import re
import signal
import subprocess
import sys
import uuid

import pytest

from tapio.collector.delivery import DeliveryBuffer
from tapio.collector.memory import MemoryGuard
from tests.helpers import BIN, ServerProcess, wait_until

MiB = 1 << 20


def test_the_guard_sheds_the_oldest_batches_when_memory_is_high_and_grows_back_when_low():
    buffer = DeliveryBuffer(64 * MiB)
    for i in range(1, 41):
        buffer.add(i, b"x" * MiB, events=100)
    rss = [120 * MiB]
    guard = MemoryGuard(100 * MiB, buffer, read_rss=lambda: rss[0])
    guard.check()                         # 30 MiB over the high mark (90 MiB)
    assert buffer.bytes <= 40 * MiB - 30 * MiB
    assert buffer.dropped_events == guard.shed_events > 0
    assert min(p.batch_id for p in buffer.items()) > 1          # the oldest went first
    assert buffer.added_events == (buffer.delivered_events + buffer.dropped_events
                                   + buffer.undelivered_events())
    shrunk = buffer.max_bytes
    rss[0] = 50 * MiB                     # under the low mark: the bound grows back, to --max-memory
    for _ in range(40):
        guard.check()
    assert shrunk < buffer.max_bytes == 64 * MiB


@pytest.fixture
def memory_cgroup_of():
    """A child of the cgroup v1 memory controller with a given limit, removed afterwards."""
    if not os.path.isdir("/sys/fs/cgroup/memory"):
        pytest.fail("no cgroup v1 memory controller at /sys/fs/cgroup/memory")
    made = []

    def make(limit):
        path = f"/sys/fs/cgroup/memory/tapio-test-{uuid.uuid4().hex[:8]}"
        os.mkdir(path)
        made.append(path)
        with open(f"{path}/memory.limit_in_bytes", "w") as f:
            f.write(str(limit))
        return path
    yield make
    for path in made:
        def empty():
            with open(f"{path}/cgroup.procs") as f:
                return not f.read().strip()
        wait_until(empty, 10, what="the memory cgroup to empty")
        os.rmdir(path)


def _oom_kills(path):
    with open(f"{path}/memory.oom_control") as f:
        m = re.search(r"^oom_kill (\d+)", f.read(), re.M)
    return int(m.group(1)) if m else 0


def test_a_flood_with_the_server_gone_stays_under_the_limit_and_counts_its_drops(tmp_path, memory_cgroup_of):
    if os.geteuid() != 0:
        pytest.skip("needs root to make a memory cgroup")
    limit = 96 * MiB
    # the cgroup's own limit: --memory-limit plus the kernel's share (page tables, socket buffers)
    cgroup = memory_cgroup_of(limit + 24 * MiB)
    server = ServerProcess(tmp_path).wait_listening()
    log_path = tmp_path / "collector.log"
    # the send buffer may hold 1 GiB: only the memory cap keeps it in the cgroup
    argv = [os.path.join(BIN, "tapio-collector"), "--source", "synthetic", "--rate", "300000",
            "--server", server.address, "--max-memory", "1GiB", "--memory-limit", str(limit),
            "--metrics-interval", "0", "--http-port", "0", "--enable-systemd=false",
            "--shutdown-timeout", "1s", "--backoff-max", "1s"]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(["sh", "-c", f'echo $$ > {cgroup}/cgroup.procs && exec "$@"', "sh", *argv],
                                stdout=subprocess.DEVNULL, stderr=log)
    try:
        wait_until(lambda: "Connected to Tapio server" in log_path.read_text() or proc.poll() is not None,
                   30, what="the collector to connect")
        server.stop()                          # the outage: nothing is acked from here on
        wait_until(lambda: "sheds its oldest batches" in log_path.read_text() or proc.poll() is not None,
                   60, what="the memory cap to act")
        # a bounded outage under the flood, the cap holding all along
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(10)
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        server.stop()
    text = log_path.read_text()
    assert proc.returncode == 0, text[-3000:]
    assert _oom_kills(cgroup) == 0
    with open(f"{cgroup}/memory.max_usage_in_bytes") as f:
        peak = int(f.read())
    m = re.search(r"(\d+) events seen.*?(\d+) dropped from the send buffer", text)
    assert m and int(m.group(2)) > 0, text[-3000:]
    assert "the ledger closes" in text, text[-3000:]
    m2 = re.search(r"peak resident memory (\d+) MiB", text)
    assert m2 and int(m2.group(1)) * MiB <= limit, text[-3000:]
    print(f"cgroup peak {peak / MiB:.0f} MiB; {m2.group(0)}; {m.group(0)}", file=sys.stderr)
