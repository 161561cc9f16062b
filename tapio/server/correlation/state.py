"""What every rule of one collector shares: the compiled core, the recent batches, the clock,
the recent hot events, the way out for its groups, and the gaps in what the collector delivered
(a group whose window overlaps one is marked incomplete): events it lost, and the routine events
its --cgroup-budget held back of one cgroup (told by `throttled` events), which concern only that
cgroup's groups of the kinds that read them.

A rule (tapio/server/correlation/rules/) gets a CollectorState and reads from it; it never
imports another rule. The engine (engine.py) makes one CollectorState and one instance of each
rule per collector and dispatches to them.
"""
import collections
import itertools
import os
import time

from tapio._fast.correlate import Correlator
from tapio._fast.throttling import KINDS as ROUTINE_TYPES      # what a cgroup budget holds back
from tapio.server.correlation.groups import Group, fmt_duration
from tapio.server.correlation.recent import RecentBatches

SEC = 1_000_000_000
INT64_MAX = (1 << 63) - 1        # what a timestamp may be in SQLite, OTel and the C tables
NEVER = 0xFFFFFFFF
MAX_KEYS = 4096          # per-rule keyed state (crash-loop keys, OOM history scopes)
MAX_PENDING = 4096       # per-rule pending groups (fatal signals, OOM follow windows)
MAX_GAPS = 64            # gaps remembered per collector (the newest), for groups still to come
# throttle windows remembered per collector, for groups still to come: of the cgroups throttled
# last, the newest windows of each (a window is one budget interval: at 1/s, 8 s of a storm, more
# than a process tree's grace)
MAX_THROTTLED_CGROUPS = 64
THROTTLE_WINDOWS = 8
ROOT_CGROUP_ID = 1       # kernfs id of a cgroup hierarchy's root directory
SUBJECT_CONTEXT = ("container_id", "container_name", "pod_uid", "pod_name", "namespace",
                   "systemd_unit", "image")


class CollectorClock:
    """A collector's time: its newest event timestamp, moved on by the server's monotonic clock.

    A timestamp further than `max_skew_ns` ahead of the server's wall clock is taken as that
    bound instead (and counted in `clamped`): a collector's clock may run ahead of the server's,
    but one event stamped in the year 2500 (or 2^64-1) must not carry its time, and so every
    window it closes, out of reach for good."""

    def __init__(self, monotonic=time.monotonic_ns, max_skew_ns=3600 * SEC, wall=time.time_ns):
        self._monotonic = monotonic
        self._wall = wall
        self.max_skew_ns = max_skew_ns
        self._event_ns = 0
        self._at = 0
        self.clamped = 0

    def limit(self):
        """The latest event time taken as it is: the server's wall clock plus the skew."""
        return self._wall() + self.max_skew_ns

    def clamp(self, event_ns):
        """`event_ns`, or the limit when it is further ahead (counted)."""
        limit = self.limit()
        if event_ns > limit:
            self.clamped += 1
            return limit
        return event_ns

    def observe(self, event_ns):
        event_ns = self.clamp(event_ns)
        if event_ns > self.now(default=0):
            self._event_ns = event_ns
            self._at = self._monotonic()

    def now(self, default=None):
        if not self._event_ns:
            return time.time_ns() if default is None else default
        return min(self._event_ns + max(0, self._monotonic() - self._at), INT64_MAX)


class Gap(collections.namedtuple("Gap", "start_ns end_ns reason cgroup_id kinds")):
    """Events of a collector that never reached the server, between start_ns and end_ns (its
    clock): any of them (cgroup_id 0, kinds None: a gap in its sequence, kernel drops), or the
    routine events of cgroup `cgroup_id` that its budget held back, which only groups of the
    `kinds` that read those types (Rule.routine_types) and with a process or connection in
    that cgroup could have used."""
    __slots__ = ()

    def concerns(self, group, end_ns):
        """Whether `group`, its window ending at `end_ns`, may miss events of this gap."""
        if self.start_ns > end_ns or group.start_ns > self.end_ns:
            return False
        return not self.cgroup_id or (group.kind in self.kinds and self.cgroup_id in group.cgroups)


