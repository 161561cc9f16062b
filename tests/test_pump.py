"""The pump on trio's fake clock: adaptive batching (at once when the sink is idle, by size or
flush interval when it is busy), backpressure, a bounded drain on stop whatever the load, and
the ledger's counts. The source is the real synthetic one (it follows trio's clock), the
processor and codec are the real ones; the sink records what it is given."""
import pytest
import trio
import trio.testing

from tapio._fast.codec import BatchEncoder, DecodedBatch
from tapio.collector.ledger import Ledger
from tapio.collector.processor import PATH_RAW, PATH_SEMANTIC, DualPathProcessor, ProcessorConfig
from tapio.collector.pump import Pump
from tapio.collector.synthetic_source import SyntheticSource


class RecordingSink:
    """Keeps every batch with the fake clock's time; idle and congested as the test sets them."""

    def __init__(self):
        self.batches = []          # (time, batch_id, DecodedBatch, events counted, priority)
        self.is_idle = True
        self.is_congested = False
        self.on_submit = None

    def idle(self):
        return self.is_idle

    def congested(self):
        return self.is_congested

    def take_buffer_drops(self):
        return 0

    async def submit(self, batch_id, data, events, priority=False):
        self.batches.append((trio.current_time(), batch_id, DecodedBatch.parse(data), events, priority))
        if self.on_submit is not None:
            self.on_submit()

    def ledger(self, open_events=True):
        return {"delivered": sum(b[3] for b in self.batches), "dropped_buffer": 0, "undelivered": 0}

    def ids(self):
        return [b[2].event_id(i) for b in self.batches for i in range(len(b[2]))]


def make_pump(source, sink=None, path="raw", buffer_size=1000, flush_interval=0.5, batch_size=100,
              read_interval=0.001):
    config = ProcessorConfig(enable_raw_path=path in ("raw", "both"),
                             enable_semantic_path=path in ("semantic", "both"),
                             batch_size=batch_size, semantic_batch_size=batch_size,
                             raw_buffer_size=buffer_size, semantic_buffer_size=buffer_size)
    processor = DualPathProcessor(config)
    sink = sink or RecordingSink()
    pump = Pump(source, sink, BatchEncoder("c1", "n1", 0), processor, buffer_size, flush_interval,
                first_batch_id=1, read_interval=read_interval)
    return pump, sink, processor


async def run_for(pump, seconds):
    """Run the pump, stop it after `seconds` of fake time, and wait for its drain."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(pump.run)
        await trio.sleep(seconds)
        pump.stop()


def assert_ledger_closes(pump, processor, sink):
    totals = Ledger(pump, processor, sink).totals()
    assert totals.unaccounted == 0, totals.as_dict()
    return totals


async def test_an_idle_sink_gets_each_event_at_once(autojump_clock):
    pump, sink, processor = make_pump(SyntheticSource(rate=10), flush_interval=5.0)
    await run_for(pump, 1.05)
    # 10 events/s, every one sent within the read coalescing time, not after the flush interval
    assert len(sink.ids()) == 11
    assert all(len(b[2]) == 1 for b in sink.batches)
    starts = [b[0] for b in sink.batches]
    for n, t in enumerate(starts[:10]):
        assert t == pytest.approx(n / 10, abs=0.003)
    assert_ledger_closes(pump, processor, sink)


class PromisingSource(SyntheticSource):
    """The synthetic source, keeping what the pump promised it (what the kernel is told)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.promises = []          # (time, seconds): read again within seconds; 0: no promise

    def read_within(self, seconds):
        self.promises.append((trio.current_time(), seconds))


