"""oom_kill: an OOM kill, with its victim's SIGKILL, exit and exec, the memory cgroup, the
processes of the victim's container or memory cgroup that exit within `follow` after the kill,
and whether the victim was the main process there or a worker.

A group claims only what belongs to the victim: its container's processes, or (outside
containers) those of its cgroup when that cgroup is its memory cgroup (cgroup v2: the same id).
Never those of the root cgroup or of a shared slice, and none by cgroup when the memory cgroup is
a cgroup v1 one (exit events carry the v2 cgroup, which then says nothing about memory).
"""
import collections
import os
import signal as _signal

from tapio._fast.correlate import match_records
from tapio.server.correlation.groups import fmt_bytes, fmt_duration, subject_name, where
from tapio.server.correlation.state import (
    MAX_KEYS, MAX_PENDING, SEC, Rule, process_entry, shared_cgroup,
)

SIGKILL = int(_signal.SIGKILL)
EXIT = 2                 # EventType
MEMCG_NAME_MAX = 63      # bpf/tapio_events.h TAPIO_CGROUP_NAME_LEN, less its NUL


def follow_scope(event):
    """Where the processes that belong with an OOM victim are: ("container", id), ("cgroup",
    cgroup id) when the victim's cgroup is its memory cgroup and no shared one, or None."""
    context = event.get("context") or {}
    if context.get("container_id"):
        return "container", context["container_id"]
    cgroup_id = event.get("cgroup_id")
    oom = event["oom_kill"]
    if not cgroup_id or shared_cgroup(event) or oom["memcg_id"] != cgroup_id:
        return None
    path = context.get("cgroup_path")
    if path:
        # the ids of two hierarchies (v1 memory, v2) may happen to be equal; the names tell
        # (the kernel side keeps MEMCG_NAME_MAX bytes of the memory cgroup's name)
        name, memcg = os.path.basename(path.rstrip("/")), oom["memcg_name"]
        if name != memcg and not (len(memcg) >= MEMCG_NAME_MAX and name.startswith(memcg)):
            return None
    return "cgroup", cgroup_id


def role_scope(event):
    """Where the victim is the main process or a worker: its container, or its own cgroup (a
    unit's, a scope's) when that is no shared one; None when there is no such place."""
    context = event.get("context") or {}
    if context.get("container_id"):
        return "container", context["container_id"]
    if event.get("cgroup_id") and not shared_cgroup(event):
        return "cgroup", event["cgroup_id"]
    return None


def place_words(event, scope):
    context = event.get("context") or {}
    if scope is None:
        return ""
    if scope[0] == "container":
        return "its container"
    return f"unit {context['systemd_unit']}" if context.get("systemd_unit") else "its cgroup"


class _Pending:
    __slots__ = ("group", "event", "victim", "scope", "kill_ns", "until_ns",
                 "kills", "victim_exit", "victim_signal", "followers", "role", "parent", "judged")

    def __init__(self, group, event, until_ns, kills):
        self.group = group
        self.event = event
        self.victim = event["pid"]
        self.scope = follow_scope(event)
        self.kill_ns = event["timestamp_ns"]
        self.until_ns = until_ns
        self.kills = kills
        self.victim_exit = None
        self.victim_signal = None
        self.followers = []
        self.role = "unknown"
        self.parent = None           # the parent's process-table entry, when it was known
        self.judged = False          # the role is final (else: the victim's exec is awaited)


