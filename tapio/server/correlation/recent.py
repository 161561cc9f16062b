"""The recent batches of one collector, by the ordinal the compiled correlator gave them.

Event references from tapio._fast.correlate are (seq, ordinal, index): the batch's ordinal, the
event's index in it, and n of its id "ebpf-<n>". A batch is kept (the decoded bytes, no dict per
event) until newer batches hold `max_events` events; a reference into a batch that is gone still
names its event by id.
"""
import collections


class RecentBatches:
    def __init__(self, max_events=50000):
        self.max_events = max_events
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
