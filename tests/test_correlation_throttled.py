"""Groups that may lack the routine events a cgroup budget held back are marked incomplete: a
`throttled` event (as the collector sends it, decoded by the compiled codec) marks the groups of
its own cgroup whose window overlaps the held-back events and whose kind reads a type held back;
the groups of other cgroups, and kinds that read none of those types, stay complete."""
from tapio.server.correlation.state import MAX_THROTTLED_CGROUPS, THROTTLE_WINDOWS
from tapio.v1 import events_pb2
from tests.correlation_fixtures import SEC
from tests.test_correlation_engine import Harness

NOISY, QUIET = 4100, 4200


def trees(h, roots):
    """A shell and two children in each cgroup of `roots` ({root pid: cgroup id}), all at the
    same time, finished: process_tree groups once their grace is over."""
    ev = h.ev
    for pid, cgroup_id in roots.items():
        h.feed(ev.exec(pid, 1, "sh", cgroup_id=cgroup_id), ev.exec(pid + 1, pid, "a", cgroup_id=cgroup_id),
               ev.exec(pid + 2, pid, "b", cgroup_id=cgroup_id))
    ev.at(0.5)
    for pid, cgroup_id in roots.items():
        h.feed(ev.exit(pid + 1, pid, "a", cgroup_id=cgroup_id), ev.exit(pid + 2, pid, "b", cgroup_id=cgroup_id),
               ev.exit(pid, 1, "sh", cgroup_id=cgroup_id))


def refused(h, pid, port, cgroup_id, n=5):
    h.feed(*(h.ev.connect(pid, "client", "10.0.0.9", port, cgroup_id=cgroup_id) for _ in range(n)))


def by_root(h):
    """The newest version of each process tree, by its root's pid."""
    return {g["attributes"]["pid"]: g for g, _ in h.emitted if g["kind"] == "process_tree"}


