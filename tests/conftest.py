"""Shared fixtures: real processes, bounded waits, and the eBPF privilege rule.

Kernel tests need root (or CAP_BPF+CAP_PERFMON). Without it they skip, unless
TAPIO_REQUIRE_EBPF=1 (set by .ci/run), where they fail: CI must never pass by skipping them.
"""

import os
import uuid

import pytest

from tests.helpers import require_ebpf, wait_until


@pytest.fixture
def ebpf():
    """Marks a test as needing real eBPF: skips (or fails under TAPIO_REQUIRE_EBPF=1) without it."""
    require_ebpf()


@pytest.fixture
def collector_output(ebpf, tmp_path):
    """Start `tapio-collector --enable-ebpf --output FILE`; returns a factory taking extra flags."""
    from tests.helpers import CollectorProcess

    started = []

    def start(*flags, env=None):
        proc = CollectorProcess(tmp_path / f"events-{len(started)}.jsonl", flags, env=env)
        started.append(proc)
        proc.wait_attached()
        return proc

    yield start
    for proc in started:
        proc.stop()


@pytest.fixture
def memory_cgroup():
    """A child of the cgroup v1 memory controller limited to 32 MiB, removed afterwards: a
    process that allocates past the limit there is OOM-killed for real."""
    if not os.path.isdir("/sys/fs/cgroup/memory"):
        pytest.fail("no cgroup v1 memory controller at /sys/fs/cgroup/memory")
    path = f"/sys/fs/cgroup/memory/tapio-test-{uuid.uuid4().hex[:8]}"
    os.mkdir(path)
    with open(f"{path}/memory.limit_in_bytes", "w") as f:
        f.write(str(32 << 20))
    try:
        yield path
    finally:
        def empty():
            with open(f"{path}/cgroup.procs") as f:
                return not f.read().strip()
        wait_until(empty, 10, what="the memory cgroup to empty")
        os.rmdir(path)
