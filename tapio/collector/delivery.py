"""The unacked-batch buffer: every batch stays here, in order, until the server acks it.

Bounded in bytes (--max-memory). When a new batch does not fit, the overflow policy decides:
drop-oldest (the default: recent events matter most) or drop-newest. Priority batches (OOM
kills, fatal signals, failed exits) are sent before routine ones and dropped only when nothing
routine is left to drop. After a reconnect everything still here is sent again, in order; the
server drops duplicates by batch id, so it counts each batch once.

Sending is windowed: at most `window` bytes are on the wire (sent, not acked) at a time, so a
slow server holds the rest here, where the bound applies, instead of in gRPC's queues.

Every dropped event is counted, and only once it is surely lost. Unsent batches make room
first. When only batches on the wire are left to go, one is let go: its ack may still come, and
then its events count as delivered after all; if the stream ends first, they count as dropped.

The buffer keeps this run's part of the collector's ledger: every event added is, at any time,
delivered (acked, also as a duplicate: the server had it), dropped, or undelivered (held, or
let go on the wire with its fate unknown). Batches restored from the spool were seen by an
earlier run: they are counted apart (`restored_*`), so this run's ledger stays closed.
"""
import collections


class Pending:
    __slots__ = ("batch_id", "data", "events", "priority", "sent_at", "restored")

    def __init__(self, batch_id, data, events, priority=False, restored=False):
        self.batch_id = batch_id
        self.data = data
        self.events = events
        self.priority = priority
        self.sent_at = None          # monotonic time of the latest send, None when not sent yet
        self.restored = restored     # from the spool of an earlier run


