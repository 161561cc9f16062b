"""A semantic group, and the words of its summary.

A group is a dict when it leaves the engine (the store, Subscribe, the OTEL exporter and the HTTP
API all read the same shape):

    {"id": 32 hex digits, also the id of its trace,
     "kind": process_tree | crash_loop | oom_kill | connectivity_degradation | fatal_signal,
     "intent": what an operator does with it (memory_exhaustion_investigation, ...),
     "severity": info | warning | error | critical, "confidence": 0..1,
     "start_ns", "end_ns": wall clock of its first and last event,
     "summary": one line for a human, "root_cause": what caused it, when it is known ("" if not),
     "collector_id", "node", "trace_id",
     "event_ids": the ids of its events (the first 1000),
     "attributes": kind-specific facts, and the subject every kind names when it can: pid, comm,
                   executable, container_id, container_name, pod_uid, pod_name, namespace,
                   systemd_unit, pids; "processes": the processes for the trace's spans,
     "status": open (still growing) | closed,
     "incomplete": True when events the group could have used never reached the server within
                   its window: the collector lost them (a gap in its sequence, kernel drops), or
                   the --cgroup-budget of a cgroup the group has processes or connections in held
                   back routine events its kind reads (reason "throttled: ..."); the conclusion
                   may miss facts. They are listed in attributes["gaps"] ({"start_ns", "end_ns",
                   "reason"}, and "cgroup_id" for a throttled one; the first 10),
     "events": the events in full (the first `max_group_events`), when asked for}
"""
import hashlib
import signal as _signal

from tapio.vocab import GROUP_KINDS

MAX_EVENT_IDS = 1000
INT64_MAX = (1 << 63) - 1


def bound_ns(ns):
    """A timestamp within what SQLite, OTel and the C tables hold: 0 to 2^63-1."""
    return min(max(int(ns or 0), 0), INT64_MAX)



def group_id(collector_id, kind, start_ns, ordinal=0):
    """32 hex digits made from what opened the group: its collector, kind, first event time and
    how many groups of that kind and time the collector's state made before (`ordinal`). The same
    events give the same id, so a replica that replays a node's events after taking it over
    (tapio/server/bus) updates the groups the previous owner stored instead of adding copies."""
    key = f"{collector_id}\0{kind}\0{int(start_ns or 0)}\0{int(ordinal)}".encode()
    return hashlib.blake2b(key, digest_size=16).hexdigest()


SUBJECT_KEYS = ("pid", "comm", "executable", "container_id", "container_name", "pod_uid",
                "pod_name", "namespace", "systemd_unit")


class Group:
    """A group while the engine builds it."""

    def __init__(self, kind, collector_id, node, start_ns, max_events=200, clamp=bound_ns, ordinal=0):
        # every time the group takes goes through `clamp` (the collector's clock bound: the
        # server's time plus the allowed skew), so no event time can put it out of range
        self._clamp = clamp
        start_ns = clamp(start_ns) if start_ns else start_ns
        self.id = group_id(collector_id, kind, start_ns, ordinal)
        self.kind = kind
        self.intent = GROUP_KINDS[kind]
        self.severity = "info"
        self.confidence = 1.0
        self.start_ns = start_ns
        self.end_ns = start_ns
        self.summary = ""
        self.root_cause = ""
        self.collector_id = collector_id
        self.node = node
        self.status = "open"
        self.attributes = {}
        self.event_ids = []
        self.events = []
        self.events_total = 0
        self._ids = set()
        self.max_events = max_events
        self.incomplete = False
        self._gaps = set()
        # the cgroups its processes and connections are in: a cgroup's held-back events concern
        # only the groups of that cgroup (state.Gap)
        self.cgroups = set()

    def add_event(self, event, event_id=None):
        """Count an event in (a dict, or None with its id only); False when it was already in."""
        eid = event["id"] if event is not None else event_id
        if eid is not None:
            if eid in self._ids:
                return False
            self._ids.add(eid)
            if len(self.event_ids) < MAX_EVENT_IDS:
                self.event_ids.append(eid)
        self.events_total += 1
        if event is not None:
            if event.get("cgroup_id") and event.get("type") != "exec":
                # where its process is; not an exec: a process may move after one (a shell that
                # moves itself into a container's cgroup, then execs the entrypoint), and a later
                # event of it (its exit, a signal), or the process table, says where it went
                self.cgroups.add(event["cgroup_id"])
            if len(self.events) < self.max_events:
                self.events.append(event)
            ts = event.get("timestamp_ns") or 0
            if ts:
                ts = self._clamp(ts)
                self.start_ns = min(self.start_ns, ts) if self.start_ns else ts
                self.end_ns = max(self.end_ns, ts)
        return True

    def mark_incomplete(self, start_ns, end_ns, reason, cgroup_id=0, max_listed=10):
        """Note a gap of the collector's events within the group's window (with `cgroup_id`: the
        events of that cgroup its budget held back); False when it was noted already."""
        start_ns, end_ns = bound_ns(start_ns), bound_ns(end_ns)
        key = (start_ns, end_ns, reason, cgroup_id)
        if key in self._gaps:
            return False
        self._gaps.add(key)
        self.incomplete = True
        listed = self.attributes.setdefault("gaps", [])
        if len(listed) < max_listed:
            entry = {"start_ns": start_ns, "end_ns": end_ns, "reason": reason}
            if cgroup_id:
                entry["cgroup_id"] = cgroup_id
            listed.append(entry)
        return True

    def has_event(self, event_id):
        return event_id in self._ids

    def span(self, start_ns, end_ns):
        start_ns = self._clamp(start_ns) if start_ns else start_ns
        end_ns = self._clamp(end_ns) if end_ns else end_ns
        if start_ns:
            self.start_ns = min(self.start_ns, start_ns) if self.start_ns else start_ns
        if end_ns:
            self.end_ns = max(self.end_ns, end_ns)

    def set_subject(self, event=None, **facts):
        """The subject's attributes from an event dict (pid, comm, process, context), then facts."""
        attrs = self.attributes
        if event is not None:
            attrs.setdefault("pid", event.get("pid"))
            attrs.setdefault("comm", event.get("comm"))
            process = event.get("process") or {}
            if process.get("executable"):
                attrs.setdefault("executable", process["executable"])
            elif event.get("exec", {}).get("filename"):
                attrs.setdefault("executable", event["exec"]["filename"])
            context = event.get("context") or {}
            for key in ("container_id", "container_name", "pod_uid", "pod_name", "namespace",
                        "systemd_unit", "image"):
                if context.get(key):
                    attrs.setdefault(key, context[key])
        for key, value in facts.items():
            if value not in (None, ""):
                attrs[key] = value

    def to_dict(self, with_events=True):
        self.attributes["events_total"] = self.events_total
        processes = self.attributes.get("processes")
        if processes:
            for p in processes:
                for key in ("start_ns", "end_ns"):
                    if p.get(key):
                        p[key] = self._clamp(p[key])
        out = {
            "id": self.id, "kind": self.kind, "intent": self.intent, "severity": self.severity,
            "confidence": round(self.confidence, 3), "start_ns": self.start_ns,
            "end_ns": max(self.end_ns, self.start_ns), "summary": self.summary,
            "root_cause": self.root_cause, "collector_id": self.collector_id, "node": self.node,
            "trace_id": self.id, "event_ids": list(self.event_ids),
            "attributes": dict(self.attributes), "status": self.status,
            "incomplete": self.incomplete,
        }
        if with_events:
            out["events"] = list(self.events)
        return out


