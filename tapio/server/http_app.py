"""tapio-server's HTTP surface: health, readiness, Prometheus metrics, the JSON API and the
dashboard, served by hypercorn inside the server's trio nursery.

    GET /                         the live dashboard (tapio/server/dashboard/)
    GET /healthz                  the process answers
    GET /readyz                   gRPC serving, the trace exporter healthy and (PostgreSQL) the
                                  database writing (503 + why, if not)
    GET /metrics                  Prometheus exposition (text, or OpenMetrics when asked for)
    GET /api/v1/stats             counters, rates by event type, drops by stage, groups by kind
    GET /api/v1/collectors        every collector seen: node, peer, connected since, rate, drops
    GET /api/v1/vocabulary        the names the other answers use: event types, group kinds and
                                  their intents, severities, drop stages (the dashboard reads them)
    GET /api/v1/events            newest events: ?type=&pid=&comm=&container=&collector=&limit=
    GET /api/v1/groups            newest semantic groups: ?kind=&since=&limit=&before=
    GET /api/v1/groups/{id}       one group with its events

Everything is read from the state the server keeps anyway (Ingest counters, the store, the
exporter) when asked; nothing here runs per event.

Credentials: when the server has tokens (--auth-token-file), /api/* needs `Authorization: Bearer
TOKEN` of a reader or admin token (401 without one, 403 for a collector token), and so does
/metrics with --metrics-auth. /healthz, /readyz and the dashboard's own files stay open: the
dashboard asks for a token and sends it on its requests. A reader scoped to namespaces gets only
the events and groups of pods in them (stats, collectors and the vocabulary are not scoped).
"""
import functools
import time
import urllib.parse

import trio

from tapio import __version__, vocab
from tapio.vocab import EVENT_TYPES, GROUP_KINDS, format_time
from tapio.http import params
from tapio.http.asgi import HttpError, Router
from tapio.http.health import add_health_routes
from tapio.http.metrics import Families, metrics_response, new_registry
from tapio.http.rates import RateSampler
from tapio.http.serve import HttpServer
from tapio.server.auth import ANONYMOUS, READ
from tapio.server.correlation.engine import MARK_REASONS
from tapio.server.store import StoreUnavailable
from tapio.server.subscribe import in_scope, scoped_events, scoped_groups

EVENT_TYPE_NAMES = tuple(sorted(name for number, name in EVENT_TYPES.items() if number))
DROP_STAGES = ("kernel", "processor", "buffer", "decode", "exporter")
MAX_LIMIT = 1000
NO_STORE = ("this server keeps no events or groups (it runs without a store): "
            "/api/v1/stats and /api/v1/collectors still answer")


class ServerSurface:
    """What the endpoints read. A part the server runs without (no store, no exporter) is None."""

    def __init__(self, ingest, service=None, store=None, exporter=None, auth=None, engine=None,
                 grpc_address=None, metrics_auth=False, limits=None):
        self.ingest = ingest
        self.service = service
        self.store = store
        self.exporter = exporter
        self.auth = auth                # tapio.server.auth.Auth, or None: no credentials asked
        self.metrics_auth = metrics_auth
        self.limits = limits            # grpc_server.StreamLimits: streams refused past the caps
        self.engine = engine            # the correlation engine: groups opened by kind
        self.grpc_address = grpc_address
        self.started = time.time()

    def collectors(self):
        """A snapshot of the per-collector states (the ingest thread adds to the dict)."""
        return sorted(list(self.ingest.collectors.values()), key=lambda c: c.collector_id)

    def events_by_type(self):
        totals = {}
        for state in self.collectors():
            for name, count in dict(state.events_by_type).items():
                totals[name] = totals.get(name, 0) + count
        return totals

    def exporter_health(self):
        """(ok, reason), or None without an exporter."""
        if self.exporter is None:
            return None
        try:
            ok, reason = self.exporter.healthy()
        except Exception as e:          # a broken exporter is a finding, not a crashed endpoint
            return False, f"health check failed: {e}"
        return bool(ok), reason or ""

    def exporter_stats(self):
        """The exporter's counters (groups exported and dropped, spans exported and failed)."""
        if self.exporter is None:
            return None
        try:
            return dict(self.exporter.stats())
        except Exception as e:
            return {"error": str(e)}

    def exporter_drops(self):
        """Spans the exporter could not deliver: the events of those spans are lost to traces."""
        stats = self.exporter_stats()
        if stats is None or not isinstance(stats.get("spans_failed"), int):
            return None
        return stats["spans_failed"]

    def groups_opened(self):
        """{kind: groups the engine opened since start} (a counter), or None without an engine."""
        if self.engine is None:
            return None
        return dict(self.engine.groups_opened)

    def group_counts(self):
        """{kind: groups stored}; None without a store or while its database is away."""
        if self.store is None:
            return None
        try:
            return dict(self.store.group_counts())
        except StoreUnavailable:
            return None


