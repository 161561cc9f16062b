"""The collector's main loop: kernel -> arena -> batch bytes -> sink, in one trio task.

Adaptive batching: when the sink has nothing in flight, whatever is in the arena goes out at
once (low latency at low load); while a batch is in flight, events accumulate up to the batch
size or the flush interval (high throughput at high load). All per-event work happens in C
(ring-buffer copy, processing, encoding); this loop runs once per wake-up, not per event.
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
                 first_batch_id=None, idle_poll=1.0, read_coalesce=0.001, budget=None):
        """The ledger follows one path's batches (see tapio.collector.ledger): the semantic
        one when it runs; the other path's batches are submitted with 0 events to count.
        budget: a tapio.collector.budget.CgroupBudget (--cgroup-budget), or None."""
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
        self.read_coalesce = read_coalesce
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
            self.stats.events += self.source.fill(self.arena)
            if self.source.exhausted:
                self._stopping = True       # a bounded source ran out: drain and finish
                break
            pending = len(self.arena)
            now = trio.current_time()
            if pending and (self.arena.full or now >= deadline or self.sink.idle()):
                await self._flush()
                deadline = trio.current_time() + self.flush_interval
                # a checkpoint each round: under a flood the source always has more, and the
                # sender, the acks and the signal handler must run between rounds
                await trio.lowlevel.checkpoint()
                continue
            timeout = deadline - now if pending else self.idle_poll
            with trio.move_on_after(timeout) as self._wait_scope:
                await self.source.wait()
                # let events gather for a moment: one wake-up per event would cost more
                # than the events themselves at moderate rates
                await trio.sleep(self.read_coalesce)
            self._wait_scope = None
        detach = getattr(self.source, "detach", None)
        if detach is not None:
            detach()
        await self.drain()

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
