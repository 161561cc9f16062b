"""`--source synthetic`: events at a fixed rate (or as fast as possible), for benchmarks and for
demos on hosts without eBPF. They fill the same arena as the kernel's, in the kernel's layout,
and take the same path from there.

Like the kernel's ring buffer, the source holds a bounded backlog: when the collector falls
behind by more than `backlog` events, the oldest are dropped and counted as kernel drops, so an
overloaded collector sheds load where a real one would, instead of processing events that its
send buffer must then throw away."""
import trio

from tapio._fast import synthetic
from tapio._fast.kernel import EVENT_TYPES


class SyntheticSource:
    def __init__(self, rate=0, count=0, backlog=65536):
        """rate: events per second (0: as fast as the pipeline takes them); count: stop after
        this many offered (0: never); backlog: events waiting before the oldest are dropped."""
        self.rate = rate
        self.count = count
        self.backlog = backlog
        self.produced = 0            # offered: taken or dropped
        self.dropped = 0
        self._dropped_reported = 0
        self._started = None
        self._limit = None           # set by detach(): nothing is offered past it
        self.event_types = frozenset(EVENT_TYPES.values())

    @property
    def exhausted(self):
        return bool(self.count) and self.produced >= self.count

    def _due(self):
        """How many events should exist by now."""
        if self._started is None:
            self._started = trio.current_time()
        due = self.count if self.count else 1 << 62
        if self.rate:
            due = min(due, int((trio.current_time() - self._started) * self.rate) + 1)
        else:
            # as fast as they are taken: a backlog's worth is waiting, never more (nothing is
            # dropped for being late)
            due = min(due, self.produced + self.backlog)
        return due if self._limit is None else min(due, self._limit)

    def detach(self):
        """Offer no event past those due now (as fast as possible: those taken so far), the
        way a detached probe stops producing."""
        self._limit = self._due() if self.rate else self.produced

    def fill(self, arena):
        wanted = self._due() - self.produced
        if wanted <= 0:
            return 0
        if wanted > self.backlog:
            lost = wanted - self.backlog
            self.produced += lost
            self.dropped += lost
            wanted = self.backlog
        n = synthetic.fill(arena, self.produced + 1, min(wanted, 1 << 30))
        self.produced += n
        return n

    async def wait(self):
        """Until the next event is due (forever once the count is reached)."""
        if self.exhausted:
            await trio.sleep_forever()
        if self.rate:
            next_due = self._started + self.produced / self.rate if self._started is not None else 0
            await trio.sleep_until(max(next_due, trio.current_time() + 0.0005))
        else:
            await trio.sleep(0)

    def kernel_drops_since_last(self):
        delta, self._dropped_reported = self.dropped - self._dropped_reported, self.dropped
        return delta

    def close(self):
        pass
