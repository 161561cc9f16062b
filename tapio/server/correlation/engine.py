"""The correlation engine: an ingest consumer that turns each collector's events into groups.

Per collector (node) it keeps a compiled Correlator (tapio._fast.correlate: the process table
and its trees, failed connects per destination) that reads every record in C, and in Python only
what may become a group: failed exits, fatal signals, OOM kills, trees that finished,
destinations that crossed their threshold. See docs/correlation.md for the rules.

Groups go to `on_group(group_dict, closed)`: once when they open (a crash loop, an OOM kill, a
connectivity degradation: the store shows them while they grow), again when they change, and a
last time when they close (closed=True: the store's final version, and the trace to export).

Time is each collector's own: the newest event timestamp it sent, moved on by the server's
monotonic clock while nothing newer arrives, so clock skew between nodes does not matter. A timer
thread calls tick() every [limits] tick; consume() and tick() take turns on one lock.
"""
import collections
import logging
import signal as _signal
import threading
import time

from tapio import vocab
from tapio._fast.correlate import Correlator, match_records
from tapio.server.correlation.config import CorrelationConfig
from tapio.server.correlation.groups import (
    SI_CODES, Group, counted, fmt_bytes, fmt_duration, subject_name, where,
)
from tapio.server.correlation.recent import RecentBatches

log = logging.getLogger("tapio.server.correlation")

NODE_FIELDS = Correlator.NODE_FIELDS
NEVER = 0xFFFFFFFF
SEC = 1_000_000_000
SIGKILL = int(_signal.SIGKILL)
EXIT = 2                 # EventType
MAX_CRASH_KEYS = 4096
MAX_PENDING = 4096
SUBJECT_CONTEXT = ("container_id", "container_name", "pod_uid", "pod_name", "namespace",
                   "systemd_unit", "image")
CONNECT_RESULTS = ("ok", "refused", "timed_out", "reset", "unreachable", "other")


class CollectorClock:
    """A collector's time: its newest event timestamp, moved on by the server's monotonic clock."""

    def __init__(self, monotonic=time.monotonic_ns):
        self._monotonic = monotonic
        self._event_ns = 0
        self._at = 0

    def observe(self, event_ns):
        if event_ns > self.now(default=0):
            self._event_ns = event_ns
            self._at = self._monotonic()

    def now(self, default=None):
        if not self._event_ns:
            return time.time_ns() if default is None else default
        return self._event_ns + max(0, self._monotonic() - self._at)


class CorrelationEngine:
    def __init__(self, config=None, on_group=None, monotonic=time.monotonic_ns, timer=True):
        self.config = config or CorrelationConfig()
        self.on_group = on_group
        self.monotonic = monotonic
        self._lock = threading.Lock()
        self._collectors = {}
        self.groups_opened = collections.Counter()
        self.groups_closed = collections.Counter()
        self.trees_rate_limited = 0
        self.sink_errors = 0
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
            collector = self._collectors.get(collector_id)
            if collector is None:
                collector = self._collectors[collector_id] = _Collector(self, collector_id, node)
            collector.node = node or collector.node
            collector.feed(batch)

    __call__ = consume

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
        }


class _Crash:
    __slots__ = ("exits", "group", "last_ns")

    def __init__(self):
        self.exits = collections.deque()
        self.group = None
        self.last_ns = 0


class _Fatal:
    __slots__ = ("pid", "signal", "exit", "due_ns")

    def __init__(self, pid, due_ns):
        self.pid = pid
        self.signal = None
        self.exit = None
        self.due_ns = due_ns


class _Oom:
    __slots__ = ("group", "event", "victim", "cgroup_id", "container_id", "kill_ns", "until_ns",
                 "kills", "victim_exit", "victim_signal", "followers")

    def __init__(self, group, event, until_ns, kills):
        self.group = group
        self.event = event
        self.victim = event["pid"]
        self.cgroup_id = event.get("cgroup_id")
        self.container_id = (event.get("context") or {}).get("container_id")
        self.kill_ns = event["timestamp_ns"]
        self.until_ns = until_ns
        self.kills = kills
        self.victim_exit = None
        self.victim_signal = None
        self.followers = []


