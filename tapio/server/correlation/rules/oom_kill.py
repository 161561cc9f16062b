"""oom_kill: an OOM kill, with its victim's SIGKILL, exit and exec, the memory cgroup, and the
processes of the victim's container (or cgroup) that exit within `follow` after the kill."""
import collections
import signal as _signal

from tapio._fast.correlate import match_records
from tapio.server.correlation.groups import fmt_bytes, fmt_duration, subject_name, where
from tapio.server.correlation.state import MAX_KEYS, MAX_PENDING, SEC, Rule, process_entry

SIGKILL = int(_signal.SIGKILL)
EXIT = 2                 # EventType


class _Pending:
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


class OomKill(Rule):
    kind = "oom_kill"

    @classmethod
    def core_options(cls, config):
        return {"hot_signals": (SIGKILL,)}      # the victim's

    def __init__(self, state):
        super().__init__(state)
        self.cfg = self.config.oom_kill
        self.pending = []                          # _Pending within their follow window
        self.history = {}                          # container or cgroup -> deque of kill times
        self._opened = False                       # an OOM kill in the batch being dispatched

    def open_groups(self):
        return [p.group for p in self.pending]

    def stats(self):
        return {"pending_oom": len(self.pending)}

    def on_event(self, event):
        kind = event["type"]
        if kind == "oom_kill":
            self._oom(event)
        elif kind == "exit":
            self._exit(event)
        elif kind == "signal":
            for pending in self.pending:
                if event["pid"] == pending.victim:
                    self._link(pending, event)

    def on_batch(self, batch, hot, opened):
        if not self._opened:
            return
        self._opened = False
        # the cgroup was not watched yet when C read this batch: its other exits now
        seen = set(hot)
        for i in match_records(batch, EXIT):
            if i not in seen:
                self._exit(batch.event_dict(i))

    def on_tick(self, now, force):
        self.core.expire_watches(now)
        for pending in list(self.pending):
            if force or pending.until_ns <= now:
                self.pending.remove(pending)
                self._fill(pending)
                self.state.emit(pending.group, True)

    def _oom(self, event):
        cfg = self.cfg
        if not cfg.enabled:
            return
        ts = event["timestamp_ns"]
        group = self.state.new_group(self.kind, ts)
        group.add_event(event)
        context = event.get("context") or {}
        scope = context.get("container_id") or f"cgroup:{event.get('cgroup_id')}"
        history = self.history.setdefault(scope, collections.deque())
        history.append(ts)
        while history and ts - history[0] > int(cfg.history * SEC):
            history.popleft()
        if len(self.history) > MAX_KEYS:
            self.history.pop(next(iter(self.history)))
        pending = _Pending(group, event, ts + int(cfg.follow * SEC), len(history))
        node = self.core.process(pending.victim)
        if node is not None and node["last_exec"] is not None:
            exec_ev = self.recent.event(node["last_exec"])
            if exec_ev is not None and exec_ev["pid"] == pending.victim:
                group.add_event(exec_ev)
        for e in self.state.priority:    # the victim's signal and exit, when they came first
            if e["pid"] == pending.victim and e["timestamp_ns"] >= ts - SEC:
                self._link(pending, e)
        if pending.cgroup_id:
            self.core.watch_cgroup(pending.cgroup_id, pending.until_ns)
        if len(self.pending) < MAX_PENDING:
            self.pending.append(pending)
            self._opened = True
        self._fill(pending)
        self.state.open(group)
        if len(self.pending) >= MAX_PENDING:
            self.state.emit(group, True)

    def _link(self, pending, event):
        kind = event["type"]
        if kind == "exit" and event["pid"] == pending.victim:
            pending.victim_exit = event
        elif kind == "signal" and event["pid"] == pending.victim and event["signal"]["signal"] == SIGKILL:
            pending.victim_signal = event
        else:
            return
        pending.group.add_event(event)

    def _exit(self, event):
        for pending in self.pending:
            if event["pid"] == pending.victim:
                self._link(pending, event)
                continue
            ts = event["timestamp_ns"]
            if not pending.kill_ns <= ts <= pending.until_ns:
                continue
            context = event.get("context") or {}
            same = (context.get("container_id") == pending.container_id if pending.container_id
                    else event.get("cgroup_id") == pending.cgroup_id)
            if same and pending.group.add_event(event):
                pending.followers.append(event)

    def _fill(self, pending):
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
                     f"{fmt_duration(int(self.cfg.history * SEC))}")
        group.summary = text
        memcg = oom["memcg_name"] or "its memory cgroup"
        group.root_cause = (f"memory cgroup {memcg} reached its limit ({fmt_bytes(limit)}, usage "
                            f"{fmt_bytes(oom['memcg_usage_bytes'])}); the kernel chose {event['comm']} "
                            f"(pid {pending.victim}) as the victim"
                            if limit and limit < (1 << 60) else
                            f"the system ran out of memory; the kernel chose {event['comm']} "
                            f"(pid {pending.victim}) as the victim")
