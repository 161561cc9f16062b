"""The recent batches of one collector, by the ordinal the compiled correlator gave them.

Event references from tapio._fast.correlate are (seq, ordinal, index): the batch's ordinal, the
event's index in it, and n of its id "ebpf-<n>". A batch is kept (the decoded bytes, no dict per
event) until newer batches hold `max_events` events, or until the byte budget that every
collector's RecentBatches share (RecentBytes, [limits] recent_memory) needs its room for newer
batches, whoever sent them; a reference into a batch that is gone still names its event by id.
The byte budget is what bounds memory: events are not all the same size (one exec may carry
16 KiB of command line).
"""
import collections


class RecentBytes:
    """One byte budget over the recent batches of every collector: past `max_bytes` the oldest
    batch goes first, whichever collector sent it. Used under the engine's lock."""

    def __init__(self, max_bytes):
        self.max_bytes = max_bytes
        self.nbytes = 0
        self._order = collections.deque()    # (RecentBatches, ordinal), oldest first
        self._gone = 0                       # entries of the order evicted otherwise since

    def add(self, recent, ordinal, nbytes):
        self._order.append((recent, ordinal))
        self.nbytes += nbytes
        while self.nbytes > self.max_bytes and self._order:
            old, old_ordinal = self._order.popleft()
            if not old.drop(old_ordinal):
                self._gone -= 1         # gone already (by count, or its collector forgotten)
        if self._gone > 64 and self._gone > len(self._order) // 2:
            self._order = collections.deque((r, o) for r, o in self._order if o in r)
            self._gone = 0

    def released(self, nbytes):
        """A batch left by another way than this budget (its entry in the order is stale)."""
        self.nbytes -= nbytes
        self._gone += 1


class RecentBatches:
    def __init__(self, max_events=50000, budget=None):
        self.max_events = max_events
        self.budget = budget                        # a shared RecentBytes, or None
        self._batches = collections.OrderedDict()   # ordinal -> DecodedBatch
        self._events = 0
        self.evicted = 0

    def add(self, ordinal, batch):
        n = len(batch)
        if not n:
            return
        self._batches[ordinal] = batch
        self._events += n
        while self._events > self.max_events and len(self._batches) > 1:
            _, old = self._batches.popitem(last=False)
            self._events -= len(old)
            self.evicted += 1
            if self.budget is not None:
                self.budget.released(old.nbytes)
        if self.budget is not None:
            self.budget.add(self, ordinal, batch.nbytes)

    def drop(self, ordinal):
        """The budget's eviction: False when the batch had gone already."""
        batch = self._batches.pop(ordinal, None)
        if batch is None:
            return False
        self._events -= len(batch)
        self.evicted += 1
        self.budget.nbytes -= batch.nbytes
        return True

    def clear(self):
        """Every batch goes (the collector is forgotten)."""
        for batch in self._batches.values():
            if self.budget is not None:
                self.budget.released(batch.nbytes)
        self._batches.clear()
        self._events = 0

    def __contains__(self, ordinal):
        return ordinal in self._batches

    def event(self, ref):
        """The event dict a reference points at, or None when its batch is gone."""
        if ref is None:
            return None
        seq, ordinal, index = ref
        batch = self._batches.get(ordinal)
        if batch is None or index >= len(batch):
            return None
        return batch.event_dict(index)

    @staticmethod
    def event_id(ref):
        if ref is None or not ref[0]:
            return None
        return f"ebpf-{ref[0]}"

    def __len__(self):
        return self._events
