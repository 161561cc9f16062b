"""A server's view of one collector's event sequence: ranges in order, a skipped range is a gap
(with the time between the events around it), kernel drops are gaps of their own kind, a
restart begins a new run, and the latest ledger of the run is kept."""
from tapio.server.sequence import REASON_KERNEL, REASON_SEQUENCE, SequenceTracker

LEDGER = dict(seen=0, filtered=0, collapsed=0, dropped_kernel=0, dropped_processor=0, dropped_buffer=0,
              throttled=0)


def ledger(seen, **kw):
    return {**LEDGER, "seen": seen, **kw}


def test_contiguous_ranges_have_no_gap():
    t = SequenceTracker()
    assert t.observe(1, 100, 1000, 2000, ledger=ledger(100)) == []
    assert t.observe(101, 250, 2100, 3000, ledger=ledger(250)) == []
    assert (t.high, t.gaps, t.missing, t.runs) == (250, 0, 0, 1)
    assert t.ledger["seen"] == 250


def test_a_skipped_range_is_a_gap_between_the_events_around_it():
    t = SequenceTracker()
    t.observe(1, 100, 1000, 2000)
    (gap,) = t.observe(181, 200, 5000, 6000)
    assert gap == (101, 180, 80, 2000, 5000, REASON_SEQUENCE)
    assert (t.gaps, t.missing, t.high) == (1, 80, 200)
    assert t.as_json()["recent_gaps"][0]["events"] == 80


def test_batches_without_a_range_change_nothing_but_count_kernel_drops():
    t = SequenceTracker()
    t.observe(1, 10, 1000, 2000)
    assert t.observe(0, 0, 2500, 2600) == []               # a priority batch
    (gap,) = t.observe(11, 20, 3000, 4000, kernel_drops=7)
    assert gap == (0, 0, 7, 2600, 4000, REASON_KERNEL)
    assert (t.kernel_gaps, t.kernel_dropped, t.gaps) == (1, 7, 0)


def test_a_restart_begins_a_new_run_and_a_late_range_is_no_gap():
    t = SequenceTracker()
    t.observe(1, 500, 1000, 2000, ledger=ledger(500))
    t.observe(501, 600, 2000, 3000, ledger=ledger(600))
    assert t.observe(300, 400, 1500, 1600) == []           # older: counted as late
    assert t.late == 1
    assert t.observe(1, 50, 9000, 9100, ledger=ledger(50)) == []   # restarted at 1
    assert (t.runs, t.high, t.ledger["seen"]) == (2, 50, 50)


def test_the_first_range_a_server_sees_is_where_it_starts():
    t = SequenceTracker()
    assert t.observe(7001, 7100, 1000, 2000) == []         # joined mid-run (restart, failover)
    assert t.observe(7101, 7200, 2000, 3000) == []


def test_an_older_ledger_does_not_replace_a_newer_one():
    t = SequenceTracker()
    t.observe(1, 10, 1, 2, ledger=ledger(900, dropped_buffer=3))
    t.observe(0, 0, 1, 2, ledger=ledger(800))
    assert t.ledger == ledger(900, dropped_buffer=3)
