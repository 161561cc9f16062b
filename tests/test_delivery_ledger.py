"""The send buffer's part of the ledger: whatever happens to its batches (acks, duplicate acks,
overflow of unsent and of on-the-wire batches, streams that end, batches restored from a spool),
every event added is delivered, dropped or undelivered, exactly once; restored events are
counted apart."""
import random

import pytest

from tapio.collector.delivery import DeliveryBuffer


def check(buffer):
    assert buffer.added_events == (buffer.delivered_events + buffer.dropped_events
                                   + buffer.undelivered_events())
    restored_open = sum(p.events for p in buffer.items() if p.restored)
    assert buffer.restored_events >= buffer.restored_delivered + buffer.restored_dropped + restored_open


@pytest.mark.parametrize("seed", range(20))
@pytest.mark.parametrize("overflow", ["drop-oldest", "drop-newest"])
def test_every_event_is_in_exactly_one_count(seed, overflow):
    rng = random.Random(seed)
    buffer = DeliveryBuffer(max_bytes=4000, overflow=overflow, window=1500, max_unconfirmed=5)
    buffer.restore([(i, b"r" * 100, 7) for i in range(1, 4)])
    next_id, sent_ids = 10, []
    for _ in range(2000):
        op = rng.random()
        if op < 0.45:
            buffer.add(next_id, b"x" * rng.randrange(1, 900), rng.randrange(0, 50),
                       priority=rng.random() < 0.1)
            next_id += 1
        elif op < 0.7:
            for pending in buffer.unsent():
                if not buffer.can_send(pending):
                    break
                buffer.sent(pending, 0.0)
                sent_ids.append(pending.batch_id)
        elif op < 0.9 and sent_ids:
            # acks, in order or not, some for batches acked or let go before
            buffer.ack(sent_ids.pop(rng.randrange(len(sent_ids))))
        elif op < 0.95:
            buffer.forget_sends()
            sent_ids.clear()
        else:
            buffer.ack(rng.randrange(1, next_id))
        check(buffer)
    assert buffer.delivered_events and buffer.dropped_events


def test_an_ack_for_a_batch_let_go_on_the_wire_delivers_it_once():
    buffer = DeliveryBuffer(max_bytes=1000, window=1000)
    buffer.add(1, b"a" * 600, 10)
    buffer.sent(buffer.unsent()[0], 0.0)
    buffer.add(2, b"b" * 600, 20)                  # 1 is let go while on the wire
    assert buffer.undelivered_events() == 30 and buffer.dropped_events == 0
    buffer.ack(1)
    buffer.ack(1)                                  # a duplicate ack changes nothing
    assert (buffer.delivered_events, buffer.dropped_events, buffer.undelivered_events()) == (10, 0, 20)
