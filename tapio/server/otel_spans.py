"""A semantic group as an OpenTelemetry trace: which spans, with which attributes.

The trace of a group: a root span `semantic.<intent>` from the group's start to its end, with
tapio.group.id, tapio.group.kind, tapio.intent, tapio.severity, tapio.confidence, tapio.summary,
tapio.root_cause and the subject's semantic-convention attributes; under it one span per process
(`process <comm>`, from its exec to its exit, nested as the processes were: a child's span under
its parent's), and one per other event (`tcp.connect`, `process.signal`, `oom_kill`, ...) under
its process's span when the group has it. The trace id is the group id.

otel.py runs the export pipeline that calls group_trace().
"""
import json
import random
import time

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.trace import SpanKind, Status, StatusCode

from tapio import vocab

INT64_MAX = (1 << 63) - 1


class GroupIds(IdGenerator):
    """Random span ids; the trace id of a root span is the group id, set just before it starts
    (group_trace does; only one thread starts spans)."""

    def __init__(self):
        self.next_trace_id = None
        self._random = random.Random()

    def generate_span_id(self):
        return self._random.getrandbits(64) or 1

    def generate_trace_id(self):
        trace_id, self.next_trace_id = self.next_trace_id, None
        return trace_id or self._random.getrandbits(128) or 1


def group_trace(tracer, ids, group):
    """Start and end the spans of one group with `tracer` (whose id generator is `ids`);
    returns how many."""
    attrs = group.get("attributes") or {}
    start = int(group.get("start_ns") or time.time_ns())
    processes = attrs.get("processes") or []
    events = group.get("events") or []
    ends = [start + 1, int(group.get("end_ns") or 0)]
    ends += [int(p.get("end_ns") or 0) for p in processes]
    ends += [int(e.get("timestamp_ns") or 0) for e in events]
    end = max(ends)
    starts = [int(p.get("start_ns") or start) for p in processes]
    starts += [event_span(e, group)[2] for e in events]
    start = min([start] + [t for t in starts if t > 0])
    try:
        ids.next_trace_id = int(group["trace_id"], 16)
    except (KeyError, TypeError, ValueError):
        ids.next_trace_id = None
    root = tracer.start_span(f"semantic.{group.get('intent', 'unknown')}",
                             context=otel_context.Context(), kind=SpanKind.INTERNAL,
                             attributes=root_attributes(group), start_time=start)
    ids.next_trace_id = None
    if group.get("severity") in ("error", "critical"):
        root.set_status(Status(StatusCode.ERROR, group.get("root_cause") or group.get("summary")))
    count = 1
    spans = {}          # index in processes -> span
    by_pid = {}
    covered = set()
    pending = []
    for i, p in enumerate(processes):
        parent = spans.get(p.get("parent", -1), root)
        span = tracer.start_span(f"process {p.get('comm') or p.get('pid')}",
                                 context=trace.set_span_in_context(parent),
                                 kind=SpanKind.INTERNAL, attributes=process_attributes(p, group),
                                 start_time=int(p.get("start_ns") or start))
        if p.get("state") == "exited" and (p.get("exit_code") or p.get("signal")):
            span.set_status(Status(StatusCode.ERROR, vocab.exit_text(p.get('exit_code'), p.get('signal'))))
        spans[i] = span
        by_pid.setdefault(p.get("pid"), span)
        covered.update(x for x in (p.get("exec_event"), p.get("exit_event")) if x)
        pending.append((span, max(int(p.get("end_ns") or 0), int(p.get("start_ns") or start))))
        count += 1
    for e in events:
        if e.get("id") in covered or e.get("type") in ("exec", "exit") and e.get("pid") in by_pid:
            continue
        parent = by_pid.get(e.get("pid"), root)
        name, attributes, begin, finish, error = event_span(e, group)
        span = tracer.start_span(name, context=trace.set_span_in_context(parent),
                                 kind=SpanKind.CLIENT if e.get("type") == "tcp_connect" else SpanKind.INTERNAL,
                                 attributes=attributes, start_time=begin)
        if error:
            span.set_status(Status(StatusCode.ERROR, error))
        span.end(end_time=finish)
        count += 1
    for span, finish in pending:
        span.end(end_time=finish)
    root.end(end_time=end)
    return count


# ---- attributes ---------------------------------------------------------------------------------

def _clean(attrs):
    """Drop empty values; clamp integers to int64 (the OTLP type)."""
    out = {}
    for key, value in attrs.items():
        if value is None or value == "" or value == []:
            continue
        if isinstance(value, int) and not isinstance(value, bool):
            value = min(value, INT64_MAX)
        out[key] = value
    return out


def _context_attributes(context):
    context = context or {}
    return {
        "container.id": context.get("container_id"),
        "container.name": context.get("container_name"),
        "container.image.name": context.get("image"),
        "container.runtime": context.get("container_runtime"),
        "k8s.pod.uid": context.get("pod_uid"),
        "k8s.pod.name": context.get("pod_name"),
        "k8s.namespace.name": context.get("namespace"),
        "k8s.container.name": context.get("container_name"),
        "tapio.systemd.unit": context.get("systemd_unit"),
    }


