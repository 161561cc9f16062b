"""tapio-collector: kernel events from eBPF, to JSON lines (--output) or a Tapio server (--server)."""
import argparse
import errno
import logging
import os
import socket
import sys

from tapio import __version__, logs
from tapio.collector.budget import parse_budget, parse_burst
from tapio.flags import (ConfigError, FlagParser, at_most, choice, parse_duration, parse_size, positive, non_negative,
                         port)

log = logging.getLogger("tapio.collector")

EVENT_GROUPS = {
    "exec": ["exec"],
    "exit": ["exit"],
    "tcp": ["tcp_connect", "tcp_accept", "tcp_close"],
    "tcp_connect": ["tcp_connect"],
    "tcp_accept": ["tcp_accept"],
    "tcp_close": ["tcp_close"],
    "oom_kill": ["oom_kill"],
    "oom": ["oom_kill"],          # vocab.EVENT_TYPE_ALIASES
    "signal": ["signal"],
}


def parse_events(text):
    names = []
    for part in str(text).split(","):
        part = part.strip().lower()
        if part == "all":
            return sorted({n for group in EVENT_GROUPS.values() for n in group})
        if part not in EVENT_GROUPS:
            raise argparse.ArgumentTypeError(
                f"unknown event type {part!r}: choose from all, {', '.join(EVENT_GROUPS)}")
        names.extend(n for n in EVENT_GROUPS[part] if n not in names)
    return names


def comma_list(text):
    return [part.strip() for part in str(text).split(",") if part.strip()]


def parse_servers(text):
    servers = [s.strip() for s in str(text).split(",") if s.strip()]
    for server in servers:
        host, sep, port_text = server.rpartition(":")
        if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise argparse.ArgumentTypeError(f"{server!r} is not HOST:PORT")
    if not servers:
        raise argparse.ArgumentTypeError("no server given")
    return servers


