"""The ingest engine follows each collector's sequence: a range that never arrived and a batch
reporting kernel drops reach the gap listeners (the correlation engine's mark_gap) with the
time between the events around them, before the batch that reveals them is consumed; sent
again, a batch reveals nothing twice. Real codec, real ingest thread; no gRPC."""
from tapio._fast import synthetic
from tapio._fast.arena import EventArena
from tapio._fast.codec import BatchEncoder, DecodedBatch
from tapio.server.ingest import Ingest, StreamSession



def batches(ranges, kernel_drops=()):
    """One DecodedBatch per (first, last) range of synthetic events: events first..last."""
    encoder = BatchEncoder("c1", "n1", 1_000_000_000)
    out = []
    for batch_id, (first, last) in enumerate(ranges, start=1):
        arena = EventArena(last - first + 1)
        synthetic.fill(arena, first, last - first + 1)
        seen = last
        data = encoder.encode(arena, batch_id, first, kernel_drops=dict(kernel_drops).get(batch_id, 0),
                              ledger=(seen, 0, 0, 0, 0, 0, 0), path=1)
        out.append(DecodedBatch.parse(data))
    return out


def feed(decoded):
    ingest = Ingest()
    calls, order = [], []
    ingest.gap_listeners.append(lambda *args: (calls.append(args), order.append("gap")))
    ingest.consumers.append(lambda batch, state: order.append(batch.batch_id))
    session = StreamSession("test")
    ingest.hello(session, "c1", "n1", "1")
    for batch in decoded:
        ingest.submit(session, batch)
    assert ingest.wait_idle(10)
    ingest.close()
    return ingest, calls, order


def times(batch):
    return batch.event_dict(0)["timestamp_ns"], batch.event_dict(len(batch) - 1)["timestamp_ns"]


def test_a_missing_range_reaches_the_listeners_before_the_batch_that_reveals_it():
    decoded = batches([(1, 100), (101, 200), (301, 400)])
    ingest, calls, order = feed(decoded)
    (gap,) = calls
    collector_id, start_ns, end_ns, reason = gap
    assert (collector_id, reason) == ("c1", "sequence gap 201-300 (100 events)")
    assert start_ns == max(times(decoded[1])) and end_ns == min(times(decoded[2]))
    assert order == [1, 2, "gap", 3]
    state = ingest.collectors["c1"]
    assert state.ledger_json()["missing_events"] == 100 and state.ledger_json()["gaps"] == 1
    assert state.ledger_json()["reported"]["seen"] == 400


def test_kernel_drops_are_a_gap_of_their_own_and_a_resent_batch_reveals_nothing():
    decoded = batches([(1, 50), (51, 90)], kernel_drops={2: 7})
    ingest, calls, order = feed(decoded + [decoded[1]])     # the last one is sent again
    assert [c[3] for c in calls] == ["kernel drops: 7"]
    assert ingest.collectors["c1"].duplicates == 1
    assert ingest.collectors["c1"].ledger_json()["kernel_drop_batches"] == 1