class ServerHttp:
    """The router, the metrics registry and the rate sampler of one server process."""

    def __init__(self, surface, host, port):
        self.surface = surface
        self.sampler = RateSampler(self._totals)
        self.registry = new_registry(ServerMetrics(surface))
        self.router = build_router(surface, self.sampler, self.registry)
        self.server = HttpServer(self.router, host, port, "tapio-server")

    def _totals(self):
        collectors = self.surface.collectors()
        return {"type": self.surface.events_by_type(),
                "collector": {c.collector_id: c.events for c in collectors}}

    def bind(self):
        """The listening socket, now: a port in use is a ConfigError before anything starts."""
        self.server.bind()

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED):
        """Serve (and sample rates) until stop(); task_status gets the URL once listening."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.sampler.run)
            try:
                await self.server.run(task_status=task_status)
            finally:
                nursery.cancel_scope.cancel()

    def stop(self):
        self.server.stop()


def _iso(seconds):
    return None if seconds is None else format_time(int(seconds * 1e9))


def _drops(surface):
    totals = dict.fromkeys(DROP_STAGES, 0)
    for state in surface.collectors():
        totals["kernel"] += state.kernel_drops
        totals["processor"] += state.processor_drops
        totals["buffer"] += state.buffer_drops
    totals["decode"] = surface.ingest.decode_errors
    totals["exporter"] = surface.exporter_drops()
    return totals


def collector_json(state, rate):
    return {
        "id": state.collector_id, "node": state.node_name, "version": state.version,
        "peer": state.peer, "connected": state.connected, "streams": state.streams,
        "connections": state.connections,
        "connected_since": _iso(state.connected_since) if state.connected else None,
        "last_seen": _iso(state.last_seen),
        "events": state.events, "events_per_second": round(rate, 3),
        "events_by_type": dict(state.events_by_type),
        "throttled_by_type": dict(state.throttled_by_type),
        "batches": state.batches, "duplicates": state.duplicates,
        "drops": {"kernel": state.kernel_drops, "processor": state.processor_drops,
                  "buffer": state.buffer_drops},
        "last_batch_id": state.last_batch_id, "last_event_id": state.last_event_id,
        "ledger": state.ledger_json(),
    }


def readiness(surface):
    """(ready, {check: {"ok": bool, "detail": text}})."""
    checks = {}
    service = surface.service
    if service is not None and service.draining.is_set():
        checks["grpc"] = {"ok": False, "detail": "draining: the server is shutting down"}
    else:
        checks["grpc"] = {"ok": True, "detail": f"serving on {surface.grpc_address or 'its gRPC port'}"}
    health = surface.exporter_health()
    if health is None:
        checks["exporter"] = {"ok": True, "detail": "no trace exporter configured"}
    else:
        ok, reason = health
        checks["exporter"] = {"ok": ok, "detail": reason or ("healthy" if ok else "unhealthy")}
    history = getattr(surface.store, "history", None)
    if history is not None:
        meanwhile = ("JetStream keeps taking batches; the history catches up after"
                     if getattr(surface.ingest, "relay", None) is not None
                     else "collectors are paused while it is")
        checks["database"] = {"ok": history.available, "detail": f"PostgreSQL {history.db_path}: "
                              + ("writing" if history.available else f"away, retrying ({meanwhile})")}
    backlog = surface.ingest.backlog()
    checks["ingest"] = {"ok": True, "detail": f"{backlog} batches waiting, {surface.ingest.pauses} "
                                              "pauses asked of collectors so far"}
    return all(c["ok"] for c in checks.values()), checks


def reader_guard(surface):
    """The check of the routes that need the right to read: a reader or admin bearer token when
    the server has tokens. Sets request.principal."""
    def guard(request):
        auth = surface.auth
        if auth is None or not auth.enabled:
            request.principal = ANONYMOUS
            return
        header = request.headers.get("authorization")
        principal = auth.principal(header)
        if principal is None:
            auth.count_refused()
            raise HttpError(401, "this server needs a bearer token: send 'Authorization: Bearer "
                                 "TOKEN' with a reader or admin token",
                            headers={"www-authenticate": 'Bearer realm="tapio"'})
        if not principal.may(READ):
            auth.count_denied()
            raise HttpError(403, f"a {principal.role} token may not read events and groups: use a "
                                 "reader or admin token")
        request.principal = principal
    return guard


def _namespaces(request):
    return request.principal.namespaces if request.principal is not None else ()


def build_router(surface, sampler, registry):
    router = Router("tapio-server")
    router.static("/dashboard/", "tapio.server", "dashboard", index="index.html", index_at="/")

    add_health_routes(router, "tapio-server", surface, readiness)
    reader = reader_guard(surface)

    @router.get("/metrics", guard=reader if surface.metrics_auth else None)
    async def metrics(request):
        # the store answers from SQLite: off the event loop (everything read here is thread-safe)
        return await trio.to_thread.run_sync(metrics_response, registry, request.headers.get("accept", ""))

    @router.get("/api/v1", guard=reader)
    def index(request):
        return {"endpoints": [p for p in router.patterns() if p.startswith("/api/")]}

    @router.get("/api/v1/stats", guard=reader)
    async def stats(request):
        params.only(request, ())
        return await trio.to_thread.run_sync(stats_json, surface, sampler)

    @router.get("/api/v1/collectors", guard=reader)
    def collectors(request):
        params.only(request, ())
        rates = sampler.rates("collector")
        items = [collector_json(c, rates.get(c.collector_id, 0.0)) for c in surface.collectors()]
        return {"collectors": items, "count": len(items)}

    @router.get("/api/v1/vocabulary", guard=reader)
    def vocabulary(request):
        params.only(request, ())
        return vocabulary_json()

    @router.get("/api/v1/events", guard=reader)
    async def events(request):
        params.only(request, ("type", "pid", "comm", "container", "collector", "limit"))
        filters = {
            "type": params.one_of(request, "type", EVENT_TYPE_NAMES),
            "pid": params.integer(request, "pid", minimum=0, maximum=2**32 - 1),
            "comm": params.text(request, "comm", max_length=64),
            "container": params.text(request, "container", max_length=256),
            "collector": params.text(request, "collector", max_length=256),
        }
        limit = params.integer(request, "limit", default=100, minimum=1, maximum=MAX_LIMIT)
        store = _store(surface)
        found = await _read(functools.partial(scoped_events, store, _namespaces(request),
                                              limit=limit, **filters))
        return {"events": found, "count": len(found), "limit": limit,
                "filters": {k: v for k, v in filters.items() if v is not None}}

    @router.get("/api/v1/groups", guard=reader)
    async def groups(request):
        params.only(request, ("kind", "since", "limit", "before"))
        kind = params.one_of(request, "kind", GROUP_KINDS)
        since = params.since_ns(request, "since")
        limit = params.integer(request, "limit", default=50, minimum=1, maximum=MAX_LIMIT)
        before = _group_id(params.text(request, "before", max_length=128), "before")
        store = _store(surface)
        namespaces = _namespaces(request)

        def query():
            # a scoped reader is not told how many groups there are outside its namespaces
            return (scoped_groups(store, namespaces, kind=kind, since_ns=since, limit=limit + 1,
                                  before=before),
                    None if namespaces else store.group_counts())
        found, counts = await _read(query)
        more = len(found) > limit
        found = found[:limit]
        next_url = None
        if more and found:
            query = {k: v for k, v in (("kind", kind), ("since", since and f"{since / 1e9:.9f}"),
                                       ("limit", limit)) if v is not None}
            query["before"] = found[-1]["id"]
            next_url = "/api/v1/groups?" + urllib.parse.urlencode(query)
        return {"groups": found, "count": len(found), "limit": limit, "next": next_url,
                "counts": counts}

    @router.get("/api/v1/groups/{group_id}", guard=reader)
    async def group(request):
        params.only(request, ())
        group_id = _group_id(request.params["group_id"], "group id")
        store = _store(surface)
        found = await _read(functools.partial(store.group, group_id))
        if found is None or not in_scope(found, _namespaces(request)):
            raise HttpError(404, f"no group {group_id!r} (it may have aged out of the store)")
        return found

    return router


def vocabulary_json():
    """/api/v1/vocabulary: tapio.vocab's names, in the contract's order."""
    return {
        "event_types": [name for number, name in sorted(EVENT_TYPES.items()) if number],
        "event_type_aliases": dict(vocab.EVENT_TYPE_ALIASES),
        "group_kinds": [{"kind": kind, "intent": intent} for kind, intent in GROUP_KINDS.items()],
        "severities": list(vocab.SEVERITIES),
        "drop_stages": list(DROP_STAGES),
    }


def stats_json(surface, sampler):
    """/api/v1/stats: counters, rates by type, drops by stage, groups by kind, store, exporter."""
    ingest = surface.ingest
    collectors = surface.collectors()
    by_type = sampler.rates("type")
    health = surface.exporter_health()
    exporter = surface.exporter_stats()
    if exporter is not None and health is not None:
        exporter.update(healthy=health[0], detail=health[1])
    return {
        "server": {"version": __version__, "started_at": _iso(surface.started),
                   "uptime_seconds": round(time.time() - surface.started, 3),
                   "grpc": surface.grpc_address},
        "events": {"received": ingest.events, "by_type": surface.events_by_type(),
                   "per_second": round(sum(by_type.values()), 3),
                   "per_second_by_type": {k: round(v, 3) for k, v in sorted(by_type.items())}},
        "batches": {"received": ingest.batches, "duplicates": ingest.duplicates,
                    "malformed": ingest.decode_errors},
        "acks": {"ok": ingest.batches, "duplicate": ingest.duplicates},
        "drops": _drops(surface),
        "collectors": {"connected": sum(1 for c in collectors if c.connected),
                       "known": len(collectors), "max": ingest.max_collectors,
                       "forgotten": ingest.collector_ids_forgotten},
        "ingest": {"backlog": ingest.backlog(), "pauses": ingest.pauses},
        "streams_refused": surface.auth.refused if surface.auth is not None else 0,
        "calls_denied": surface.auth.denied if surface.auth is not None else 0,
        "streams": streams_json(surface),
        "groups": surface.group_counts(),
        "groups_opened": surface.groups_opened(),
        "store": surface.store.stats() if surface.store is not None else None,
        "exporter": exporter,
        "history": sampler.history("type"),
    }


def streams_json(surface):
    """Collector streams ended or refused for the server's own reasons, by reason."""
    service, ingest, limits = surface.service, surface.ingest, surface.limits
    timeouts = dict(getattr(service, "timeouts", {}) or {})
    return {
        "open": limits.streams() if limits is not None else None,
        "refused_at_limit": limits.refused if limits is not None else 0,
        "hello_timeouts": timeouts.get("hello", 0),
        "idle_timeouts": timeouts.get("idle", 0),
        "collector_ids_denied": getattr(service, "claims_denied", 0),
        "replaced": getattr(ingest, "replaced", 0),
        "batch_ids_refused": getattr(ingest, "ids_refused", 0),
        "pause_ignored": getattr(ingest, "pause_ignored", 0),
    }


