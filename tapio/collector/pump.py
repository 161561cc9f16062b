"""The collector's main loop: kernel -> arena -> batch bytes -> sink, in one trio task.

Reading: while events flow, the source is read once per `read_interval`, not once per event:
each read costs the collector a trio round, a batch, thread hops and an ack, and each wakeup
costs the kernel an irq_work (12-15 us on a VM). Before each read the loop promises the source to
read again within the interval, so that the kernel wakes nobody meanwhile (submit() in
bpf/emit.bpf.h); after a read that found nothing it withdraws the promise, reads once more
(for what came in meanwhile) and only then blocks, to be woken by the next event. So a lone
event is read at once, and under a steady flow an event waits at most one interval to be read.
When a read fills the arena, the next one follows at once.

Adaptive batching: when the sink has nothing in flight, whatever a read brought goes out at
once (low latency at low load; one batch per read interval at moderate load); while a batch is
in flight, events accumulate up to the batch size or the flush interval (high throughput at
high load). All per-event work happens in C (ring-buffer copy, processing, encoding); this loop
runs once per read, not per event.
"""
import logging
import time

import trio

from tapio._fast.arena import EventArena
from tapio.collector.clock import boot_to_wall_ns
from tapio.collector.ledger import Ledger
from tapio.collector.processor import PATH_RAW, PATH_SEMANTIC

log = logging.getLogger("tapio.collector")


class PumpStats:
    def __init__(self):
        self.events = 0          # events taken from the source
        self.batches = 0
        self.kernel_drops = 0    # ring-buffer reserve failures
        self.processor_drops = 0     # the processor filters and collapses, but never drops
        self.congested = 0       # rounds the pump waited for room in the send buffer
        self.last_event_id = None


