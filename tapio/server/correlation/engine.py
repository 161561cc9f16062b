"""The correlation engine: an ingest consumer that turns each collector's events into groups.

Per collector (node) it keeps a CollectorState (state.py: the compiled Correlator, which reads
every record in C, the recent batches, the collector's clock) and one instance of each rule
(rules/). This module only dispatches: each batch to the core, the records the core calls hot to
every rule, then the batch itself; every tick to every rule. See docs/correlation.md.

Groups go to `on_group(group_dict, closed)`: once when they open (a crash loop, an OOM kill, a
connectivity degradation: the store shows them while they grow), again when they change, and a
last time when they close (closed=True: the store's final version, and the trace to export).

`forget(collector_ids)` drops the state of collectors the server stopped tracking (ingest's cap on
collector ids), closing their open groups first.

`mark_gap(collector_id, start_ns, end_ns, reason)` says that the collector lost events in that
window (a gap in its sequence, kernel drops): every group of it whose window overlaps the gap, open
or closed within [limits] keep_closed, is marked incomplete and sent again (closed=False for one
that had closed: an update for the store; its trace is out already), and so is every later group
whose window overlaps it.

A `throttled` event in a batch says the same of one cgroup: its --cgroup-budget held back routine
events between its first and last timestamp. Only groups with a process or connection in that
cgroup, of a kind built from a type held back (Rule.routine_types), are marked (reason
"throttled: ..."): a noisy cgroup leaves its neighbours' groups complete. Both take one path
(_Collector.mark), with or without a bus: the owner of a node's partition feeds the same batches.

Time is each collector's own: the newest event timestamp it sent, moved on by the server's
monotonic clock while nothing newer arrives, so clock skew between nodes does not matter. A timer
thread calls tick() every [limits] tick; consume() and tick() take turns on one lock.
"""
import collections
import logging
import threading
import time

from tapio._fast.correlate import match_records
from tapio.server.correlation.config import CorrelationConfig
from tapio.server.correlation.recent import RecentBytes
from tapio.server.correlation.rules import RULES
from tapio.server.correlation.state import CollectorState, Gap
from tapio.vocab import EVENT_TYPE_NUMBERS

THROTTLED = EVENT_TYPE_NUMBERS["throttled"]
# why a group was marked incomplete (stats, metrics): its collector lost events (mark_gap), or a
# cgroup budget held back events of its cgroup (`throttled` events)
REASON_GAP, REASON_THROTTLED = MARK_REASONS = ("gap", "throttled")

log = logging.getLogger("tapio.server.correlation")


