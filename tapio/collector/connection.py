"""The connection manager: connecting -> streaming -> backing off -> (next server) ..., in trio.

It is also the pump's sink: every batch goes into the delivery buffer first, and is sent when a
stream is up and the server has not paused us. Acks take batches out of the buffer; a stream
that ends leaves its unacked batches to be sent again, in order, on the next one.

A stream with nothing to send (a quiet node) sends a HEARTBEAT control after `heartbeat_interval`
without a message, so that the server, which ends streams silent for its --stream-idle-timeout
(15 min by default), does not cut a collector that is only quiet. gRPC's own keepalive pings do
not count there: they prove the connection, not the collector.

The transport (real: grpc_transport.GrpcTransport) is injected, so the state machine's timing
(backoff, failover order, pause/resume) is tested on trio's fake clock.
"""
import bisect
import logging
import math
import time

import trio
from google.protobuf.message import DecodeError

from tapio.collector.backoff import Backoff
from tapio.collector.grpc_transport import ConnectError, StreamEnded
from tapio.v1 import stream_pb2

log = logging.getLogger("tapio.collector")

_Response = stream_pb2.TapioStreamEventsResponse
_Ack = stream_pb2.EventAck
_Control = stream_pb2.StreamControl

CONNECTING, STREAMING, BACKING_OFF, STOPPED = "connecting", "streaming", "backing off", "stopped"

HEARTBEAT = stream_pb2.TapioStreamEventsRequest(
    control=_Control(action=_Control.ACTION_HEARTBEAT)).SerializeToString()


class BadReply(ValueError):
    """A reply that is no TapioStreamEventsResponse: the server is broken or hostile."""


def read_reply(raw):
    """The TapioStreamEventsResponse in `raw` (what the server sent); BadReply when it is none."""
    try:
        return _Response.FromString(raw)
    except DecodeError as e:
        raise BadReply(f"{len(raw)} bytes that are no TapioStreamEventsResponse ({e})") from None


class DeliveryStats:
    """The original's GetStatistics(), and more."""

    def __init__(self):
        self.connected = False
        self.state = CONNECTING
        self.server = None
        self.events_sent = 0             # acked by a server
        self.batches_sent = 0
        self.bytes_sent = 0              # wire bytes of every send, re-sends included
        self.batches_acked = 0
        self.duplicates_acked = 0        # batches a server already had
        self.reconnects = 0
        self.heartbeats = 0              # sent on streams with nothing else to send
        self.bad_replies = 0             # undecodable replies (each ended its stream)
        self.pause_timeouts = 0          # streams left because a PAUSE outlasted --pause-timeout
        self.last_sent = None            # wall time of the latest send
        self.last_ack = None
        self.paused = False
        self.send_latency = LatencyWindow()

    def as_dict(self, buffer):
        return {
            "connected": self.connected, "state": self.state, "server": self.server,
            "events_sent": self.events_sent, "batches_sent": self.batches_sent,
            "batches_acked": self.batches_acked, "reconnects": self.reconnects,
            "heartbeats": self.heartbeats,
            "bad_replies": self.bad_replies, "pause_timeouts": self.pause_timeouts,
            "last_sent": self.last_sent, "paused": self.paused,
            "buffer_bytes": buffer.bytes, "buffer_batches": len(buffer),
            "events_dropped_buffer": buffer.dropped_events,
            "send_latency_ms": self.send_latency.summary_ms(),
        }


class LatencyWindow:
    """Send -> ack latencies of the latest acks (bounded), for p50/p99; and every ack since the
    start in histogram buckets (for Prometheus)."""

    BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

    def __init__(self, size=1024):
        self.samples = []
        self.size = size
        self.total = 0
        self.sum = 0.0
        self.bucket_counts = [0] * len(self.BUCKETS)   # per bucket, not cumulative; +Inf is total

    def add(self, seconds):
        self.total += 1
        self.sum += seconds
        i = bisect.bisect_left(self.BUCKETS, seconds)
        if i < len(self.BUCKETS):
            self.bucket_counts[i] += 1
        if len(self.samples) >= self.size:
            self.samples.pop(0)
        self.samples.append(seconds)

    def cumulative_buckets(self):
        """[(upper bound in seconds, acks at or below it), ..., (inf, every ack)]."""
        out, running = [], 0
        for bound, count in zip(self.BUCKETS, self.bucket_counts):
            running += count
            out.append((bound, running))
        out.append((math.inf, self.total))
        return out

    def summary_ms(self):
        if not self.samples:
            return {"p50": None, "p99": None}
        s = sorted(self.samples)
        pick = lambda q: round(s[min(len(s) - 1, math.ceil(q * len(s)) - 1)] * 1000, 3)  # noqa: E731
        return {"p50": pick(0.50), "p99": pick(0.99)}


