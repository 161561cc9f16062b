"""The grpcio server: TapioService, grpc.health.v1, and reflection when asked for.

Collector streams are counted here (StreamLimits): at most `max_streams` in all and
`max_streams_per_token` for one token, RESOURCE_EXHAUSTED past either, so that one token cannot
take every stream. The thread pool has room beyond the
collector streams for Subscribe streams (their own limit, tapio/server/subscribe.py), health
checks and the list calls: a flood of collector streams never blocks those.
"""
import concurrent.futures
import logging
import threading

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from tapio.server.service import SERVICE
from tapio.server.subscribe import MAX_SUBSCRIBERS

log = logging.getLogger("tapio.server")

# Keepalive, agreed with the collector (tapio/collector/channel.py): the client pings every 10 s
# when idle; the server accepts pings that often and notices a dead peer within 10 + 5 s itself.
KEEPALIVE_OPTIONS = [
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
    ("grpc.http2.max_ping_strikes", 0),
]


SPARE_CALLS = 16            # handler threads beyond the streams: health checks, list calls
STREAM_METHOD = f"/{SERVICE}/StreamEvents"


def per_token_default(max_streams):
    """3/4 of the streams: one token cannot fill the server, and a shared DaemonSet token fits a
    cluster of up to that many nodes."""
    return max(1, max_streams * 3 // 4)


class StreamLimits(grpc.ServerInterceptor):
    """Counts StreamEvents calls by token and refuses those past the limits."""

    def __init__(self, auth, max_streams, per_token):
        self.auth = auth                    # tapio.server.auth.Auth, or None (no tokens)
        self.max_streams = max_streams
        # without tokens everyone is one caller: only the total applies
        self.per_token = (per_token or per_token_default(max_streams)) \
            if auth is not None and auth.enabled else max_streams
        self._lock = threading.Lock()
        self._open = 0
        self._by_token = {}
        self.refused = 0

    def streams(self):
        with self._lock:
            return self._open

    def _key(self, context):
        if self.auth is None or not self.auth.enabled:
            return "anonymous", "the server"
        principal = self.auth.principal(dict(context.invocation_metadata()).get("authorization"))
        if principal is None:
            # refused by the service's own check right after; counted together meanwhile
            return "unauthenticated", "calls without a valid token"
        return principal.key, principal.label

    def _admit(self, key, label):
        with self._lock:
            mine = self._by_token.get(key, 0)
            if self._open >= self.max_streams:
                why = (f"{self._open} collector streams are open, the server's limit "
                       "(--max-streams): try another server or later")
            elif mine >= self.per_token:
                why = (f"{label} holds {mine} collector streams, the most one token may "
                       "(--max-streams-per-token)")
            else:
                self._open += 1
                self._by_token[key] = mine + 1
                return None
            self.refused += 1
        return why

    def _release(self, key):
        with self._lock:
            self._open -= 1
            left = self._by_token.get(key, 1) - 1
            if left > 0:
                self._by_token[key] = left
            else:
                self._by_token.pop(key, None)

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None or handler_call_details.method != STREAM_METHOD or not handler.stream_stream:
            return handler
        inner = handler.stream_stream

        def limited(requests, context):
            key, label = self._key(context)
            why = self._admit(key, label)
            if why is not None:
                log.warning("Refused a stream from %s: %s", context.peer(), why)
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, why)
            released = threading.Event()

            def release():
                if not released.is_set():
                    released.set()
                    self._release(key)
            context.add_callback(release)       # the call ended, however it ended
            try:
                yield from inner(requests, context)
            finally:
                release()

        return grpc.stream_stream_rpc_method_handler(
            limited, request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer)


class GrpcServer:
    def __init__(self, service, host, port, max_message_bytes, max_streams, enable_reflection,
                 credentials=None, extra_services=(), max_streams_per_token=0):
        # extra_services: (generic handler, full service name) pairs served next to
        # TapioService (the query service: Subscribe, ListGroups, ...)
        self.health = health.HealthServicer()
        self.limits = StreamLimits(getattr(service, "authorize", None), max_streams,
                                   max_streams_per_token)
        options = KEEPALIVE_OPTIONS + [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.so_reuseport", 1),
        ]
        # every collector stream and every Subscribe holds one handler thread for its lifetime
        calls = max_streams + MAX_SUBSCRIBERS + SPARE_CALLS
        self.server = grpc.server(
            concurrent.futures.ThreadPoolExecutor(max_workers=calls, thread_name_prefix="grpc"),
            handlers=[service.handler()] + [h for h, _ in extra_services], options=options,
            interceptors=[self.limits], maximum_concurrent_rpcs=calls)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        if enable_reflection:
            from grpc_reflection.v1alpha import reflection
            from tapio.v1 import query_pb2, stream_pb2   # noqa: F401  (registers the descriptors)
            reflection.enable_server_reflection(
                [SERVICE, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                 *(name for _, name in extra_services), reflection.SERVICE_NAME], self.server)
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        if credentials is None:
            self.port = self.server.add_insecure_port(address)
        else:
            self.port = self.server.add_secure_port(address, credentials)
        if self.port == 0:
            raise OSError(f"cannot listen on {address} (in use, or not an address of this host)")

    def start(self):
        self.server.start()
        self.set_serving(True)

    def set_serving(self, serving):
        status = (health_pb2.HealthCheckResponse.SERVING if serving
                  else health_pb2.HealthCheckResponse.NOT_SERVING)
        for name in ("", SERVICE):
            self.health.set(name, status)

    def stop(self, grace):
        """Stop accepting, give in-flight streams `grace` seconds, then cancel them. Blocking."""
        self.set_serving(False)
        self.server.stop(grace).wait()
