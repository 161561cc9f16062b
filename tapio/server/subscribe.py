"""tapio.v1.TapioQuery over grpcio: Subscribe (new groups and events through allow/deny filters,
as Tetragon's GetEvents), ListGroups, GetGroup and ListEvents, all read from the Store.

Events go out as the collector sent them: the store keeps each batch's wire bytes, and Subscribe
and ListEvents put each event's bytes into the response (SubscribeResponseBytes,
ListEventsResponseBytes: the same wire format as SubscribeResponse and ListEventsResponse), never
decoding and encoding it again.

Each Subscribe call holds one of the server's handler threads and one bounded store
subscription; a client that reads too slowly loses items (SubscribeResponse.dropped says how
many), it never slows ingestion down.

Every call needs the right to read (a reader or admin token, when the server has tokens: a
collector token gets PERMISSION_DENIED). A reader scoped to namespaces gets only the events and
groups of pods in them: its scope is added to every filter, and a group outside it is NOT_FOUND.
Subscribe streams are limited: MAX_SUBSCRIBERS in all and MAX_SUBSCRIBERS_PER_TOKEN for one
token (RESOURCE_EXHAUSTED past either), so readers cannot take every handler thread.
"""
import json
import logging
import threading

import grpc

from tapio import vocab
from tapio.server.auth import READ, Auth
from tapio.server.filters import Filter, Match
from tapio.server.store import StoreUnavailable
from tapio.v1 import query_pb2, query_pb2_grpc

log = logging.getLogger("tapio.server")

SERVICE = "tapio.v1.TapioQuery"
MAX_LIMIT = 1000
MAX_BACKFILL = 1000
BACKFILL_SCAN = MAX_LIMIT * 10       # recent events looked at for a backfill, at most
MAX_QUEUE = 100_000
QUEUE_BYTES = 8 << 20                # what may wait for one subscriber
MAX_SUBSCRIBERS = 64
MAX_SUBSCRIBERS_PER_TOKEN = 16
GROUP_PAGES = 20                     # pages of 200 groups looked at for one scoped answer


def _store_errors(method):
    """A unary query method whose store's database is away answers UNAVAILABLE (try again)."""
    def call(request, context):
        try:
            return method(request, context)
        except StoreUnavailable as e:
            context.abort(grpc.StatusCode.UNAVAILABLE, f"the database is not reachable now: {e}")
    return call


def group_message(g, with_events=False):
    """A group dict (the store's) as a tapio.v1.SemanticGroup."""
    m = query_pb2.SemanticGroup(
        id=g["id"], kind=g.get("kind", ""), intent=g.get("intent", ""),
        severity=g.get("severity", ""), confidence=float(g.get("confidence") or 0),
        start_ns=int(g.get("start_ns") or 0), end_ns=int(g.get("end_ns") or 0),
        summary=g.get("summary", ""), root_cause=g.get("root_cause", ""),
        collector_id=g.get("collector_id", ""), node=g.get("node", ""),
        trace_id=g.get("trace_id", ""), event_ids=g.get("event_ids") or [],
        attributes_json=json.dumps(g.get("attributes") or {}, separators=(",", ":"), default=str),
        status=g.get("status", ""), incomplete=bool(g.get("incomplete")))
    if with_events:
        m.events_json = json.dumps(g.get("events") or [], separators=(",", ":"), default=str)
    return m


def _group_response(g, dropped=0):
    return query_pb2.SubscribeResponseBytes(group=group_message(g).SerializeToString(),
                                            dropped=dropped).SerializeToString()


def _event_response(wire, collector_id, dropped=0):
    return query_pb2.SubscribeResponseBytes(event=wire, collector_id=collector_id,
                                            dropped=dropped).SerializeToString()


def _identity(data):
    return data


# ---- a reader's namespace scope, shared with HTTP ------------------------------------------------

def in_scope(group, namespaces):
    """True when a reader scoped to `namespaces` (empty: all) may see `group`."""
    return not namespaces or (group.get("attributes") or {}).get("namespace") in namespaces


