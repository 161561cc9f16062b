"""The collector's connection state machine on trio's fake clock: backoff, failover, acks,
resend after reconnect, pause/resume. The transport here is an in-memory stand-in, because real
gRPC cannot run on a fake clock; tests/test_delivery_e2e.py runs the real one."""
import random

import pytest
import trio
import trio.testing

from tapio.collector.backoff import Backoff
from tapio.collector.connection import BACKING_OFF, HEARTBEAT, STREAMING, ConnectionManager
from tapio.collector.delivery import DeliveryBuffer
from tapio.collector.grpc_transport import ConnectError, StreamEnded
from tapio.v1 import stream_pb2

Ack = stream_pb2.EventAck
Control = stream_pb2.StreamControl


def ack(batch_id, status=Ack.STATUS_OK):
    return stream_pb2.TapioStreamEventsResponse(ack=Ack(batch_id=batch_id, status=status)).SerializeToString()


def control(action):
    return stream_pb2.TapioStreamEventsResponse(control=Control(action=action)).SerializeToString()


class FakeStream:
    def __init__(self, server):
        self.server = server
        self.sent = []
        self.inbox_in, self.inbox_out = trio.open_memory_channel(100)
        self.closed = False

    def send(self, data):
        self.sent.append(data)

    async def read_responses(self):
        await trio.sleep_forever()

    async def receive(self):
        item = await self.inbox_out.receive()
        if isinstance(item, Exception):
            raise item
        return item

    def respond(self, raw):
        self.inbox_in.send_nowait(raw)

    def end(self, why="server went away"):
        self.inbox_in.send_nowait(StreamEnded(why))

    def close(self):
        self.closed = True


class FakeTransport:
    """Servers are up or down; every open() is recorded with the fake clock's time."""

    def __init__(self, up=()):
        self.up = set(up)
        self.attempts = []
        self.streams = []

    async def open(self, server, hello):
        self.attempts.append((trio.current_time(), server))
        await trio.sleep(0)
        if server not in self.up:
            raise ConnectError(f"{server} is down")
        stream = FakeStream(server)
        stream.sent.append(hello)
        self.streams.append(stream)
        return stream

    async def probe(self, server):
        return server in self.up


def manager(transport, servers=("a:1",), max_bytes=1 << 20, seed=1, **kw):
    backoff = Backoff(0.25, 30.0, 2.0, rng=random.Random(seed))
    return ConnectionManager(list(servers), transport, DeliveryBuffer(max_bytes), lambda: b"hello",
                             backoff=backoff, **kw)


async def settle():
    await trio.testing.wait_all_tasks_blocked()


def test_backoff_ceilings_grow_to_the_maximum_and_waits_stay_under_them():
    b = Backoff(0.25, 30.0, 2.0, rng=random.Random(7))
    ceilings, waits = [], []
    for _ in range(12):
        ceilings.append(b.ceiling())
        waits.append(b.next())
    assert ceilings == [0.25, 0.5, 1, 2, 4, 8, 16, 30, 30, 30, 30, 30]
    assert all(0 <= w <= c for w, c in zip(waits, ceilings))
    assert len(set(waits)) == len(waits)     # jittered, not a fixed schedule
    b.reset()
    assert b.ceiling() == 0.25


@pytest.mark.parametrize("bad", [(0, 1, 2), (2, 1, 2), (1, 2, 0.5)])
def test_backoff_refuses_nonsense(bad):
    with pytest.raises(ValueError):
        Backoff(*bad)


async def test_reconnect_waits_follow_the_backoff_bounds(autojump_clock):
    transport = FakeTransport()
    m = manager(transport)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(m.run)
        await trio.sleep(100)
        nursery.cancel_scope.cancel()
    times = [t for t, _ in transport.attempts]
    gaps = [b - a for a, b in zip(times, times[1:])]
    ceilings = [0.25, 0.5, 1, 2, 4, 8, 16, 30, 30, 30]
    for gap, ceiling in zip(gaps, ceilings):
        assert 0 <= gap <= ceiling + 1e-9
    assert m.stats.state == BACKING_OFF and not m.stats.connected


