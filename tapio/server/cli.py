"""tapio-server: receives collectors' event streams over gRPC, correlates them, serves them."""
import argparse
import ipaddress
import logging
import re
import sys

from tapio import __version__, logs
from tapio.flags import (ConfigError, FlagParser, choice, matching, parse_duration, parse_size, port,
                         positive)

log = logging.getLogger("tapio.server")

# a replica's name becomes part of NATS consumer and key names: two different names must stay two
REPLICA_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def build_parser():
    p = FlagParser("tapio-server", __doc__ + """

examples:
  tapio-server --grpc-port 9090 --enable-reflection
  tapio-server --grpc-port 9090 --host 127.0.0.1 --events-out events.jsonl
  tapio-server --http-port 8080          dashboard on http://HOST:8080/, metrics on /metrics
  tapio-server --trace-export otlp --otlp-endpoint otel-collector:4317 --db /var/lib/tapio/groups.db
  tapio-server --db postgresql://tapio@db:5432/tapio   groups and event history in PostgreSQL
  tapio-server groups --follow            print new semantic groups of the server at localhost:9090
  tapio-server events --follow --type exec,exit --comm '^sh$'
""")
    p.add_argument("--version", action="version", version=f"tapio-server {__version__}")
    p.flag("--grpc-port", type=port, default=9090, metavar="PORT", help="gRPC port (0: any free port)")
    p.flag("--host", default="0.0.0.0", metavar="ADDR", help="address to listen on")
    p.switch("--enable-reflection", help="serve gRPC reflection (grpcurl list)")
    p.flag("--http-port", type=port, default=8080, metavar="PORT",
           help="HTTP port of the dashboard, /api/v1, /metrics, /healthz and /readyz (0: no HTTP)")
    p.flag("--http-host", metavar="ADDR", help="address HTTP listens on (default: --host)")
    p.flag("--events-out", metavar="PATH", help="append every received event to PATH as a JSON line")
    p.flag("--max-message-size", type=parse_size, default="16MiB", metavar="SIZE",
           help="largest message accepted (larger: RESOURCE_EXHAUSTED)")
    p.flag("--max-streams", type=positive(int), default=256, metavar="N",
           help="most concurrent collector streams")
    p.flag("--max-collectors", type=positive(int), default=10000, metavar="N",
           help="collector ids tracked at most (ids are free to invent): past it, the least "
                "recently heard disconnected ones are forgotten; connected ones never are")
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
           help="bearer tokens, one a line: 'TOKEN collector [IDS]', 'TOKEN reader "
                "[namespaces=A,B]' or 'TOKEN admin' (docs/security.md); gRPC and HTTP /api then "
                "need one (SIGHUP reloads)")
    p.switch("--allow-unauthenticated",
             help="serve gRPC or HTTP off loopback without --auth-token-file (anyone who reaches "
                  "the ports may stream and read everything)")
    p.switch("--metrics-auth", help="/metrics needs a reader or admin token too")
    p.switch("--bind-collector-cert",
             help="mutual TLS: a collector may stream only as an id that is its client "
                  "certificate's common name or one of its subject alternative names")
    p.flag("--hello-timeout", type=parse_duration, default="10s", metavar="DURATION",
           help="a stream that says nothing in this time is closed (DEADLINE_EXCEEDED; 0: never)")
    p.flag("--stream-idle-timeout", type=parse_duration, default="15m", metavar="DURATION",
           help="a collector stream that sends nothing for this long is closed (0: never)")
    p.flag("--pause-grace", type=parse_duration, default="5s", metavar="DURATION",
           help="a stream still sending this long after the server asked it to PAUSE is ended "
                "(RESOURCE_EXHAUSTED), so it cannot starve the others")
    p.flag("--max-streams-per-token", type=int, default=0, metavar="N",
           help="most collector streams one token (or, without tokens, everyone) may hold "
                "(0: 3/4 of --max-streams, so one token cannot fill the server)")
    p.flag("--correlation-config", metavar="PATH",
           help="windows and thresholds of the correlation engine (TOML, see docs/correlation.md)")
    p.flag("--db", default="tapio.db", metavar="PATH|URL",
           help="SQLite file that keeps semantic groups across restarts (:memory:: kept in memory "
                "only), or postgresql://USER[:PASSWORD]@HOST:PORT/DB: groups and the event history "
                "in PostgreSQL, shared by replicas (docs/scaling.md)")
    p.flag("--bus", metavar="URLS",
           help="run as one of several replicas on a NATS JetStream cluster (nats://HOST:PORT,...): "
                "batches go through its stream, correlation runs where a node's partition is "
                "owned; needs a postgresql:// --db (docs/scaling.md)")
    p.flag("--replica-id", metavar="NAME", type=matching(REPLICA_ID, "1 to 64 of A-Z a-z 0-9 _ -"),
           help="this replica's name on the bus, 1 to 64 of A-Z a-z 0-9 _ - (default: "
                "HOSTNAME-PID); it names its consumers and heartbeat, so two replicas must differ")
    p.flag("--db-retention", type=parse_duration, default="168h", metavar="DURATION",
           help="groups that ended longer ago than this are removed")
    p.flag("--db-max-groups", type=positive(int), default=100000, metavar="N",
           help="groups kept at most (the oldest go first)")
    p.flag("--history-retention", type=parse_duration, default="24h", metavar="DURATION",
           help="with a postgresql:// --db: events received longer ago than this leave the history")
    p.flag("--recent-events", type=positive(int), default=10000, metavar="N",
           help="recent events kept in memory per collector (queries, Subscribe backfill)")
    p.flag("--recent-events-memory", type=parse_size, default="64MiB", metavar="SIZE",
           help="memory the recent events of all collectors may take (the oldest go first)")
    p.flag("--trace-export", type=trace_export, default="none", metavar="EXPORTER",
           help="semantic groups as OpenTelemetry traces: otlp, console, jsonl:PATH or none")
    p.flag("--otlp-endpoint", default="localhost:4317", metavar="HOST:PORT",
           help="OTLP/gRPC receiver (an OpenTelemetry Collector) of --trace-export otlp; "
                "https://HOST:PORT for TLS")
    p.flag("--trace-queue", type=positive(int), default=1024, metavar="GROUPS",
           help="closed groups waiting for trace export; more are dropped (and counted)")
    p.flag("--log-format", type=choice("text", "json"), default="text", help="log format")
    p.flag("--log-level", type=choice(*logs.LEVELS), default="info", help="log level")
    return p