class CorrelationEngine:
    def __init__(self, config=None, on_group=None, monotonic=time.monotonic_ns, timer=True,
                 rules=RULES):
        self.config = config or CorrelationConfig()
        self.on_group = on_group
        self.monotonic = monotonic
        self.rules = tuple(rules)
        self._lock = threading.Lock()
        self._collectors = {}
        # the memory every collector's recent batches may take together ([limits] recent_memory)
        self.recent_budget = RecentBytes(self.config.limits.recent_memory)
        self.groups_opened = collections.Counter()
        self.groups_closed = collections.Counter()
        self.trees_rate_limited = 0
        self.sink_errors = 0
        self.gaps_marked = 0
        self.throttles_marked = 0       # `throttled` events that held back what a kind reads
        self.groups_marked_incomplete = 0
        self.marked_by_reason = collections.Counter()     # "gap" | "throttled" -> groups marked
        self._stop = threading.Event()
        self._thread = None
        if timer:
            self._thread = threading.Thread(target=self._timer, name="correlation-timer", daemon=True)
            self._thread.start()

    # -- the ingest consumer (engine thread) -----------------------------------------------------
    def consume(self, batch, state):
        if not len(batch):
            return
        collector_id = getattr(state, "collector_id", None) or batch.collector_id or "unknown"
        node = getattr(state, "node_name", "") or batch.node_name
        with self._lock:
            collector = self._collector(collector_id, node)
            collector.node = node or collector.node
            collector.feed(batch)

    __call__ = consume

    def _collector(self, collector_id, node=""):
        collector = self._collectors.get(collector_id)
        if collector is None:
            collector = self._collectors[collector_id] = _Collector(self, collector_id, node)
        return collector

    def mark_gap(self, collector_id, start_ns, end_ns, reason):
        """The collector's events between start_ns and end_ns (its clock, wall time in ns) are
        missing in part (`reason`: e.g. "sequence gap 120-180", "kernel drops: 37"). Marks its
        groups that overlap the window incomplete and sends them again; returns how many."""
        start_ns, end_ns = int(start_ns), int(end_ns)
        if end_ns < start_ns:
            raise ValueError(f"a gap must not end ({end_ns}) before it starts ({start_ns})")
        gap = Gap(start_ns, end_ns, str(reason), 0, None)
        with self._lock:
            collector = self._collector(collector_id)
            collector.gaps.append(gap)
            marked = collector.mark((gap,), {})
            self.gaps_marked += 1
            self.count_marked(REASON_GAP, marked)
        return marked

    def count_marked(self, reason, groups):
        self.groups_marked_incomplete += groups
        self.marked_by_reason[reason] += groups

    def forget(self, collector_ids):
        """The ingest forget listener: drop the state of collector ids the server no longer
        tracks, after closing their open groups (their last version is stored and exported)."""
        with self._lock:
            for collector_id in collector_ids:
                collector = self._collectors.pop(collector_id, None)
                if collector is None:
                    continue
                try:
                    collector.tick(True)
                except Exception:
                    log.exception("closing the groups of forgotten collector %s failed", collector_id)
                collector.recent.clear()

    def collectors(self):
        """How many collector ids the engine keeps state for."""
        with self._lock:
            return len(self._collectors)

    def tick(self, force=False):
        """Close what is due (the timer does this); with force, close everything now."""
        with self._lock:
            for collector in list(self._collectors.values()):
                try:
                    collector.tick(force)
                except Exception:
                    log.exception("correlation tick failed for collector %s", collector.collector_id)

    def _timer(self):
        interval = self.config.limits.tick
        while not self._stop.wait(interval):
            self.tick()

    def close(self, flush=True):
        """Stop the timer; with flush, close every open group (their last version is sent)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        if flush:
            self.tick(force=True)

    def emit(self, group, closed):
        if closed:
            group.status = "closed"
            self.groups_closed[group.kind] += 1
        if self.on_group is None:
            return
        try:
            self.on_group(group.to_dict(), closed)
        except Exception:
            self.sink_errors += 1
            log.exception("the group sink failed on a %s group", group.kind)

    def stats(self):
        with self._lock:
            per = {cid: c.stats() for cid, c in self._collectors.items()}
        return {
            "collectors": per,
            "groups_opened": dict(self.groups_opened),
            "groups_closed": dict(self.groups_closed),
            "trees_rate_limited": self.trees_rate_limited,
            "sink_errors": self.sink_errors,
            "gaps_marked": self.gaps_marked,
            "throttles_marked": self.throttles_marked,
            "groups_marked_incomplete": self.groups_marked_incomplete,
            "groups_marked_incomplete_by_reason": dict(self.marked_by_reason),
            "recent_bytes": self.recent_budget.nbytes,
            "recent_max_bytes": self.recent_budget.max_bytes,
        }


class _Collector(CollectorState):
    """One collector's state and its rules, and the dispatch between them."""

    def __init__(self, engine, collector_id, node):
        super().__init__(engine, collector_id, node, engine.rules)
        self.rules = [rule(self) for rule in engine.rules]

    def feed(self, batch):
        ordinal, hot, opened, max_ts = self.core.feed(batch)
        self.recent.add(ordinal, batch)
        if max_ts:
            self.clock.observe(max_ts)
        if hot:
            self.hot_events += len(hot)
            for i in hot:
                event = batch.event_dict(i)
                ts = event.get("timestamp_ns") or 0
                if ts > self.clock.limit():
                    # the rules see a time their windows can reach; the event says it was moved
                    event["timestamp_ns"] = self.clock.clamp(ts)
                    event["timestamp_clamped_from"] = ts
                for rule in self.rules:
                    rule.on_event(event)
                self.priority.append(event)
        for rule in self.rules:
            if hot or opened or rule.awaiting:
                rule.on_batch(batch, hot or (), opened)
        throttled = match_records(batch, THROTTLED)     # in C; [] for nearly every batch
        if throttled:
            self._throttled(batch, throttled)

    def _throttled(self, batch, indices):
        """The batch's `throttled` events: each remembered, and the groups it concerns marked."""
        new = {}
        for i in reversed(indices):                     # match_records lists the newest first
            gap = self.throttle_gap(batch.event_dict(i))
            if gap is not None:
                new.setdefault(gap.cgroup_id, []).append(gap)
                self.engine.throttles_marked += 1
        if new:
            self.engine.count_marked(REASON_THROTTLED, self.mark((), new))

    def mark(self, gaps, throttles):
        """Mark the open groups, and the closed ones kept, that the new `gaps` or `throttles`
        ({cgroup id: Gaps}) concern; each marked one is sent again. Returns how many."""
        kinds = set().union(*(gap.kinds for found in throttles.values() for gap in found))
        marked = 0
        for rule in self.rules:
            if not gaps and rule.kind not in kinds:
                continue
            for group in rule.open_groups():
                if self.note_gaps(group, gaps, throttles):
                    self.engine.emit(group, False)
                    marked += 1
        self.prune_closed()
        for _, group in self.closed:
            if self.note_gaps(group, gaps, throttles):
                self.engine.emit(group, False)
                marked += 1
        return marked

    def tick(self, force=False):
        now = self.clock.now()
        for rule in self.rules:
            rule.on_tick(now, force)

    def stats(self):
        out = super().stats()
        for rule in self.rules:
            out.update(rule.stats())
        return out