class DeliveryBuffer:
    def __init__(self, max_bytes, overflow="drop-oldest", spool=None, window=None,
                 max_unconfirmed=65536):
        if overflow not in ("drop-oldest", "drop-newest"):
            raise ValueError(f"unknown overflow policy {overflow!r}")
        self.max_bytes = max_bytes
        self.window = window or max(1, min(max_bytes // 2, 8 << 20))
        self.in_flight_bytes = 0
        self.overflow = overflow
        self._pending = collections.OrderedDict()   # batch_id -> Pending, in send order
        # batches let go while on the wire: batch_id -> Pending without its bytes
        self._unconfirmed = collections.OrderedDict()
        self._max_unconfirmed = max_unconfirmed
        self.bytes = 0
        self.added_events = 0        # this run's events, and what became of them
        self.delivered_events = 0
        self.dropped_events = 0
        self.dropped_batches = 0
        self.restored_events = 0     # events of batches an earlier run left in the spool
        self.restored_delivered = 0
        self.restored_dropped = 0
        self._dropped_since_batch = 0
        self.spool = spool           # optional on-disk copy (spool.Spool): mirrors this buffer

    def __len__(self):
        return len(self._pending)

    @property
    def outstanding(self):
        """Batches whose fate is not known yet: held, or let go while on the wire."""
        return len(self._pending) + len(self._unconfirmed)

    def add(self, batch_id, data, events, priority=False, restored=False):
        """Keep a new batch. Returns it, or None when the policy dropped it."""
        item = Pending(batch_id, data, events, priority, restored)
        if restored:
            self.restored_events += events
        else:
            self.added_events += events
        size = len(data)
        if size > self.max_bytes:
            self._lost(item)
            return None
        while self.bytes + size > self.max_bytes:
            victim = self._victim(priority)
            if victim is None:
                self._lost(item)
                return None
            self._let_go(victim)
        self._pending[batch_id] = item
        self.bytes += size
        if self.spool is not None:
            self.spool.append(batch_id, data, events)
        return item

    def restore(self, batches):
        """Put batches recovered from the spool back (before any new one), within the bound."""
        spool, self.spool = self.spool, None     # they are on disk already
        try:
            for batch_id, data, events in batches:
                self.add(batch_id, data, events, restored=True)
        finally:
            self.spool = spool
        if spool is not None:
            for batch_id, _, _ in batches:
                if batch_id not in self._pending:     # did not fit: gone from disk too
                    spool.ack(batch_id)

    def _victim(self, incoming_priority):
        """Which held batch makes room for a new one (None: drop the new one instead)."""
        held = list(self._pending.values())
        unsent = [p for p in held if not p.priority and p.sent_at is None]
        on_the_wire = [p for p in held if not p.priority and p.sent_at is not None]
        if self.overflow == "drop-newest":
            if not incoming_priority:
                return None
            unsent.reverse()
        for candidates in (unsent, on_the_wire):
            if candidates:
                return candidates[0]
        # only priority batches are held: the oldest one goes for a new priority batch
        return held[0] if incoming_priority and held else None

    def set_bound(self, max_bytes):
        """A new bound in bytes (the memory guard moves it). What no longer fits goes at once,
        oldest first: unsent routine batches, then routine ones on the wire, then priority ones;
        every event in them counted as for an overflow."""
        self.max_bytes = max_bytes
        excess = self.bytes - max_bytes
        for kind in ("unsent", "on the wire", "priority"):
            if excess <= 0:
                return
            for p in list(self._pending.values()):
                if excess <= 0:
                    break
                if kind == "priority" or (not p.priority and (p.sent_at is None) == (kind == "unsent")):
                    excess -= len(p.data)
                    self._let_go(p)

    def can_send(self, pending):
        """Whether the window has room for this batch (an empty window always does)."""
        return self.in_flight_bytes == 0 or self.in_flight_bytes + len(pending.data) <= self.window

    def sent(self, pending, now):
        pending.sent_at = now
        self.in_flight_bytes += len(pending.data)

    def _let_go(self, pending):
        del self._pending[pending.batch_id]
        self.bytes -= len(pending.data)
        if self.spool is not None:
            self.spool.ack(pending.batch_id)
        if pending.sent_at is None:
            self._lost(pending)
            return
        self.in_flight_bytes -= len(pending.data)
        pending.data = b""
        self._unconfirmed[pending.batch_id] = pending
        if len(self._unconfirmed) > self._max_unconfirmed:
            _, oldest = self._unconfirmed.popitem(last=False)
            self._lost(oldest)

    def _lost(self, pending):
        self.dropped_batches += 1
        if pending.restored:
            self.restored_dropped += pending.events
            return
        self.dropped_events += pending.events
        self._dropped_since_batch += pending.events

    def _delivered(self, pending):
        if pending.restored:
            self.restored_delivered += pending.events
        else:
            self.delivered_events += pending.events
        return pending

    def ack(self, batch_id):
        """Forget an acked batch; returns it (None when unknown: acked before, or lost)."""
        item = self._pending.pop(batch_id, None)
        if item is not None:
            self.bytes -= len(item.data)
            if item.sent_at is not None:
                self.in_flight_bytes -= len(item.data)
            if self.spool is not None:
                self.spool.ack(batch_id)
            return self._delivered(item)
        item = self._unconfirmed.pop(batch_id, None)
        return self._delivered(item) if item is not None else None

    def unsent(self):
        """Batches not sent on the current stream: priority ones first, each kind oldest first."""
        waiting = [p for p in self._pending.values() if p.sent_at is None]
        return [p for p in waiting if p.priority] + [p for p in waiting if not p.priority]

    def forget_sends(self):
        """A stream ended: what is held must be sent again; what was let go is lost."""
        for p in self._pending.values():
            p.sent_at = None
        self.in_flight_bytes = 0
        for p in self._unconfirmed.values():
            self._lost(p)
        self._unconfirmed.clear()

    def undelivered_events(self):
        """This run's events whose fate is open: held, or let go on the wire without an ack."""
        return sum(p.events for d in (self._pending, self._unconfirmed) for p in d.values()
                   if not p.restored)

    def take_dropped_since_batch(self):
        """Events dropped here since the previous call: what the next batch reports."""
        n, self._dropped_since_batch = self._dropped_since_batch, 0
        return n

    def last_id(self):
        """The highest batch id held (0 when empty)."""
        return max(self._pending, default=0)

    def items(self):
        return list(self._pending.values())