class ConnectionManager:
    def __init__(self, servers, transport, buffer, hello, backoff=None, probe_interval=5.0,
                 pause_timeout=None, heartbeat_interval=60.0):
        if not servers:
            raise ValueError("at least one server is needed")
        self.servers = list(servers)
        self.transport = transport
        self.buffer = buffer
        self.hello = hello                    # () -> bytes of the Hello request
        self.backoff = backoff or Backoff()
        self.probe_interval = probe_interval
        self.pause_timeout = pause_timeout    # seconds a PAUSE may last before we fail over; None: forever
        self.heartbeat_interval = heartbeat_interval    # seconds without a send; None or 0: never
        self._sent_at = 0.0                   # trio time of the latest message on the stream
        self.stats = DeliveryStats()
        self.on_configure = None              # (max_batch_size, flush_interval_s) -> None
        self.on_idle = None                   # () -> None: the last outstanding batch was acked
        self._wake = trio.Event()
        self._window_full = False             # the send loop waits for an ack to make room
        self._stream = None
        self._closing = False
        self._paused_at = None
        self._stream_failed = False           # the last stream ended on a bad reply or a held PAUSE

    # -- the pump's sink ---------------------------------------------------------------------
    def idle(self):
        """Nothing unacked: a new batch may go out at once (low latency at low load)."""
        return self.buffer.outstanding == 0

    async def submit(self, batch_id, data, events, priority=False):
        self.buffer.add(batch_id, data, events, priority)
        self._wake.set()

    def congested(self):
        """The send buffer is three quarters full: the pump stops reading the kernel."""
        return self.buffer.bytes * 4 >= self.buffer.max_bytes * 3

    def take_buffer_drops(self):
        return self.buffer.take_dropped_since_batch()

    def ledger(self, open_events=True):
        """This run's events by fate: the sink's part of the collector's ledger (without
        open_events, undelivered is left out: counting it walks the buffer)."""
        b = self.buffer
        return {"delivered": b.delivered_events, "dropped_buffer": b.dropped_events,
                "undelivered": b.undelivered_events() if open_events else 0}

    # -- the state machine -------------------------------------------------------------------
    def _enter(self, state, server=None):
        if state != self.stats.state or server != self.stats.server:
            where = f" {server}" if server else ""
            log.info("Connection state: %s%s", state, where)
        self.stats.state = state
        self.stats.server = server

    async def run(self):
        """Forever (until cancelled): keep a stream to the first reachable server."""
        index = 0
        while True:
            server = self.servers[index]
            self._enter(CONNECTING, server)
            try:
                stream = await self.transport.open(server, self.hello())
            except (ConnectError, StreamEnded) as e:
                log.warning("Failed to connect to %s: %s", server, e)
                index = (index + 1) % len(self.servers)
                if index == 0:
                    # every server failed once: wait before the next round
                    wait = self.backoff.next()
                    self._enter(BACKING_OFF)
                    await trio.sleep(wait)
                continue
            if not self._stream_failed:
                self.backoff.reset()        # (a server that fails each stream keeps us backing off)
            try:
                index = await self._stream_until_it_ends(stream, server, index)
            finally:
                stream.close()
                self._stream = None
                self.stats.connected = False
                self.stats.paused = False
                self.buffer.forget_sends()
            self.stats.reconnects += 1
            if self._stream_failed:
                wait = self.backoff.next()
                self._enter(BACKING_OFF)
                await trio.sleep(wait)

    async def _stream_until_it_ends(self, stream, server, index):
        """Returns the index of the server to connect to next."""
        self._stream = stream
        self.stats.connected = True
        self._enter(STREAMING, server)
        log.info("Connected to Tapio server at %s", server)
        self._wake.set()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stream.read_responses)
            nursery.start_soon(self._send_loop, stream)
            self._sent_at = trio.current_time()          # the hello
            if self.heartbeat_interval:
                nursery.start_soon(self._heartbeat_loop, stream)
            if index > 0:
                nursery.start_soon(self._probe_first_server, nursery.cancel_scope)
            self._stream_failed = False
            try:
                while True:
                    raw = await self._receive_unless_paused_too_long(stream)
                    if raw is None:
                        log.warning("Server %s paused us for longer than %gs: failing over",
                                    server, self.pause_timeout)
                        self.stats.pause_timeouts += 1
                        break
                    self._on_response(read_reply(raw))
                    self._stream_failed = False
            except StreamEnded as e:
                log.warning("Stream receive error: %s", e)
                nursery.cancel_scope.cancel()
                return index
            except BadReply as e:
                log.warning("Undecodable reply from %s: %s; ending the stream", server, e)
                self.stats.bad_replies += 1
            # a broken or stuck server: the next one (after a backoff)
            self._stream_failed = True
            nursery.cancel_scope.cancel()
            return (index + 1) % len(self.servers)
        # the probe found the first server back: leave this one for it
        log.info("First server %s is back: switching to it", self.servers[0])
        return 0

    async def _send_loop(self, stream):
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            if self.stats.paused:
                continue
            self._window_full = False
            for pending in self.buffer.unsent():
                if not self.buffer.can_send(pending):
                    self._window_full = True        # an ack wakes us again
                    break
                stream.send(pending.data)
                self._sent_at = trio.current_time()
                self.buffer.sent(pending, time.monotonic())
                self.stats.batches_sent += 1
                self.stats.bytes_sent += len(pending.data)
                self.stats.last_sent = time.time()

    async def _heartbeat_loop(self, stream):
        """A HEARTBEAT whenever the stream has carried nothing for heartbeat_interval."""
        while True:
            await trio.sleep_until(self._sent_at + self.heartbeat_interval)
            if trio.current_time() >= self._sent_at + self.heartbeat_interval:
                stream.send(HEARTBEAT)
                self._sent_at = trio.current_time()
                self.stats.heartbeats += 1

    async def _receive_unless_paused_too_long(self, stream):
        """The next reply; None when a PAUSE has lasted pause_timeout (replies do not extend it)."""
        if not self.stats.paused or self.pause_timeout is None:
            return await stream.receive()
        left = self._paused_at + self.pause_timeout - trio.current_time()
        with trio.move_on_after(max(left, 0)):
            return await stream.receive()
        return None

    async def _probe_first_server(self, scope):
        while True:
            await trio.sleep(self.probe_interval)
            if await self.transport.probe(self.servers[0]):
                scope.cancel()
                return

    def _on_response(self, response):
        kind = response.WhichOneof("response")
        if kind == "ack":
            self._on_ack(response.ack)
        elif kind == "control":
            self._on_control(response.control)
        elif kind == "error":
            log.warning("Server error %d: %s", response.error.code, response.error.message)

    def _on_ack(self, ack):
        pending = self.buffer.ack(ack.batch_id)
        self.stats.last_ack = time.time()
        if self._window_full:
            self._wake.set()        # the window has room again (a wakeup per ack costs CPU)
        if self.buffer.outstanding == 0 and self.on_idle is not None:
            self.on_idle()          # adaptive batching: what waits may go at once
        if pending is None:
            return          # dropped by the overflow policy meanwhile, or acked before
        self.stats.batches_acked += 1
        if ack.status == _Ack.STATUS_DUPLICATE:
            self.stats.duplicates_acked += 1
        else:
            self.stats.events_sent += pending.events
        if pending.sent_at is not None:
            self.stats.send_latency.add(time.monotonic() - pending.sent_at)

    def _on_control(self, control):
        action = control.action
        if action == _Control.ACTION_PAUSE:
            if not self.stats.paused:
                log.info("Server asked to pause sending: %s", control.reason or "no reason given")
                self._paused_at = trio.current_time()
            self.stats.paused = True
        elif action == _Control.ACTION_RESUME:
            if self.stats.paused:
                log.info("Server asked to resume sending")
            self.stats.paused = False
            self._wake.set()
        elif action == _Control.ACTION_CONFIGURE:
            if self.on_configure is not None:
                interval = control.flush_interval_ms / 1000 if control.flush_interval_ms else None
                self.on_configure(control.max_batch_size or None, interval)

    def close(self):
        if self.buffer.spool is not None:
            self.buffer.spool.close()

    async def wait_acked(self, timeout):
        """On shutdown: wait (bounded) until every batch is acked; True when all were."""
        with trio.move_on_after(timeout):
            while self.buffer.outstanding:
                await trio.sleep(0.01)
        return self.buffer.outstanding == 0
