"""The on-disk spool: what is appended and not acked comes back after a restart; damage is cut
off and counted, never fatal."""
import os

from tapio.collector.delivery import DeliveryBuffer
from tapio.collector.spool import HEADER, Spool


def fresh(tmp_path, **kw):
    spool = Spool(str(tmp_path / "spool"), **kw)
    assert spool.recover() == []
    return spool


def reopen(tmp_path):
    """What a restarted collector finds: (batch ids, the spool's counters)."""
    with Spool(str(tmp_path / "spool")) as spool:
        return spool.recover(), spool


def test_unacked_batches_come_back_in_order(tmp_path):
    spool = fresh(tmp_path)
    for i in range(1, 6):
        spool.append(i, f"batch-{i}".encode(), i * 10)
    spool.ack(2)
    spool.ack(4)
    spool.close()
    pending, again = reopen(tmp_path)
    assert pending == [(1, b"batch-1", 10), (3, b"batch-3", 30), (5, b"batch-5", 50)]
    assert again.corrupt_records == again.torn_tails == 0


def test_acks_survive_a_second_restart(tmp_path):
    spool = fresh(tmp_path)
    for i in range(1, 4):
        spool.append(i, b"x", 1)
    spool.ack(1)
    spool.close()
    assert [b for b, _, _ in reopen(tmp_path)[0]] == [2, 3]
    assert [b for b, _, _ in reopen(tmp_path)[0]] == [2, 3]


def test_fully_acked_segments_are_deleted(tmp_path):
    spool = fresh(tmp_path, segment_bytes=100)
    for i in range(1, 21):
        spool.append(i, b"y" * 60, 1)
    segments = lambda: sorted(n for n in os.listdir(tmp_path / "spool") if n.endswith(".seg"))  # noqa: E731
    assert len(segments()) == 10                     # two 88-byte records per segment
    for i in range(1, 20):
        spool.ack(i)
    assert len(segments()) == 1
    spool.close()
    assert [b for b, _, _ in reopen(tmp_path)[0]] == [20]


def test_a_flipped_byte_and_a_torn_tail_are_skipped_and_counted(tmp_path):
    spool = fresh(tmp_path)
    for i in range(1, 5):
        spool.append(i, f"payload-{i}".encode() * 4, 1)
    spool.close()
    (segment,) = [tmp_path / "spool" / n for n in os.listdir(tmp_path / "spool") if n.endswith(".seg")]
    data = bytearray(segment.read_bytes())
    record = HEADER.size + len(b"payload-1" * 4)
    data[record + HEADER.size + 3] ^= 0xFF           # a byte inside batch 2's payload
    segment.write_bytes(bytes(data[:-5]))            # and batch 4 is cut short
    with Spool(str(tmp_path / "spool")) as again:
        assert [b for b, _, _ in again.recover()] == [1, 3]
        assert again.corrupt_records == 1 and again.torn_tails == 1
        again.append(5, b"after", 1)                 # and it goes on working
    assert [b for b, _, _ in reopen(tmp_path)[0]] == [1, 3, 5]


def test_the_size_bound_removes_the_oldest_segment_and_counts_it(tmp_path):
    spool = fresh(tmp_path, max_bytes=500, segment_bytes=100)
    for i in range(1, 21):
        spool.append(i, b"z" * 60, 2)
    assert spool.bytes() <= 500 + 100
    assert spool.unpersisted_events > 0
    spool.close()


def test_delivery_buffer_mirrors_into_the_spool(tmp_path):
    spool = fresh(tmp_path)
    buf = DeliveryBuffer(max_bytes=30, spool=spool)
    for i in range(1, 6):
        buf.add(i, b"0123456789", 1)                 # 3 fit: 1 and 2 are dropped
    buf.ack(3)
    spool.close()
    assert [b for b, _, _ in reopen(tmp_path)[0]] == [4, 5]


def test_restore_refills_the_buffer_without_writing_twice(tmp_path):
    spool = fresh(tmp_path)
    for i in range(1, 4):
        spool.append(i, b"abc", 1)
    spool.close()
    spool = Spool(str(tmp_path / "spool"))
    buf = DeliveryBuffer(max_bytes=1 << 20, spool=spool)
    buf.restore(spool.recover())
    assert [p.batch_id for p in buf.unsent()] == [1, 2, 3]
    size = spool.bytes()
    buf.ack(1)
    assert spool.bytes() == size
    spool.close()
    assert [b for b, _, _ in reopen(tmp_path)[0]] == [2, 3]