def build_parser():
    p = FlagParser("tapio-collector", __doc__ + """

examples:
  tapio-collector --enable-ebpf --output -                      JSON lines on stdout
  tapio-collector --server localhost:9090 --enable-ebpf         stream to tapio-server
  tapio-collector --server tapio-server:9090 --enable-ebpf --enable-k8s=false \\
      --enable-systemd=false --buffer-size 2000 --correlation semantic
""")
    p.add_argument("--version", action="version", version=f"tapio-collector {__version__}")
    p.switch("--enable-ebpf", help="collect kernel events with eBPF (needs root or CAP_BPF+CAP_PERFMON)")
    p.flag("--source", type=choice("ebpf", "synthetic"), default="ebpf",
           help="where events come from: the kernel, or a synthetic generator (benchmarks, demos)")
    p.flag("--rate", type=non_negative(int), default=0, metavar="N",
           help="synthetic source: events per second (0: as fast as they are taken)")
    p.flag("--count", type=non_negative(int), default=0, metavar="N",
           help="synthetic source: stop after N events (0: never)")
    p.flag("--output", metavar="PATH", help="write every event as a JSON line to PATH ('-' for stdout)")
    p.flag("--server", type=parse_servers, metavar="HOST:PORT[,HOST:PORT...]",
           help="Tapio server(s) to stream to; the others are failovers (see --server-order)")
    p.flag("--server-order", type=choice("rendezvous", "listed"), default="rendezvous",
           help="which of several --servers is this node's first, and the failover order: "
                "rendezvous (a hash of the node name and each server: nodes spread evenly over "
                "the servers, each with its own order; every collector must list the same "
                "servers) or listed (as given)")
    p.flag("--events", type=parse_events, default="all", metavar="TYPES",
           help="event types: all or a list of exec,exit,tcp,tcp_connect,tcp_accept,tcp_close,oom_kill (or oom),signal")
    p.flag("--ring-buffer-size", type=parse_size, default="8MiB", metavar="SIZE",
           help="kernel ring buffer (a power of two)")
    p.flag("--correlation", type=choice("semantic", "raw", "both"), default="semantic",
           help="semantic: enriched, filtered, collapsed, prioritised; raw: every event as the "
                "kernel reported it; both")
    p.flag("--buffer-size", type=positive(int), default=5000, metavar="N",
           help="events taken from the kernel per processing round")
    p.flag("--batch-size", type=positive(int), default=500, metavar="N",
           help="most events per raw batch")
    p.flag("--semantic-batch-size", type=positive(int), default=500, metavar="N",
           help="most events per semantic batch")
    p.flag("--flush-interval", type=non_negative(parse_duration), default="1s", metavar="DURATION",
           help="longest time an event waits for its batch while one is in flight")
    p.flag("--read-interval", type=at_most(1.0, parse_duration, "s"), default="50ms", metavar="DURATION",
           help="while events flow, read the kernel once per this interval (a lone event is read "
                "at once); the kernel wakes the collector at most once per interval. 0: at every event; "
                "at most 1s (a longer wait lets the ring buffer overflow)")
    p.flag("--worker-count", type=positive(int), default=4, metavar="N",
           help="accepted for compatibility with the original; per-event work is C in one thread")
    p.flag("--exclude-comm", type=comma_list, default="", metavar="COMM[,COMM...]",
           help="semantic path: drop events of these commands (as in /proc/PID/comm)")
    p.flag("--include-cgroup", type=comma_list, default="", metavar="PREFIX[,PREFIX...]",
           help="semantic path: keep only events from cgroups under these paths (e.g. /kubepods.slice)")
    p.flag("--cgroup-budget", type=parse_budget, default="0", metavar="N/INTERVAL",
           help="per cgroup, at most N routine events (exec, tcp connect/accept/close) per interval, "
                "like 2000/s; what is over goes out as one `throttled` event per cgroup and "
                "interval with the counts by type. Exits, OOM kills and fatal signals always "
                "pass. 0: off")
    p.flag("--cgroup-burst", type=parse_burst, default=0, metavar="N",
           help="events a cgroup may send at once under --cgroup-budget (0: one interval's budget)")
    p.switch("--enable-k8s", help="pod name, namespace, labels, container name and image from the "
                                  "Kubernetes API (a watch of this node's pods)")
    p.flag("--kubeconfig", metavar="PATH", help="kubeconfig for --enable-k8s (default: in-cluster)")
    p.switch("--enable-systemd", default=True, help="the systemd unit of each event, and unit restarts")
    p.flag("--max-memory", type=positive(parse_size), default="64MiB", metavar="SIZE",
           help="bound of the unacked-batch buffer")
    p.flag("--memory-limit", type=non_negative(parse_size), default="128MiB", metavar="SIZE",
           help="hard cap on the collector's resident memory: above 90%% of it the send buffer "
                "sheds its oldest batches (counted as dropped) instead of growing; 0: no cap")
    p.flag("--overflow", type=choice("drop-oldest", "drop-newest"), default="drop-oldest",
           help="what goes when the buffer is full")
    p.flag("--spool-dir", metavar="DIR",
           help="also keep unacked batches on disk, to resend them after a crash or restart")
    p.flag("--spool-max-size", type=positive(parse_size), default="256MiB", metavar="SIZE",
           help="bound of the spool on disk")
    p.flag("--spool-fsync-interval", type=non_negative(parse_duration), default="1s", metavar="DURATION",
           help="longest time a spooled batch waits for fsync (what a power loss can cost)")
    p.flag("--compression", type=choice("none", "gzip"), default="none", help="gRPC compression")
    p.flag("--connect-timeout", type=positive(parse_duration), default="5s", metavar="DURATION",
           help="longest wait for one connection attempt")
    p.flag("--backoff-initial", type=positive(parse_duration), default="250ms", metavar="DURATION",
           help="first reconnect backoff ceiling")
    p.flag("--backoff-max", type=positive(parse_duration), default="30s", metavar="DURATION",
           help="highest reconnect backoff ceiling")
    p.flag("--backoff-multiplier", type=positive(float), default=2.0, metavar="X",
           help="backoff ceiling growth per failed round")
    p.switch("--redact", default=True,
             help="replace secrets in argv and command lines with *** before events leave the node "
                  "(--no-redact or --redact=false turns it off)")
    p.add_argument("--no-redact", dest="redact", action="store_false",
                   help="send argv and command lines as they are (same as --redact=false)")
    p.flag("--redact-file", metavar="PATH",
           help="more key words whose values are secrets, one a line (added to the built-in ones)")
    p.flag("--pause-timeout", type=non_negative(parse_duration), default="60s", metavar="DURATION",
           help="a server's PAUSE held longer than this ends the stream and fails over to the next "
                "--server (0: wait as long as the server says)")
    p.flag("--heartbeat-interval", type=non_negative(parse_duration), default="60s", metavar="DURATION",
           help="on a stream with nothing to send for this long (a quiet node), send a heartbeat, so "
                "that the server's --stream-idle-timeout does not end it (0: never)")
    p.flag("--shutdown-timeout", type=non_negative(parse_duration), default="10s", metavar="DURATION",
           help="on SIGINT/SIGTERM, the longest the collector takes to flush and wait for the "
                "server's acks; what is left is counted as not delivered (and stays in the spool)")
    p.flag("--http-port", type=port, default=9091, metavar="PORT",
           help="HTTP port of /metrics, /healthz, /readyz and /api/v1/stats (0: no HTTP)")
    p.flag("--http-host", default="0.0.0.0", metavar="ADDR", help="address HTTP listens on")
    p.flag("--metrics-interval", type=non_negative(parse_duration), default="30s", metavar="DURATION",
           help="how often to log statistics (0: never)")
    p.flag("--tls-ca", metavar="PEM", help="connect with TLS, trusting servers signed by this CA")
    p.flag("--tls-cert", metavar="PEM", help="mutual TLS: this collector's certificate (with --tls-key)")
    p.flag("--tls-key", metavar="PEM", help="private key of --tls-cert")
    p.flag("--tls-server-name", metavar="NAME", help="expect this name in the server's certificate")
    p.flag("--auth-token-file", metavar="PATH", help="send the bearer token in PATH (its first line)")
    p.flag("--collector-id", metavar="ID", help="this collector's id (default: <node-name>-collector)")
    p.flag("--node-name", metavar="NAME", help="node name on every batch (default: $NODE_NAME or the hostname)")
    p.flag("--log-format", type=choice("text", "json"), default="text", help="log format")
    p.flag("--log-level", type=choice(*logs.LEVELS), default="info", help="log level")
    return p


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if bool(args.tls_cert) != bool(args.tls_key):
        parser.error("--tls-cert and --tls-key go together")
    if args.tls_cert and not args.tls_ca:
        parser.error("--tls-cert (mutual TLS) needs --tls-ca too")
    logs.setup(args.log_format, args.log_level)
    if args.source == "ebpf" and not args.enable_ebpf:
        print("tapio-collector: nothing to collect: pass --enable-ebpf (or --source synthetic)",
              file=sys.stderr)
        return 2
    if not args.output and not args.server:
        print("tapio-collector: nowhere to send events: pass --server HOST:PORT or --output PATH|-",
              file=sys.stderr)
        return 2
    args.redactor = None
    if args.redact:
        from tapio._fast.redaction import Redactor, read_words
        try:
            args.redactor = Redactor(read_words(args.redact_file) if args.redact_file else ())
        except (OSError, ValueError) as e:
            parser.error(f"--redact-file: {e}")
    args.node_name = args.node_name or os.environ.get("NODE_NAME") or socket.gethostname()
    args.collector_id = args.collector_id or f"{args.node_name}-collector"

    from tapio._fast.kernel import BpfError
    from tapio.collector import app
    try:
        code = app.run(args)
    except BpfError as e:
        print(f"tapio-collector: {e.strerror}", file=sys.stderr)
        return 2
    except ConfigError as e:
        print(f"tapio-collector: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        if e.errno in (errno.EACCES, errno.ENOENT, errno.EISDIR) and e.filename:
            print(f"tapio-collector: cannot open {e.filename}: {e.strerror}", file=sys.stderr)
            return 2
        raise
    # Everything is closed and flushed by now (probes, spool, stream, output). The
    # interpreter's own exit (grpc's shutdown among it) can take another second or more on a
    # busy host, and the shutdown timeout is a promise: leave at once.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
