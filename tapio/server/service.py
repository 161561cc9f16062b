"""TapioService.StreamEvents over grpcio, bytes in and bytes out.

The handler is registered without (de)serializers, so grpcio hands it raw request bytes and sends
the bytes it yields: the compiled codec decodes batches, and no protobuf object is built per
event (acks and controls, a few per batch, use the protobuf library).

Each call has two threads: grpcio's handler thread yields responses from the session's queue,
and a reader thread decodes requests and queues them for the ingest engine. So the server can
speak at any time (RESUME while the collector is silent, paused), not only after a request.
"""
import logging
import threading

import grpc

from tapio._fast.codec import DecodedBatch, DecodeError
from tapio.server.ingest import StreamSession, control_bytes
from tapio.v1 import stream_pb2

log = logging.getLogger("tapio.server")

SERVICE = "tapio.v1.TapioService"
_Control = stream_pb2.StreamControl


class TapioService:
    def __init__(self, ingest, authorize=None):
        self.ingest = ingest
        self.authorize = authorize            # (context) -> None; aborts the call when refused
        self.draining = threading.Event()
        self._sessions = set()
        self._lock = threading.Lock()

    def handler(self):
        return grpc.method_handlers_generic_handler(SERVICE, {
            "StreamEvents": grpc.stream_stream_rpc_method_handler(self.stream_events),
        })

    def stream_events(self, requests, context):
        if self.authorize is not None:
            self.authorize(context)
        if self.draining.is_set():
            context.abort(grpc.StatusCode.UNAVAILABLE, "server shutting down: use another server")
        session = StreamSession(context.peer())
        with self._lock:
            self._sessions.add(session)
        reader = threading.Thread(target=self._read, args=(requests, session),
                                  name=f"read {session.peer}", daemon=True)
        reader.start()
        reason = "stream ended"
        try:
            while True:
                item = session.out.get()
                if item is StreamSession.END:
                    return
                if isinstance(item, tuple):
                    code, message = item
                    reason = message
                    context.abort(code, message)
                yield item
        finally:
            with self._lock:
                self._sessions.discard(session)
            self.ingest.goodbye(session, reason)

    def _read(self, requests, session):
        """Decode requests and queue them (runs until the client ends the stream or goes)."""
        try:
            for raw in requests:
                try:
                    msg = DecodedBatch.parse(raw)
                except DecodeError as e:
                    self.ingest.decode_failed()
                    log.warning("Malformed message from %s: %s", session.peer, e)
                    session.out.put((grpc.StatusCode.INVALID_ARGUMENT, f"malformed message: {e}"))
                    return
                if msg.kind == "hello":
                    hello = msg.message
                    if not hello.collector_id:
                        session.out.put((grpc.StatusCode.INVALID_ARGUMENT, "hello without collector_id"))
                        return
                    self.ingest.hello(session, hello.collector_id, hello.node_name, hello.version)
                elif msg.kind == "control":
                    if msg.message.action == _Control.ACTION_HEARTBEAT:
                        session.out.put(control_bytes(_Control.ACTION_HEARTBEAT))
                elif self.draining.is_set():
                    return      # not acked: the collector sends it again to the next server
                else:
                    if session.collector is None:
                        # no hello first (another client): name the collector after the batch
                        self.ingest.hello(session, msg.collector_id or session.peer, msg.node_name, "")
                    self.ingest.submit(session, msg)
        except grpc.RpcError:
            return          # the client went away; the handler thread sees the call end too
        finally:
            self.ingest.finish(session)

    def end_all_streams(self, message):
        """Drain: tell every open stream to go (after its queued acks)."""
        self.draining.set()
        with self._lock:
            sessions = list(self._sessions)
        for session in sessions:
            session.out.put((grpc.StatusCode.UNAVAILABLE, message))