class CollectorState:
    """The correlation state one collector's rules share. `engine` receives what they emit
    (emit, and the counters groups_opened / groups_closed); `rule_classes` say what the compiled
    core must do for them (Rule.core_options)."""

    def __init__(self, engine, collector_id, node, rule_classes):
        self.engine = engine
        self.collector_id = collector_id
        self.node = node
        cfg = self.config = engine.config
        options = {"max_processes": cfg.limits.max_processes,
                   "max_connections": cfg.limits.max_destinations, "hot_signals": set()}
        for rule in rule_classes:
            for key, value in rule.core_options(cfg).items():
                if key == "hot_signals":
                    options["hot_signals"] |= set(value)
                else:
                    options[key] = value
        self.core = Correlator(**options)
        self.recent = RecentBatches(cfg.limits.recent_events, getattr(engine, "recent_budget", None))
        self.clock = CollectorClock(engine.monotonic, int(cfg.limits.max_clock_skew * SEC))
        self.priority = collections.deque(maxlen=512)   # recent hot events, for late linking
        self.hot_events = 0
        self.gaps = collections.deque(maxlen=MAX_GAPS)  # Gaps of all its events
        self.throttles = collections.OrderedDict()      # cgroup id -> deque of its throttle Gaps
        # routine type -> the kinds whose groups are built from it
        self.readers = {t: frozenset(r.kind for r in rule_classes if t in r.routine_types)
                        for t in ROUTINE_TYPES}
        self.closed = collections.deque()               # (monotonic ns when closed, Group)
        self._opened_at = {}                            # (kind, start_ns) -> groups made so far

    # -- groups ---------------------------------------------------------------------------------
    def new_group(self, kind, start_ns):
        # groups of one kind opened at one instant are told apart by their order: replayed
        # events make them again in the same order, with the same ids (groups.group_id)
        key = (kind, start_ns)
        ordinal = self._opened_at.get(key, 0)
        self._opened_at[key] = ordinal + 1
        if len(self._opened_at) > 4096:
            self._opened_at.pop(next(iter(self._opened_at)))
        return Group(kind, self.collector_id, self.node, start_ns, self.config.limits.max_group_events,
                     clamp=self.clock.clamp, ordinal=ordinal)

    def open(self, group):
        """A new group, stored while it grows."""
        self.engine.groups_opened[group.kind] += 1
        self.emit(group, False)

    def finish(self, group):
        """A group built and closed at once (process trees, fatal signals)."""
        self.engine.groups_opened[group.kind] += 1
        self.emit(group, True)

    def emit(self, group, closed):
        self.note_gaps(group)
        if closed:
            self.closed.append((self.engine.monotonic(), group))
            self.prune_closed()
        self.engine.emit(group, closed)

    # -- gaps: events of this collector that never arrived ----------------------------------------
    def note_gaps(self, group, gaps=None, throttles=None):
        """Mark `group` incomplete for each gap that concerns it (Gap.concerns): of `gaps` and of
        `throttles` ({cgroup id: its throttle Gaps}), by default every one remembered. True when
        that told it something new. An open group's window reaches to now: it is still
        listening."""
        gaps = self.gaps if gaps is None else gaps
        throttles = self.throttles if throttles is None else throttles
        mine = [gap for cgroup_id in group.cgroups for gap in throttles.get(cgroup_id, ())] \
            if throttles else ()
        if not gaps and not mine:
            return False
        end = group.end_ns if group.status == "closed" else max(group.end_ns, self.clock.now())
        changed = False
        for gap in itertools.chain(gaps, mine):
            if gap.concerns(group, end):
                changed |= group.mark_incomplete(gap.start_ns, gap.end_ns, gap.reason, gap.cgroup_id)
        return changed

    def throttle_gap(self, event):
        """The Gap a `throttled` event tells of, remembered for groups still to come; None when
        no kind reads what it held back (tcp_accept, tcp_close)."""
        held = event.get("throttled") or {}
        cgroup_id = event.get("cgroup_id") or 0
        kinds = frozenset().union(*(self.readers[t] for t in ROUTINE_TYPES if held.get(t)))
        if not cgroup_id or not kinds:
            return None
        # the collector's word: a window that ends before it starts is taken the right way round
        first = held.get("first_timestamp_ns") or event.get("timestamp_ns") or 0
        last = held.get("last_timestamp_ns") or first
        what = ", ".join(f"{held[t]} {t}" for t in ROUTINE_TYPES if held.get(t))
        reason = (f"throttled: {what} held back (budget {held.get('budget', 0)} per "
                  f"{fmt_duration(held.get('interval_ns') or 0)})")
        gap = Gap(min(first, last), max(first, last), reason, cgroup_id, kinds)
        windows = self.throttles.pop(cgroup_id, None) or collections.deque(maxlen=THROTTLE_WINDOWS)
        windows.append(gap)
        self.throttles[cgroup_id] = windows
        while len(self.throttles) > MAX_THROTTLED_CGROUPS:
            self.throttles.popitem(last=False)
        return gap

    def prune_closed(self):
        limits = self.config.limits
        horizon = self.engine.monotonic() - int(limits.keep_closed * SEC)
        while self.closed and (self.closed[0][0] < horizon or len(self.closed) > limits.max_closed_kept):
            self.closed.popleft()

    def stats(self):
        out = self.core.stats()
        out.update(recent_events=len(self.recent), recent_batches_evicted=self.recent.evicted,
                   hot_events=self.hot_events, gaps=len(self.gaps),
                   throttle_windows=sum(len(w) for w in self.throttles.values()),
                   timestamps_clamped=self.clock.clamped,
                   closed_groups_kept=len(self.closed))
        return out


