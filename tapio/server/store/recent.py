"""Recent events: each collector's newest decoded batches, kept as they arrived.

A batch is kept whole (its wire bytes and the codec's records over them): no dict and no object
per event at ingest. Queries walk the batches newest first in C (match_records) and build only
what they return: an event's dict (the JSON API) or its original tapio.v1.Event bytes
(DecodedBatch.event_wire: Subscribe and ListEvents serve them without encoding them again).

Bounds: `max_events` per collector, and `max_bytes` over all collectors, counting each batch's
memory (DecodedBatch.nbytes: its wire bytes and its decoded records). Past the byte bound the
oldest batches go first, whichever collector sent them; a batch larger than the whole bound is not
kept. Newest first means by arrival: a later batch before an earlier one, and within a batch the
last event first.
"""
import collections
import threading

from tapio._fast.correlate import match_records


class _Kept:
    __slots__ = ("batch", "collector", "events", "nbytes")

    def __init__(self, batch, collector):
        self.batch = batch
        self.collector = collector
        self.events = len(batch)
        self.nbytes = batch.nbytes


class RecentEvents:
    def __init__(self, max_events=10000, max_bytes=64 << 20):
        self.max_events = max_events
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._rings = {}                     # collector id -> deque of _Kept, oldest first
        self._ring_events = {}               # collector id -> events in its ring
        self._order = collections.deque()    # every _Kept by arrival; evicted ones have batch None
        self._evicted_in_order = 0
        self.events = 0
        self.nbytes = 0
        self.batches_evicted = 0

    def add(self, batch, collector):
        if not len(batch):
            return
        kept = _Kept(batch, collector)
        with self._lock:
            ring = self._rings.get(collector)
            if ring is None:
                ring = self._rings[collector] = collections.deque()
                self._ring_events[collector] = 0
            ring.append(kept)
            self._order.append(kept)
            self._ring_events[collector] += kept.events
            self.events += kept.events
            self.nbytes += kept.nbytes
            while self._ring_events[collector] > self.max_events and len(ring) > 1:
                self._evict(ring.popleft())
                self._evicted_in_order += 1
            while self.nbytes > self.max_bytes and self._order:
                oldest = self._order.popleft()
                if oldest.batch is None:
                    self._evicted_in_order -= 1
                    continue
                # each ring is the order's subsequence of one collector: its head is this one
                self._rings[oldest.collector].popleft()
                self._evict(oldest)
            self._compact()

    def _compact(self):
        """Drop the evicted from the arrival order once they are half of it."""
        if self._evicted_in_order > 64 and self._evicted_in_order > len(self._order) // 2:
            self._order = collections.deque(k for k in self._order if k.batch is not None)
            self._evicted_in_order = 0

    def _evict(self, kept):
        self._ring_events[kept.collector] -= kept.events
        if not self._rings[kept.collector]:
            del self._rings[kept.collector]
            del self._ring_events[kept.collector]
        self.events -= kept.events
        self.nbytes -= kept.nbytes
        self.batches_evicted += 1
        kept.batch = None

    def forget(self, collectors):
        """Drop every batch of these collector ids (forgotten past --max-collectors)."""
        with self._lock:
            for collector in collectors:
                for kept in list(self._rings.get(collector, ())):
                    self._evict(kept)
                    self._evicted_in_order += 1
                self._rings.pop(collector, None)
                self._ring_events.pop(collector, None)
            self._compact()

    def find(self, *, type_number=0, pid=0, comm=None, container=None, collector=None, limit=100):
        """[(batch, index, collector id)] of the matching events, newest first, at most `limit`:
        type_number (0: any), pid (0: any), comm exact and container an id prefix or a name
        (both bytes, None: any), collector an id (None: any)."""
        with self._lock:
            if collector is None:
                kept = [(k.batch, k.collector) for k in self._order if k.batch is not None]
            else:
                kept = [(k.batch, k.collector) for k in self._rings.get(collector, ())]
        found = []
        for batch, cid in reversed(kept):
            wanted = limit - len(found)
            if wanted <= 0:
                break
            found += [(batch, i, cid) for i in match_records(batch, type_number, pid, comm, container, wanted)]
        return found

    def collectors(self):
        with self._lock:
            return len(self._rings)
