"""tapio.v1.TapioQuery over grpcio: Subscribe (new groups and events through allow/deny filters,
as Tetragon's GetEvents), ListGroups, GetGroup and ListEvents, all read from the Store.

Each Subscribe call holds one of the server's handler threads and one bounded store
subscription; a client that reads too slowly loses items (SubscribeResponse.dropped says how
many), it never slows ingestion down. The bearer token, when the server has one, is required
here as on StreamEvents.
"""
import ipaddress
import json
import logging
import threading

import grpc

from tapio import vocab
from tapio.server.store import EVENT_TYPES, Filter, Match
from tapio.v1 import events_pb2, query_pb2, query_pb2_grpc

log = logging.getLogger("tapio.server")

SERVICE = "tapio.v1.TapioQuery"
MAX_LIMIT = 1000
MAX_BACKFILL = 1000

_CONTEXT_FIELDS = [f.name for f in events_pb2.Context.DESCRIPTOR.fields if f.type == f.TYPE_STRING]
_RESULTS = {name: number for number, name in vocab.CONNECT_RESULTS.items()}
_FAMILIES = {name: number for number, name in vocab.IP_FAMILIES.items()}


# ---- dicts <-> messages ---------------------------------------------------------------------------

def _type_number(name):
    if name in EVENT_TYPES:
        return EVENT_TYPES[name]
    if name and name.startswith("unknown_"):
        try:
            return int(name[len("unknown_"):])
        except ValueError:
            pass
    return 0


def _addr(text):
    if not text:
        return b""
    try:
        return ipaddress.ip_address(text).packed
    except ValueError:
        try:
            return bytes.fromhex(text)
        except ValueError:
            return b""


def event_message(d):
    """An event dict (DecodedBatch.event_dict's shape) as a tapio.v1.Event."""
    e = events_pb2.Event(id=d.get("id", ""), type=_type_number(d.get("type")),
                         timestamp_ns=d.get("timestamp_ns", 0), pid=d.get("pid", 0),
                         tid=d.get("tid", 0), ppid=d.get("ppid", 0), uid=d.get("uid", 0),
                         gid=d.get("gid", 0), cgroup_id=d.get("cgroup_id", 0),
                         comm=d.get("comm", ""), count=d.get("count", 0))
    context = d.get("context")
    if context:
        for name in _CONTEXT_FIELDS:
            if context.get(name):
                setattr(e.context, name, context[name])
        for key, value in (context.get("labels") or {}).items():
            e.context.labels.add(key=key, value=value)
    process = d.get("process")
    if process:
        e.process.executable = process.get("executable", "")
        e.process.command_line = process.get("command_line", "")
        e.process.user = process.get("user", "")
        e.process.ancestors.extend(process.get("ancestors") or [])
        e.process.start_time_ns = process.get("start_time_ns", 0)
    kind = d.get("type")
    details = d.get(kind) if kind else None
    if not isinstance(details, dict):
        return e
    if kind == "exec":
        e.exec.filename = details.get("filename", "")
        e.exec.args.extend(details.get("args") or [])
        e.exec.args_count = details.get("args_count", 0)
        e.exec.args_truncated = bool(details.get("args_truncated"))
    elif kind == "exit":
        e.exit.exit_code = details.get("exit_code", 0)
        e.exit.signal = details.get("signal", 0)
        e.exit.core_dumped = bool(details.get("core_dumped"))
        e.exit.start_time_ns = details.get("start_time_ns", 0)
        e.exit.duration_ns = details.get("duration_ns", 0)
    elif kind in ("tcp_connect", "tcp_accept", "tcp_close"):
        t = getattr(e, kind)
        t.family = _FAMILIES.get(details.get("family"), 0)
        t.saddr = _addr(details.get("saddr"))
        t.daddr = _addr(details.get("daddr"))
        t.sport = details.get("sport", 0)
        t.dport = details.get("dport", 0)
        t.result = _RESULTS.get(details.get("result"), 0)
        t.error = details.get("error", 0)
        t.duration_ns = details.get("duration_ns", 0)
        t.bytes_sent = details.get("bytes_sent", 0)
        t.bytes_received = details.get("bytes_received", 0)
        t.passive = bool(details.get("passive"))
    elif kind == "oom_kill":
        for name in ("trigger_pid", "trigger_comm", "memcg_id", "memcg_name", "memcg_limit_bytes",
                     "memcg_usage_bytes", "total_vm_bytes", "rss_bytes"):
            if details.get(name) is not None:
                setattr(e.oom_kill, name, details[name])
    elif kind == "signal":
        e.signal.signal = details.get("signal", 0)
        e.signal.code = details.get("code", 0)
        e.signal.sender_pid = details.get("sender_pid", 0)
        e.signal.sender_comm = details.get("sender_comm", "")
    return e


