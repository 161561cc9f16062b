"""crash_loop: the same executable in the same scope (a container, a service) exiting non-zero
or by a signal `threshold` times within `window`."""
import collections

from tapio import vocab
from tapio.server.correlation.groups import counted, fmt_bytes, fmt_duration, where
from tapio.server.correlation.state import MAX_KEYS, SEC, Rule, process_entry, shared_cgroup


class _Loop:
    __slots__ = ("exits", "group", "last_ns")

    def __init__(self):
        self.exits = collections.deque()
        self.group = None
        self.last_ns = 0


class CrashLoop(Rule):
    kind = "crash_loop"
    # built from exits alone, which a cgroup budget never holds back
    routine_types = ()

    def __init__(self, state):
        super().__init__(state)
        self.cfg = self.config.crash_loop
        self.loops = collections.OrderedDict()     # (scope, executable) -> _Loop
        self.scanned = 0

    def open_groups(self):
        return [loop.group for loop in self.loops.values() if loop.group is not None]

    def stats(self):
        return {"crash_keys": len(self.loops)}

    def _key(self, event):
        cfg = self.cfg
        context = event.get("context") or {}
        process = event.get("process") or {}
        executable = process.get("executable") or event.get("comm") or "?"
        unit = context.get("systemd_unit", "")
        if "container" in cfg.scopes and context.get("pod_uid"):
            # Kubernetes restarts a container under a new id: the pod and the container's name
            # are what stays
            return ("pod", f"{context['pod_uid']}/{context.get('container_name', '')}"), executable
        if "container" in cfg.scopes and context.get("container_id"):
            return ("container", context["container_id"]), executable
        if unit and ("unit" in cfg.scopes or ("service" in cfg.scopes and unit.endswith(".service"))):
            return ("unit", unit), executable
        if "cgroup" in cfg.scopes:
            return ("cgroup", event.get("cgroup_id")), executable
        return None

    def on_event(self, event):
        if event["type"] != "exit" or not self.cfg.enabled:
            return
        x = event.get("exit") or {}
        if not (x.get("exit_code") or x.get("signal")):
            return
        key = self._key(event)
        if key is None:
            return
        loop = self.loops.get(key)
        if loop is None:
            loop = self.loops[key] = _Loop()
            while len(self.loops) > MAX_KEYS:
                _, old = self.loops.popitem(last=False)
                if old.group is not None:
                    self.state.emit(old.group, True)
        else:
            self.loops.move_to_end(key)
        ts = event["timestamp_ns"]
        loop.last_ns = max(loop.last_ns, ts)
        if loop.group is not None:
            loop.group.add_event(event)
            self._fill(loop.group, key)
            self.state.emit(loop.group, False)
            return
        loop.exits.append(event)
        window = int(self.cfg.window * SEC)
        while loop.exits and ts - loop.exits[0]["timestamp_ns"] > window:
            loop.exits.popleft()
        if sum(e.get("count", 1) for e in loop.exits) >= self.cfg.threshold:
            group = loop.group = self.state.new_group(self.kind, loop.exits[0]["timestamp_ns"])
            for e in loop.exits:
                group.add_event(e)
            loop.exits.clear()
            self._fill(group, key)
            self.state.open(group)

    def on_tick(self, now, force):
        # once a second is enough: the windows are seconds to minutes
        t = self.state.engine.monotonic()
        if not force and t - self.scanned < SEC:
            return
        self.scanned = t
        window = int(self.cfg.window * SEC)
        close_after = int(self.cfg.close_after * SEC)
        max_ns = int(self.cfg.max_duration * SEC)
        for key, loop in list(self.loops.items()):
            if loop.group is not None:
                if force or now - loop.last_ns >= close_after or now - loop.group.start_ns >= max_ns:
                    self.state.emit(loop.group, True)
                    del self.loops[key]
            elif not loop.exits or now - loop.exits[-1]["timestamp_ns"] > window:
                del self.loops[key]

    def _fill(self, group, key):
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
        in_container = scope_kind in ("container", "pod")
        oom = self._recent_oom((last.get("context") or {}).get("container_id") if in_container else None,
                               last.get("cgroup_id"))
        if oom is not None:
            group.root_cause = (f"OOM kills: memory limit {fmt_bytes(oom['oom_kill']['memcg_limit_bytes'])} "
                                f"of {oom['oom_kill']['memcg_name'] or 'its memory cgroup'}")
        elif len(outcomes) == 1:
            group.root_cause = f"{name} {next(iter(outcomes))} every time"
        severe = n >= 2 * self.cfg.threshold
        group.severity = "critical" if severe else "error"
        group.confidence = 0.9 if in_container or scope_kind == "unit" else 0.7

    def _recent_oom(self, container_id, cgroup_id):
        window = int(self.cfg.window * SEC)
        now = self.state.clock.now()
        for e in reversed(self.state.priority):
            if e["type"] != "oom_kill" or now - e["timestamp_ns"] > window:
                continue
            if (container_id and (e.get("context") or {}).get("container_id") == container_id) \
                    or (cgroup_id is not None and e.get("cgroup_id") == cgroup_id
                        and not shared_cgroup(e)):
                return e
        return None
