"""The grpcio server: TapioService, grpc.health.v1, and reflection when asked for."""
import concurrent.futures
import logging

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from tapio.server.service import SERVICE

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


class GrpcServer:
    def __init__(self, service, host, port, max_message_bytes, max_streams, enable_reflection,
                 credentials=None, extra_services=()):
        # extra_services: (generic handler, full service name) pairs served next to
        # TapioService (the query service: Subscribe, ListGroups, ...)
        self.health = health.HealthServicer()
        options = KEEPALIVE_OPTIONS + [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.so_reuseport", 1),
        ]
        # every collector stream holds one handler thread for its lifetime
        self.server = grpc.server(
            concurrent.futures.ThreadPoolExecutor(max_workers=max_streams + 8, thread_name_prefix="grpc"),
            handlers=[service.handler()] + [h for h, _ in extra_services], options=options,
            maximum_concurrent_rpcs=max_streams)
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