def group_message(g, with_events=False):
    m = query_pb2.SemanticGroup(
        id=g["id"], kind=g.get("kind", ""), intent=g.get("intent", ""),
        severity=g.get("severity", ""), confidence=float(g.get("confidence") or 0),
        start_ns=int(g.get("start_ns") or 0), end_ns=int(g.get("end_ns") or 0),
        summary=g.get("summary", ""), root_cause=g.get("root_cause", ""),
        collector_id=g.get("collector_id", ""), node=g.get("node", ""),
        trace_id=g.get("trace_id", ""), event_ids=g.get("event_ids") or [],
        attributes_json=json.dumps(g.get("attributes") or {}, separators=(",", ":"), default=str),
        status=g.get("status", ""))
    if with_events:
        m.events.extend(event_message(e) for e in g.get("events") or [])
    return m


def group_dict(m):
    """A SemanticGroup message back as the store's dict (clients: tapio-server groups)."""
    return {
        "id": m.id, "kind": m.kind, "intent": m.intent, "severity": m.severity,
        "confidence": m.confidence, "start_ns": m.start_ns, "end_ns": m.end_ns,
        "summary": m.summary, "root_cause": m.root_cause, "collector_id": m.collector_id,
        "node": m.node, "trace_id": m.trace_id, "event_ids": list(m.event_ids),
        "attributes": json.loads(m.attributes_json) if m.attributes_json else {},
        "status": m.status,
    }


def match_from_proto(f):
    return Match.make(types=[vocab.event_type_name(t) for t in f.event_types],
                      pids=list(f.pids), comm=f.comm_regex or None, binary=f.binary_regex or None,
                      containers=list(f.containers), pods=list(f.pods),
                      namespaces=list(f.namespaces), kinds=list(f.group_kinds),
                      collectors=list(f.collector_ids))


def filter_from_proto(request):
    return Filter(allow=tuple(match_from_proto(f) for f in request.allow_list),
                  deny=tuple(match_from_proto(f) for f in request.deny_list))


# ---- the service ---------------------------------------------------------------------------------

