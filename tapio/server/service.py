"""TapioService.StreamEvents over grpcio, bytes in and bytes out.

The handler is registered without (de)serializers, so grpcio hands it raw request bytes and sends
the bytes it yields: the compiled codec decodes batches, and no protobuf object is built per
event (acks and controls, a few per batch, use the protobuf library).

Each call has two threads: grpcio's handler thread yields responses from the session's queue,
and a reader thread decodes requests and queues them for the ingest engine. So the server can
speak at any time (RESUME while the collector is silent, paused), not only after a request.

Who may speak for which collector: the stream's token (or, without tokens, anyone) is checked
against the collector id of its Hello, or of its first batch when it sends none, and every batch
must name that same collector (or none): PERMISSION_DENIED otherwise. A stream that sends nothing
within `hello_timeout` is ended with DEADLINE_EXCEEDED; one silent for `idle_timeout` (while not
paused by the server) with UNAVAILABLE, and its collector reconnects.
"""
import logging
import queue
import threading
import time

import grpc

from tapio._fast.codec import DecodedBatch, DecodeError
from tapio.server.auth import ANONYMOUS
from tapio.server.ingest import StreamSession, control_bytes
from tapio.v1 import stream_pb2

log = logging.getLogger("tapio.server")

SERVICE = "tapio.v1.TapioService"
_Control = stream_pb2.StreamControl


class TapioService:
    def __init__(self, ingest, authorize=None, hello_timeout=10.0, idle_timeout=900.0):
        self.ingest = ingest
        # tapio.server.auth.Auth: (context) -> Principal, aborts the call when refused; and
        # claim_refusal(principal, context, collector_id). None: anyone, as any collector.
        self.authorize = authorize
        self.hello_timeout = hello_timeout
        self.idle_timeout = idle_timeout       # 0: never
        self.draining = threading.Event()
        self._sessions = set()
        self._lock = threading.Lock()
        self.timeouts = {"hello": 0, "idle": 0}
        self.claims_denied = 0

    def handler(self):
        return grpc.method_handlers_generic_handler(SERVICE, {
            "StreamEvents": grpc.stream_stream_rpc_method_handler(self.stream_events),
        })

    def stream_events(self, requests, context):
        principal = self.authorize(context) if self.authorize is not None else ANONYMOUS
        if self.draining.is_set():
            context.abort(grpc.StatusCode.UNAVAILABLE, "server shutting down: use another server")
        session = StreamSession(context.peer())
        session.principal = principal
        session.last_heard = session.opened = time.monotonic()
        session.heard = False
        with self._lock:
            self._sessions.add(session)
        reader = threading.Thread(target=self._read, args=(requests, session, context),
                                  name=f"read {session.peer}", daemon=True)
        reader.start()
        reason = "stream ended"
        tick = max(0.05, min([1.0] + [t / 4 for t in (self.hello_timeout, self.idle_timeout) if t]))
        try:
            while True:
                try:
                    item = session.out.get(timeout=tick)
                except queue.Empty:
                    item = self._overdue(session)
                    if item is None:
                        continue
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

    def _overdue(self, session):
        """The (code, message) that ends a stream silent for too long, or None."""
        now = time.monotonic()
        if session.paused:
            session.last_heard = now        # silent because the server asked it to be
            return None
        if self.hello_timeout and not session.heard and now - session.opened > self.hello_timeout:
            with self._lock:
                self.timeouts["hello"] += 1
            log.warning("Ended a stream from %s: nothing within %gs", session.peer, self.hello_timeout)
            return (grpc.StatusCode.DEADLINE_EXCEEDED,
                    f"no hello within {self.hello_timeout:g}s (--hello-timeout)")
        if self.idle_timeout and now - session.last_heard > self.idle_timeout:
            with self._lock:
                self.timeouts["idle"] += 1
            who = session.collector.collector_id if session.collector is not None else session.peer
            log.info("Ended the stream of %s: silent for %gs", who, self.idle_timeout)
            return (grpc.StatusCode.UNAVAILABLE,
                    f"stream idle for {self.idle_timeout:g}s (--stream-idle-timeout): reconnect")
        return None

    def _claim(self, session, context, collector_id):
        """Why the stream may not speak as `collector_id` (None: it may)."""
        if self.authorize is None or not hasattr(self.authorize, "claim_refusal"):
            return None
        why = self.authorize.claim_refusal(session.principal, context, collector_id)
        if why is not None:
            with self._lock:
                self.claims_denied += 1
        return why

    def _read(self, requests, session, context):
        """Decode requests and queue them (runs until the client ends the stream or goes)."""
        try:
            for raw in requests:
                session.heard = True
                session.last_heard = time.monotonic()
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
                    if session.collector is not None:
                        session.out.put((grpc.StatusCode.INVALID_ARGUMENT, "a second hello on one stream"))
                        return
                    why = self._claim(session, context, hello.collector_id)
                    if why is not None:
                        session.out.put((grpc.StatusCode.PERMISSION_DENIED, why))
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
                        collector_id = msg.collector_id or session.peer
                        why = self._claim(session, context, collector_id)
                        if why is not None:
                            session.out.put((grpc.StatusCode.PERMISSION_DENIED, why))
                            return
                        self.ingest.hello(session, collector_id, msg.node_name, "")
                    elif msg.collector_id and msg.collector_id != session.collector.collector_id:
                        with self._lock:
                            self.claims_denied += 1
                        log.warning("Ended a stream from %s: a batch of collector %r on the stream of %r",
                                    session.peer, msg.collector_id[:80], session.collector.collector_id)
                        session.out.put((grpc.StatusCode.PERMISSION_DENIED,
                                         f"a batch of collector {msg.collector_id[:80]!r} on the stream "
                                         f"of {session.collector.collector_id!r}: one stream, one collector"))
                        return
                    if not self.ingest.submit(session, msg, raw):
                        return
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