class Pump:
    CONGESTION_POLL = 0.002      # seconds between looks at a congested sink
    def __init__(self, source, sink, encoder, processor, buffer_size, flush_interval,
                 first_batch_id=None, idle_poll=1.0, *, read_interval, budget=None):
        """The ledger follows one path's batches (see tapio.collector.ledger): the semantic
        one when it runs; the other path's batches are submitted with 0 events to count.
        read_interval: seconds (--read-interval). budget: a tapio.collector.budget.CgroupBudget
        (--cgroup-budget), or None."""
        self.source = source
        self.sink = sink
        self.encoder = encoder
        self.processor = processor
        self.arena = EventArena(buffer_size)
        self.budget = budget
        if budget is not None:
            budget.attach(self.arena)
        self.flush_interval = flush_interval
        self.idle_poll = idle_poll
        self.read_interval = read_interval
        # sources woken by the kernel take a promise to read again (EbpfSource.read_within);
        # others have no use for one
        self._promise = getattr(source, "read_within", None) or (lambda seconds: None)
        self.stats = PumpStats()
        # Batch ids start from the wall clock in microseconds by default, so that a restarted
        # collector never reuses an id the server has seen (it drops those as duplicates).
        self._batch_id = (time.time_ns() // 1000 if first_batch_id is None else first_batch_id) - 1
        self._stopping = False
        self._wait_scope = None
        self.ledger_path = PATH_SEMANTIC if getattr(processor, "semantic", None) is not None else PATH_RAW
        self.ledger = Ledger(self, processor, sink)

    def wake(self):
        """The sink became idle: events waiting for their batch may go now (safe from any task)."""
        if len(self.arena) and self._wait_scope is not None:
            self._wait_scope.cancel()

    @property
    def stopping(self):
        return self._stopping

    def stop(self):
        """Ask run() to drain and return (safe to call from any task)."""
        self._stopping = True
        if self._wait_scope is not None:
            self._wait_scope.cancel()

    async def run(self):
        """Until stop(); then drain what the source already holds and flush it."""
        deadline = trio.current_time() + self.flush_interval
        found_at = -float("inf")        # when a read last found events
        while not self._stopping:
            if self.sink.congested():
                # Backpressure: while the send buffer is mostly full, leave events in the
                # kernel, whose ring buffer drops (and counts) what does not fit at almost no
                # cost. Reading on would spend the CPU the delivery needs on events that the
                # send buffer would then have to throw away.
                self.stats.congested += 1
                await trio.sleep(self.CONGESTION_POLL)
                continue
            self._emit_throttled()
            self._promise(self.read_interval)
            moved = self._read()
            if self.source.exhausted:
                self._stopping = True       # a bounded source ran out: drain and finish
                break
            now = trio.current_time()
            if moved:
                found_at = now
            more = self.arena.full          # the source may hold more than the arena took
            if len(self.arena) and (more or now >= deadline or self.sink.idle()):
                await self._flush()
                deadline = trio.current_time() + self.flush_interval
                # a checkpoint each round: under a flood the source always has more, and the
                # sender, the acks and the signal handler must run between rounds
                await trio.lowlevel.checkpoint()
                if more:
                    continue
            pending = len(self.arena)
            with trio.CancelScope() as self._wait_scope:
                if moved:
                    # events are flowing: read again an interval after this read (as promised),
                    # sooner if a batch is due
                    until = found_at + self.read_interval
                    await trio.sleep_until(min(until, deadline) if pending else until)
                else:
                    # nothing came: withdraw the promise, then look once more for events that
                    # relied on it, before waiting to be woken
                    self._promise(0)
                    moved = self._read()
                    if moved:
                        found_at = trio.current_time()
                    else:
                        with trio.move_on_after(deadline - now if pending else self.idle_poll):
                            await self.source.wait()
            self._wait_scope = None
        detach = getattr(self.source, "detach", None)
        if detach is not None:
            detach()
        await self.drain()

    def _read(self):
        """Fill the arena from the source; returns the records taken. Those over their cgroup's
        budget are taken but not stored (--cgroup-budget): a throttled storm still flows, and
        the pump keeps reading it on its interval instead of being woken for each record."""
        held_back = self.budget.suppressed if self.budget is not None else 0
        stored = self.source.fill(self.arena)
        self.stats.events += stored
        if self.budget is not None:
            return stored + self.budget.suppressed - held_back
        return stored

    async def drain(self):
        """Flush everything the source holds (bounded once it is detached: what was there, not
        what keeps coming). The kernel's drops since the latest batch go into the ledger too."""
        while True:
            moved = self.source.fill(self.arena)
            self.stats.events += moved
            if not moved:       # the source is dry: every pending summary goes now
                moved = self._emit_throttled(everything=True)
            if len(self.arena):
                await self._flush()
            if not moved:
                break
            await trio.lowlevel.checkpoint()
        late = self.source.kernel_drops_since_last()
        if late:
            # drops after the last batch: one more batch, without events, reports them
            self.stats.kernel_drops += late
            self._batch_id += 1
            self.stats.batches += 1
            data = self.encoder.encode(self.arena, self._batch_id, 0, path=self.ledger_path,
                                       kernel_drops=late, seq_range=(0, 0), ledger=self.ledger.wire())
            await self.sink.submit(self._batch_id, data, 0)

    def _emit_throttled(self, everything=False):
        """The `throttled` events that are due (or all, at the end) into the arena: once per
        round, so a cgroup's summary leaves within about a round of its interval's end."""
        if self.budget is None:
            return 0
        made = self.budget.emit(self.arena, everything)
        self.stats.events += made
        return made

    def configure(self, batch_size=None, flush_interval=None):
        """Apply a server's StreamControl CONFIGURE: the most events per batch, on both paths,
        and the flush interval."""
        config = self.processor.config
        if batch_size:
            config.batch_size = config.semantic_batch_size = batch_size
        if flush_interval is not None:
            self.flush_interval = flush_interval
        log.info("Server set batching to %d events / %gs", config.batch_size, self.flush_interval)

    async def _flush(self):
        n = len(self.arena)
        first_seq = self.stats.events - n + 1      # event ids are ebpf-<first_seq + slot>
        kernel_drops = self.source.kernel_drops_since_last()
        buffer_drops = self.sink.take_buffer_drops()
        self.stats.kernel_drops += kernel_drops
        self.encoder.boot_to_wall_ns = boot_to_wall_ns()
        for plan in self.processor.plans(self.arena):
            self._batch_id += 1
            # each batch says which of our sequence numbers it accounts for, so that a server
            # can tell a range that never arrived; and where every event went so far
            seq_range = (0, 0) if plan.slots is None else (first_seq + plan.slots[0],
                                                           first_seq + plan.slots[1])
            data = self.encoder.encode(self.arena, self._batch_id, first_seq, path=plan.path,
                                       order=plan.order, kernel_drops=kernel_drops,
                                       buffer_drops=buffer_drops, seq_range=seq_range,
                                       ledger=self.ledger.wire())
            kernel_drops = buffer_drops = 0          # reported once, in the first batch
            self.stats.batches += 1
            events = n if plan.order is None else len(plan.order)
            await self.sink.submit(self._batch_id, data, events if plan.path == self.ledger_path else 0,
                                   plan.priority)
        self.arena.clear()
        self.stats.last_event_id = f"ebpf-{first_seq + n - 1}"
