"""Semantic groups as OpenTelemetry traces (opentelemetry-sdk): the export pipeline.

    --trace-export otlp      OTLP/gRPC to --otlp-endpoint (an OpenTelemetry Collector: on to Jaeger,
                             Tempo and the rest); TLS when the endpoint starts with https://
    --trace-export console   the SDK's console exporter (JSON per span on stdout)
    --trace-export jsonl:PATH  one JSON object per span appended to PATH
    --trace-export none      no traces

What the trace of a group holds (its spans and their attributes) is otel_spans.py's job.

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
import sys
import threading
import time

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from tapio import __version__
from tapio.server.otel_spans import GroupIds, group_trace

log = logging.getLogger("tapio.server.otel")

def parse_spec(spec):
    """("otlp"|"console"|"jsonl"|"none", path or None); ValueError when it is none of those."""
    spec = (spec or "none").strip()
    if spec in ("otlp", "console", "none"):
        return spec, None
    if spec.startswith("jsonl:") and len(spec) > len("jsonl:"):
        return "jsonl", spec[len("jsonl:"):]
    raise ValueError(f"{spec!r} is not a trace exporter: use otlp, console, jsonl:PATH or none")


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
        self._ids = GroupIds()
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
            self.spans_created += group_trace(self._tracer, self._ids, group)
            self.groups_exported += 1
        except Exception:
            log.exception("cannot build the trace of group %s", group.get("id"))

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
