"""The server process: one trio.run owns the gRPC server's lifecycle and signal handling."""
import ctypes
import ipaddress
import logging
import signal

import grpc
import trio

from tapio.server.auth import Auth
from tapio.server.correlation import CorrelationEngine, load_config
from tapio.server.grpc_server import GrpcServer
from tapio.server.ingest import Ingest
from tapio.server.sequence import SequenceMetrics
from tapio.server.service import TapioService
from tapio.server.otel import TraceExporter
from tapio.server.store import Store
from tapio.server.subscribe import SERVICE as QUERY_SERVICE, QueryService

log = logging.getLogger("tapio.server")


M_MMAP_THRESHOLD = -3      # glibc's mallopt parameter (malloc.h)


def pin_mmap_threshold(nbytes=128 << 10):
    """Keep blocks from `nbytes` up mmap'ed, whatever was freed before. glibc raises its mmap
    threshold each time such a block is freed (up to 32 MiB); after that, large blocks (batches,
    grown correlation tables) come from the heap, and what a forgotten collector leaves there
    rarely goes back to the system: collector ids that come and go leave about twice as much
    resident unpinned (docs/security.md, "Limits", has the figures). False where the C library
    has no mallopt (musl): nothing to pin there."""
    try:
        return ctypes.CDLL(None).mallopt(M_MMAP_THRESHOLD, nbytes) == 1
    except (OSError, AttributeError):
        return False


def run(args):
    pin_mmap_threshold()
    return trio.run(_main, args)


def _ms(ns):
    return "n/a" if ns is None else f"{ns / 1e6:.3f} ms"


def _is_loopback(host):
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _credentials(args):
    """TLS (and mutual TLS) server credentials, or None for plain text."""
    if not args.tls_cert:
        return None

    def read(path):
        with open(path, "rb") as f:
            return f.read()
    client_ca = read(args.tls_client_ca) if args.tls_client_ca else None
    return grpc.ssl_server_credentials([(read(args.tls_key), read(args.tls_cert))],
                                       root_certificates=client_ca,
                                       require_client_auth=client_ca is not None)


def _http(args, ingest, service, auth, store=None, exporter=None, engine=None, limits=None):
    """The dashboard, JSON API, /metrics, /healthz and /readyz (hypercorn), its socket bound;
    None with --http-port 0."""
    if not getattr(args, "http_port", 0):
        return None
    from tapio.server.http_app import ServerHttp, ServerSurface
    host = args.http_host or args.host
    surface = ServerSurface(ingest, service=service, store=store, exporter=exporter, auth=auth,
                            engine=engine, metrics_auth=getattr(args, "metrics_auth", False),
                            limits=limits)
    http = ServerHttp(surface, host, args.http_port)
    http.bind()
    if not _is_loopback(host) and (auth is None or not auth.enabled):
        log.warning("HTTP (dashboard, events, metrics) asks for no token and listens on %s "
                    "(--allow-unauthenticated): anyone who reaches it reads every event", host)
    return http


def _correlation(args, group_sinks=()):
    """The store (SQLite groups, recent events), the trace exporter, and the correlation engine
    whose groups go to both (and to each of `group_sinks`: the bus's fan-out)."""
    config = load_config(args.correlation_config)
    store = Store(None if args.db in ("", ":memory:") else args.db, recent_events=args.recent_events,
                  recent_bytes=args.recent_events_memory,
                  retention_s=args.db_retention, max_groups=args.db_max_groups,
                  max_group_events=config.limits.max_group_events,
                  history_retention_s=getattr(args, "history_retention", 86400))
    exporter = TraceExporter(args.trace_export, args.otlp_endpoint, queue_size=args.trace_queue)

    def on_group(group, closed):
        store.put_group(group)
        for sink in group_sinks:
            sink(group)
        if closed:
            exporter.export(group)
            log.info("Group %s %s: %s", group["kind"], group["id"][:12], group["summary"])

    correlation = CorrelationEngine(config, on_group=on_group)
    store.stats_sources["exporter"] = exporter.stats
    store.stats_sources["correlation"] = correlation.stats
    if exporter.enabled:
        log.info("Exporting semantic groups as traces: %s%s", exporter.kind,
                 f" to {args.otlp_endpoint}" if exporter.kind == "otlp" else "")
    return store, exporter, correlation


def _replica(args, ingest, store, correlation):
    """This server as a replica on the event bus (--bus); ConfigError when the bus is unreachable."""
    from tapio.server.bus.replica import Replica, default_replica_id, parse_bus
    replay = max(correlation.config.crash_loop.window, correlation.config.connectivity.window)
    return Replica(parse_bus(args.bus), args.replica_id or default_replica_id(), ingest, store,
                   correlation, replay=replay)