async def _read(query):
    """query() in a worker thread; 503 while the store's database is away."""
    try:
        return await trio.to_thread.run_sync(query)
    except StoreUnavailable as e:
        raise HttpError(503, f"the database is not reachable now: {e}", headers={"Retry-After": "5"})


def _store(surface):
    if surface.store is None:
        raise HttpError(503, NO_STORE)
    return surface.store


def _group_id(text, what):
    """Group ids are whole numbers or short names; anything else is a 400."""
    if text is None:
        return None
    if len(text) > 128 or not all(ch.isalnum() or ch in "-_.:" for ch in text):
        raise HttpError(400, f"{what} {text[:40]!r} is not a group id")
    return text


class ServerMetrics:
    """The server's Prometheus metrics, read from Ingest, the auth check, the store and the
    exporter at scrape time."""

    def __init__(self, surface):
        self.surface = surface

    def describe(self):
        return []           # names vary with what the server runs: no check at registration

    def collect(self):
        s = self.surface
        ingest = s.ingest
        collectors = s.collectors()
        f = Families()
        f.info("tapio_build", "The program and its version", {"program": "tapio-server", "version": __version__})

        f.counter("tapio_events_received_total", "Events received from collectors, by type",
                  ("collector", "node", "type"))
        f.counter("tapio_batches_received_total", "Batches accepted from collectors",
                  ("collector", "node"))
        f.counter("tapio_batches_duplicate_total",
                  "Batches a collector sent again after the server had them (acked, not counted)",
                  ("collector", "node"))
        f.counter("tapio_events_dropped_total",
                  "Events lost before correlation, by stage: kernel (ring buffer full), processor, "
                  "buffer (collector send buffer full), as collectors report them; decode "
                  "(malformed messages, each counted once) and exporter (spans not delivered) "
                  "at the server", ("collector", "stage"))
        f.counter("tapio_events_throttled_total",
                  "Events a collector's per-cgroup budget (--cgroup-budget) held back, by type, as "
                  "its `throttled` events report them", ("collector", "node", "type"))
        f.counter("tapio_collector_connections_total", "Streams opened by each collector",
                  ("collector", "node"))
        f.gauge("tapio_collector_connected", "1 while the collector has a stream open",
                ("collector", "node"))
        f.gauge("tapio_collector_last_seen_timestamp_seconds",
                "Wall time of the latest batch from the collector", ("collector", "node"))
        for c in collectors:
            who = (c.collector_id, c.node_name)
            for type_name, count in sorted(dict(c.events_by_type).items()):
                f.add("tapio_events_received_total", count, *who, type_name)
            for type_name, count in sorted(dict(c.throttled_by_type).items()):
                f.add("tapio_events_throttled_total", count, *who, type_name)
            f.add("tapio_batches_received_total", c.batches, *who)
            f.add("tapio_batches_duplicate_total", c.duplicates, *who)
            f.add("tapio_events_dropped_total", c.kernel_drops, c.collector_id, "kernel")
            f.add("tapio_events_dropped_total", c.processor_drops, c.collector_id, "processor")
            f.add("tapio_events_dropped_total", c.buffer_drops, c.collector_id, "buffer")
            f.add("tapio_collector_connections_total", c.connections, *who)
            f.add("tapio_collector_connected", 1 if c.connected else 0, *who)
            f.add("tapio_collector_last_seen_timestamp_seconds", c.last_seen, *who)
        f.add("tapio_events_dropped_total", ingest.decode_errors, "", "decode")
        exporter_drops = s.exporter_drops()
        if exporter_drops is not None:
            f.add("tapio_events_dropped_total", exporter_drops, "", "exporter")

        f.counter("tapio_acks_sent_total", "Acks sent to collectors, by status", ("status",))
        f.add("tapio_acks_sent_total", ingest.batches, "ok")
        f.add("tapio_acks_sent_total", ingest.duplicates, "duplicate")
        f.counter("tapio_messages_malformed_total", "Stream messages that did not decode")
        f.add("tapio_messages_malformed_total", ingest.decode_errors)
        f.gauge("tapio_collectors_connected", "Collectors with a stream open")
        f.add("tapio_collectors_connected", sum(1 for c in collectors if c.connected))
        f.gauge("tapio_collectors_known",
                "Collector ids the server tracks: the connected ones, and the most recently heard "
                "others up to --max-collectors")
        f.add("tapio_collectors_known", len(collectors))
        f.counter("tapio_collector_ids_forgotten_total",
                  "Disconnected collector ids forgotten (in every per-collector table) to stay "
                  "within --max-collectors")
        f.add("tapio_collector_ids_forgotten_total", ingest.collector_ids_forgotten)
        f.gauge("tapio_ingest_queue_batches", "Decoded batches waiting for the ingest engine")
        f.add("tapio_ingest_queue_batches", ingest.backlog())
        f.counter("tapio_stream_pauses_total", "Times a collector was asked to pause (backpressure)")
        f.add("tapio_stream_pauses_total", ingest.pauses)
        f.counter("tapio_streams_refused_total", "Streams refused, by reason", ("reason",))
        f.add("tapio_streams_refused_total", s.auth.refused if s.auth is not None else 0, "auth")
        f.add("tapio_streams_refused_total", s.auth.denied if s.auth is not None else 0, "permission")
        streams = streams_json(s)
        f.add("tapio_streams_refused_total", streams["refused_at_limit"], "limit")
        f.counter("tapio_streams_ended_total",
                  "Collector streams the server ended, by reason: hello_timeout, idle_timeout, "
                  "replaced (a newer stream said hello as its collector), batch_id (an id far "
                  "ahead of the clock), collector_id (a batch or hello for an id it may not use), "
                  "pause_ignored (still sending after PAUSE)",
                  ("reason",))
        for reason, key in (("hello_timeout", "hello_timeouts"), ("idle_timeout", "idle_timeouts"),
                            ("replaced", "replaced"), ("batch_id", "batch_ids_refused"),
                            ("collector_id", "collector_ids_denied"),
                            ("pause_ignored", "pause_ignored")):
            f.add("tapio_streams_ended_total", streams[key], reason)

        opened = s.groups_opened()
        if opened is not None:
            f.counter("tapio_groups_total", "Semantic groups the correlation engine opened, by kind",
                      ("kind",))
            for kind in sorted(set(GROUP_KINDS) | set(opened)):
                f.add("tapio_groups_total", opened.get(kind, 0), kind)
            marked = dict(s.engine.marked_by_reason)
            f.counter("tapio_groups_marked_incomplete_total",
                      "Times a semantic group was marked incomplete, by reason: gap (its "
                      "collector lost events in its window), throttled (a cgroup budget held "
                      "back events of its cgroup that its kind reads)", ("reason",))
            for reason in MARK_REASONS:
                f.add("tapio_groups_marked_incomplete_total", marked.get(reason, 0), reason)
        counts = s.group_counts()
        if counts is not None:
            f.gauge("tapio_groups_stored", "Semantic groups in the store (within retention), by kind",
                    ("kind",))
            for kind in sorted(set(GROUP_KINDS) | set(counts)):
                f.add("tapio_groups_stored", counts.get(kind, 0), kind)
        if s.store is not None:
            store = s.store.stats()
            f.gauge("tapio_store_events", "Recent events kept in memory for the API")
            f.add("tapio_store_events", store.get("events_kept"))
            f.gauge("tapio_store_events_bytes",
                    "Memory the recent events take (their batches' wire bytes and decoded records)")
            f.add("tapio_store_events_bytes", store.get("events_kept_bytes"))
            f.gauge("tapio_store_db_bytes", "Size of the group database on disk (with its WAL)")
            f.add("tapio_store_db_bytes", store.get("db_bytes"))
            f.counter("tapio_store_subscriber_drops_total", "Live-view items a slow subscriber missed")
            f.add("tapio_store_subscriber_drops_total", store.get("subscriber_drops"))
            pg = store.get("postgresql")
            if pg is not None:
                f.gauge("tapio_store_db_available", "1 while PostgreSQL takes writes, 0 while it is away")
                f.add("tapio_store_db_available", int(pg["available"]))
                f.counter("tapio_store_db_errors_total", "Failed PostgreSQL connects and statements")
                f.add("tapio_store_db_errors_total", pg["errors"])
                f.counter("tapio_history_events_total",
                          "Events written to the history (new), or found there already (replayed)",
                          ("result",))
                f.add("tapio_history_events_total", pg["events_written"], "new")
                f.add("tapio_history_events_total", pg["events_replayed"], "replayed")
                f.gauge("tapio_store_groups_held", "Group versions waiting for PostgreSQL to come back")
                f.add("tapio_store_groups_held", pg["groups_held"])
        health = s.exporter_health()
        if health is not None:
            f.gauge("tapio_exporter_healthy", "1 while the trace exporter is healthy")
            f.add("tapio_exporter_healthy", 1 if health[0] else 0)
            stats = s.exporter_stats() or {}
            f.counter("tapio_exporter_groups_total", "Groups handed to the trace exporter, by outcome",
                      ("outcome",))
            f.add("tapio_exporter_groups_total", stats.get("groups_exported"), "exported")
            f.add("tapio_exporter_groups_total", stats.get("groups_dropped"), "dropped")
            f.counter("tapio_exporter_spans_total", "Trace spans, by outcome", ("outcome",))
            f.add("tapio_exporter_spans_total", stats.get("spans_exported"), "exported")
            f.add("tapio_exporter_spans_total", stats.get("spans_failed"), "failed")
            f.gauge("tapio_exporter_queue_groups", "Groups waiting to become spans")
            f.add("tapio_exporter_queue_groups", stats.get("groups_queued"))
        f.gauge("tapio_ready", "1 while /readyz answers ready")
        f.add("tapio_ready", 1 if readiness(s)[0] else 0)
        return f.done()
