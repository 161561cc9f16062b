"""Memory bounded in bytes (issue row 4). In the correlation engine: every collector's recent
batches share one byte budget ([limits] recent_memory); events are not all one size (200 execs
with 16 KiB command lines make a 3 MiB batch), and a bound by event count alone kept 312 MiB of
them where the store kept 8. And in a real tapio-server process: while collector ids come and go,
its resident memory follows the bounds, not what went through; and an id costs what it sent, not
the caps of its correlation tables."""
import time

import grpc
import pytest

from tapio.flags import ConfigError
from tapio.server.correlation import CorrelationEngine
from tapio.server.correlation.config import CorrelationConfig, from_dict
from tapio.v1 import stream_pb2
from tests.correlation_fixtures import Events, State
from tests.helpers import ServerProcess

MiB = 1 << 20


def engine(recent_memory, recent_events=50000):
    config = CorrelationConfig()
    config.limits.recent_memory = recent_memory
    config.limits.recent_events = recent_events
    return CorrelationEngine(config, timer=False)


def fat_batch(ev, n=200, size=16000):
    """n execs whose command lines (read from /proc) are `size` bytes: as long as a collector sends."""
    events = [ev.exec(1000 + i, 1, "sh") for i in range(n)]
    for event in events:
        event.process.command_line = "x" * size
    return ev.batch(*events)


def kept(e):
    """{collector id: [batch ordinals kept]} and the bytes they take, from the batches themselves."""
    out, nbytes = {}, 0
    for cid, c in e._collectors.items():
        out[cid] = list(c.recent._batches)
        nbytes += sum(b.nbytes for b in c.recent._batches.values())
    return out, nbytes


def test_recent_batches_of_all_collectors_stay_within_the_byte_budget_oldest_first():
    e = engine(16 * MiB)
    streams = [Events(collector=f"node-{i}", node=f"node-{i}") for i in range(5)]
    fed = 0
    for round_ in range(12):
        for ev in streams:
            batch = fat_batch(ev)
            fed += batch.nbytes
            e.consume(batch, State(ev.collector, ev.node))
            _, nbytes = kept(e)
            assert nbytes == e.recent_budget.nbytes <= 16 * MiB
    assert fed > 10 * 16 * MiB
    # the newest batches are the ones kept, over all collectors: the last one sent by each is there
    by_collector, nbytes = kept(e)
    assert all(by_collector[f"node-{i}"] for i in range(5))
    assert nbytes > 16 * MiB - 2 * max(b.nbytes for c in e._collectors.values()
                                       for b in c.recent._batches.values())
    assert e.stats()["recent_bytes"] == nbytes and e.stats()["recent_max_bytes"] == 16 * MiB
    e.close(flush=False)


def test_the_budget_stays_exact_when_batches_go_by_count_or_with_their_collector():
    e = engine(64 * MiB, recent_events=50)
    ev, other = Events(), Events(collector="node-b", node="node-b")
    for _ in range(2000):                                 # small batches, evicted by count
        e.consume(ev.batch(ev.exec(7, 1, "sh"), ev.exit(7, 1, "sh")), State())
        e.consume(other.batch(other.exec(8, 1, "sh")), State("node-b", "node-b"))
        assert kept(e)[1] == e.recent_budget.nbytes
    assert len(e._collectors["node-a"].recent) == 50
    # the order of batches the budget keeps does not grow with what went by count
    assert len(e.recent_budget._order) < 4 * (50 + 50)
    e.forget(["node-a"])
    assert kept(e)[1] == e.recent_budget.nbytes > 0
    e.forget(["node-b"])
    assert e.recent_budget.nbytes == 0
    e.close(flush=False)


def test_a_batch_larger_than_the_budget_is_not_kept():
    e = engine(1 * MiB)
    ev = Events()
    e.consume(fat_batch(ev), State())
    assert kept(e) == ({"node-a": []}, 0) and e.recent_budget.nbytes == 0
    e.close(flush=False)


def test_recent_memory_in_the_config_file():
    assert from_dict({"limits": {"recent_memory": "64MiB"}}).limits.recent_memory == 64 * MiB
    assert from_dict({"limits": {"recent_memory": 4096}}).limits.recent_memory == 4096
    assert CorrelationConfig().limits.recent_memory == 128 * MiB
    for bad in ("lots", 0, -1, True, 1.5):
        with pytest.raises(ConfigError, match="recent_memory"):
            from_dict({"limits": {"recent_memory": bad}})


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def rss_mib(pid):
    return rss_kib(pid) >> 10


