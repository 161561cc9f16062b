"""What a server knows of each collector's event sequence: the ranges its batches accounted for,
the gaps between them, and the collector's ledger as its latest batch reported it.

A collector numbers the events it reads 1, 2, 3, ... (from 1 again when it restarts), and each
batch accounts for a range [first_seq, last_seq] of them: its events and those filtered or
collapsed on the way. (A batch of priority events, sent ahead of the rest, carries no range:
its events lie in the range of a routine batch of the same round.) Ranges reach a server in
sequence order, on one stream and across reconnects (unacked batches are sent again first, in
order), so a range that starts past the end of the previous one means the events between are
missing for good: dropped from the collector's send buffer, or never delivered.

Events the kernel dropped never got a sequence number: each batch reports how many since the
previous one, which is a gap of another kind, in the time the batch covers.

A server that starts (or that a collector fails over to) mid-run takes the first range it sees
as the start: it cannot tell what went to another server before.
"""
import collections

REASON_SEQUENCE = "sequence"    # events the collector read that never arrived here
REASON_KERNEL = "kernel"        # events the kernel dropped before the collector read them

LEDGER_FIELDS = ("seen", "filtered", "collapsed", "dropped_kernel", "dropped_processor",
                 "dropped_buffer", "throttled")

class Gap(collections.namedtuple("Gap", "first_seq last_seq events start_ns end_ns reason")):
    __slots__ = ()

    def describe(self):
        """What a gap listener is told: "sequence gap 120-180 (61 events)", "kernel drops: 37"."""
        if self.reason == REASON_SEQUENCE:
            return f"sequence gap {self.first_seq}-{self.last_seq} ({self.events} events)"
        return f"kernel drops: {self.events}"


class SequenceTracker:
    """One collector's sequence, fed batch by batch (the ingest engine thread)."""

    def __init__(self, recent=16):
        self.high = 0               # highest sequence number accounted for in this run
        self.high_ns = 0            # the newest event time seen in this run (wall clock ns)
        self.runs = 0               # collector runs seen: each starts its sequence at 1
        self.gaps = 0               # sequence gaps, and the events in them
        self.missing = 0
        self.kernel_gaps = 0        # batches that reported kernel drops, and the drops
        self.kernel_dropped = 0
        self.late = 0               # ranges below what was already accounted for
        self.recent = collections.deque(maxlen=recent)
        self.ledger = None          # dict of LEDGER_FIELDS: the newest report of this run

    def observe(self, first_seq, last_seq, first_ns, last_ns, kernel_drops=0, ledger=None):
        """Take one accepted batch into account; returns the gaps it reveals (a list of Gap)."""
        gaps = []
        before_ns = self.high_ns or first_ns
        if first_seq:
            if self.high == 0 or first_seq == 1:
                # the first range seen, or a restarted collector: a run starts here
                self.runs += 1
                self.high, self.high_ns, self.ledger = 0, 0, None
                before_ns = first_ns
            elif first_seq > self.high + 1:
                gap = Gap(self.high + 1, first_seq - 1, first_seq - 1 - self.high, before_ns,
                          max(first_ns, before_ns), REASON_SEQUENCE)
                self.gaps += 1
                self.missing += gap.events
                gaps.append(gap)
            elif last_seq <= self.high:
                self.late += 1
            self.high = max(self.high, last_seq)
        if kernel_drops:
            self.kernel_gaps += 1
            self.kernel_dropped += kernel_drops
            gaps.append(Gap(0, 0, kernel_drops, before_ns, max(last_ns, before_ns), REASON_KERNEL))
        if last_ns:
            self.high_ns = max(self.high_ns, last_ns)
        if ledger is not None and (self.ledger is None or ledger.get("seen", 0) >= self.ledger.get("seen", 0)):
            self.ledger = {k: ledger.get(k, 0) for k in LEDGER_FIELDS}
        self.recent.extend(gaps)
        return gaps

    def as_json(self):
        return {
            "reported": dict(self.ledger) if self.ledger is not None else None,
            "highest_seq": self.high, "runs": self.runs,
            "gaps": self.gaps, "missing_events": self.missing,
            "kernel_drop_batches": self.kernel_gaps, "late_ranges": self.late,
            "recent_gaps": [gap._asdict() for gap in self.recent],
        }


class SequenceMetrics:
    """Prometheus families of every collector's ledger and sequence, read at scrape time. One
    series per collector and fate or reason: the label sets are fixed."""

    def __init__(self, ingest):
        self.ingest = ingest

    def describe(self):
        return []

    def collect(self):
        from tapio.http.metrics import Families
        f = Families()
        f.gauge("tapio_collector_ledger_events",
                "Each collector's ledger as its latest batch reported it (running totals of its "
                "current run): seen, and where they went before the send", ("collector", "fate"))
        f.counter("tapio_collector_gaps_total",
                  "Gaps in a collector's events: sequence (a range of its events never arrived) "
                  "and kernel (batches reporting ring-buffer drops)", ("collector", "reason"))
        f.counter("tapio_collector_missing_events_total",
                  "Events in the sequence gaps of a collector", ("collector",))
        with self.ingest._lock:
            states = [(c.collector_id, c.sequence) for c in self.ingest.collectors.values()]
        for collector_id, seq in sorted(states, key=lambda s: s[0]):
            if seq.ledger is not None:
                for fate in LEDGER_FIELDS:
                    f.add("tapio_collector_ledger_events", seq.ledger[fate], collector_id, fate)
            f.add("tapio_collector_gaps_total", seq.gaps, collector_id, REASON_SEQUENCE)
            f.add("tapio_collector_gaps_total", seq.kernel_gaps, collector_id, REASON_KERNEL)
            f.add("tapio_collector_missing_events_total", seq.missing, collector_id)
        return f.done()