def scoped_groups(store, namespaces, *, kind=None, since_ns=None, limit=50, before=None):
    """store.groups, with only the groups of `namespaces` (empty: all): for a scoped reader it
    reads pages until it has `limit` (at most GROUP_PAGES pages)."""
    if not namespaces:
        return store.groups(kind=kind, since_ns=since_ns, limit=limit, before=before)
    found = []
    for _ in range(GROUP_PAGES):
        page = store.groups(kind=kind, since_ns=since_ns, limit=200, before=before)
        found += [g for g in page if in_scope(g, namespaces)]
        if len(page) < 200 or len(found) >= limit:
            break
        before = page[-1]["id"]
    return found[:limit]


def scoped_events(store, namespaces, *, wire=False, type=None, pid=None, comm=None,
                  container=None, collector=None, limit=100):
    """store.recent_events (or recent_wire with `wire`), with only the events of pods in
    `namespaces` (empty: all), newest first; a scoped reader's answer looks at the newest
    BACKFILL_SCAN events at most."""
    if not namespaces:
        find = store.recent_wire if wire else store.recent_events
        return find(type=type, pid=pid, comm=comm, container=container, collector=collector,
                    limit=limit)
    match = Match(types=(type,) if type else (), pids=(int(pid),) if pid else (),
                  containers=(container,) if container else (),
                  collectors=(collector,) if collector else ())
    flt = Filter(allow=(match,), scope=tuple(namespaces))
    out = []
    for event, event_wire in store.recent_matching(flt, BACKFILL_SCAN, scan=BACKFILL_SCAN):
        if comm and event.get("comm") != comm:
            continue
        out.append((event_wire, event["collector_id"]) if wire else event)
        if len(out) >= limit:
            break
    return out


# ---- the service ---------------------------------------------------------------------------------

