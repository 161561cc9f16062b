"""gRPC channels to a Tapio server: plain text, TLS or mutual TLS, bearer token, keepalive."""
import grpc

# Agreed with the server (tapio/server/grpc_server.py: it permits pings every 5 s): ping every
# 10 s even when idle, give up on a silent peer after 5 s more. A dead server is noticed in ~15 s.
KEEPALIVE_OPTIONS = [
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
]


class ChannelFactory:
    def __init__(self, tls_ca=None, tls_cert=None, tls_key=None, tls_server_name=None,
                 auth_token=None, compression="none", max_message_bytes=16 << 20):
        self.credentials = None
        if tls_ca or tls_cert:
            def read(path):
                with open(path, "rb") as f:
                    return f.read()
            self.credentials = grpc.ssl_channel_credentials(
                root_certificates=read(tls_ca) if tls_ca else None,
                private_key=read(tls_key) if tls_key else None,
                certificate_chain=read(tls_cert) if tls_cert else None)
        self.options = KEEPALIVE_OPTIONS + [
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
            # the control loop does its own backoff; grpcio's own would only add to it
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 1000),
        ]
        if tls_server_name:
            self.options.append(("grpc.ssl_target_name_override", tls_server_name))
        self.metadata = (("authorization", f"Bearer {auth_token}"),) if auth_token else ()
        self.compression = grpc.Compression.Gzip if compression == "gzip" else grpc.Compression.NoCompression

    @property
    def secure(self):
        return self.credentials is not None

    def open(self, target):
        if self.credentials is not None:
            return grpc.secure_channel(target, self.credentials, options=self.options,
                                       compression=self.compression)
        return grpc.insecure_channel(target, options=self.options, compression=self.compression)
