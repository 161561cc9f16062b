"""Shared fixtures: real processes, bounded waits, and the eBPF privilege rule.

Kernel tests need root (or CAP_BPF+CAP_PERFMON). Without it they skip, unless
TAPIO_REQUIRE_EBPF=1 (set by .ci/run), where they fail: CI must never pass by skipping them.
"""

import pytest

from tests.helpers import require_ebpf


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
