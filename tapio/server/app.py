"""The server process: one trio.run owns the gRPC server's lifecycle and signal handling."""
import ipaddress
import logging
import signal

import trio

from tapio.server.grpc_server import GrpcServer
from tapio.server.ingest import Ingest
from tapio.server.service import TapioService

log = logging.getLogger("tapio.server")


def run(args):
    return trio.run(_main, args)


def _is_loopback(host):
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


async def _main(args):
    ingest = Ingest(events_out=args.events_out, queue_batches=args.ingest_queue,
                    batch_delay=args.debug_batch_delay)
    service = TapioService(ingest)
    server = GrpcServer(service, args.host, args.grpc_port, args.max_message_size,
                        args.max_streams, args.enable_reflection)
    if not _is_loopback(args.host):
        log.warning("gRPC listens in plain text on %s: use --tls-cert/--tls-key off loopback", args.host)
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        server.start()
        log.info("Tapio server listening on %s:%d (gRPC)", args.host, server.port)
        async for signum in signals:
            log.info("%s: draining", signal.Signals(signum).name)
            break
    # stop taking batches, ack what is queued, then end every stream and stop listening
    service.draining.set()
    server.set_serving(False)
    await trio.to_thread.run_sync(ingest.wait_idle, args.shutdown_grace)
    service.end_all_streams("server shutting down: reconnect")
    await trio.to_thread.run_sync(server.stop, args.shutdown_grace)
    ingest.close()
    log.info("Stopped after %d events in %d batches (%d duplicates, %d malformed)",
             ingest.events, ingest.batches, ingest.duplicates, ingest.decode_errors)
    return 0
