"""Semantic groups as OpenTelemetry traces (opentelemetry-sdk), one trace per closed group.

    --trace-export otlp      OTLP/gRPC to --otlp-endpoint (an OpenTelemetry Collector: on to Jaeger,
                             Tempo and the rest); TLS when the endpoint starts with https://
    --trace-export console   the SDK's console exporter (JSON per span on stdout)
    --trace-export jsonl:PATH  one JSON object per span appended to PATH
    --trace-export none      no traces

The trace of a group: a root span `semantic.<intent>` from the group's start to its end, with
tapio.group.id, tapio.group.kind, tapio.intent, tapio.severity, tapio.confidence, tapio.summary,
tapio.root_cause and the subject's semantic-convention attributes; under it one span per process
(`process <comm>`, from its exec to its exit, nested as the processes were: a child's span under
its parent's), and one per other event (`tcp.connect`, `process.signal`, `oom_kill`, ...) under
its process's span when the group has it. The trace id is the group id.

Exporting never blocks ingestion: closed groups wait in a bounded queue (--trace-queue groups;
when it is full the group is dropped and counted) for this module's thread, which turns them into
spans only while the SDK's BatchSpanProcessor has room for them (so that it never drops spans
itself). An exporter that is down is retried by the SDK; spans it could not deliver are counted.
`healthy()` says whether traces are getting through, for /readyz.
"""
import json
import logging
import os
import queue
import random
import sys
import threading
import time

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.trace import SpanKind, Status, StatusCode

from tapio import __version__, vocab

log = logging.getLogger("tapio.server.otel")

INT64_MAX = (1 << 63) - 1
SEC = 1_000_000_000


def parse_spec(spec):
    """("otlp"|"console"|"jsonl"|"none", path or None); ValueError when it is none of those."""
    spec = (spec or "none").strip()
    if spec in ("otlp", "console", "none"):
        return spec, None
    if spec.startswith("jsonl:") and len(spec) > len("jsonl:"):
        return "jsonl", spec[len("jsonl:"):]
    raise ValueError(f"{spec!r} is not a trace exporter: use otlp, console, jsonl:PATH or none")


class _GroupIds(IdGenerator):
    """Random span ids; the trace id of a root span is the group id, set just before it starts
    (only the exporter thread starts spans)."""

    def __init__(self):
        self.next_trace_id = None
        self._random = random.Random()

    def generate_span_id(self):
        return self._random.getrandbits(64) or 1

    def generate_trace_id(self):
        trace_id, self.next_trace_id = self.next_trace_id, None
        return trace_id or self._random.getrandbits(128) or 1


class JsonLinesSpanExporter(SpanExporter):
    """One JSON object per span, appended to a file (OTLP's field names, ids in hex)."""

    def __init__(self, path):
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)
        self.path = path
        self._file = open(path, "a", encoding="utf-8")
        self._lock = threading.Lock()

    def export(self, spans):
        lines = []
        for span in spans:
            ctx = span.get_span_context()
            lines.append(json.dumps({
                "trace_id": f"{ctx.trace_id:032x}", "span_id": f"{ctx.span_id:016x}",
                "parent_span_id": f"{span.parent.span_id:016x}" if span.parent else "",
                "name": span.name, "kind": span.kind.name,
                "start_time_unix_nano": span.start_time, "end_time_unix_nano": span.end_time,
                "attributes": dict(span.attributes or {}),
                "status": {"code": span.status.status_code.name,
                           "message": span.status.description or ""},
                "resource": dict(span.resource.attributes),
            }, separators=(",", ":"), default=str))
        try:
            with self._lock:
                if self._file is None:
                    return SpanExportResult.FAILURE
                self._file.write("\n".join(lines) + "\n")
                self._file.flush()
        except OSError as e:
            log.warning("cannot write spans to %s: %s", self.path, e)
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def shutdown(self):
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    def force_flush(self, timeout_millis=30000):
        return True


class _CountingExporter(SpanExporter):
    """Wraps the real exporter: counts what it is handed and what it delivers."""

    def __init__(self, inner, on_handed):
        self.inner = inner
        self.on_handed = on_handed
        self.handed = 0
        self.exported = 0
        self.failed = 0
        self.consecutive_failures = 0
        self.last_success = None
        self.last_failure = None

    def export(self, spans):
        self.handed += len(spans)
        self.on_handed()
        try:
            result = self.inner.export(spans)
        except Exception:
            log.exception("the span exporter failed")
            result = SpanExportResult.FAILURE
        if result == SpanExportResult.SUCCESS:
            self.exported += len(spans)
            self.consecutive_failures = 0
            self.last_success = time.time()
        else:
            self.failed += len(spans)
            self.consecutive_failures += 1
            self.last_failure = time.time()
        return result

    def shutdown(self):
        self.inner.shutdown()

    def force_flush(self, timeout_millis=30000):
        return self.inner.force_flush(timeout_millis)


def _build_exporter(kind, path, endpoint, timeout_s):
    if kind == "otlp":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        if not endpoint:
            raise ValueError("--trace-export otlp needs --otlp-endpoint HOST:PORT")
        secure = endpoint.startswith("https://")
        return OTLPSpanExporter(endpoint=endpoint, insecure=not secure, timeout=timeout_s)
    if kind == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter
        return ConsoleSpanExporter(out=sys.stdout)
    if kind == "jsonl":
        return JsonLinesSpanExporter(path)
    return None