class QueryService(query_pb2_grpc.TapioQueryServicer):
    def __init__(self, store, authorize=None):
        self.store = store
        self.authorize = authorize
        self._subscriptions = set()
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self.subscribes = 0

    def handler(self):
        """The generic handler to register with the grpc server."""
        return grpc.method_handlers_generic_handler(SERVICE, {
            "Subscribe": grpc.unary_stream_rpc_method_handler(
                self.Subscribe, request_deserializer=query_pb2.SubscribeRequest.FromString,
                response_serializer=query_pb2.SubscribeResponse.SerializeToString),
            "ListGroups": grpc.unary_unary_rpc_method_handler(
                self.ListGroups, request_deserializer=query_pb2.ListGroupsRequest.FromString,
                response_serializer=query_pb2.ListGroupsResponse.SerializeToString),
            "GetGroup": grpc.unary_unary_rpc_method_handler(
                self.GetGroup, request_deserializer=query_pb2.GetGroupRequest.FromString,
                response_serializer=query_pb2.SemanticGroup.SerializeToString),
            "ListEvents": grpc.unary_unary_rpc_method_handler(
                self.ListEvents, request_deserializer=query_pb2.ListEventsRequest.FromString,
                response_serializer=query_pb2.ListEventsResponse.SerializeToString),
        })

    def _check(self, context):
        if self.authorize is not None:
            self.authorize(context)

    def Subscribe(self, request, context):
        self._check(context)
        if self._closed.is_set():
            context.abort(grpc.StatusCode.UNAVAILABLE, "server shutting down")
        try:
            flt = filter_from_proto(request)
        except ValueError as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        events = request.events or not request.groups
        groups = request.groups or not request.events
        sub = self.store.subscribe(flt, events=events, groups=groups,
                                   maxsize=min(request.queue_size or 1000, 100_000))
        with self._lock:
            self._subscriptions.add(sub)
            self.subscribes += 1
        context.add_callback(sub.close)
        log.info("Subscribe from %s (%s%s)", context.peer(), "events" if events else "",
                 (" and " if events and groups else "") + ("groups" if groups else ""))
        try:
            for response in self._backfill(request, flt, events, groups):
                yield response
            while context.is_active():
                item = sub.get(timeout=0.5)
                if item is None:
                    if sub.closed:
                        return
                    continue
                kind, value = item
                if kind == "group":
                    yield query_pb2.SubscribeResponse(group=group_message(value), dropped=sub.dropped)
                else:
                    yield query_pb2.SubscribeResponse(event=event_message(value),
                                                      collector_id=value.get("collector_id", ""),
                                                      dropped=sub.dropped)
        finally:
            sub.close()
            with self._lock:
                self._subscriptions.discard(sub)

    def _backfill(self, request, flt, events, groups):
        """Up to `backfill` recent matching groups and events, oldest first."""
        wanted = min(request.backfill, MAX_BACKFILL)
        if not wanted:
            return []
        out = []
        if groups:
            found, before = [], None
            for _ in range(20):       # bounded: at most 20 pages of 200 groups looked at
                page = self.store.groups(limit=200, before=before)
                found += [g for g in page if flt.matches_group(g)]
                if len(page) < 200 or len(found) >= wanted:
                    break
                before = page[-1]["id"]
            out += [(g["end_ns"], query_pb2.SubscribeResponse(group=group_message(g)))
                    for g in found[:wanted]]
        if events:
            recent = [e for e in self.store.recent_events(limit=MAX_LIMIT * 10) if flt.matches_event(e)]
            out += [(e["timestamp_ns"], query_pb2.SubscribeResponse(
                event=event_message(e), collector_id=e.get("collector_id", "")))
                for e in recent[:wanted]]
        out.sort(key=lambda pair: pair[0])
        return [response for _, response in out]

    def ListGroups(self, request, context):
        self._check(context)
        limit = min(request.limit or 50, MAX_LIMIT)
        found = self.store.groups(kind=request.kind or None, since_ns=request.since_ns or None,
                                  limit=limit + 1, before=request.before or None)
        more = len(found) > limit
        found = found[:limit]
        return query_pb2.ListGroupsResponse(groups=[group_message(g) for g in found],
                                            next_before=found[-1]["id"] if more and found else "")

    def GetGroup(self, request, context):
        self._check(context)
        found = self.store.group(request.id)
        if found is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no group {request.id!r}")
        return group_message(found, with_events=True)

    def ListEvents(self, request, context):
        self._check(context)
        try:
            found = self.store.recent_events(
                type=vocab.event_type_name(request.event_type) if request.event_type else None,
                pid=request.pid or None, comm=request.comm or None,
                container=request.container or None, collector=request.collector_id or None,
                limit=min(request.limit or 100, MAX_LIMIT))
        except ValueError as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        return query_pb2.ListEventsResponse(events=[event_message(e) for e in found],
                                            collector_ids=[e.get("collector_id", "") for e in found])

    def close(self):
        """End every Subscribe stream (server shutdown)."""
        self._closed.set()
        with self._lock:
            subs = list(self._subscriptions)
        for sub in subs:
            sub.close()