class QueryService(query_pb2_grpc.TapioQueryServicer):
    def __init__(self, store, authorize=None, max_subscribers=MAX_SUBSCRIBERS,
                 max_subscribers_per_token=MAX_SUBSCRIBERS_PER_TOKEN):
        self.store = store
        self.auth = authorize if authorize is not None else Auth()
        self.max_subscribers = max_subscribers
        self.max_subscribers_per_token = max_subscribers_per_token
        self._subscriptions = set()
        self._per_token = {}
        self._open = 0                       # admitted Subscribe streams
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self.subscribes = 0
        self.subscribes_refused = 0

    def handler(self):
        """The generic handler to register with the grpc server. Subscribe and ListEvents
        return bytes they built (identity serializers)."""
        return grpc.method_handlers_generic_handler(SERVICE, {
            "Subscribe": grpc.unary_stream_rpc_method_handler(
                self.Subscribe, request_deserializer=query_pb2.SubscribeRequest.FromString,
                response_serializer=_identity),
            "ListGroups": grpc.unary_unary_rpc_method_handler(
                _store_errors(self.ListGroups), request_deserializer=query_pb2.ListGroupsRequest.FromString,
                response_serializer=query_pb2.ListGroupsResponse.SerializeToString),
            "GetGroup": grpc.unary_unary_rpc_method_handler(
                _store_errors(self.GetGroup), request_deserializer=query_pb2.GetGroupRequest.FromString,
                response_serializer=query_pb2.SemanticGroup.SerializeToString),
            "ListEvents": grpc.unary_unary_rpc_method_handler(
                _store_errors(self.ListEvents), request_deserializer=query_pb2.ListEventsRequest.FromString,
                response_serializer=_identity),
        })

    def _check(self, context):
        """The caller's Principal, when it may read (the call is aborted otherwise)."""
        return self.auth.require(context, READ)

    def _admit(self, principal):
        """Count a Subscribe stream of `principal`; None, or why it is refused."""
        with self._lock:
            mine = self._per_token.get(principal.key, 0)
            if self._open >= self.max_subscribers:
                why = f"{self.max_subscribers} Subscribe streams are open: the server's limit"
            elif mine >= self.max_subscribers_per_token:
                why = (f"{principal.label} has {mine} Subscribe streams open: at most "
                       f"{self.max_subscribers_per_token} per token")
            else:
                self._per_token[principal.key] = mine + 1
                self._open += 1
                return None
            self.subscribes_refused += 1
        return why

    def _release(self, principal):
        with self._lock:
            self._open -= 1
            left = self._per_token.get(principal.key, 1) - 1
            if left > 0:
                self._per_token[principal.key] = left
            else:
                self._per_token.pop(principal.key, None)

    def Subscribe(self, request, context):
        principal = self._check(context)
        if self._closed.is_set():
            context.abort(grpc.StatusCode.UNAVAILABLE, "server shutting down")
        try:
            flt = Filter.from_request(request).scoped(principal.namespaces)
        except ValueError as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        why = self._admit(principal)
        if why is not None:
            log.warning("Refused a Subscribe from %s: %s", context.peer(), why)
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, why)
        try:
            yield from self._subscribe(request, context, flt)
        finally:
            self._release(principal)

    def _subscribe(self, request, context, flt):
        events = request.events or not request.groups
        groups = request.groups or not request.events
        sub = self.store.subscribe(flt, events=events, groups=groups,
                                   maxsize=min(request.queue_size or 1000, MAX_QUEUE),
                                   max_bytes=QUEUE_BYTES)
        with self._lock:
            self._subscriptions.add(sub)
            self.subscribes += 1
        context.add_callback(sub.close)
        log.info("Subscribe from %s (%s%s)", context.peer(), "events" if events else "",
                 (" and " if events and groups else "") + ("groups" if groups else ""))
        try:
            try:
                backfill = self._backfill(request, flt, events, groups)
            except StoreUnavailable as e:
                context.abort(grpc.StatusCode.UNAVAILABLE, f"the database is not reachable now: {e}")
            for response in backfill:
                yield response
            while context.is_active():
                item = sub.get(timeout=0.5)
                if item is None:
                    if sub.closed:
                        return
                    continue
                if item.kind == "group":
                    yield _group_response(item.value, sub.dropped)
                else:
                    yield _event_response(item.value, item.collector_id, sub.dropped)
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
            for _ in range(GROUP_PAGES):      # bounded: pages of 200 groups looked at
                page = self.store.groups(limit=200, before=before)
                found += [g for g in page if flt.matches_group(g)]
                if len(page) < 200 or len(found) >= wanted:
                    break
                before = page[-1]["id"]
            out += [(g["end_ns"], _group_response(g)) for g in found[:wanted]]
        if events:
            out += [(e["timestamp_ns"], _event_response(wire, e["collector_id"]))
                    for e, wire in self.store.recent_matching(flt, wanted, scan=BACKFILL_SCAN)]
        out.sort(key=lambda pair: pair[0])
        return [response for _, response in out]

    def ListGroups(self, request, context):
        principal = self._check(context)
        limit = min(request.limit or 50, MAX_LIMIT)
        found = scoped_groups(self.store, principal.namespaces, kind=request.kind or None,
                              since_ns=request.since_ns or None, limit=limit + 1,
                              before=request.before or None)
        more = len(found) > limit
        found = found[:limit]
        return query_pb2.ListGroupsResponse(groups=[group_message(g) for g in found],
                                            next_before=found[-1]["id"] if more and found else "")

    def GetGroup(self, request, context):
        principal = self._check(context)
        found = self.store.group(request.id)
        if found is None or not in_scope(found, principal.namespaces):
            context.abort(grpc.StatusCode.NOT_FOUND, f"no group {request.id[:128]!r}")
        return group_message(found, with_events=True)

    def ListEvents(self, request, context):
        principal = self._check(context)
        try:
            found = scoped_events(
                self.store, principal.namespaces, wire=True,
                type=vocab.event_type_name(request.event_type) if request.event_type else None,
                pid=request.pid or None, comm=request.comm or None,
                container=request.container or None, collector=request.collector_id or None,
                limit=min(request.limit or 100, MAX_LIMIT))
        except ValueError as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        return query_pb2.ListEventsResponseBytes(
            events=[wire for wire, _ in found],
            collector_ids=[cid for _, cid in found]).SerializeToString()

    def close(self):
        """End every Subscribe stream (server shutdown)."""
        self._closed.set()
        with self._lock:
            subs = list(self._subscriptions)
        for sub in subs:
            sub.close()