class OomKill(Rule):
    kind = "oom_kill"
    # it names the victim by its exec, and judges main process or worker by it and its parent's:
    # one held back leaves the victim known by its comm, its role perhaps unknown (the followers
    # are exits, never held back)
    routine_types = ("exec",)

    @classmethod
    def core_options(cls, config):
        return {"hot_signals": (SIGKILL,)}      # the victim's

    def __init__(self, state):
        super().__init__(state)
        self.cfg = self.config.oom_kill
        self.pending = []                          # _Pending within their follow window
        self.history = {}                          # container or cgroup -> deque of kill times
        self._opened = False                       # an OOM kill in the batch being dispatched
        self.awaiting = False                      # some pending victim's exec is awaited

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
        if self._opened:
            self._opened = False
            # the cgroup was not watched yet when C read this batch: its other exits now
            seen = set(hot)
            for i in match_records(batch, EXIT):
                if i not in seen:
                    self._exit(batch.event_dict(i))
        if self.awaiting:
            self._judge_late()

    def _judge_late(self):
        """Judge the roles left open for want of the victim's exec, once a batch brought it.
        A kill is sent ahead of the routine events read with it (the exec of a victim that died
        young, its parent's), so the batch after the kill's usually does; its parent is then in
        the table as it would have been had the batches come in the kernel's order."""
        for pending in self.pending:
            if pending.judged or not self._take_exec(pending):
                continue
            pending.role, pending.parent, pending.judged = self._role(pending.event)
            self._fill(pending)
            self.state.emit(pending.group, False)
        self.awaiting = any(not p.judged for p in self.pending)

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
        memcg_id = event["oom_kill"]["memcg_id"]
        scope = (context.get("container_id") or (f"memcg:{memcg_id}" if memcg_id else "")
                 or f"cgroup:{event.get('cgroup_id')}")
        history = self.history.setdefault(scope, collections.deque())
        history.append(ts)
        while history and ts - history[0] > int(cfg.history * SEC):
            history.popleft()
        if len(self.history) > MAX_KEYS:
            self.history.pop(next(iter(self.history)))
        pending = _Pending(group, event, ts + int(cfg.follow * SEC), len(history))
        # now: the parent may soon be gone
        pending.role, pending.parent, pending.judged = self._role(event)
        self._take_exec(pending)
        for e in self.state.priority:    # the victim's signal and exit, when they came first
            if e["pid"] == pending.victim and e["timestamp_ns"] >= ts - SEC:
                self._link(pending, e)
        if pending.scope is not None and event.get("cgroup_id") and not shared_cgroup(event):
            # its fellow processes' routine exits go to Python too while it is followed
            self.core.watch_cgroup(event["cgroup_id"], pending.until_ns)
        if len(self.pending) < MAX_PENDING:
            self.pending.append(pending)
            self._opened = True
            self.awaiting = self.awaiting or not pending.judged
        self._fill(pending)
        self.state.open(group)
        if len(self.pending) >= MAX_PENDING:
            self.state.emit(group, True)

    def _take_exec(self, pending):
        """Add the victim's exec to its group, if the table knows one from before the kill;
        returns whether it does."""
        node = self.core.process(pending.victim)
        if node is None or node["pid"] != pending.victim or node["last_exec"] is None:
            return False
        exec_ev = self.recent.event(node["last_exec"])
        if exec_ev is None or exec_ev["pid"] != pending.victim or exec_ev["timestamp_ns"] > pending.kill_ns:
            return False
        pending.group.add_event(exec_ev)
        return True

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
            if pending.scope is None:
                continue
            kind, value = pending.scope
            same = ((event.get("context") or {}).get("container_id") == value if kind == "container"
                    else event.get("cgroup_id") == value)
            if same and pending.group.add_event(event):
                pending.followers.append(event)

    def _role(self, event):
        """("main" | "worker" | "unknown", the parent's table entry or None, final): the main
        process of its container or cgroup is the one whose parent is outside it (a container's
        PID 1, started by the runtime; a unit's main process, started by PID 1). Not final: the
        victim's exec, which may still come, would say more."""
        scope = role_scope(event)
        if scope is None:
            return "unknown", None, True
        ppid = event.get("ppid") or 0
        parent = self.core.process(ppid) if ppid else None
        if parent is None or parent["pid"] != ppid:
            if ppid == 1:
                return "main", None, True
            # A parent inside the scope runs a program there, so its exec is seen once the scope
            # is; a parent never seen while the victim's own exec was is the runtime's (conmon,
            # a shim: forked, never exec'd). Without the victim's exec nothing can be said yet.
            victim = self.core.process(event["pid"])
            seen = victim is not None and victim["pid"] == event["pid"] and victim["last_exec"]
            return ("main", None, True) if seen else ("unknown", None, False)
        kind, value = scope
        if kind == "container":
            parent_exec = self.recent.event(parent["last_exec"]) if parent["last_exec"] else None
            if parent_exec is not None:
                inside = (parent_exec.get("context") or {}).get("container_id") == value
            else:
                inside = parent["cgroup_id"] == event.get("cgroup_id")
        else:
            inside = parent["cgroup_id"] == value
        return ("worker" if inside else "main"), parent, True

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
        role, parent = pending.role, pending.parent
        ppid = event.get("ppid") or 0
        group.attributes.update(
            victim_role=role, ppid=ppid, parent_comm=(parent or {}).get("comm") or None,
            follow_scope=pending.scope[0] if pending.scope else "",
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
        within = place_words(event, role_scope(event))
        if role == "main":
            text += f"; the main process of {within}"
        elif role == "worker":
            text += (f"; a worker of {within} (parent {parent['comm']}, pid {ppid})"
                     if parent and parent.get("comm") else f"; a worker of {within} (parent pid {ppid})")
        if pending.followers:
            text += (f"; {len(pending.followers)} more process(es) of "
                     f"{place_words(event, pending.scope)} exited right after")
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
