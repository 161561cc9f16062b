"""tapio-collector's HTTP surface, served by hypercorn inside the collector's trio nursery.

    GET /healthz          the process answers
    GET /readyz           BPF programs attached and the stream to a server up (503 + why, if not)
    GET /metrics          Prometheus exposition
    GET /api/v1/stats     the original's GetStatistics() fields, the ledger, and more

Everything is read at request time from the counters the pump, the source, the processor and
the connection manager keep anyway.
"""
import time

import trio

from tapio import __version__
from tapio.http import params
from tapio.http.asgi import Router
from tapio.http.health import add_health_routes
from tapio.http.metrics import Families, metrics_response, new_registry
from tapio.http.serve import HttpServer

TOP_CGROUPS = 5     # cgroups with a series of their own under --cgroup-budget: bounded cardinality


class CollectorSurface:
    """What the endpoints read: the pump (events, batches), its source (kernel drops, ring
    buffer), the processor (filtered, collapsed) and the sink (the connection manager, or the
    --output writer)."""

    def __init__(self, args, pump, source, sink, processor, ledger=None):
        self.collector_id = args.collector_id
        self.node = args.node_name
        self.pump = pump
        self.source = source
        self.sink = sink
        self.processor = processor
        self.ledger = ledger if ledger is not None else pump.ledger
        self.output = getattr(args, "output", None)
        self.started = time.time()

    @property
    def streaming(self):
        return hasattr(self.sink, "stats") and hasattr(self.sink, "buffer")

    @property
    def probes(self):
        return getattr(self.source, "probes", None)

    def kernel_drops(self):
        """Failed ring-buffer reserves so far, read from the kernel now (not at the last batch)."""
        probes = self.probes
        if probes is not None and not probes.closed:
            try:
                return self.source.kernel_drops_total()
            except ValueError:          # closed meanwhile
                pass
        return self.pump.stats.kernel_drops

    def ring_buffer(self):
        """(used bytes, size bytes), or None without a kernel ring buffer."""
        probes = self.probes
        if probes is None or probes.closed:
            return None
        try:
            return probes.ring_buffer_used(), probes.ring_buffer_bytes
        except (ValueError, OSError):
            return None

    def ledger_totals(self):
        """The ledger now, with the kernel's drop counter read now (seen includes them)."""
        return self.ledger.totals(self.kernel_drops())

    def budget_json(self):
        """--cgroup-budget: its settings, what it held back, and the cgroups that held back the
        most (None when it is off)."""
        budget = self.pump.budget
        if budget is None:
            return None
        return {**budget.stats(), "top": [
            {"cgroup_id": cgroup_id, "cgroup": self.cgroup_name(cgroup_id), "suppressed": total,
             "by_type": by_type} for cgroup_id, total, by_type in budget.top(TOP_CGROUPS)]}

    def cgroup_name(self, cgroup_id):
        name = getattr(self.processor, "cgroup_name", None)
        try:
            return name(cgroup_id) if name is not None else str(cgroup_id)
        except Exception:       # a metric label must not fail a scrape
            return str(cgroup_id)

    def processor_stats(self):
        try:
            return dict(self.processor.stats())
        except Exception:
            return {}


def readiness(surface):
    checks = {}
    probes = surface.probes
    if probes is None:
        checks["bpf"] = {"ok": True, "detail": f"no BPF: {type(surface.source).__name__} is the source"}
    elif probes.closed:
        checks["bpf"] = {"ok": False, "detail": "the BPF programs are detached (shutting down)"}
    else:
        from tapio._fast.kernel import EVENT_TYPE_NAMES
        names = ", ".join(EVENT_TYPE_NAMES[t] for t in sorted(probes.event_types))
        checks["bpf"] = {"ok": True, "detail": f"attached: {names}"}
    if surface.streaming:
        stats = surface.sink.stats
        if stats.connected:
            paused = " (paused by the server)" if stats.paused else ""
            checks["stream"] = {"ok": True, "detail": f"streaming to {stats.server}{paused}"}
        else:
            detail = f"{stats.state}" + (f" {stats.server}" if stats.server else "")
            checks["stream"] = {"ok": False, "detail": f"no stream to a server: {detail}, "
                                                       f"{stats.reconnects} reconnects so far"}
    else:
        checks["stream"] = {"ok": True, "detail": f"no server: writing JSON lines to {surface.output}"}
    if surface.pump.stopping:
        checks["pump"] = {"ok": False, "detail": "draining: the collector is shutting down"}
    return all(c["ok"] for c in checks.values()), checks


