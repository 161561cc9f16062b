"""The server process: one trio.run owns the gRPC server's lifecycle and signal handling."""
import ipaddress
import logging
import signal

import grpc
import trio

from tapio.server.auth import TokenAuth
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


async def _main(args):
    auth = TokenAuth(args.auth_token_file) if args.auth_token_file else None
    credentials = _credentials(args)
    ingest = Ingest(events_out=args.events_out, queue_batches=args.ingest_queue,
                    batch_delay=args.debug_batch_delay)
    service = TapioService(ingest, authorize=auth)
    server = GrpcServer(service, args.host, args.grpc_port, args.max_message_size,
                        args.max_streams, args.enable_reflection, credentials)
    if credentials is None and not _is_loopback(args.host):
        log.warning("gRPC listens in plain text on %s: use --tls-cert/--tls-key off loopback", args.host)
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
        server.start()
        log.info("Tapio server listening on %s:%d (gRPC%s)", args.host, server.port,
                 ", TLS" + (", client certificates required" if args.tls_client_ca else "")
                 if credentials else "")
        async for signum in signals:
            if signum == signal.SIGHUP:
                if auth is not None:
                    auth.reload()
                continue
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