class Rule:
    """One group kind. The engine makes one per collector and calls, in this order:

    on_event(event)           each hot record of a batch (failed exits, exits in watched cgroups,
                              the signals some rule asked for, OOM kills), as an event dict
    on_batch(batch, hot, opened)  once the batch's hot records were dispatched: the batch, the
                              indices of its hot records, the destination slots that crossed the
                              connectivity threshold (None when there are none); for a batch
                              with neither, only while the rule's `awaiting` is true (it waits
                              for what a later batch may bring)
    on_tick(now, force)       every [limits] tick, with the collector's time; force: shutdown,
                              close everything now
    open_groups()             the groups it holds open (they may still change)

    `core_options(config)` says what the compiled core must do for the rule (its tree or
    connection settings, the signals it must see); `stats()` adds the rule's counters."""

    kind = ""
    # the routine event types (those a collector's --cgroup-budget may hold back:
    # tapio._fast.throttling.KINDS) its groups are built from: a group of the kind is marked
    # incomplete when its cgroup held back one of them within the group's window
    routine_types = ()
    awaiting = False

    def __init__(self, state):
        self.state = state
        self.config = state.config
        self.core = state.core
        self.recent = state.recent

    @classmethod
    def core_options(cls, config):
        return {}

    def on_event(self, event):
        pass

    def on_batch(self, batch, hot, opened):
        pass

    def on_tick(self, now, force):
        pass

    def open_groups(self):
        return ()

    def stats(self):
        return {}


# ---- facts shared by rules ---------------------------------------------------------------------

def shared_cgroup(event):
    """Whether an event's cgroup (v2) is one that unrelated processes share: the root cgroup, a
    slice (system.slice, user.slice, kubepods.slice, ...) or init.scope. Being in one says
    nothing about belonging together. Without the cgroup's path (no enrichment) only the root
    is known for sure."""
    if event.get("cgroup_id") == ROOT_CGROUP_ID:
        return True
    path = (event.get("context") or {}).get("cgroup_path") or ""
    if not path:
        return False
    name = os.path.basename(path.rstrip("/"))
    return name == "" or name.endswith(".slice") or name == "init.scope"


def process_entry(node, exec_ev, exit_ev, now_ns, fallback=None):
    """One process of a group, as the trace shows it: a span from its exec (or its start) to
    its exit (or `now_ns` while it runs), with what its events tell."""
    if exec_ev is not None and exec_ev.get("type") != "exec":
        exec_ev = None
    base = exec_ev or exit_ev or fallback or {}
    process = {}
    for e in (exit_ev, exec_ev, fallback):   # enrichment facts, from whichever event has them
        if e and e.get("process"):
            process = e["process"]
    exec_details = (exec_ev or {}).get("exec") or {}
    exit_details = (exit_ev or {}).get("exit") or {}
    pid = node["pid"] if node else base.get("pid")
    entry = {
        "pid": pid,
        "ppid": node["ppid"] if node else base.get("ppid"),
        "parent": node["parent"] if node and node["parent"] is not None else -1,
        "comm": (node["comm"] if node else None) or base.get("comm") or "",
        "executable": exec_details.get("filename") or process.get("executable") or "",
        "command_line": process.get("command_line") or " ".join(exec_details.get("args") or []),
        "user": process.get("user", ""),
    }
    if node:
        start, end = node["start_ns"], node["exit_ns"]
        code, sig, core = node["exit_code"], node["signal"], node["core_dumped"]
        state = node["state"]
    else:
        start = (exec_ev or {}).get("timestamp_ns") or exit_details.get("start_time_ns") or \
            process.get("start_time_ns") or base.get("timestamp_ns") or now_ns
        end = (exit_ev or {}).get("timestamp_ns") or 0
        code, sig = exit_details.get("exit_code", 0), exit_details.get("signal", 0)
        core = bool(exit_details.get("core_dumped"))
        state = "exited" if exit_ev else "running"
    if not start and exit_details.get("start_time_ns"):
        start = exit_details["start_time_ns"]
    entry.update(start_ns=start or now_ns, end_ns=end or max(now_ns, start or now_ns),
                 exit_code=code, signal=sig, core_dumped=bool(core), state=state,
                 exec_event=(exec_ev or {}).get("id"), exit_event=(exit_ev or {}).get("id"),
                 context={k: v for k, v in (base.get("context") or {}).items() if k != "labels"})
    return entry
