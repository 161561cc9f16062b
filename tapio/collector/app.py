"""The collector process: one trio.run owns the probes, the pump, the connection manager, the
metrics log and signal handling."""
import contextlib
import logging
import signal
import sys
import time

import trio

from tapio import __version__, logs
from tapio.flags import ConfigError
from tapio._fast.codec import BatchEncoder
from tapio.collector.clock import boot_to_wall_ns
from tapio.collector.ebpf_source import EbpfSource
from tapio.collector.enrich import Enrichment
from tapio.collector.ledger import summary
from tapio.collector.processor import DualPathProcessor, ProcessorConfig
from tapio.collector.pump import Pump
from tapio.v1 import stream_pb2

log = logging.getLogger("tapio.collector")


def run(args):
    """Run until SIGINT/SIGTERM; returns the exit code."""
    return trio.run(_main, args)


def _hello(args, event_types, last_acked=0):
    return stream_pb2.TapioStreamEventsRequest(hello=stream_pb2.Hello(
        collector_id=args.collector_id, node_name=args.node_name, version=__version__,
        event_types=sorted(event_types), last_acked_batch_id=last_acked)).SerializeToString()


def _read_token(path):
    if not path:
        return None
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip() and not line.lstrip().startswith("#"):
                # the token is the line's first word: a server's token file (TOKEN ROLE SCOPE) works too
                return line.split()[0]
    raise ConfigError(f"{path} holds no token")


def _make_sink(args, event_types):
    if args.output:
        from tapio.collector.output import JsonLinesSink
        return JsonLinesSink(args.output)
    from tapio.collector.backoff import Backoff
    from tapio.collector.channel import ChannelFactory
    from tapio.collector.connection import ConnectionManager
    from tapio.collector.delivery import DeliveryBuffer
    from tapio.collector.grpc_transport import GrpcTransport
    from tapio.collector.server_order import order_servers
    channels = ChannelFactory(tls_ca=args.tls_ca, tls_cert=args.tls_cert, tls_key=args.tls_key,
                              tls_server_name=args.tls_server_name,
                              auth_token=_read_token(args.auth_token_file),
                              compression=args.compression)
    buffer = DeliveryBuffer(args.max_memory, args.overflow)
    if args.spool_dir:
        from tapio.collector.spool import Spool
        buffer.spool = Spool(args.spool_dir, args.spool_max_size, fsync_interval=args.spool_fsync_interval)
        buffer.restore(buffer.spool.recover())
    servers = order_servers(args.server, args.node_name, args.server_order)
    if len(servers) > 1:
        log.info("Servers in the order this node tries them (%s): %s", args.server_order,
                 ", ".join(servers))
    return ConnectionManager(
        servers=servers, transport=GrpcTransport(channels, args.connect_timeout),
        buffer=buffer, hello=lambda: _hello(args, event_types),
        backoff=Backoff(args.backoff_initial, args.backoff_max, args.backoff_multiplier),
        pause_timeout=args.pause_timeout or None,
        heartbeat_interval=getattr(args, "heartbeat_interval", 60.0))


