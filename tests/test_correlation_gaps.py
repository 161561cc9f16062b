"""Groups whose window overlaps a gap in what their collector delivered are marked incomplete:
CorrelationEngine.mark_gap, called here directly as the ingest side calls it when a collector's
sequence has a gap or the kernel dropped events."""
import pytest

from tests.correlation_fixtures import SEC, Events, State, pod_context
from tests.test_correlation_engine import Harness, config, crash


def tree(h, pid):
    """A shell and two children, finished: a process_tree group once its grace is over."""
    ev = h.ev
    h.feed(ev.exec(pid, 1, "sh"), ev.exec(pid + 1, pid, "a"), ev.exec(pid + 2, pid, "b"))
    ev.at(0.5)
    h.feed(ev.exit(pid + 1, pid, "a"), ev.exit(pid + 2, pid, "b"), ev.exit(pid, 1, "sh"))


def test_groups_are_complete_by_default():
    h = Harness()
    tree(h, 100)
    h.tick(5)
    [group] = h.closed("process_tree")
    assert group["incomplete"] is False and "gaps" not in group["attributes"]


def test_an_open_group_overlapping_a_gap_is_marked_and_sent_again():
    h = Harness()
    for n in range(5):
        crash(h, 200 + n)
        h.ev.at(1)
    [opened] = h.versions("crash_loop")
    assert opened["incomplete"] is False
    start = h.ev.now - 2 * SEC
    assert h.engine.mark_gap("node-a", start, start + SEC, "sequence gap 40-52") == 1
    again = h.versions("crash_loop")[-1]
    assert again["id"] == opened["id"] and again["status"] == "open" and again["incomplete"] is True
    assert again["attributes"]["gaps"] == [{"start_ns": start, "end_ns": start + SEC,
                                            "reason": "sequence gap 40-52"}]
    # it stays incomplete as it grows and when it closes; the same gap again changes nothing
    assert h.engine.mark_gap("node-a", start, start + SEC, "sequence gap 40-52") == 0
    crash(h, 210)
    h.tick(400)
    [closed] = h.closed("crash_loop")
    assert closed["incomplete"] is True and len(closed["attributes"]["gaps"]) == 1
    assert h.engine.stats()["groups_marked_incomplete"] == 1


def test_a_gap_after_an_open_groups_last_event_still_counts():
    """An open group is still listening: events lost after its last one may have been its own."""
    h = Harness()
    for n in range(5):
        crash(h, 300 + n)
    h.ev.at(30)
    h.tick(30)
    assert h.engine.mark_gap("node-a", h.ev.now - 5 * SEC, h.ev.now, "kernel drops: 12") == 1
    assert h.versions("crash_loop")[-1]["incomplete"] is True


def test_a_recently_closed_group_is_marked_and_updated_not_closed_again():
    h = Harness()
    tree(h, 400)
    h.tick(5)
    [group] = h.closed("process_tree")
    emitted = len(h.emitted)
    assert h.engine.mark_gap("node-a", group["start_ns"] + 1, group["end_ns"], "sequence gap 7-9") == 1
    [(update, closed)] = h.emitted[emitted:]
    assert closed is False, "its trace is out already: an update for the store only"
    assert update["id"] == group["id"] and update["status"] == "closed" and update["incomplete"] is True
    assert update["summary"] == group["summary"]
    assert h.engine.stats()["groups_closed"] == {"process_tree": 1}


def test_groups_outside_the_gap_or_of_another_collector_are_left_alone():
    h = Harness()
    tree(h, 500)
    h.tick(5)
    [group] = h.closed("process_tree")
    emitted = len(h.emitted)
    assert h.engine.mark_gap("node-a", group["end_ns"] + 1, group["end_ns"] + SEC, "gap") == 0
    assert h.engine.mark_gap("node-b", group["start_ns"], group["end_ns"], "gap") == 0
    assert len(h.emitted) == emitted


def test_closed_groups_are_kept_for_marking_only_a_while():
    h = Harness(config(limits={"keep_closed": "1m"}))
    tree(h, 600)
    h.tick(5)
    [group] = h.closed("process_tree")
    h.tick(61)
    assert h.engine.mark_gap("node-a", group["start_ns"], group["end_ns"], "late") == 0
    assert h.engine.stats()["collectors"]["node-a"]["closed_groups_kept"] == 0


def test_a_group_built_later_over_a_remembered_gap_is_incomplete_at_once():
    h = Harness()
    ev = h.ev
    start = ev.now
    h.feed(ev.exec(700, 1, "sh"), ev.exec(701, 700, "a"))
    ev.at(1)
    h.engine.mark_gap("node-a", start + SEC // 2, start + SEC // 2 + 1000, "sequence gap 3-4")
    h.feed(ev.exec(702, 700, "b"), ev.exit(701, 700, "a"), ev.exit(702, 700, "b"), ev.exit(700, 1, "sh"))
    h.tick(5)
    [group] = h.closed("process_tree")
    assert group["incomplete"] is True
    assert group["attributes"]["gaps"][0]["reason"] == "sequence gap 3-4"


def test_a_gap_ending_before_it_starts_is_refused():
    h = Harness()
    with pytest.raises(ValueError, match="before it starts"):
        h.engine.mark_gap("node-a", 10, 5, "bad")


def test_other_collectors_groups_stay_complete():
    h = Harness()
    other = Events(collector="node-b", node="node-b")
    for n in range(5):
        crash(h, 800 + n)
        h.engine.consume(other.batch(other.exit(900 + n, 1, "payment", code=1, context=pod_context(),
                                                executable="/app/payment")), State("node-b", "node-b"))
    assert h.engine.mark_gap("node-b", h.ev.now - 10 * SEC, h.ev.now, "gap") == 1
    by_collector = {g["collector_id"]: g for g, _ in h.emitted if g["kind"] == "crash_loop"}
    assert by_collector["node-b"]["incomplete"] is True
    assert by_collector["node-a"]["incomplete"] is False