def stats_json(surface):
    pump = surface.pump.stats
    body = {
        "collector_id": surface.collector_id, "node": surface.node, "version": __version__,
        "uptime_seconds": round(time.time() - surface.started, 3),
        "events_seen": pump.events, "batches_encoded": pump.batches,
        "last_event_id": pump.last_event_id,
        "events_dropped": {"kernel": surface.kernel_drops(), "processor": 0,
                           "buffer": surface.sink.buffer.dropped_events if surface.streaming else 0},
        "processor": surface.processor_stats(),
        "cgroup_budget": surface.budget_json(),
        # seen = delivered + filtered + collapsed + dropped_* + undelivered; unaccounted is 0
        "ledger": surface.ledger_totals().as_dict(),
    }
    ring = surface.ring_buffer()
    if ring is not None:
        body["ring_buffer"] = {"used_bytes": ring[0], "size_bytes": ring[1],
                               "fill": round(ring[0] / ring[1], 6) if ring[1] else 0.0}
    if surface.streaming:
        sink = surface.sink
        body.update(sink.stats.as_dict(sink.buffer))
        body["batches_duplicate"] = sink.stats.duplicates_acked
        body["bytes_sent"] = sink.stats.bytes_sent
        body["buffer_limit_bytes"] = sink.buffer.max_bytes
    else:
        body.update({"connected": False, "state": "output", "output": surface.output})
    return body


class CollectorHttp:
    def __init__(self, surface, host, port):
        self.surface = surface
        self.registry = new_registry(CollectorMetrics(surface))
        self.router = build_router(surface, self.registry)
        self.server = HttpServer(self.router, host, port, "tapio-collector")

    def bind(self):
        self.server.bind()

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED):
        await self.server.run(task_status=task_status)

    def stop(self):
        self.server.stop()


def build_router(surface, registry):
    router = Router("tapio-collector")

    @router.get("/")
    def index(request):
        return {"program": "tapio-collector", "version": __version__,
                "endpoints": [p for p in router.patterns() if p != "/"]}

    add_health_routes(router, "tapio-collector", surface, readiness)

    @router.get("/metrics")
    def metrics(request):
        return metrics_response(registry, request.headers.get("accept", ""))

    @router.get("/api/v1/stats")
    def stats(request):
        params.only(request, ())
        return stats_json(surface)

    return router