async def test_fails_over_in_order_without_waiting_then_backs_off(autojump_clock):
    transport = FakeTransport(up=())
    m = manager(transport, servers=("a:1", "b:1", "c:1"))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(m.run)
        await trio.sleep(0.2)
        nursery.cancel_scope.cancel()
    servers = [s for _, s in transport.attempts]
    assert servers[:3] == ["a:1", "b:1", "c:1"]
    assert transport.attempts[2][0] == transport.attempts[0][0]     # no wait inside a round


async def test_failover_to_the_second_and_back_to_the_first(autojump_clock):
    transport = FakeTransport(up={"b:1"})
    m = manager(transport, servers=("a:1", "b:1"), probe_interval=5.0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(m.run)
        await trio.sleep(1)
        assert m.stats.state == STREAMING and m.stats.server == "b:1"
        transport.up.add("a:1")
        await trio.sleep(6)
        assert m.stats.state == STREAMING and m.stats.server == "a:1"
        assert transport.streams[0].closed
        nursery.cancel_scope.cancel()


async def test_acks_empty_the_buffer_and_count_events(autojump_clock):
    transport = FakeTransport(up={"a:1"})
    m = manager(transport)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(m.run)
        await settle()
        await m.submit(1, b"one", 10)
        await m.submit(2, b"two", 5)
        await settle()
        stream = transport.streams[0]
        assert stream.sent == [b"hello", b"one", b"two"]
        assert not m.idle()
        stream.respond(ack(1))
        stream.respond(ack(2, Ack.STATUS_DUPLICATE))
        await settle()
        assert m.idle()
        assert m.stats.batches_acked == 2
        assert m.stats.events_sent == 10          # the duplicate was counted by the server before
        nursery.cancel_scope.cancel()


async def test_unacked_batches_are_resent_in_order_after_a_reconnect(autojump_clock):
    transport = FakeTransport(up={"a:1"})
    m = manager(transport)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(m.run)
        await settle()
        for i in range(1, 5):
            await m.submit(i, f"batch-{i}".encode(), 1)
        await settle()
        first = transport.streams[0]
        first.respond(ack(1))
        first.respond(ack(3))
        first.end()
        await trio.sleep(1)
        second = transport.streams[1]
        assert second.sent == [b"hello", b"batch-2", b"batch-4"]
        assert m.stats.reconnects == 1
        nursery.cancel_scope.cancel()


async def test_pause_holds_batches_and_resume_sends_them(autojump_clock):
    transport = FakeTransport(up={"a:1"})
    m = manager(transport)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(m.run)
        await settle()
        stream = transport.streams[0]
        stream.respond(control(Control.ACTION_PAUSE))
        await settle()
        await m.submit(1, b"held", 1)
        await trio.sleep(10)
        assert stream.sent == [b"hello"] and m.stats.paused
        stream.respond(control(Control.ACTION_RESUME))
        await settle()
        assert stream.sent == [b"hello", b"held"] and not m.stats.paused
        nursery.cancel_scope.cancel()


async def test_configure_reaches_the_pump(autojump_clock):
    transport = FakeTransport(up={"a:1"})
    m = manager(transport)
    seen = []
    m.on_configure = lambda size, interval: seen.append((size, interval))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(m.run)
        await settle()
        transport.streams[0].respond(stream_pb2.TapioStreamEventsResponse(control=Control(
            action=Control.ACTION_CONFIGURE, max_batch_size=64, flush_interval_ms=250)).SerializeToString())
        await settle()
        nursery.cancel_scope.cancel()
    assert seen == [(64, 0.25)]


def test_buffer_drop_oldest_keeps_the_newest_within_the_bound():
    buf = DeliveryBuffer(max_bytes=10)
    for i in range(1, 6):
        buf.add(i, b"xxxx", 3)
    assert [p.batch_id for p in buf.items()] == [4, 5]
    assert buf.bytes == 8 and buf.dropped_events == 9 and buf.dropped_batches == 3
    assert buf.take_dropped_since_batch() == 9 and buf.take_dropped_since_batch() == 0


def test_buffer_drop_newest_keeps_the_oldest():
    buf = DeliveryBuffer(max_bytes=10, overflow="drop-newest")
    for i in range(1, 6):
        buf.add(i, b"xxxx", 3)
    assert [p.batch_id for p in buf.items()] == [1, 2]
    assert buf.dropped_events == 9


def test_a_batch_bigger_than_the_whole_buffer_is_dropped_and_counted():
    buf = DeliveryBuffer(max_bytes=3)
    assert buf.add(1, b"xxxx", 7) is None
    assert buf.dropped_events == 7 and len(buf) == 0


def test_a_batch_let_go_on_the_wire_counts_as_delivered_when_its_ack_comes():
    buf = DeliveryBuffer(max_bytes=8)
    buf.sent(buf.add(1, b"xxxx", 5), 1.0)   # on the wire
    buf.sent(buf.add(2, b"xxxx", 5), 1.0)
    buf.add(3, b"xxxx", 5)                   # only batches on the wire can make room
    assert [p.batch_id for p in buf.items()] == [2, 3]
    assert buf.dropped_events == 0 and buf.outstanding == 3
    assert buf.ack(1).events == 5            # its ack came after all
    assert buf.dropped_events == 0 and buf.outstanding == 2


async def test_the_send_window_holds_batches_back_until_acks_come(autojump_clock):
    transport = FakeTransport(up={"a:1"})
    m = ConnectionManager(["a:1"], transport, DeliveryBuffer(max_bytes=100, window=8), lambda: b"hello")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(m.run)
        await settle()
        for i in range(1, 5):
            await m.submit(i, b"1234", 1)
        await settle()
        stream = transport.streams[0]
        assert stream.sent == [b"hello", b"1234", b"1234"]     # two fit the window
        stream.respond(ack(1))
        await settle()
        assert len(stream.sent) == 4
        nursery.cancel_scope.cancel()


def test_a_batch_let_go_on_the_wire_is_lost_when_the_stream_ends_first():
    buf = DeliveryBuffer(max_bytes=8)
    buf.sent(buf.add(1, b"xxxx", 5), 1.0)
    buf.sent(buf.add(2, b"xxxx", 5), 1.0)
    buf.add(3, b"xxxx", 5)                   # lets batch 1 go while it is on the wire
    assert buf.dropped_events == 0
    buf.forget_sends()
    assert buf.dropped_events == 5 and buf.take_dropped_since_batch() == 5
    assert buf.ack(1) is None


def test_priority_batches_are_sent_first_and_dropped_last():
    buf = DeliveryBuffer(max_bytes=12)
    buf.add(1, b"xxxx", 1)
    buf.add(2, b"pppp", 1, priority=True)
    buf.add(3, b"xxxx", 1)
    assert [p.batch_id for p in buf.unsent()] == [2, 1, 3]
    buf.add(4, b"pppp", 1, priority=True)    # full: the oldest routine batch goes
    buf.add(5, b"pppp", 1, priority=True)    # and the next one
    assert [p.batch_id for p in buf.items()] == [2, 4, 5]
    buf.add(6, b"xxxx", 1)                   # a routine batch does not push out priority ones
    assert [p.batch_id for p in buf.items()] == [2, 4, 5]
    assert buf.dropped_events == 3


async def test_a_quiet_stream_sends_heartbeats_and_a_busy_one_none(autojump_clock):
    """The server ends streams silent for its --stream-idle-timeout: with nothing to send, a
    HEARTBEAT goes out every heartbeat_interval; batches in between put it off."""
    transport = FakeTransport(up={"a:1"})
    m = manager(transport, heartbeat_interval=60.0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(m.run)
        await trio.sleep(1)
        (stream,) = transport.streams
        await trio.sleep(180)                           # quiet: 3 heartbeats, at 60, 120, 180
        assert stream.sent == [b"hello"] + [HEARTBEAT] * 3 and m.stats.heartbeats == 3
        for i in range(6):                              # a batch every 30 s: no heartbeat
            await m.submit(i + 1, b"batch", 1)
            await settle()
            stream.respond(ack(i + 1))
            await trio.sleep(30)
        assert stream.sent[4:] == [b"batch"] * 6 and m.stats.heartbeats == 3
        assert len(transport.streams) == 1
        nursery.cancel_scope.cancel()


async def test_no_heartbeats_when_switched_off(autojump_clock):
    transport = FakeTransport(up={"a:1"})
    m = manager(transport, heartbeat_interval=0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(m.run)
        await trio.sleep(600)
        assert transport.streams[0].sent == [b"hello"] and m.stats.heartbeats == 0
        nursery.cancel_scope.cancel()