async def test_a_steady_flow_is_read_and_sent_once_per_read_interval(autojump_clock):
    source = PromisingSource(rate=10_000)
    pump, sink, processor = make_pump(source, flush_interval=5.0, read_interval=0.005)
    await run_for(pump, 1.0)
    # a batch per 5 ms of events, not one per event or per wake-up
    sizes = [len(b[2]) for b in sink.batches]
    assert 180 <= len(sizes) <= 210 and max(sizes[:-1]) <= 60
    starts = [b[0] for b in sink.batches]
    assert all(gap == pytest.approx(0.005, abs=0.001) for gap in
               (b - a for a, b in zip(starts[1:-2], starts[2:-1])))
    # each read promised the next one: the kernel had no reason to wake the reader
    assert [s for _, s in source.promises if s != 0.005] == []
    assert_ledger_closes(pump, processor, sink)


async def test_the_promise_is_withdrawn_before_the_pump_blocks(autojump_clock):
    source = PromisingSource(rate=10)
    pump, sink, processor = make_pump(source, flush_interval=5.0, read_interval=0.005)
    await run_for(pump, 1.05)
    # 100 ms between events: after each, one read a read interval later finds nothing, and the
    # promise is withdrawn before the pump waits to be woken
    withdrawn = [t for t, s in source.promises if s == 0]
    assert len(withdrawn) == len(sink.batches) == 11
    for t, batch in zip(withdrawn, sink.batches):
        assert t == pytest.approx(batch[0] + 0.005, abs=0.001)
    assert_ledger_closes(pump, processor, sink)


async def test_a_busy_sink_gets_batches_by_flush_interval(autojump_clock):
    sink = RecordingSink()
    sink.is_idle = False
    pump, sink, processor = make_pump(SyntheticSource(rate=100), sink, flush_interval=0.5)
    await run_for(pump, 2.2)
    gaps = [b[0] - a[0] for a, b in zip(sink.batches, sink.batches[1:])]
    assert gaps[:3] == [pytest.approx(0.5, abs=0.02)] * 3
    assert all(40 <= len(b[2]) <= 60 for b in sink.batches[:4])
    assert sink.ids() == [f"ebpf-{n}" for n in range(1, len(sink.ids()) + 1)]
    assert_ledger_closes(pump, processor, sink)


async def test_a_full_arena_goes_at_once_and_is_cut_into_batches(autojump_clock):
    sink = RecordingSink()
    sink.is_idle = False
    pump, sink, processor = make_pump(SyntheticSource(rate=100_000), sink, buffer_size=500,
                                      flush_interval=10.0, batch_size=100)
    await run_for(pump, 0.05)
    sizes = [len(b[2]) for b in sink.batches]
    assert sizes[:5] == [100] * 5 and len(sizes) >= 10      # rounds of 500, long before 10 s
    assert sink.batches[4][0] < 0.01
    assert_ledger_closes(pump, processor, sink)