class CollectorMetrics:
    """The collector's Prometheus metrics, read at scrape time."""

    def __init__(self, surface):
        self.surface = surface

    def describe(self):
        return []

    def collect(self):
        s = self.surface
        pump = s.pump.stats
        who = (s.collector_id, s.node)
        f = Families()
        f.info("tapio_build", "The program, its version, this collector and its node",
               {"program": "tapio-collector", "version": __version__, "collector": s.collector_id,
                "node": s.node})
        source = "kernel" if s.probes is not None else type(s.source).__name__.lower().replace("source", "")
        f.counter("tapio_events_received_total", "Events taken from the source (the kernel ring buffer)",
                  ("collector", "node", "source"))
        f.add("tapio_events_received_total", pump.events, *who, source)
        f.counter("tapio_events_dropped_total",
                  "Events lost, by stage: kernel (ring buffer full), processor (never: it filters "
                  "and collapses by design, see tapio_events_filtered_total), buffer (send buffer "
                  "full, by the overflow policy)", ("collector", "node", "stage"))
        f.add("tapio_events_dropped_total", s.kernel_drops(), *who, "kernel")
        f.add("tapio_events_dropped_total", 0, *who, "processor")
        f.add("tapio_events_dropped_total", s.sink.buffer.dropped_events if s.streaming else 0, *who, "buffer")
        processor = s.processor_stats()
        f.counter("tapio_events_filtered_total",
                  "Events the semantic processor left out on purpose: filtered (own process tree, "
                  "excluded commands, cgroups) or collapsed into a repeat count", ("collector", "node", "reason"))
        for reason in ("filtered", "collapsed"):
            f.add("tapio_events_filtered_total", processor.get(reason, 0), *who, reason)
        ledger = s.ledger_totals()
        f.counter("tapio_ledger_events_total",
                  "The collector's ledger: events seen (read, and dropped in the kernel) and where "
                  "they went; seen = the other fates + tapio_ledger_undelivered_events",
                  ("collector", "node", "fate"))
        for fate in ("seen", "delivered", "filtered", "collapsed", "dropped_kernel",
                     "dropped_processor", "dropped_buffer", "throttled"):
            f.add("tapio_ledger_events_total", getattr(ledger, fate), *who, fate)
        f.gauge("tapio_ledger_undelivered_events",
                "Events seen whose fate is open: read and not yet batched, held in the send "
                "buffer, or on the wire without an ack", ("collector", "node"))
        f.add("tapio_ledger_undelivered_events", ledger.undelivered, *who)
        budget = s.pump.budget
        if budget is not None:
            f.counter("tapio_cgroup_throttled_events_total",
                      "Routine events the per-cgroup budget (--cgroup-budget) held back, in all "
                      "cgroups", ("collector", "node"))
            f.add("tapio_cgroup_throttled_events_total", budget.suppressed, *who)
            f.gauge("tapio_cgroup_throttled_top_events",
                    f"Events held back so far (in throttled events sent) of the {TOP_CGROUPS} "
                    "cgroups that held back the most, by type; the cgroup label is its "
                    "namespace/pod/container, container, unit or path", ("collector", "node", "cgroup", "type"))
            series = {}     # two cgroups may share a name (a unit's old and new cgroup): one series
            for cgroup_id, _, by_type in budget.top(TOP_CGROUPS):
                name = s.cgroup_name(cgroup_id)
                for kind, count in by_type.items():
                    series[name, kind] = series.get((name, kind), 0) + count
            for (name, kind), count in series.items():
                f.add("tapio_cgroup_throttled_top_events", count, *who, name, kind)
            f.gauge("tapio_cgroup_budget_cgroups", "Cgroups the budget's table tracks now",
                    ("collector", "node"))
            f.add("tapio_cgroup_budget_cgroups", budget.throttle.cgroups, *who)
        f.counter("tapio_batches_encoded_total", "Batches the pump encoded", ("collector", "node"))
        f.add("tapio_batches_encoded_total", pump.batches, *who)

        ring = s.ring_buffer()
        if ring is not None:
            used, size = ring
            f.gauge("tapio_ring_buffer_used_bytes", "Bytes in the kernel ring buffer not read yet",
                    ("collector", "node"))
            f.add("tapio_ring_buffer_used_bytes", used, *who)
            f.gauge("tapio_ring_buffer_size_bytes", "Size of the kernel ring buffer", ("collector", "node"))
            f.add("tapio_ring_buffer_size_bytes", size, *who)
            f.gauge("tapio_ring_buffer_fill_ratio", "Part of the kernel ring buffer in use (0-1)",
                    ("collector", "node"))
            f.add("tapio_ring_buffer_fill_ratio", used / size if size else 0.0, *who)

        if s.streaming:
            stats, buffer = s.sink.stats, s.sink.buffer
            f.counter("tapio_events_sent_total", "Events a server acked as received", ("collector", "node"))
            f.add("tapio_events_sent_total", stats.events_sent, *who)
            f.counter("tapio_batches_sent_total", "Batch sends (re-sends after a reconnect included)",
                      ("collector", "node"))
            f.add("tapio_batches_sent_total", stats.batches_sent, *who)
            f.counter("tapio_bytes_sent_total", "Wire bytes of batch sends", ("collector", "node"))
            f.add("tapio_bytes_sent_total", stats.bytes_sent, *who)
            f.counter("tapio_acks_received_total", "Acks from servers, by status", ("collector", "node", "status"))
            f.add("tapio_acks_received_total", stats.batches_acked - stats.duplicates_acked, *who, "ok")
            f.add("tapio_acks_received_total", stats.duplicates_acked, *who, "duplicate")
            f.counter("tapio_batches_dropped_total", "Batches the send buffer's overflow policy dropped",
                      ("collector", "node"))
            f.add("tapio_batches_dropped_total", buffer.dropped_batches, *who)
            f.counter("tapio_reconnects_total", "Streams that ended (each is followed by a reconnect)",
                      ("collector", "node"))
            f.add("tapio_reconnects_total", stats.reconnects, *who)
            f.counter("tapio_collector_bad_replies_total",
                      "Server replies that were no TapioStreamEventsResponse (each ended its stream)",
                      ("collector", "node"))
            f.add("tapio_collector_bad_replies_total", stats.bad_replies, *who)
            f.counter("tapio_collector_pause_timeouts_total",
                      "Streams left because a server's PAUSE outlasted --pause-timeout", ("collector", "node"))
            f.add("tapio_collector_pause_timeouts_total", stats.pause_timeouts, *who)
            f.gauge("tapio_connected", "1 while a stream to a server is up", ("collector", "node", "server"))
            f.add("tapio_connected", 1 if stats.connected else 0, *who, stats.server or "")
            f.gauge("tapio_stream_paused", "1 while the server has paused this collector", ("collector", "node"))
            f.add("tapio_stream_paused", 1 if stats.paused else 0, *who)
            f.gauge("tapio_send_buffer_bytes", "Bytes of unacked batches held", ("collector", "node"))
            f.add("tapio_send_buffer_bytes", buffer.bytes, *who)
            f.gauge("tapio_send_buffer_limit_bytes", "Bound of the unacked-batch buffer (--max-memory)",
                    ("collector", "node"))
            f.add("tapio_send_buffer_limit_bytes", buffer.max_bytes, *who)
            f.gauge("tapio_send_buffer_batches", "Unacked batches held", ("collector", "node"))
            f.add("tapio_send_buffer_batches", len(buffer), *who)
            if stats.last_sent is not None:
                f.gauge("tapio_last_send_timestamp_seconds", "Wall time of the latest batch send",
                        ("collector", "node"))
                f.add("tapio_last_send_timestamp_seconds", stats.last_sent, *who)
            latency = stats.send_latency
            f.histogram("tapio_send_latency_seconds", "Time from a batch send to its ack",
                        ("collector", "node"))
            f.add_histogram("tapio_send_latency_seconds", latency.cumulative_buckets(), latency.sum, *who)
        f.gauge("tapio_ready", "1 while /readyz answers ready")
        f.add("tapio_ready", 1 if readiness(s)[0] else 0)
        return f.done()