class TraceExporter:
    """Turns closed groups into traces and exports them, off the ingest thread."""

    def __init__(self, spec="none", endpoint=None, *, queue_size=1024, span_queue=8192,
                 schedule_delay_ms=500, timeout_s=10.0, service_name="tapio", exporter=None):
        self.kind, path = parse_spec(spec) if exporter is None else ("custom", None)
        self.endpoint = endpoint
        self.enabled = self.kind != "none"
        self.groups_exported = 0
        self.groups_dropped = 0
        self.spans_created = 0
        self.last_drop = None
        self._queue = queue.Queue(queue_size)
        self._span_queue = span_queue
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread = None
        self._counting = None
        if not self.enabled:
            return
        inner = exporter or _build_exporter(self.kind, path, endpoint, timeout_s)
        self._counting = _CountingExporter(inner, self._handed)
        self._ids = _GroupIds()
        self._provider = TracerProvider(
            resource=Resource.create({"service.name": service_name, "service.version": __version__,
                                      "telemetry.sdk.name": "opentelemetry"}),
            id_generator=self._ids)
        self._processor = BatchSpanProcessor(self._counting, max_queue_size=span_queue,
                                             schedule_delay_millis=schedule_delay_ms,
                                             max_export_batch_size=min(512, span_queue))
        self._provider.add_span_processor(self._processor)
        self._tracer = self._provider.get_tracer("tapio.correlation", __version__)
        self._thread = threading.Thread(target=self._run, name="trace-export", daemon=True)
        self._thread.start()

    # -- the engine side --------------------------------------------------------------------------
    def export(self, group):
        """Queue a closed group for export; never blocks. False when it was dropped."""
        if not self.enabled:
            return False
        try:
            self._queue.put_nowait(group)
            return True
        except queue.Full:
            self.groups_dropped += 1
            self.last_drop = time.time()
            if self.groups_dropped == 1 or self.groups_dropped % 100 == 0:
                log.warning("trace export queue full: %d group(s) dropped so far", self.groups_dropped)
            return False

    # -- the export thread ------------------------------------------------------------------------
    def _handed(self):
        with self._cond:
            self._cond.notify_all()

    def _in_processor(self):
        return self.spans_created - self._counting.handed

    def _run(self):
        while True:
            try:
                group = self._queue.get(timeout=0.2)
            except queue.Empty:
                if self._stop.is_set():
                    return
                continue
            try:
                if group is None:
                    return
                self._export_one(group)
            finally:
                self._queue.task_done()

    def _export_one(self, group):
        need = 2 + len((group.get("attributes") or {}).get("processes") or ()) + len(group.get("events") or ())
        with self._cond:
            # wait for room in the span processor, so that it never drops spans itself
            while (self._in_processor() + need > self._span_queue
                   and self._in_processor() > 0 and not self._stop.is_set()):
                self._cond.wait(0.5)
        try:
            self.spans_created += self._trace(group)
            self.groups_exported += 1
        except Exception:
            log.exception("cannot build the trace of group %s", group.get("id"))

    def _trace(self, group):
        """Start and end the spans of one group; returns how many."""
        tracer = self._tracer
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
            self._ids.next_trace_id = int(group["trace_id"], 16)
        except (KeyError, TypeError, ValueError):
            self._ids.next_trace_id = None
        root = tracer.start_span(f"semantic.{group.get('intent', 'unknown')}",
                                 context=otel_context.Context(), kind=SpanKind.INTERNAL,
                                 attributes=root_attributes(group), start_time=start)
        self._ids.next_trace_id = None
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

    # -- health -----------------------------------------------------------------------------------
    def healthy(self):
        """(True, "") when traces are getting through (or export is off); else (False, why)."""
        if not self.enabled:
            return True, "trace export is off"
        if self._thread is not None and not self._thread.is_alive() and not self._stop.is_set():
            return False, "the trace export thread has stopped"
        c = self._counting
        if c.consecutive_failures:
            since = time.strftime("%H:%M:%S", time.localtime(c.last_failure))
            return False, (f"{self.kind} trace export failing ({c.consecutive_failures} failed "
                           f"export(s) in a row, last at {since}; {c.failed} spans lost)"
                           + (f" to {self.endpoint}" if self.endpoint else ""))
        if self._queue.full():
            return False, f"trace export queue full ({self._queue.maxsize} groups waiting)"
        if self.last_drop is not None and time.time() - self.last_drop < 60:
            return False, f"{self.groups_dropped} group(s) dropped from a full trace export queue"
        return True, ""

    def stats(self):
        c = self._counting
        return {
            "exporter": self.kind, "endpoint": self.endpoint or "",
            "groups_queued": self._queue.qsize(), "groups_exported": self.groups_exported,
            "groups_dropped": self.groups_dropped, "spans_created": self.spans_created,
            "spans_exported": c.exported if c else 0, "spans_failed": c.failed if c else 0,
            "spans_in_processor": self._in_processor() if c else 0,
            "healthy": self.healthy()[0],
        }

    def flush(self, timeout=5.0):
        """Wait (bounded) until queued groups are spans, and ask the processor to export them."""
        if not self.enabled:
            return True
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.01)
        return self._processor.force_flush(int(max(0.0, deadline - time.monotonic()) * 1000))

    def shutdown(self, timeout=5.0):
        """Export what is queued (bounded by `timeout` seconds), then stop."""
        if not self.enabled or self._stop.is_set():
            return
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.01)
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        try:
            self._queue.put_nowait(None)
        except queue.Full:
            pass
        self._thread.join(max(0.1, deadline - time.monotonic()))
        # the processor's shutdown exports what it holds; an exporter that is down may take long:
        # wait for it only until the deadline (it runs on in a daemon thread)
        closer = threading.Thread(target=self._processor.shutdown, name="trace-export-close",
                                  daemon=True)
        closer.start()
        closer.join(max(0.1, deadline - time.monotonic()))


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
                      "tapio.oom.rss_bytes": a.get("rss_bytes")})
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
