"""tapio-server events|groups: what a running server sees, in the terminal (tapio.v1.TapioQuery).

  tapio-server groups                       the newest stored groups
  tapio-server groups --follow              new groups (and new versions of open ones) as they come
  tapio-server groups --id ID               one group with its events
  tapio-server events --follow --type exec,exit --comm '^(sh|bash)$'
  tapio-server events --container payment-api --limit 20

Filters (events and groups; regexes are searched): --type, --pid, --comm, --binary, --container
(an id prefix or a name), --pod (a name regex or a UID), --namespace, --kind (groups), --collector;
--deny-comm/--deny-binary leave matches out (Tetragon's deny list). --output json prints one JSON
object per line. --count and --timeout end a follow.
"""
# A client of tapio.v1.TapioQuery: it shares the filter language (tapio/server/filters.py) and
# the vocabulary with the server, nothing else. Events arrive as their original tapio.v1.Event
# bytes (the byte views of the responses) and the codec that decodes a collector's batches turns
# them into the same JSON shape.
import json
import signal
import sys

import grpc

from tapio import vocab
from tapio._fast.codec import DecodedBatch
from tapio.flags import FlagParser, choice, non_negative, parse_duration, positive
from tapio.server.filters import Filter
from tapio.v1 import query_pb2, query_pb2_grpc

# TapioStreamEventsRequest.batch = 2 holds an EventBatch, whose events = 3 are Events
_REQUEST_BATCH = 2
_BATCH_EVENTS = 3


def build_parser(what):
    p = FlagParser(f"tapio-server {what}", __doc__)
    p.flag("--server", default="localhost:9090", metavar="HOST:PORT", help="the tapio-server (gRPC)")
    p.switch("--follow", help="keep printing new items until interrupted")
    p.flag("--type", metavar="TYPES", help="event types, comma-separated (exec, exit, tcp_connect, ...)")
    p.flag("--pid", type=non_negative(int), metavar="PID", help="events of this pid; groups with it")
    p.flag("--comm", metavar="REGEX", help="comm (process name) regex")
    p.flag("--binary", metavar="REGEX", help="executable path regex")
    p.flag("--container", metavar="ID|NAME", help="container id prefix or container name")
    p.flag("--pod", metavar="NAME|UID", help="pod name regex or pod UID")
    p.flag("--namespace", metavar="NS", help="Kubernetes namespace")
    p.flag("--collector", metavar="ID", help="collector (node) id")
    p.flag("--deny-comm", metavar="REGEX", help="leave out items whose comm matches")
    p.flag("--deny-binary", metavar="REGEX", help="leave out items whose executable matches")
    if what == "groups":
        p.flag("--kind", metavar="KINDS", help="group kinds, comma-separated: " + ", ".join(vocab.GROUP_KINDS))
        p.flag("--id", metavar="GROUP_ID", help="print this one group with its events")
    p.flag("--limit", type=positive(int), default=20, metavar="N", help="items listed without --follow")
    p.flag("--backfill", type=non_negative(int), default=0, metavar="N",
           help="with --follow, start with up to N recent matching items")
    p.flag("--count", type=non_negative(int), default=0, metavar="N", help="stop after N items (0: no limit)")
    p.flag("--timeout", type=parse_duration, default="0", metavar="DURATION",
           help="stop following after this long (0: no limit)")
    p.flag("--output", type=choice("text", "json"), default="text", help="output format")
    p.flag("--auth-token-file", metavar="PATH", help="send the first token of this file as the bearer token")
    p.flag("--tls-ca", metavar="PEM", help="connect with TLS, trusting this CA (the server's --tls-cert)")
    return p


def _split(text):
    return [t.strip() for t in (text or "").split(",") if t.strip()]


def _filters(args, what):
    allow = query_pb2.Filter(pids=[args.pid] if args.pid is not None else [],
                             comm_regex=args.comm or "", binary_regex=args.binary or "",
                             containers=[args.container] if args.container else [],
                             pods=[args.pod] if args.pod else [],
                             namespaces=[args.namespace] if args.namespace else [],
                             collector_ids=[args.collector] if args.collector else [])
    for t in _split(args.type):
        allow.event_types.append(vocab.event_type_number(t))
    if what == "groups":
        for k in _split(args.kind):
            allow.group_kinds.append(vocab.group_kind(k))
    deny = []
    if args.deny_comm:
        deny.append(query_pb2.Filter(comm_regex=args.deny_comm))
    if args.deny_binary:
        deny.append(query_pb2.Filter(binary_regex=args.deny_binary))
    empty = query_pb2.Filter()
    return ([allow] if allow != empty else []), deny