async def test_wake_sends_what_waits_when_the_sink_becomes_idle(autojump_clock):
    sink = RecordingSink()
    sink.is_idle = False
    pump, sink, processor = make_pump(SyntheticSource(rate=10), sink, flush_interval=5.0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(pump.run)
        await trio.sleep(0.35)               # events 1..4 wait for the busy sink
        assert sink.batches == []
        sink.is_idle = True
        pump.wake()                          # the last ack came: go now
        await trio.sleep(0.01)
        assert [len(b[2]) for b in sink.batches] == [4]
        assert sink.batches[0][0] == pytest.approx(0.35, abs=0.005)
        pump.stop()


async def test_a_congested_sink_leaves_events_in_the_source_which_drops_and_counts(autojump_clock):
    sink = RecordingSink()
    pump, sink, processor = make_pump(SyntheticSource(rate=10_000, backlog=1000), sink)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(pump.run)
        await trio.sleep(0.1)
        sent = len(sink.ids())
        sink.is_congested = True
        await trio.sleep(1.0)
        assert len(sink.ids()) == sent, "nothing is read while the sink is congested"
        assert pump.stats.congested > 100
        sink.is_congested = False
        await trio.sleep(0.1)
        pump.stop()
    # ~10k events were offered while congested; the source held 1000 and dropped the rest
    totals = assert_ledger_closes(pump, processor, sink)
    assert 8_500 <= totals.dropped_kernel <= 9_500
    assert totals.seen == totals.delivered + totals.dropped_kernel


@pytest.mark.parametrize("rate", [0, 1_000_000])
async def test_stop_under_a_flood_drains_only_what_was_there(autojump_clock, rate):
    pump, sink, processor = make_pump(SyntheticSource(rate=rate, backlog=20_000), buffer_size=5000)
    ticks = []
    sink.on_submit = lambda: len(sink.batches) == 200 and (ticks.append(trio.current_time()), pump.stop())
    with trio.fail_after(2):       # fake seconds: a drain that follows the flood never returns
        await pump.run()
    assert ticks, "the flood reached the sink"
    # what the source held when it was detached, no more: at most its backlog
    assert len(sink.batches) * 100 - 200 * 100 <= 20_000
    totals = assert_ledger_closes(pump, processor, sink)
    assert totals.delivered == len(sink.ids()) == pump.stats.events > 0
    assert sink.ids()[-1] == f"ebpf-{pump.stats.events}"


async def test_a_bounded_source_ends_the_run_with_every_event_sent(autojump_clock):
    pump, sink, processor = make_pump(SyntheticSource(rate=5000, count=1234))
    with trio.fail_after(5):
        await pump.run()
    assert sink.ids() == [f"ebpf-{n}" for n in range(1, 1235)]
    assert_ledger_closes(pump, processor, sink).delivered == 1234


async def test_with_both_paths_the_ledger_counts_the_semantic_copy_once(autojump_clock):
    pump, sink, processor = make_pump(SyntheticSource(rate=2000, count=500), path="both")
    with trio.fail_after(5):
        await pump.run()
    raw = [b for b in sink.batches if b[2].path == PATH_RAW]
    semantic = [b for b in sink.batches if b[2].path == PATH_SEMANTIC]
    assert sum(len(b[2]) for b in raw) == 500
    assert all(b[3] == 0 for b in raw), "raw copies are not counted again"
    assert sum(b[3] for b in semantic) == sum(len(b[2]) for b in semantic)
    totals = assert_ledger_closes(pump, processor, sink)
    assert totals.seen == 500
    assert totals.delivered + totals.filtered + totals.collapsed == 500


async def test_configure_sets_the_batch_size_and_flush_interval(autojump_clock):
    sink = RecordingSink()
    sink.is_idle = False
    pump, sink, processor = make_pump(SyntheticSource(rate=1000), sink, flush_interval=5.0)
    pump.configure(batch_size=10, flush_interval=0.1)
    await run_for(pump, 0.55)
    assert max(len(b[2]) for b in sink.batches) == 10
    assert sink.batches[0][0] == pytest.approx(0.1, abs=0.01)


@pytest.mark.parametrize("path", ["raw", "semantic"])
async def test_the_ranges_of_the_batches_partition_the_sequence(autojump_clock, path):
    """Every event number is in the range of exactly one batch of the ledger's path (priority
    batches, sent ahead of the rest, carry none), and each batch carries the ledger so far."""
    pump, sink, processor = make_pump(SyntheticSource(rate=20_000, count=5000), path=path,
                                      buffer_size=700, batch_size=64)
    with trio.fail_after(5):
        await pump.run()
    covered = []
    seen = 0
    for _, _, batch, _, priority in sink.batches:
        if priority:
            assert (batch.first_seq, batch.last_seq) == (0, 0)
        else:
            assert batch.first_seq <= batch.last_seq
            covered.extend(range(batch.first_seq, batch.last_seq + 1))
            for i in range(len(batch)):
                assert batch.first_seq <= int(batch.event_id(i)[5:]) <= batch.last_seq
        assert batch.ledger["seen"] >= seen
        seen = batch.ledger["seen"]
    assert covered == list(range(1, 5001))
    assert seen == 5000
    final = sink.batches[-1][2].ledger
    totals = assert_ledger_closes(pump, processor, sink)
    assert (final["filtered"], final["collapsed"]) == (totals.filtered, totals.collapsed)
    if path == "semantic":
        assert any(b[4] for b in sink.batches), "the synthetic mix has priority events"