async def _open_source(args):
    if args.source == "synthetic":
        from tapio.collector.synthetic_source import SyntheticSource
        log.info("Synthetic source: %s events/s, %s events", args.rate or "max", args.count or "unbounded")
        # the backlog a ring buffer of --ring-buffer-size holds, at ~128 bytes per event
        return SyntheticSource(args.rate, args.count, backlog=max(1024, args.ring_buffer_size // 128))
    return await EbpfSource.start(args.events, args.ring_buffer_size)


def processor_config(args):
    return ProcessorConfig(
        raw_buffer_size=args.buffer_size, semantic_buffer_size=args.buffer_size,
        batch_size=args.batch_size,
        enable_raw_path=args.correlation in ("raw", "both"),
        enable_semantic_path=args.correlation in ("semantic", "both"),
        semantic_batch_size=args.semantic_batch_size, exclude_comms=tuple(args.exclude_comm),
        include_cgroups=tuple(args.include_cgroup))


async def _main(args):
    # signals are caught from the start: a SIGTERM during start-up is a clean exit, not a kill
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        return await _collect(args, signals)


async def _collect(args, signals):
    with contextlib.ExitStack() as cleanup:       # closes what was opened, in reverse, always
        config = processor_config(args)
        budget = _budget(args)      # before the probes load: a bad budget is one line, not a load
        enrichment = None
        if config.enable_semantic_path:
            enrichment = Enrichment(args.node_name, args.enable_k8s, args.kubeconfig, args.enable_systemd,
                                    redactor=getattr(args, "redactor", None))
            cleanup.callback(enrichment.close)
            await trio.to_thread.run_sync(enrichment.start)
        processor = DualPathProcessor(config, enrichment)
        source = await _open_source(args)
        cleanup.callback(source.close)
        sink = _make_sink(args, source.event_types)
        cleanup.callback(sink.close)
        encoder = BatchEncoder(args.collector_id, args.node_name, boot_to_wall_ns())
        streaming = hasattr(sink, "run")
        # new batch ids follow the wall clock (in microseconds) and whatever the spool gave back
        first_batch_id = max(time.time_ns() // 1000, sink.buffer.last_id() + 1) if streaming else 1
        pump = Pump(source, sink, encoder, processor, config.buffer_size, args.flush_interval,
                    first_batch_id, read_interval=args.read_interval, budget=budget)
        redactor = getattr(args, "redactor", None)
        pump.arena.set_redactor(redactor)
        if redactor is None:
            log.warning("Redaction is off: argv and command lines leave the node as they are")
        else:
            log.info("Redacting secrets in argv and command lines (%d key words)", len(redactor.words))
        if streaming:
            sink.on_configure = pump.configure
            sink.on_idle = pump.wake
            log.info("eBPF collector enabled with gRPC connection to %s", ",".join(args.server))
        ledger = pump.ledger
        http = _http(args, pump, source, sink, processor, ledger)   # bound now: a taken port is one line
        shutdown = Shutdown(pump, args.shutdown_timeout)
        async with trio.open_nursery() as nursery:
            if http is not None:
                url = await nursery.start(http.run)
                log.info("HTTP on %s (/metrics, /healthz, /readyz, /api/v1/stats)", url)
            nursery.start_soon(_stop_on_signals, signals, shutdown, nursery.cancel_scope)
            nursery.start_soon(_log_metrics, pump, sink, args.metrics_interval)
            guard = None
            if streaming and args.memory_limit:
                from tapio.collector.memory import MemoryGuard
                guard = MemoryGuard(args.memory_limit, sink.buffer)
                nursery.start_soon(guard.run)
            if streaming:
                nursery.start_soon(sink.run)
            await pump.run()
            source.close()      # detached: nothing new is read while the acks come in
            if streaming and not await sink.wait_acked(shutdown.remaining()):
                log.warning("%d batches were not acked within %gs", sink.buffer.outstanding,
                            args.shutdown_timeout)
            nursery.cancel_scope.cancel()
    buffer = getattr(sink, "buffer", None)
    restored = None
    if buffer is not None and buffer.restored_events:
        restored = {"delivered": buffer.restored_delivered, "dropped": buffer.restored_dropped}
    # the ledger's line comes last: it is the one to read
    if guard is not None:
        print(f"tapio-collector: peak resident memory {guard.peak_rss >> 20} MiB of --memory-limit "
              f"{guard.limit >> 20} MiB; {guard.shed_events} events shed to stay under it",
              file=sys.stderr)
    print(summary(ledger.totals(), spooled=bool(args.spool_dir) and streaming, restored=restored),
          file=sys.stderr)
    return 0


class Shutdown:
    """The shutdown timeout runs from the first SIGINT/SIGTERM (or from the end of a bounded
    source): draining, waiting for acks and taking everything down fit in it. The last tenth
    of it (half a second at most) is left for taking down: detaching the probes, closing the
    spool and the stream."""

    def __init__(self, pump, timeout):
        self.pump = pump
        self.timeout = timeout
        self.deadline = None

    def _start(self):
        if self.deadline is None:
            self.deadline = trio.current_time() + self.timeout - min(0.5, self.timeout / 10)

    def begin(self):
        self._start()
        self.pump.stop()

    def remaining(self):
        """How long the acks may still be waited for."""
        self._start()
        return max(0.0, self.deadline - trio.current_time())


def _budget(args):
    """The per-cgroup budget of --cgroup-budget, or None (off)."""
    if not getattr(args, "cgroup_budget", None):
        return None
    from tapio.collector.budget import CgroupBudget
    events, interval_ns = args.cgroup_budget
    try:
        budget = CgroupBudget(events, interval_ns, args.cgroup_burst)
    except (ValueError, OverflowError) as e:
        raise ConfigError(f"--cgroup-budget / --cgroup-burst: {e}") from None
    log.info("Cgroup budget: %d routine events per %gs per cgroup, bursts of %d; the rest is "
             "counted in throttled events", events, interval_ns / 1e9, budget.throttle.burst)
    return budget


def _http(args, pump, source, sink, processor, ledger):
    """/healthz, /readyz, /metrics and /api/v1/stats (hypercorn), its socket bound; None with
    --http-port 0."""
    if not getattr(args, "http_port", 0):
        return None
    from tapio.collector.http_app import CollectorHttp, CollectorSurface
    http = CollectorHttp(CollectorSurface(args, pump, source, sink, processor, ledger),
                         args.http_host, args.http_port)
    http.bind()
    return http


async def _log_metrics(pump, sink, interval):
    if not interval:
        return
    logged = 0
    while True:
        await trio.sleep(interval)
        if pump.stats.events != logged:
            logged = pump.stats.events
            log.info("Processed %d events, latest: %s", logged, pump.stats.last_event_id)
        if hasattr(sink, "stats"):
            # the original's GetStatistics(), one line per interval
            stats = sink.stats.as_dict(sink.buffer)
            log.info("Statistics", extra=logs.fields(
                connected=stats["connected"], server=stats["server"], events_sent=stats["events_sent"],
                events_dropped_kernel=pump.stats.kernel_drops,
                events_dropped_buffer=stats["events_dropped_buffer"], reconnects=stats["reconnects"],
                batches_acked=stats["batches_acked"], buffer_bytes=stats["buffer_bytes"],
                send_latency_p99_ms=stats["send_latency_ms"]["p99"]))


async def _stop_on_signals(signals, shutdown, scope):
    """First SIGINT/SIGTERM: stop reading the kernel, flush, wait for acks (within the shutdown
    timeout), exit. A second one: exit now. Either way the exit summary counts every event."""
    async for signum in signals:
        if shutdown.pump.stopping:
            log.warning("second %s: exiting without flushing", signal.Signals(signum).name)
            scope.cancel()
            return
        log.info("%s: detaching and flushing (at most %gs)", signal.Signals(signum).name,
                 shutdown.timeout)
        shutdown.begin()
