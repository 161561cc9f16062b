"""The unacked-batch buffer: every batch stays here, in order, until the server acks it.

Bounded in bytes (--max-memory). When a new batch does not fit, the overflow policy decides:
drop-oldest (the default: recent events matter most) or drop-newest; every dropped event is
counted. Priority batches (OOM kills, fatal signals, failed exits) are sent before routine ones
and dropped only when nothing routine is left to drop. After a reconnect everything still here is sent again, in order; the server drops the
duplicates by batch id, so the server counts each batch once.
"""
import collections
import time


class Pending:
    __slots__ = ("batch_id", "data", "events", "priority", "sent_at")

    def __init__(self, batch_id, data, events, priority=False):
        self.batch_id = batch_id
        self.data = data
        self.events = events
        self.priority = priority
        self.sent_at = None          # monotonic time of the latest send, None when not sent yet


class DeliveryBuffer:
    def __init__(self, max_bytes, overflow="drop-oldest", spool=None):
        if overflow not in ("drop-oldest", "drop-newest"):
            raise ValueError(f"unknown overflow policy {overflow!r}")
        self.max_bytes = max_bytes
        self.overflow = overflow
        self._pending = collections.OrderedDict()   # batch_id -> Pending, in send order
        self.bytes = 0
        self.dropped_events = 0
        self.dropped_batches = 0
        self._dropped_since_batch = 0
        self.spool = spool           # optional on-disk copy (spool.Spool): mirrors this buffer

    def __len__(self):
        return len(self._pending)

    def add(self, batch_id, data, events, priority=False):
        """Keep a new batch. Returns it, or None when the policy dropped it."""
        size = len(data)
        if size > self.max_bytes:
            self._drop(events)
            return None
        while self.bytes + size > self.max_bytes:
            victim = self._victim(priority)
            if victim is None:
                self._drop(events)
                return None
            del self._pending[victim.batch_id]
            self.bytes -= len(victim.data)
            self._drop(victim.events)
            if self.spool is not None:
                self.spool.ack(victim.batch_id)
        item = self._pending[batch_id] = Pending(batch_id, data, events, priority)
        self.bytes += size
        if self.spool is not None:
            self.spool.append(batch_id, data, events)
        return item

    def restore(self, batches):
        """Put batches recovered from the spool back (before any new one), within the bound."""
        spool, self.spool = self.spool, None     # they are on disk already
        try:
            for batch_id, data, events in batches:
                self.add(batch_id, data, events)
        finally:
            self.spool = spool
        if spool is not None:
            for batch_id, _, _ in batches:
                if batch_id not in self._pending:     # did not fit: gone from disk too
                    spool.ack(batch_id)

    def _victim(self, incoming_priority):
        """Which held batch makes room for a new one (None: drop the new one instead)."""
        if self.overflow == "drop-newest":
            if not incoming_priority:
                return None
            candidates = reversed(self._pending.values())     # newest routine first
        else:
            candidates = iter(self._pending.values())         # oldest routine first
        for p in candidates:
            if not p.priority:
                return p
        # only priority batches are held: the oldest one goes for a new priority batch
        if incoming_priority and self._pending:
            return next(iter(self._pending.values()))
        return None

    def _drop(self, events):
        self.dropped_events += events
        self.dropped_batches += 1
        self._dropped_since_batch += events

    def ack(self, batch_id):
        """Forget an acked batch; returns it (None when it was dropped or acked before)."""
        item = self._pending.pop(batch_id, None)
        if item is not None:
            self.bytes -= len(item.data)
            if self.spool is not None:
                self.spool.ack(batch_id)
        return item

    def unsent(self):
        """Batches not sent on the current stream: priority ones first, each kind oldest first."""
        waiting = [p for p in self._pending.values() if p.sent_at is None]
        return [p for p in waiting if p.priority] + [p for p in waiting if not p.priority]

    def forget_sends(self):
        """A stream ended: everything unacked must be sent again on the next one."""
        for p in self._pending.values():
            p.sent_at = None

    def in_flight(self):
        return sum(1 for p in self._pending.values() if p.sent_at is not None)

    def oldest_age(self, now=None):
        if not self._pending:
            return 0.0
        first = next(iter(self._pending.values()))
        return ((now or time.monotonic()) - first.sent_at) if first.sent_at else 0.0

    def take_dropped_since_batch(self):
        """Events dropped here since the previous call: what the next batch reports."""
        n, self._dropped_since_batch = self._dropped_since_batch, 0
        return n

    def last_id(self):
        """The highest batch id held (0 when empty)."""
        return max(self._pending, default=0)

    def items(self):
        return list(self._pending.values())