class _Collector:
    """The correlation state of one collector."""

    def __init__(self, engine, collector_id, node):
        self.engine = engine
        self.collector_id = collector_id
        self.node = node
        cfg = self.config = engine.config
        tree, conn = cfg.process_tree, cfg.connectivity
        self.core = Correlator(
            max_processes=cfg.limits.max_processes, max_tree_processes=tree.max_processes,
            min_processes=tree.min_processes if tree.enabled else NEVER,
            min_processes_failed=tree.min_processes_failed if tree.enabled else NEVER,
            tree_grace_s=tree.grace, tree_max_s=tree.max_duration,
            split_on_cgroup=tree.split_on_cgroup, max_connections=cfg.limits.max_destinations,
            conn_threshold=conn.threshold, conn_window_s=conn.window,
            conn_close_after_s=conn.close_after, conn_max_s=conn.max_duration,
            conn_failures=cfg.connect_failure_codes() if conn.enabled else (),
            # fatal-signal groups want their signals; an OOM group its victim's SIGKILL
            hot_signals=(cfg.fatal_signal_numbers() if cfg.fatal_signal.enabled else frozenset())
            | {_signal.SIGKILL})
        self.recent = RecentBatches(cfg.limits.recent_events)
        self.clock = CollectorClock(engine.monotonic)
        self.fatal_signals = cfg.fatal_signal_numbers() if cfg.fatal_signal.enabled else frozenset()
        self.crash = collections.OrderedDict()     # (scope, executable) -> _Crash
        self.fatal = {}                            # pid -> _Fatal
        self.ooms = []                             # _Oom within their follow window
        self.oom_history = {}                      # container or cgroup -> deque of kill times
        self.conn_groups = {}                      # destination slot -> Group
        self.priority = collections.deque(maxlen=512)   # recent hot events, for late linking
        self.tree_tokens = float(tree.max_groups_per_minute)
        self.tree_tokens_at = engine.monotonic()
        self.hot_events = 0
        self.crash_scanned = 0

    def new_group(self, kind, start_ns):
        return Group(kind, self.collector_id, self.node, start_ns, self.config.limits.max_group_events)

    def open(self, group):
        self.engine.groups_opened[group.kind] += 1
        self.engine.emit(group, False)

    def stats(self):
        out = self.core.stats()
        out.update(recent_events=len(self.recent), recent_batches_evicted=self.recent.evicted,
                   hot_events=self.hot_events, crash_keys=len(self.crash),
                   pending_fatal=len(self.fatal), pending_oom=len(self.ooms),
                   open_connectivity=len(self.conn_groups))
        return out

    # -- feeding ----------------------------------------------------------------------------------
    def feed(self, batch):
        ordinal, hot, opened, max_ts = self.core.feed(batch)
        self.recent.add(ordinal, batch)
        if max_ts:
            self.clock.observe(max_ts)
        if hot:
            self.hot_events += len(hot)
            ooms = len(self.ooms)
            for i in hot:
                self._hot(batch.event_dict(i))
            if len(self.ooms) > ooms:
                # the cgroup was not watched yet when C read this batch: its other exits now
                seen = set(hot)
                for i in match_records(batch, EXIT):
                    if i not in seen:
                        self._oom_exit(batch.event_dict(i))
        if opened:
            for slot in opened:
                self._conn_opened(slot)

    def _hot(self, event):
        kind = event["type"]
        if kind == "exit":
            x = event.get("exit") or {}
            self._oom_exit(event)
            if x.get("exit_code") or x.get("signal"):
                self._fatal_exit(event)
                self._crash_exit(event)
        elif kind == "signal":
            self._oom_signal(event)
            self._fatal_signal(event)
        elif kind == "oom_kill":
            self._oom(event)
        self.priority.append(event)

    # -- time ----------------------------------------------------------------------------------
    def tick(self, force=False):
        now = self.clock.now()
        # process-tree groups are rate-limited (a token bucket): the core frees the trees over
        # the budget without building them
        limit = self.config.process_tree.max_groups_per_minute
        t = self.engine.monotonic()
        self.tree_tokens = min(float(limit), self.tree_tokens + (t - self.tree_tokens_at) / 60e9 * limit)
        self.tree_tokens_at = t
        suppressed = self.core.trees_suppressed
        trees, updated, closed = self.core.tick(now, force, int(self.tree_tokens))
        self.tree_tokens -= len(trees)
        self.engine.trees_rate_limited += self.core.trees_suppressed - suppressed
        for info, nodes in trees:
            self._tree(info, nodes, now)
        for slot in updated:
            group = self.conn_groups.get(slot)
            info = self.core.conn_info(slot)
            if group is not None and info is not None:
                self._conn_fill(group, info)
                self.engine.emit(group, False)
        for info in closed:
            group = self.conn_groups.pop(info["slot"], None)
            if group is not None:
                self._conn_fill(group, info)
                self.engine.emit(group, True)
        for pid, pending in list(self.fatal.items()):
            if force or pending.due_ns <= now:
                del self.fatal[pid]
                self._fatal_close(pending)
        for pending in list(self.ooms):
            if force or pending.until_ns <= now:
                self.ooms.remove(pending)
                self._oom_fill(pending)
                self.engine.emit(pending.group, True)
        # crash-loop states: once a second is enough (their windows are seconds to minutes)
        t = self.engine.monotonic()
        if not force and t - self.crash_scanned < SEC:
            return
        self.crash_scanned = t
        window = int(self.config.crash_loop.window * SEC)
        close_after = int(self.config.crash_loop.close_after * SEC)
        max_ns = int(self.config.crash_loop.max_duration * SEC)
        for key, state in list(self.crash.items()):
            if state.group is not None:
                if force or now - state.last_ns >= close_after or now - state.group.start_ns >= max_ns:
                    self.engine.emit(state.group, True)
                    del self.crash[key]
            elif not state.exits or now - state.exits[-1]["timestamp_ns"] > window:
                del self.crash[key]

    # -- process trees ---------------------------------------------------------------------------
    def _tree(self, info, nodes, now):
        nodes = [dict(zip(NODE_FIELDS, n)) for n in nodes]
        group = self.new_group("process_tree", nodes[0]["start_ns"])
        processes = [self._process(n, now) for n in nodes]
        for n, p in zip(nodes, processes):
            for ref in (n["first_exec"], n["last_exec"], n["exit_event"]):
                if ref is not None:
                    group.add_event(self.recent.event(ref), self.recent.event_id(ref))
            group.span(p["start_ns"], p["end_ns"])
        root = processes[0]
        failed = [p for p in processes if p["state"] == "exited" and (p["exit_code"] or p["signal"])]
        group.attributes["processes"] = processes
        group.set_subject(None, pid=root["pid"], comm=root["comm"], executable=root["executable"],
                          command_line=root["command_line"],
                          **{k: v for k, v in root["context"].items() if k in SUBJECT_CONTEXT})
        group.attributes.update(pids=[p["pid"] for p in processes], process_count=info["processes"],
                                failed=len(failed), running=info["live"],
                                not_recorded=info["dropped"], partial=info["forced"])
        group.severity = "warning" if failed else "info"
        names = collections.Counter()
        for p in processes[1:]:
            label = p["comm"] + (f" ({vocab.exit_text(p['exit_code'], p['signal'])})"
                                 if p["exit_code"] or p["signal"] else "")
            names[label] += 1
        ran = counted(names) if names else "no other process"
        place = where(root.get("context"))
        group.summary = (f"{root['comm']} (pid {root['pid']}{', ' + place if place else ''}) and "
                         f"{info['processes'] - 1} descendant(s) in "
                         f"{fmt_duration(group.end_ns - group.start_ns)}: {ran}"
                         + (f"; {vocab.exit_text(root['exit_code'], root['signal'])}"
                            if root["exit_code"] or root["signal"] else "")
                         + (" (still running when closed)" if info["forced"] else ""))
        if failed:
            first = min(failed, key=lambda p: p["end_ns"])
            group.root_cause = (f"{first['comm']} (pid {first['pid']}) "
                                f"{vocab.exit_text(first['exit_code'], first['signal'], first['core_dumped'])}")
        group.status = "closed"
        self.engine.groups_opened[group.kind] += 1
        self.engine.emit(group, True)

    def _process(self, node, now):
        """A process of a group, for its span: from the table's node and its exec/exit events."""
        first = self.recent.event(node["first_exec"]) if node["first_exec"] else None
        last = self.recent.event(node["last_exec"]) if node["last_exec"] else None
        exit_ev = self.recent.event(node["exit_event"]) if node["exit_event"] else None
        return process_entry(node, last or first, exit_ev, now)

    # -- crash loops --------------------------------------------------------------------------
    def _crash_key(self, event):
        cfg = self.config.crash_loop
        context = event.get("context") or {}
        process = event.get("process") or {}
        executable = process.get("executable") or event.get("comm") or "?"
        unit = context.get("systemd_unit", "")
        if "container" in cfg.scopes and context.get("container_id"):
            return ("container", context["container_id"]), executable
        if unit and ("unit" in cfg.scopes or ("service" in cfg.scopes and unit.endswith(".service"))):
            return ("unit", unit), executable
        if "cgroup" in cfg.scopes:
            return ("cgroup", event.get("cgroup_id")), executable
        return None

    def _crash_exit(self, event):
        cfg = self.config.crash_loop
        if not cfg.enabled:
            return
        key = self._crash_key(event)
        if key is None:
            return
        state = self.crash.get(key)
        if state is None:
            state = self.crash[key] = _Crash()
            while len(self.crash) > MAX_CRASH_KEYS:
                _, old = self.crash.popitem(last=False)
                if old.group is not None:
                    self.engine.emit(old.group, True)
        else:
            self.crash.move_to_end(key)
        ts = event["timestamp_ns"]
        state.last_ns = max(state.last_ns, ts)
        if state.group is not None:
            state.group.add_event(event)
            self._crash_fill(state.group, key)
            self.engine.emit(state.group, False)
            return
        state.exits.append(event)
        window = int(cfg.window * SEC)
        while state.exits and ts - state.exits[0]["timestamp_ns"] > window:
            state.exits.popleft()
        if sum(e.get("count", 1) for e in state.exits) >= cfg.threshold:
            group = state.group = self.new_group("crash_loop", state.exits[0]["timestamp_ns"])
            for e in state.exits:
                group.add_event(e)
            state.exits.clear()
            self._crash_fill(group, key)
            self.open(group)

    def _crash_fill(self, group, key):
        (scope_kind, scope), executable = key
        exits = sorted((e for e in group.events if e["type"] == "exit"), key=lambda e: e["timestamp_ns"])
        last = exits[-1]
        group.set_subject(last, executable=executable)
        outcomes = collections.Counter()
        codes = collections.Counter()
        for e in exits:
            x = e["exit"]
            outcomes[vocab.exit_text(x["exit_code"], x["signal"])] += e.get("count", 1)
            codes[str(x["signal_name"] if x["signal"] else x["exit_code"])] += e.get("count", 1)
        times = [e["timestamp_ns"] for e in exits]
        intervals = [round((b - a) / 1e9, 3) for a, b in zip(times, times[1:])]
        n = sum(e.get("count", 1) for e in exits)
        group.attributes.update(
            scope=scope_kind, scope_id=str(scope), restarts=n, exit_codes=dict(codes),
            intervals_s=intervals,
            mean_interval_s=round(sum(intervals) / len(intervals), 3) if intervals else None,
            exits=[{"pid": e["pid"], "timestamp_ns": e["timestamp_ns"],
                    "exit_code": e["exit"]["exit_code"], "signal": e["exit"]["signal"],
                    "duration_ns": e["exit"]["duration_ns"]} for e in exits],
            pids=sorted({e["pid"] for e in exits}),
            processes=[process_entry(None, e, e, e["timestamp_ns"]) for e in exits])
        name = executable.rsplit("/", 1)[-1]
        place = where(last.get("context"))
        span = fmt_duration(times[-1] - times[0]) if len(times) > 1 else "a moment"
        group.summary = (f"{name}{' in ' + place if place else ''} failed {n} times in {span} "
                         f"({counted(outcomes)})"
                         + (f"; restarts every ~{fmt_duration(int(sum(intervals) / len(intervals) * 1e9))}"
                            if intervals else ""))
        oom = self._recent_oom(scope if scope_kind == "container" else None, last.get("cgroup_id"))
        if oom is not None:
            group.root_cause = (f"OOM kills: memory limit {fmt_bytes(oom['oom_kill']['memcg_limit_bytes'])} "
                                f"of {oom['oom_kill']['memcg_name'] or 'its memory cgroup'}")
        elif len(outcomes) == 1:
            group.root_cause = f"{name} {next(iter(outcomes))} every time"
        severe = n >= 2 * self.config.crash_loop.threshold
        group.severity = "critical" if severe else "error"
        group.confidence = 0.9 if scope_kind in ("container", "unit") else 0.7

    def _recent_oom(self, container_id, cgroup_id):
        window = int(self.config.crash_loop.window * SEC)
        now = self.clock.now()
        for e in reversed(self.priority):
            if e["type"] != "oom_kill" or now - e["timestamp_ns"] > window:
                continue
            if (container_id and (e.get("context") or {}).get("container_id") == container_id) \
                    or (cgroup_id is not None and e.get("cgroup_id") == cgroup_id):
                return e
        return None

    # -- fatal signals ------------------------------------------------------------------------
    def _fatal_signal(self, event):
        sig = event["signal"]["signal"]
        if sig not in self.fatal_signals:
            return
        pending = self._fatal_pending(event["pid"], event["timestamp_ns"] + int(self.config.fatal_signal.grace * SEC))
        if pending is not None and pending.signal is None:
            pending.signal = event

    def _fatal_exit(self, event):
        if event["exit"]["signal"] not in self.fatal_signals:
            return
        pending = self._fatal_pending(event["pid"], event["timestamp_ns"] + int(self.config.fatal_signal.grace * SEC))
        if pending is None:
            return
        pending.exit = event
        # the exit is the end of the story: close soon (a late signal event may still come)
        pending.due_ns = min(pending.due_ns, event["timestamp_ns"] + SEC // 2)

    def _fatal_pending(self, pid, due_ns):
        pending = self.fatal.get(pid)
        if pending is None:
            if len(self.fatal) >= MAX_PENDING:
                return None
            pending = self.fatal[pid] = _Fatal(pid, due_ns)
        return pending

    def _fatal_close(self, pending):
        sig_ev, exit_ev = pending.signal, pending.exit
        base = sig_ev or exit_ev
        pid = pending.pid
        group = self.new_group("fatal_signal", base["timestamp_ns"])
        node = self.core.process(pid)
        exec_ev = None
        if node is not None and node["last_exec"] is not None:
            exec_ev = self.recent.event(node["last_exec"])
            if exec_ev is not None and exec_ev["pid"] != pid:
                exec_ev = None
        for e in (exec_ev, sig_ev, exit_ev):
            if e is not None:
                group.add_event(e)
        group.set_subject(exit_ev or sig_ev)
        if exec_ev is not None:
            group.set_subject(exec_ev)
        number = sig_ev["signal"]["signal"] if sig_ev else exit_ev["exit"]["signal"]
        name = vocab.signal_text(number)
        ppid = ((exit_ev or {}).get("ppid") or (node or {}).get("ppid")
                or (sig_ev or {}).get("ppid") or 0)
        parent = self.core.process(ppid) if ppid else None
        parent_exec = self.recent.event(parent["last_exec"]) if parent and parent["last_exec"] else None
        core = bool(exit_ev and exit_ev["exit"].get("core_dumped"))
        entry = process_entry(node if node and node["pid"] == pid else None, exec_ev, exit_ev,
                              base["timestamp_ns"], fallback=base)
        group.attributes.update(
            signal=name, signal_number=number, core_dumped=core, ppid=ppid,
            parent_comm=(parent or {}).get("comm") or (parent_exec or {}).get("comm"),
            parent_executable=((parent_exec or {}).get("process") or {}).get("executable"),
            pids=[pid], processes=[entry])
        if sig_ev is not None:
            s = sig_ev["signal"]
            group.attributes.update(si_code=s["code"], sender_pid=s["sender_pid"],
                                    sender_comm=s["sender_comm"])
            if s["sender_pid"] == pid and s["code"] > 0:
                what = SI_CODES.get(number, {}).get(s["code"], f"si_code {s['code']}")
                group.root_cause = f"a fault in the process itself: {name} ({what})"
            elif s["sender_pid"] == pid or s["sender_pid"] == 0:
                group.root_cause = (f"the process raised {name} itself (abort(), a failed assertion "
                                    "or an uncaught exception)" if number == _signal.SIGABRT
                                    else f"the process raised {name} itself")
            else:
                group.root_cause = f"{name} sent by {s['sender_comm']} (pid {s['sender_pid']})"
        who = subject_name(exec_ev or exit_ev or base)
        place = where((exit_ev or base).get("context") or (exec_ev or {}).get("context"))
        parent_text = ""
        if ppid:
            pname = group.attributes.get("parent_comm")
            parent_text = f"; parent {pname} (pid {ppid})" if pname else f"; parent pid {ppid}"
        group.summary = (f"{who} (pid {pid}{', ' + place if place else ''}) killed by {name}"
                         f"{' (core dumped)' if core else ''}{parent_text}")
        group.severity = "error"
        group.confidence = 1.0 if sig_ev is not None and exit_ev is not None else 0.8
        group.status = "closed"
        self.engine.groups_opened[group.kind] += 1
        self.engine.emit(group, True)

    # -- OOM kills ----------------------------------------------------------------------------
    def _oom(self, event):
        cfg = self.config.oom_kill
        if not cfg.enabled:
            return
        ts = event["timestamp_ns"]
        group = self.new_group("oom_kill", ts)
        group.add_event(event)
        context = event.get("context") or {}
        scope = context.get("container_id") or f"cgroup:{event.get('cgroup_id')}"
        history = self.oom_history.setdefault(scope, collections.deque())
        history.append(ts)
        while history and ts - history[0] > int(cfg.history * SEC):
            history.popleft()
        if len(self.oom_history) > MAX_CRASH_KEYS:
            self.oom_history.pop(next(iter(self.oom_history)))
        pending = _Oom(group, event, ts + int(cfg.follow * SEC), len(history))
        node = self.core.process(pending.victim)
        if node is not None and node["last_exec"] is not None:
            exec_ev = self.recent.event(node["last_exec"])
            if exec_ev is not None and exec_ev["pid"] == pending.victim:
                group.add_event(exec_ev)
        for e in self.priority:    # the victim's signal and exit, when they came first
            if e["pid"] == pending.victim and e["timestamp_ns"] >= ts - SEC:
                self._oom_link(pending, e)
        if pending.cgroup_id:
            self.core.watch_cgroup(pending.cgroup_id, pending.until_ns)
        if len(self.ooms) < MAX_PENDING:
            self.ooms.append(pending)
        self._oom_fill(pending)
        self.open(group)
        if len(self.ooms) >= MAX_PENDING:
            self.engine.emit(group, True)

    def _oom_link(self, pending, event):
        kind = event["type"]
        if kind == "exit" and event["pid"] == pending.victim:
            pending.victim_exit = event
        elif kind == "signal" and event["pid"] == pending.victim and event["signal"]["signal"] == SIGKILL:
            pending.victim_signal = event
        else:
            return
        pending.group.add_event(event)

    def _oom_exit(self, event):
        for pending in self.ooms:
            if event["pid"] == pending.victim:
                self._oom_link(pending, event)
                continue
            ts = event["timestamp_ns"]
            if not pending.kill_ns <= ts <= pending.until_ns:
                continue
            context = event.get("context") or {}
            same = (context.get("container_id") == pending.container_id if pending.container_id
                    else event.get("cgroup_id") == pending.cgroup_id)
            if same and pending.group.add_event(event):
                pending.followers.append(event)

    def _oom_signal(self, event):
        for pending in self.ooms:
            if event["pid"] == pending.victim:
                self._oom_link(pending, event)

    def _oom_fill(self, pending):
        group, event = pending.group, pending.event
        oom = event["oom_kill"]
        group.set_subject(event)
        group.severity = "critical"
        group.confidence = 1.0
        node = self.core.process(pending.victim)
        if node is not None and node["pid"] != pending.victim:
            node = None
        exec_ev = next((e for e in group.events if e["type"] == "exec" and e["pid"] == pending.victim), None)
        victim = process_entry(node, exec_ev, pending.victim_exit, event["timestamp_ns"], fallback=event)
        followers = [process_entry(None, e, e, e["timestamp_ns"]) for e in pending.followers]
        if exec_ev is not None:
            group.set_subject(exec_ev)
        group.attributes.update(
            memcg_name=oom["memcg_name"], memcg_id=oom["memcg_id"],
            memcg_limit_bytes=oom["memcg_limit_bytes"], memcg_usage_bytes=oom["memcg_usage_bytes"],
            rss_bytes=oom["rss_bytes"], total_vm_bytes=oom["total_vm_bytes"],
            trigger_pid=oom["trigger_pid"], trigger_comm=oom["trigger_comm"],
            victim_exited=pending.victim_exit is not None, followers=len(pending.followers),
            kills_in_history=pending.kills, pids=[pending.victim] + [e["pid"] for e in pending.followers],
            processes=[victim] + followers)
        who = subject_name(exec_ev or event)
        place = where(event.get("context"), unit=True)
        limit = oom["memcg_limit_bytes"]
        text = (f"{who} (pid {pending.victim}{', ' + place if place else ''}) OOM-killed at "
                f"{fmt_bytes(oom['rss_bytes'])} RSS")
        if limit and limit < (1 << 60):
            text += f" of a {fmt_bytes(limit)} limit"
        if pending.followers:
            text += f"; {len(pending.followers)} more process(es) of it exited right after"
        if pending.kills > 1:
            text += (f"; OOM-killed {pending.kills} times in "
                     f"{fmt_duration(int(self.config.oom_kill.history * SEC))}")
        group.summary = text
        memcg = oom["memcg_name"] or "its memory cgroup"
        group.root_cause = (f"memory cgroup {memcg} reached its limit ({fmt_bytes(limit)}, usage "
                            f"{fmt_bytes(oom['memcg_usage_bytes'])}); the kernel chose {event['comm']} "
                            f"(pid {pending.victim}) as the victim"
                            if limit and limit < (1 << 60) else
                            f"the system ran out of memory; the kernel chose {event['comm']} "
                            f"(pid {pending.victim}) as the victim")

    # -- connectivity -------------------------------------------------------------------------
    def _conn_opened(self, slot):
        info = self.core.conn_info(slot)
        if info is None:
            return
        group = self.new_group("connectivity_degradation", info["first_ns"])
        self.conn_groups[slot] = group
        self._conn_fill(group, info)
        self.open(group)

    def _conn_fill(self, group, info):
        for ref in info["fail_refs"] + info["ok_refs"]:
            eid = self.recent.event_id(ref)
            if eid is None or not group.has_event(eid):     # each event is read once
                group.add_event(self.recent.event(ref), eid)
        subject = next((e for e in group.events if e["type"] == "tcp_connect"), None)
        if subject is not None:
            group.set_subject(subject)
        addr = vocab.format_addr(info["daddr"])
        port = info["dport"]
        results = {name: n for name, n in zip(CONNECT_RESULTS, info["by_result"]) if n and name != "ok"}
        group.span(info["first_ns"], max(info["last_fail_ns"], info["last_ok_ns"]))
        group.attributes.update(
            destination=f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}",
            server_address=addr, server_port=port,
            network_type="ipv6" if info["family"] == 6 else "ipv4",
            failures=info["failures"], successes=info["successes"], results=results,
            last_pid=info["pid"], last_comm=info["comm"], cgroup_id=info["cgroup_id"])
        group.attributes.setdefault("pids", [])
        for e in group.events:
            if e["pid"] not in group.attributes["pids"] and len(group.attributes["pids"]) < 100:
                group.attributes["pids"].append(e["pid"])
        who = info["comm"] or f"pid {info['pid']}"
        place = where((subject or {}).get("context"))
        failures = info["failures"]
        span_ns = max(0, info["last_fail_ns"] - info["first_ns"])
        group.summary = (f"{who}{' (' + place + ')' if place else ''} failed to connect to "
                         f"{group.attributes['destination']} {failures} times in "
                         f"{fmt_duration(span_ns)} ({counted({k.replace('_', ' '): v for k, v in results.items()})}); "
                         f"{info['successes']} succeeded in between")
        top = max(results, key=results.get) if results else "other"
        group.root_cause = {
            "refused": f"nothing listens on {group.attributes['destination']} (connection refused)",
            "timed_out": f"no answer from {group.attributes['destination']} (SYNs time out: the "
                         "host is down or packets are filtered)",
            "reset": f"{group.attributes['destination']} resets the connections",
            "unreachable": f"no route to {addr}",
        }.get(top, f"connects to {group.attributes['destination']} fail")
        group.severity = "error" if not info["successes"] and failures >= 4 * self.config.connectivity.threshold else "warning"
        group.confidence = 0.9 if not info["successes"] else 0.7


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