# ---- words ----------------------------------------------------------------------------------

def fmt_bytes(n):
    if not n:
        return "0 B"
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            value = n / size
            return f"{value:.0f} {unit}" if value >= 10 or value == int(value) else f"{value:.1f} {unit}"
    return f"{n} B"


def fmt_duration(ns):
    s = ns / 1e9
    if s < 1:
        return f"{ns / 1e6:.0f} ms"
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


def short_id(container_id):
    return container_id[:12]


def where(context, unit=True):
    """ "container web (pod shop/web-0)", "pod e547c52f-...", "unit nginx.service", or "". """
    context = context or {}
    parts = []
    name = context.get("container_name") or (short_id(context["container_id"])
                                             if context.get("container_id") else "")
    pod = ""
    if context.get("pod_name"):
        pod = f"{context['namespace']}/{context['pod_name']}" if context.get("namespace") else context["pod_name"]
    elif context.get("pod_uid"):
        pod = context["pod_uid"]
    if name and pod:
        parts.append(f"container {name} of pod {pod}")
    elif name:
        parts.append(f"container {name}")
    elif pod:
        parts.append(f"pod {pod}")
    elif unit and context.get("systemd_unit"):
        parts.append(f"unit {context['systemd_unit']}")
    return parts[0] if parts else ""


def subject_name(event):
    """What to call the process an event is about: its executable's name (where() names the
    container it runs in)."""
    process = event.get("process") or {}
    exe = process.get("executable") or (event.get("exec") or {}).get("filename")
    if exe:
        return exe.rsplit("/", 1)[-1]
    return event.get("comm") or f"pid {event.get('pid')}"


def counted(items):
    """ "exit code 1 ×5, SIGSEGV ×2" from {"exit code 1": 5, "SIGSEGV": 2}, most first."""
    return ", ".join(f"{k} ×{n}" if n > 1 else k
                     for k, n in sorted(items.items(), key=lambda kv: (-kv[1], kv[0])))


# si_code meanings for faults, from siginfo.h
SI_CODES = {
    _signal.SIGSEGV: {1: "SEGV_MAPERR: address not mapped", 2: "SEGV_ACCERR: no permission for the mapping",
                      3: "SEGV_BNDERR: failed bounds check", 4: "SEGV_PKUERR: protection key"},
    _signal.SIGBUS: {1: "BUS_ADRALN: misaligned address", 2: "BUS_ADRERR: no such physical address",
                     3: "BUS_OBJERR: object error (a truncated mapped file?)"},
    _signal.SIGFPE: {1: "FPE_INTDIV: integer divide by zero", 2: "FPE_INTOVF: integer overflow",
                     3: "FPE_FLTDIV: float divide by zero"},
    _signal.SIGILL: {1: "ILL_ILLOPC: illegal opcode", 2: "ILL_ILLOPN: illegal operand",
                     4: "ILL_ILLTRP: illegal trap", 5: "ILL_PRVOPC: privileged opcode"},
}