def is_loopback(host):
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


def unauthenticated_exposure(args):
    """What the server would serve off loopback with no token at all (["gRPC on 0.0.0.0", ...]);
    empty when there are tokens, or --allow-unauthenticated."""
    if args.auth_token_file or args.allow_unauthenticated:
        return []
    exposed = [] if is_loopback(args.host) else [f"gRPC on {args.host}"]
    http_host = args.http_host or args.host
    if args.http_port and not is_loopback(http_host):
        exposed.append(f"HTTP on {http_host}")
    return exposed


def trace_export(text):
    """otlp, console, none, or jsonl:PATH."""
    value = str(text).strip()
    if value in ("otlp", "console", "none") or (value.startswith("jsonl:") and len(value) > 6):
        return value
    raise argparse.ArgumentTypeError(f"{text!r} is not a trace exporter: use otlp, console, "
                                     "jsonl:PATH or none")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in ("events", "groups"):
        # tapio-server events|groups: follow a running server (tapio/server/follow.py)
        from tapio.server import follow
        return follow.main(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if bool(args.tls_cert) != bool(args.tls_key):
        parser.error("--tls-cert and --tls-key go together")
    if args.tls_client_ca and not args.tls_cert:
        parser.error("--tls-client-ca (mutual TLS) needs --tls-cert and --tls-key")
    if args.http_port and args.http_port == args.grpc_port:
        parser.error(f"--http-port and --grpc-port are both {args.grpc_port}: give HTTP another port")
    if args.max_streams_per_token < 0:
        parser.error("--max-streams-per-token must be 0 (automatic) or more")
    if args.bind_collector_cert and not args.tls_client_ca:
        parser.error("--bind-collector-cert needs mutual TLS (--tls-client-ca)")
    if args.bus:
        from tapio.server.bus.replica import parse_bus
        try:
            parse_bus(args.bus)
        except ValueError as e:
            parser.error(str(e))
        if not str(args.db).startswith(("postgresql://", "postgres://")):
            parser.error("--bus needs a shared database: --db postgresql://USER@HOST:PORT/DB "
                         "(replicas cannot share an SQLite file)")
    exposed = unauthenticated_exposure(args)
    if exposed:
        print(f"tapio-server: refusing to serve {' and '.join(exposed)} without authentication: "
              "give --auth-token-file, listen on loopback (--host 127.0.0.1, --http-host "
              "127.0.0.1), or pass --allow-unauthenticated", file=sys.stderr)
        return 2
    logs.setup(args.log_format, args.log_level)
    from tapio.server import app
    try:
        return app.run(args)
    except (OSError, ConfigError) as e:
        print(f"tapio-server: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