def _channel(args):
    # TAPIO_SERVER may hold the collector's list of servers ("a:9090,b:9090"): ask the first
    args.server = args.server.split(",")[0].strip()
    if args.tls_ca:
        with open(args.tls_ca, "rb") as f:
            return grpc.secure_channel(args.server, grpc.ssl_channel_credentials(root_certificates=f.read()))
    return grpc.insecure_channel(args.server)


def _metadata(args):
    if not args.auth_token_file:
        return None
    with open(args.auth_token_file, encoding="utf-8") as f:
        tokens = [line.strip() for line in f if line.strip() and not line.lstrip().startswith("#")]
    return [("authorization", f"Bearer {tokens[0]}")] if tokens else None


# ---- text output ----------------------------------------------------------------------------------

def _time(ns):
    return vocab.format_time(ns)[:-8] + "Z" if ns else "-"


def event_line(e):
    kind = e.get("type", "?")
    d = e.get(kind) or {}
    if kind == "exec":
        detail = " ".join(d.get("args") or []) or d.get("filename", "")
    elif kind == "exit":
        detail = (f"killed by {d.get('signal_name') or d.get('signal')}" if d.get("signal")
                  else f"exit {d.get('exit_code')}") + f" after {d.get('duration_ns', 0) / 1e9:.3f}s"
    elif kind in ("tcp_connect", "tcp_accept", "tcp_close"):
        detail = f"{d.get('saddr')}:{d.get('sport')} -> {d.get('daddr')}:{d.get('dport')}"
        if kind == "tcp_connect":
            detail += f" {d.get('result')}"
        if kind == "tcp_close":
            detail += f" sent {d.get('bytes_sent')} received {d.get('bytes_received')}"
    elif kind == "signal":
        detail = f"{d.get('signal_name') or d.get('signal')} from {d.get('sender_comm')} (pid {d.get('sender_pid')})"
    elif kind == "oom_kill":
        detail = f"memcg {d.get('memcg_name')} limit {d.get('memcg_limit_bytes')} rss {d.get('rss_bytes')}"
    else:
        detail = ""
    count = f" ×{e['count']}" if e.get("count", 1) > 1 else ""
    where = (e.get("context") or {}).get("container_name") or (e.get("context") or {}).get("pod_name") or ""
    return (f"{_time(e.get('timestamp_ns'))}  {kind:<11} {e.get('pid'):>7} {e.get('comm', ''):<15} "
            f"{detail}{count}" + (f"  [{where}]" if where else ""))


def group_lines(g):
    status = g.get("status", "")
    head = (f"{_time(g.get('start_ns'))}  {g.get('kind', ''):<24} {g.get('severity', ''):<8} "
            f"{g.get('summary', '')}  [{g.get('id', '')[:12]}{', ' + status if status != 'closed' else ''}]")
    lines = [head]
    if g.get("root_cause"):
        lines.append(f"{'':22}cause: {g['root_cause']}")
    return lines


def _print(item, args, out):
    kind, value = item
    if args.output == "json":
        out.write(json.dumps(value, separators=(",", ":"), default=str) + "\n")
    elif kind == "group":
        out.write("\n".join(group_lines(value)) + "\n")
    else:
        out.write(event_line(value) + "\n")
    out.flush()


# ---- what arrives ---------------------------------------------------------------------------------

def _field(number, payload):
    """`payload` as length-delimited protobuf field `number` (< 16): tag, varint length, bytes."""
    head = bytearray((number << 3 | 2,))
    n = len(payload)
    while n >= 0x80:
        head.append(n & 0x7F | 0x80)
        n >>= 7
    head.append(n)
    return bytes(head) + payload


def event_dicts(wires, collector_ids=None):
    """tapio.v1.Event bytes as event dicts (tapio.vocab's shape, with "collector_id" when one is
    given): framed as one EventBatch, they go through the codec in one call."""
    if not wires:
        return []
    frame = _field(_REQUEST_BATCH, b"".join(_field(_BATCH_EVENTS, w) for w in wires))
    batch = DecodedBatch.parse(frame)
    out = [batch.event_dict(i) for i in range(len(batch))]
    for event, cid in zip(out, collector_ids or ()):
        if cid:
            event["collector_id"] = cid
    return out


def group_dict(m):
    """A SemanticGroup message as the store's group dict (with "events" when it carries them)."""
    group = {
        "id": m.id, "kind": m.kind, "intent": m.intent, "severity": m.severity,
        "confidence": m.confidence, "start_ns": m.start_ns, "end_ns": m.end_ns,
        "summary": m.summary, "root_cause": m.root_cause, "collector_id": m.collector_id,
        "node": m.node, "trace_id": m.trace_id, "event_ids": list(m.event_ids),
        "attributes": json.loads(m.attributes_json) if m.attributes_json else {},
        "status": m.status, "incomplete": m.incomplete,
    }
    if m.events_json:
        group["events"] = json.loads(m.events_json)
    return group


