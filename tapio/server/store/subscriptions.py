"""Live subscriptions: new events and group versions for other threads (gRPC Subscribe), each
through a queue of its own, bounded in items and in bytes.

A subscriber that does not keep up loses items, and they are counted (Subscription.dropped,
Subscriptions.drops): ingestion never waits for a reader. An event is passed on as its original
wire bytes (a tapio.v1.Event, as the collector sent it). The ingest thread selects by event type
only; a filter that looks further (regexes, pods, a reader's namespaces) runs on the subscriber's
own thread, in get(), so no filter a client sends costs the ingest thread more than a type check.
Items are counted (delivered, dropped) before that filter.
"""
import collections
import threading
import time
import typing

from tapio._fast.codec import DecodedBatch, encode_field
from tapio._fast.correlate import match_records
from tapio.server.filters import Filter


class Item(typing.NamedTuple):
    kind: str              # "event" or "group"
    value: object          # an event: its tapio.v1.Event bytes; a group: its dict (no events)
    collector_id: str


class Subscription:
    """New items for one subscriber. get() waits (bounded by its timeout); dropped counts what
    did not fit in `maxsize` items or `max_bytes` (an event counts its wire bytes, a group its
    JSON body)."""

    def __init__(self, hub, filter, events, groups, maxsize, max_bytes):
        self._hub = hub
        self.filter = filter
        self.events = events
        self.groups = groups
        self.maxsize = max(1, int(maxsize))
        self.max_bytes = max(1, int(max_bytes))
        self.types = filter.event_types()          # None: any type
        self.by_type = filter.events_by_type_only()
        self._items = collections.deque()
        self._bytes = 0
        self._cond = threading.Condition()
        self.dropped = 0
        self.delivered = 0
        self.closed = False

    def offer(self, item, nbytes):
        with self._cond:
            if self.closed:
                return
            if len(self._items) >= self.maxsize or self._bytes + nbytes > self.max_bytes:
                self.dropped += 1
                self._hub._count_drop()
                return
            self._items.append((item, nbytes))
            self._bytes += nbytes
            self.delivered += 1
            self._cond.notify()

    def get(self, timeout=None):
        """The next Item that passes the filter, or None after `timeout` seconds without one (or
        once closed and empty)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for _ in range(self.maxsize + 1):     # what is queued, at most, before giving back
            with self._cond:
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                self._cond.wait_for(lambda: self._items or self.closed, left)
                if not self._items:
                    return None
                item, nbytes = self._items.popleft()
                self._bytes -= nbytes
            if self._passes(item):
                return item
        return None

    def _passes(self, item):
        if item.kind == "group":
            return self.filter.matches_group(item.value)
        if self.by_type:
            return True          # the ingest thread selected it by type: that is the whole filter
        # the event's dict, from its own bytes (a TapioStreamEventsRequest holding one event)
        event = DecodedBatch.parse(encode_field(1, item.value)).event_dict(0)
        event["collector_id"] = item.collector_id
        return self.filter.matches_event(event)

    def queued_bytes(self):
        with self._cond:
            return self._bytes

    def close(self):
        with self._cond:
            if self.closed:
                return
            self.closed = True
            self._cond.notify_all()        # wakes a get() that waits
        self._hub._unsubscribe(self)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Subscriptions:
    """The live subscribers of one store. Publishing runs on the writer's thread (ingest)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._subscribers = []
        self.drops = 0

    def subscribe(self, filter=None, *, events=True, groups=True, maxsize=1000, max_bytes=8 << 20):
        sub = Subscription(self, Filter.of(filter), events, groups, maxsize, max_bytes)
        with self._lock:
            self._subscribers.append(sub)
        return sub

    def _unsubscribe(self, sub):
        with self._lock:
            if sub in self._subscribers:
                self._subscribers.remove(sub)

    def _count_drop(self):
        with self._lock:
            self.drops += 1

    def __len__(self):
        with self._lock:
            return len(self._subscribers)

    def _snapshot(self, what):
        with self._lock:
            return [s for s in self._subscribers if getattr(s, what)]

    def publish_group(self, group, nbytes):
        for sub in self._snapshot("groups"):
            sub.offer(Item("group", group, group.get("collector_id") or ""), nbytes)

    def publish_events(self, batch, collector):
        """Offer the batch's events to the event subscribers of their types."""
        subs = self._snapshot("events")
        if not subs:
            return
        if any(s.types is None for s in subs):
            indices = range(len(batch))
        else:
            indices = sorted({i for s in subs for t in s.types for i in match_records(batch, t)})
        # which events of a type are in the batch
        typed = {t: frozenset(match_records(batch, t))
                 for t in {t for s in subs if s.types is not None for t in s.types}}
        for i in indices:
            wire = None
            for sub in subs:
                if sub.types is None or any(i in typed[t] for t in sub.types):
                    if wire is None:
                        wire = batch.event_wire(i)
                    sub.offer(Item("event", wire, collector), len(wire))

    def close(self):
        with self._lock:
            subscribers = list(self._subscribers)
        for sub in subscribers:
            sub.close()