def test_a_throttled_cgroup_marks_its_own_tree_and_not_its_neighbours():
    h = Harness()
    start = h.ev.now
    trees(h, {100: NOISY, 200: QUIET})
    h.tick(5)
    assert {pid: g["incomplete"] for pid, g in by_root(h).items()} == {100: False, 200: False}
    sent = len(h.emitted)
    h.feed(h.ev.throttled(NOISY, start + SEC // 10, start + SEC // 5, exec=900))
    [(update, closed)] = h.emitted[sent:]
    assert closed is False, "its trace is out already: an update for the store only"
    assert update["attributes"]["pid"] == 100 and update["status"] == "closed"
    assert update["incomplete"] is True
    assert update["attributes"]["gaps"] == [{
        "start_ns": start + SEC // 10, "end_ns": start + SEC // 5, "cgroup_id": NOISY,
        "reason": "throttled: 900 exec held back (budget 100 per 1.0 s)"}]
    assert by_root(h)[200]["incomplete"] is False
    stats = h.engine.stats()
    assert stats["throttles_marked"] == 1 and stats["gaps_marked"] == 0
    assert stats["groups_marked_incomplete"] == 1
    assert stats["groups_marked_incomplete_by_reason"] == {"throttled": 1}


def test_a_tree_built_later_over_a_remembered_throttle_window_is_incomplete_at_once():
    h = Harness()
    ev = h.ev
    start = ev.now
    # both trees are running when the budget's summary comes; only one is of the noisy cgroup
    h.feed(ev.exec(300, 1, "sh", cgroup_id=NOISY), ev.exec(400, 1, "sh", cgroup_id=QUIET))
    ev.at(1)
    h.feed(ev.throttled(NOISY, start + SEC // 2, start + SEC // 2 + 1000, exec=40))
    roots = {300: NOISY, 400: QUIET}
    for root, cgroup_id in roots.items():
        h.feed(ev.exec(root + 1, root, "a", cgroup_id=cgroup_id), ev.exec(root + 2, root, "b", cgroup_id=cgroup_id))
    ev.at(0.5)
    for root, cgroup_id in roots.items():
        h.feed(ev.exit(root + 1, root, "a", cgroup_id=cgroup_id), ev.exit(root + 2, root, "b", cgroup_id=cgroup_id),
               ev.exit(root, 1, "sh", cgroup_id=cgroup_id))
    h.tick(5)
    trees = {g["attributes"]["pid"]: g for g in h.closed("process_tree")}
    assert trees[300]["incomplete"] is True
    assert trees[300]["attributes"]["gaps"][0]["reason"].startswith("throttled: 40 exec")
    assert trees[400]["incomplete"] is False and "gaps" not in trees[400]["attributes"]
    assert h.engine.stats()["collectors"]["node-a"]["throttle_windows"] == 1


def test_only_kinds_that_read_a_held_back_type_are_marked():
    """Held-back connects concern the connectivity group of the cgroup, not its process tree;
    held-back execs the reverse; accepts and closes no group; a crash loop (exits) never."""
    h = Harness()
    ev = h.ev
    start = ev.now
    trees(h, {500: NOISY})
    refused(h, 600, 5432, NOISY)
    h.tick(5)
    [conn] = h.versions("connectivity_degradation")
    assert conn["status"] == "open" and conn["incomplete"] is False
    window = (start, start + SEC)

    sent = len(h.emitted)
    h.feed(ev.throttled(NOISY, *window, tcp_accept=50, tcp_close=80))
    assert h.emitted[sent:] == [] and h.engine.stats()["throttles_marked"] == 0
    assert h.engine.stats()["collectors"]["node-a"]["throttle_windows"] == 0

    h.feed(ev.throttled(NOISY, *window, tcp_connect=70))
    [(update, _)] = h.emitted[sent:]
    assert update["kind"] == "connectivity_degradation" and update["id"] == conn["id"]
    assert update["incomplete"] is True and "70 tcp_connect" in update["attributes"]["gaps"][0]["reason"]
    assert by_root(h)[500]["incomplete"] is False

    sent = len(h.emitted)
    h.feed(ev.throttled(NOISY, window[0], window[1] + 1, exec=10))
    [(update, _)] = h.emitted[sent:]
    assert update["kind"] == "process_tree" and update["incomplete"] is True
    assert len(h.versions("connectivity_degradation")[-1]["attributes"]["gaps"]) == 1


def test_a_crash_loop_in_a_throttled_cgroup_stays_complete():
    h = Harness()
    ev = h.ev
    start = ev.now
    for n in range(5):
        h.feed(ev.exit(700 + n, 1, "app", code=1, cgroup_id=NOISY, executable="/app/app",
                       context=events_pb2.Context(systemd_unit="app.service")))
        ev.at(1)
    [loop] = h.versions("crash_loop")
    sent = len(h.emitted)
    h.feed(ev.throttled(NOISY, start, ev.now, exec=500, tcp_connect=500))
    assert loop["status"] == "open" and h.emitted[sent:] == []


def test_a_throttle_window_outside_a_groups_window_leaves_it_alone():
    h = Harness()
    trees(h, {800: NOISY})
    h.tick(5)
    [group] = h.closed("process_tree")
    sent = len(h.emitted)
    h.feed(h.ev.throttled(NOISY, group["end_ns"] + 1, group["end_ns"] + SEC, exec=9))
    h.feed(h.ev.throttled(NOISY, group["start_ns"] - SEC, group["start_ns"] - 1, exec=9))
    assert h.emitted[sent:] == []


def test_throttle_windows_are_remembered_within_bounds():
    h = Harness()
    ev = h.ev
    for cgroup_id in range(1000, 1000 + 2 * MAX_THROTTLED_CGROUPS):
        for n in range(2 * THROTTLE_WINDOWS):
            h.feed(ev.throttled(cgroup_id, ev.now + n * SEC, ev.now + n * SEC + 1, exec=1))
    stats = h.engine.stats()
    assert stats["throttles_marked"] == 4 * MAX_THROTTLED_CGROUPS * THROTTLE_WINDOWS
    assert stats["collectors"]["node-a"]["throttle_windows"] == MAX_THROTTLED_CGROUPS * THROTTLE_WINDOWS



def test_a_process_that_moved_out_of_a_throttled_cgroup_leaves_its_tree_complete():
    """A shell that moves itself into a cgroup of its own, then execs: it ran in the old cgroup
    only before that, and the tree it starts there is none of the old cgroup's."""
    h = Harness()
    ev = h.ev
    start = ev.now
    h.feed(ev.exec(900, 1, "sh", cgroup_id=NOISY))
    ev.at(0.01)
    h.feed(ev.exec(900, 1, "sh", cgroup_id=QUIET), ev.exec(901, 900, "a", cgroup_id=QUIET),
           ev.exec(902, 900, "b", cgroup_id=QUIET))
    ev.at(0.5)
    h.feed(ev.exit(901, 900, "a", cgroup_id=QUIET), ev.exit(902, 900, "b", cgroup_id=QUIET),
           ev.exit(900, 1, "sh", cgroup_id=QUIET))
    h.feed(ev.throttled(NOISY, start, ev.now, exec=300))
    h.tick(5)
    [tree] = h.closed("process_tree")
    assert tree["attributes"]["pid"] == 900 and tree["attributes"]["process_count"] == 3
    assert tree["incomplete"] is False
