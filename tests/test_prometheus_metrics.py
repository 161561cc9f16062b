"""The pieces /metrics is built from: the kernel ring buffer's fill (read from its control pages),
send-latency histogram buckets, and exposition through prometheus_client (text and OpenMetrics)."""
import math
import subprocess

from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text

from tapio._fast.arena import EventArena
from tapio._fast.kernel import KernelProbes
from tapio.collector.connection import LatencyWindow
from tapio.http.metrics import Families, metrics_response, new_registry
from tests.helpers import wait_until


def test_ring_buffer_fill_follows_the_kernel_and_the_reader(ebpf):
    probes = KernelProbes.start(event_types=["exec", "exit"], ring_buffer_bytes=1 << 20)
    try:
        assert probes.ring_buffer_used() == 0
        for _ in range(10):
            subprocess.run(["/bin/true"], check=True)
        used = wait_until(probes.ring_buffer_used, 10, what="records in the ring buffer")
        assert 0 < used < 1 << 20
        arena = EventArena(4096)
        moved = probes.consume(arena)
        assert moved >= 20                     # ten execs and ten exits at least
        assert probes.ring_buffer_used() == 0  # read: the consumer caught up with the producer
    finally:
        probes.close()


def test_latency_buckets_are_cumulative_and_end_with_every_ack():
    window = LatencyWindow(size=4)
    for seconds in (0.0003, 0.0005, 0.004, 0.2, 0.2, 30.0):
        window.add(seconds)
    buckets = dict(window.cumulative_buckets())
    assert buckets[0.0005] == 2            # le: at or below the bound
    assert buckets[0.005] == 3
    assert buckets[0.25] == 5
    assert buckets[10.0] == 5 and buckets[math.inf] == 6
    counts = [count for _, count in window.cumulative_buckets()]
    assert counts == sorted(counts)
    assert len(window.samples) == 4        # the p50/p99 window stays bounded; the buckets do not


class _Fixed:
    """A custom collector as the programs register one: families built at collect() time."""

    def __init__(self):
        self.calls = 0

    def describe(self):
        return []

    def collect(self):
        self.calls += 1
        f = Families()
        f.info("tapio_build", "build", {"program": "test", "version": "1"})
        f.counter("tapio_things_total", "things", ("kind",))
        f.add("tapio_things_total", 3, "a")
        f.add("tapio_things_total", None, "b")      # unknown: left out, not 0
        f.gauge("tapio_level_ratio", "level")
        f.add("tapio_level_ratio", 0.25)
        f.histogram("tapio_wait_seconds", "wait", ("who",))
        f.add_histogram("tapio_wait_seconds", [(0.1, 1), (1.0, 3), (math.inf, 4)], 2.5, "me")
        return f.done()


def test_families_expose_as_text_and_openmetrics():
    fixed = _Fixed()
    registry = new_registry(fixed)
    assert fixed.calls == 0                # nothing is collected before a scrape

    text = metrics_response(registry, "text/plain")
    assert text.content_type.startswith("text/plain; version=0.0.4")
    families = {f.name: f for f in parse_text(text.body.decode())}
    assert [s.labels for s in families["tapio_things"].samples if s.name == "tapio_things_total"] == [{"kind": "a"}]
    wait = {(s.name, s.labels.get("le")): s.value for s in families["tapio_wait_seconds"].samples}
    assert wait[("tapio_wait_seconds_bucket", "+Inf")] == 4 and wait[("tapio_wait_seconds_sum", None)] == 2.5
    assert "process_cpu_seconds" in families and "process_resident_memory_bytes" in families

    om = metrics_response(registry, "application/openmetrics-text;version=1.0.0,text/plain;q=0.5")
    assert om.content_type.startswith("application/openmetrics-text")
    families = {f.name: f for f in parse_openmetrics(om.body.decode())}
    assert families["tapio_build"].type == "info"
    assert families["tapio_wait_seconds"].type == "histogram"
    assert fixed.calls == 2