def stream_one_batch(channel, cid, batch_id, events):
    """One stream: hello as `cid`, one batch of `events`, all acked. Returns the batch's size."""
    messages = [stream_pb2.TapioStreamEventsRequest(hello=stream_pb2.Hello(
                    collector_id=cid, node_name="n")).SerializeToString(),
                stream_pb2.TapioStreamEventsRequest(batch=stream_pb2.EventBatch(
                    batch_id=batch_id, collector_id=cid, node_name="n",
                    events=events)).SerializeToString()]
    replies = list(channel.stream_stream("/tapio.v1.TapioService/StreamEvents")(iter(messages), timeout=30))
    ack = stream_pb2.TapioStreamEventsResponse.FromString(replies[-1]).ack
    assert ack.status == stream_pb2.EventAck.STATUS_OK and ack.events_accepted == len(events)
    return len(messages[1])


def test_a_server_stays_bounded_in_memory_while_collector_ids_come_and_go(tmp_path):
    """Issue row 4 against a real tapio-server process: 100 collector ids, each one stream with
    one 3 MiB batch (200 execs of 16 KiB command lines), with --max-collectors 10 and 16 MiB for
    the store's and the engine's recent events. 300 MiB go in; the server's resident memory
    grows by the bounds and the tables of the 10 collectors kept, not by what went through (it
    grew by about 1 GiB when the correlation tables were allocated at their caps and the
    allocator's mmap threshold was not pinned: freed tables came back zeroed page by page, and
    were never given back)."""
    config = tmp_path / "correlation.toml"
    config.write_text('[limits]\nrecent_memory = "16MiB"\n')
    server = ServerProcess(tmp_path, flags=["--recent-events-memory", "16MiB", "--max-collectors", "10",
                                            "--correlation-config", str(config)]).wait_listening()
    channel = grpc.insecure_channel(server.address)
    try:
        before = rss_mib(server.proc.pid)
        start = time.time_ns() // 1000
        sent = 0
        for k in range(100):
            cid = f"churn-{k}"
            ev = Events(collector=cid, node="n")
            events = [ev.exec(1000 + i, 1, "sh") for i in range(200)]
            for event in events:
                event.process.command_line = "x" * 16000
            sent += stream_one_batch(channel, cid, start + k, events)
        grown = rss_mib(server.proc.pid) - before
        assert sent > 300 * MiB
        assert grown < 200, f"resident memory grew by {grown} MiB for {sent >> 20} MiB sent"
    finally:
        channel.close()
        server.stop()


def test_each_collector_id_that_sent_one_batch_costs_little_resident_memory(tmp_path):
    """A tracked collector id is worth what it sent, not the caps of its tables: 40 ids, each one
    stream with one batch (200 execs, their exits, 3 failed connects), grow a real server's
    resident memory by less than 512 KiB each (about 200 KiB: their recent events and a few
    pages of correlation tables). Each cost 1.2 MiB when its process and destination tables were
    allocated at their caps up front (65,536 and 16,384 slots): the pid map alone, spread over
    1.5 MiB, took a page for nearly every pid."""
    server = ServerProcess(tmp_path).wait_listening()
    channel = grpc.insecure_channel(server.address)

    def one_batch(cid, batch_id):
        ev = Events(collector=cid, node="n")
        events = [ev.exec(1000 + i, 1, "sh") for i in range(200)]
        events += [ev.exit(1000 + i, 1, "sh") for i in range(200)]
        events += [ev.connect(1000, "curl", "10.0.0.1", 80) for _ in range(3)]
        stream_one_batch(channel, cid, batch_id, events)

    try:
        start = time.time_ns() // 1000
        for k in range(5):                     # what the first streams allocate once
            one_batch(f"warm-{k}", start + k)
        before = rss_kib(server.proc.pid)
        for k in range(40):
            one_batch(f"node-{k}", start + 100 + k)
        per_id_kib = (rss_kib(server.proc.pid) - before) / 40
        assert per_id_kib < 512, f"{per_id_kib:.0f} KiB resident per collector id"
    finally:
        channel.close()
        server.stop()
