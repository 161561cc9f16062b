"""tapio-server: receives collectors' event streams over gRPC, correlates them, serves them."""
import logging
import sys

from tapio import __version__, logs
from tapio.flags import ConfigError, FlagParser, choice, parse_duration, parse_size, port, positive

log = logging.getLogger("tapio.server")


def build_parser():
    p = FlagParser("tapio-server", __doc__ + """

examples:
  tapio-server --grpc-port 9090 --enable-reflection
  tapio-server --grpc-port 9090 --host 127.0.0.1 --events-out events.jsonl
""")
    p.add_argument("--version", action="version", version=f"tapio-server {__version__}")
    p.flag("--grpc-port", type=port, default=9090, metavar="PORT", help="gRPC port (0: any free port)")
    p.flag("--host", default="0.0.0.0", metavar="ADDR", help="address to listen on")
    p.switch("--enable-reflection", help="serve gRPC reflection (grpcurl list)")
    p.flag("--events-out", metavar="PATH", help="append every received event to PATH as a JSON line")
    p.flag("--max-message-size", type=parse_size, default="16MiB", metavar="SIZE",
           help="largest message accepted (larger: RESOURCE_EXHAUSTED)")
    p.flag("--max-streams", type=positive(int), default=256, metavar="N",
           help="most concurrent collector streams")
    p.flag("--ingest-queue", type=positive(int), default=256, metavar="BATCHES",
           help="decoded batches waiting for processing; past 3/4 of it collectors are paused")
    p.flag("--debug-batch-delay", type=parse_duration, default="0", metavar="DURATION",
           help="sleep this long per batch: a deliberately slow server, for tests and demos")
    p.flag("--shutdown-grace", type=parse_duration, default="2s", metavar="DURATION",
           help="on SIGTERM, time in-flight batches get to finish")
    p.flag("--tls-cert", metavar="PEM", help="serve TLS with this certificate chain (with --tls-key)")
    p.flag("--tls-key", metavar="PEM", help="private key of --tls-cert")
    p.flag("--tls-client-ca", metavar="PEM",
           help="mutual TLS: require client certificates signed by this CA")
    p.flag("--auth-token-file", metavar="PATH",
           help="accept only streams with one of these bearer tokens (one per line; SIGHUP reloads)")
    p.flag("--log-format", type=choice("text", "json"), default="text", help="log format")
    p.flag("--log-level", type=choice(*logs.LEVELS), default="info", help="log level")
    return p


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if bool(args.tls_cert) != bool(args.tls_key):
        parser.error("--tls-cert and --tls-key go together")
    if args.tls_client_ca and not args.tls_cert:
        parser.error("--tls-client-ca (mutual TLS) needs --tls-cert and --tls-key")
    logs.setup(args.log_format, args.log_level)
    from tapio.server import app
    try:
        return app.run(args)
    except (OSError, ConfigError) as e:
        print(f"tapio-server: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