class _Query:
    """TapioQuery calls. Subscribe and ListEvents read the responses through their byte views,
    so each event stays the bytes the collector sent until the codec decodes it."""

    def __init__(self, channel):
        stub = query_pb2_grpc.TapioQueryStub(channel)
        self.ListGroups = stub.ListGroups
        self.GetGroup = stub.GetGroup
        self.Subscribe = channel.unary_stream(
            "/tapio.v1.TapioQuery/Subscribe",
            request_serializer=query_pb2.SubscribeRequest.SerializeToString,
            response_deserializer=query_pb2.SubscribeResponseBytes.FromString)
        self.ListEvents = channel.unary_unary(
            "/tapio.v1.TapioQuery/ListEvents",
            request_serializer=query_pb2.ListEventsRequest.SerializeToString,
            response_deserializer=query_pb2.ListEventsResponseBytes.FromString)


# ---- commands -------------------------------------------------------------------------------------

def main(argv):
    what, rest = argv[0], argv[1:]
    args = build_parser(what).parse_args(rest)
    try:
        allow, deny = _filters(args, what)
        metadata = _metadata(args)
    except (ValueError, OSError) as e:
        print(f"tapio-server {what}: {e}", file=sys.stderr)
        return 2

    out = sys.stdout
    printed = 0
    signal.signal(signal.SIGINT, signal.default_int_handler)
    with _channel(args) as channel:
        stub = _Query(channel)
        try:
            if what == "groups" and args.id:
                group = group_dict(stub.GetGroup(query_pb2.GetGroupRequest(id=args.id),
                                                 metadata=metadata, timeout=30))
                group.setdefault("events", [])
                if args.output == "json":
                    _print(("group", group), args, out)
                else:
                    out.write("\n".join(group_lines(group)) + "\n")
                    for e in group["events"]:
                        out.write("    " + event_line(e) + "\n")
                return 0
            if not args.follow:
                return _list(stub, what, args, allow, deny, metadata, out)
            request = query_pb2.SubscribeRequest(allow_list=allow, deny_list=deny,
                                                 events=what == "events", groups=what == "groups",
                                                 backfill=args.backfill)
            call = stub.Subscribe(request, metadata=metadata,
                                  timeout=args.timeout if args.timeout else None)
            for response in call:
                if response.HasField("group"):
                    _print(("group", group_dict(query_pb2.SemanticGroup.FromString(response.group))),
                           args, out)
                else:
                    [event] = event_dicts([response.event], [response.collector_id])
                    _print(("event", event), args, out)
                printed += 1
                if args.count and printed >= args.count:
                    call.cancel()
                    break
        except KeyboardInterrupt:
            return 130
        except grpc.RpcError as e:
            code = e.code()
            if code == grpc.StatusCode.DEADLINE_EXCEEDED and args.follow:
                return 0
            if code == grpc.StatusCode.CANCELLED and args.count and printed >= args.count:
                return 0
            print(f"tapio-server {what}: {args.server}: {code.name}: {e.details()}", file=sys.stderr)
            return 1
    return 0


def _list(stub, what, args, allow, deny, metadata, out):
    flt = Filter.from_request(query_pb2.SubscribeRequest(allow_list=allow, deny_list=deny))
    if what == "groups":
        found, before = [], ""
        kinds = _split(args.kind)
        for _ in range(50):      # bounded paging
            page = stub.ListGroups(query_pb2.ListGroupsRequest(
                kind=kinds[0] if len(kinds) == 1 else "", limit=200, before=before),
                metadata=metadata, timeout=30)
            found += [g for g in map(group_dict, page.groups) if flt.matches_group(g)]
            if not page.next_before or len(found) >= args.limit:
                break
            before = page.next_before
        items = [("group", g) for g in found[:args.limit]]
    else:
        types = _split(args.type)
        response = stub.ListEvents(query_pb2.ListEventsRequest(
            event_type=vocab.event_type_number(types[0]) if len(types) == 1 else 0,
            pid=args.pid or 0, limit=1000, collector_id=args.collector or ""),
            metadata=metadata, timeout=30)
        events = event_dicts(list(response.events), list(response.collector_ids))
        items = [("event", e) for e in events if flt.matches_event(e)][:args.limit]
    for item in reversed(items):         # oldest first, like a log
        _print(item, args, out)
    return 0