def root_attributes(group):
    a = group.get("attributes") or {}
    attrs = {
        "tapio.group.id": group.get("id"),
        "tapio.group.kind": group.get("kind"),
        "tapio.intent": group.get("intent"),
        "tapio.severity": group.get("severity"),
        "tapio.confidence": float(group.get("confidence") or 0.0),
        "tapio.summary": group.get("summary"),
        "tapio.root_cause": group.get("root_cause"),
        "tapio.collector.id": group.get("collector_id"),
        "tapio.group.incomplete": bool(group.get("incomplete")),
        "tapio.event.count": a.get("events_total"),
        "host.name": group.get("node"),
        "process.pid": a.get("pid"),
        "process.executable.path": a.get("executable"),
        "process.executable.name": (a.get("executable") or "").rsplit("/", 1)[-1] or a.get("comm"),
    }
    attrs.update(_context_attributes(a))
    kind = group.get("kind")
    if kind == "connectivity_degradation":
        attrs.update({"server.address": a.get("server_address"), "server.port": a.get("server_port"),
                      "network.transport": "tcp", "network.type": a.get("network_type"),
                      "tapio.connect.failures": a.get("failures"),
                      "tapio.connect.successes": a.get("successes")})
    elif kind == "oom_kill":
        attrs.update({"tapio.memcg.name": a.get("memcg_name"),
                      "tapio.memcg.limit_bytes": a.get("memcg_limit_bytes"),
                      "tapio.oom.rss_bytes": a.get("rss_bytes"),
                      "tapio.oom.victim_role": a.get("victim_role")})
    elif kind == "crash_loop":
        attrs.update({"tapio.crash_loop.restarts": a.get("restarts"),
                      "tapio.crash_loop.exit_codes": json.dumps(a.get("exit_codes") or {})})
    elif kind == "fatal_signal":
        attrs.update({"tapio.signal.name": a.get("signal"), "process.parent_pid": a.get("ppid")})
    elif kind == "process_tree":
        attrs.update({"tapio.process_tree.processes": a.get("process_count"),
                      "tapio.process_tree.failed": a.get("failed")})
    return _clean(attrs)


def process_attributes(p, group):
    """A process span's attributes. process.exit.code is the exit code, or 128 + the signal's
    number for a process killed by a signal (the shell's convention); the signal's name is
    tapio.process.exit.signal."""
    executable = p.get("executable") or ""
    attrs = {
        "process.pid": p.get("pid"),
        "process.parent_pid": p.get("ppid"),
        "process.executable.path": executable,
        "process.executable.name": executable.rsplit("/", 1)[-1] or p.get("comm"),
        "process.command_line": p.get("command_line"),
        "process.owner": p.get("user"),
        "tapio.process.comm": p.get("comm"),
        "tapio.process.state": p.get("state"),
        "tapio.group.id": group.get("id"),
    }
    if p.get("state") == "exited":
        sig = p.get("signal") or 0
        attrs["process.exit.code"] = 128 + sig if sig else int(p.get("exit_code") or 0)
        if sig:
            attrs["tapio.process.exit.signal"] = vocab.signal_text(sig)
            attrs["tapio.process.exit.signal_number"] = sig
            attrs["tapio.process.core_dumped"] = bool(p.get("core_dumped"))
    attrs.update(_context_attributes(p.get("context")))
    return _clean(attrs)


def event_span(event, group):
    """(name, attributes, start, end, error text or None) of the span of one event."""
    ts = int(event.get("timestamp_ns") or 0)
    kind = event.get("type")
    attrs = {"process.pid": event.get("pid"), "process.parent_pid": event.get("ppid"),
             "tapio.process.comm": event.get("comm"), "tapio.event.id": event.get("id"),
             "tapio.event.type": kind, "tapio.event.count": event.get("count", 1),
             "tapio.group.id": group.get("id")}
    attrs.update(_context_attributes(event.get("context")))
    error = None
    start = ts
    name = kind or "event"
    if kind in ("tcp_connect", "tcp_accept", "tcp_close"):
        d = event[kind]
        start = max(0, ts - int(d.get("duration_ns") or 0))
        peer = ("client" if kind == "tcp_accept" or d.get("passive") else "server")
        attrs.update({f"{peer}.address": d.get("daddr"), f"{peer}.port": d.get("dport"),
                      "network.transport": "tcp", "network.type": d.get("family"),
                      "network.local.address": d.get("saddr"), "network.local.port": d.get("sport")})
        name = f"tcp.{kind[4:]}"
        if kind == "tcp_connect" and d.get("result") not in (None, "ok"):
            attrs["error.type"] = d["result"]
            error = f"connect {d['result']} (errno {d.get('error')})"
    elif kind == "signal":
        d = event["signal"]
        name = "process.signal"
        attrs.update({"tapio.signal.name": d.get("signal_name"), "tapio.signal.number": d.get("signal"),
                      "tapio.signal.code": d.get("code"), "tapio.signal.sender_pid": d.get("sender_pid"),
                      "tapio.signal.sender_comm": d.get("sender_comm")})
    elif kind == "oom_kill":
        d = event["oom_kill"]
        name = "oom_kill"
        attrs.update({"tapio.memcg.name": d.get("memcg_name"), "tapio.memcg.limit_bytes": d.get("memcg_limit_bytes"),
                      "tapio.memcg.usage_bytes": d.get("memcg_usage_bytes"),
                      "tapio.oom.rss_bytes": d.get("rss_bytes"), "tapio.oom.trigger_pid": d.get("trigger_pid"),
                      "tapio.oom.trigger_comm": d.get("trigger_comm")})
        error = "OOM kill"
    elif kind == "exit":
        d = event["exit"]
        name = "process.exit"
        start = int(d.get("start_time_ns") or ts)
        sig = d.get("signal") or 0
        attrs["process.exit.code"] = 128 + sig if sig else d.get("exit_code", 0)
        if sig:
            attrs["tapio.process.exit.signal"] = vocab.signal_text(sig)
    elif kind == "exec":
        d = event["exec"]
        name = "process.exec"
        attrs.update({"process.executable.path": d.get("filename"),
                      "process.command_line": " ".join(d.get("args") or [])})
    return name, _clean(attrs), min(start, ts) if ts else start, max(ts, start), error