def connect(ingest, store, correlation, replica=None):
    """Ingest feeds the store and, without a bus, the correlation engine: tells the engine of gaps
    (groups whose window overlaps one are marked incomplete), and tells both which collector ids
    it forgot (past --max-collectors). With a bus the owner of a node's partition records the
    history and correlates (tapio/server/bus/owner.py): its engine's collectors are not this
    replica's connections, so ingest's forgetting is not theirs."""
    if store.history is not None:
        log.info("Groups and event history in PostgreSQL at %s", store.db_path)
        if replica is None:
            # each batch is in the history before it is acked (record_batch waits for the
            # database: meanwhile the ingest queue fills and collectors are PAUSEd)
            ingest.recorders.append(store.record_batch)
    ingest.consumers.append(store.add_batch)
    ingest.forget_listeners.append(store.forget_collectors)
    if replica is None:
        ingest.consumers.append(correlation.consume)
        ingest.gap_listeners.append(correlation.mark_gap)
        ingest.forget_listeners.append(correlation.forget)


async def _main(args):
    auth = Auth(args.auth_token_file, bind_cert=getattr(args, "bind_collector_cert", False))
    credentials = _credentials(args)
    ingest = Ingest(events_out=args.events_out, queue_batches=args.ingest_queue,
                    batch_delay=args.debug_batch_delay, pause_grace=getattr(args, "pause_grace", 5.0),
                    max_collectors=getattr(args, "max_collectors", 10000))
    service = TapioService(ingest, authorize=auth, hello_timeout=getattr(args, "hello_timeout", 10.0),
                           idle_timeout=getattr(args, "stream_idle_timeout", 900.0))
    group_sinks = []
    store, exporter, correlation = _correlation(args, group_sinks)
    replica = None
    if getattr(args, "bus", None):
        # the relay publishes batches; correlation runs where a node's partition is owned
        replica = _replica(args, ingest, store, correlation)
        group_sinks.append(replica.on_group)
    connect(ingest, store, correlation, replica)
    query = QueryService(store, authorize=auth)
    server = GrpcServer(service, args.host, args.grpc_port, args.max_message_size,
                        args.max_streams, args.enable_reflection, credentials,
                        extra_services=[(query.handler(), QUERY_SERVICE)],
                        max_streams_per_token=getattr(args, "max_streams_per_token", 0))
    if credentials is None and not _is_loopback(args.host):
        log.warning("gRPC listens in plain text on %s: use --tls-cert/--tls-key off loopback", args.host)
    # bound now: a taken port is one line and exit code 2
    http = _http(args, ingest, service, auth, store, exporter, correlation, server.limits)
    if http is not None:
        http.registry.register(SequenceMetrics(ingest))
    async with trio.open_nursery() as nursery:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
            server.start()
            log.info("Tapio server listening on %s:%d (gRPC%s)", args.host, server.port,
                     ", TLS" + (", client certificates required" if args.tls_client_ca else "")
                     if credentials else "")
            if http is not None:
                http.surface.grpc_address = f"{args.host}:{server.port}"
                url = await nursery.start(http.run)
                log.info("Dashboard on %s/ (JSON API /api/v1, /metrics, /healthz, /readyz)", url)
            async for signum in signals:
                if signum == signal.SIGHUP:
                    auth.reload()
                    continue
                log.info("%s: draining", signal.Signals(signum).name)
                break
        # stop taking batches, ack what is queued, then end every stream and stop listening;
        # HTTP answers until the end (/readyz: draining)
        service.draining.set()
        server.set_serving(False)
        await trio.to_thread.run_sync(ingest.wait_idle, args.shutdown_grace)
        if replica is not None:
            # the acks of what JetStream is still taking go out before the streams end
            await trio.to_thread.run_sync(replica.relay.wait_idle, args.shutdown_grace)
        service.end_all_streams("server shutting down: reconnect")
        query.close()
        await trio.to_thread.run_sync(server.stop, args.shutdown_grace)
        ingest.close()
        if replica is not None:
            await trio.to_thread.run_sync(replica.close, args.shutdown_grace)
        # close the groups still open (their last version is stored and exported); a replica
        # leaves them open: the replica that takes its partitions over goes on with them
        await trio.to_thread.run_sync(correlation.close, replica is None)
        await trio.to_thread.run_sync(exporter.shutdown, args.shutdown_grace)
        if http is not None:
            http.stop()
    store.close()                   # after HTTP has stopped: no request finds it closed
    p50, p99 = (ingest.latency.percentile(q) for q in (0.5, 0.99))
    log.info("Stopped after %d events in %d batches (%d duplicates, %d malformed); event latency "
             "p50 %s p99 %s", ingest.events, ingest.batches, ingest.duplicates,
             ingest.decode_errors, _ms(p50), _ms(p99))
    return 0
