"""The correlation engine's C tables of one collector start small and double as they fill, up to
their caps, which hold as before: a tree and the destinations spread over the doublings stay whole
(slot numbers outlive a reallocation), lookups by pid still find every process after its map was
rehashed, and a collector whose processes come and go reuses freed slots instead of growing."""
from tapio._fast.correlate import Correlator
from tests.correlation_fixtures import SEC, Events

PROCS_START, CONNS_START = 256, 32      # in tapio/_fast/correlate.pxd


def chunks(events, n=100):
    return [events[i:i + n] for i in range(0, len(events), n)]


def feed(core, ev, events):
    for part in chunks(events):
        core.feed(ev.batch(*part))


def test_a_collector_that_sent_little_has_small_tables():
    core = Correlator()
    ev = Events()
    core.feed(ev.batch(ev.exec(100, 1, "sh"), ev.connect(100, "curl", "10.0.0.1", 80)))
    stats = core.stats()
    assert stats["process_capacity"] == 65536 and stats["process_slots"] == PROCS_START
    assert stats["destination_capacity"] == 16384 and stats["destination_slots"] == CONNS_START


def test_a_tree_spread_over_the_doublings_stays_whole():
    core = Correlator(max_tree_processes=5000)
    ev = Events()
    n = 1500                                    # 256 -> 512 -> 1024 -> 2048 slots
    ppid = {10000: 1}
    ppid.update({10000 + i: 10000 + (i - 1) // 2 for i in range(1, n)})
    feed(core, ev, [ev.exec(pid, parent, "sh") for pid, parent in ppid.items()])
    assert core.stats()["process_slots"] == 2048 and core.stats()["processes"] == n
    # every pid is found, and its parent is the process it was started by
    for pid, parent in ppid.items():
        assert core.process(pid)["pid"] == pid and core.process(pid)["ppid"] == parent
    ev.at(1)
    feed(core, ev, [ev.exit(pid, parent, "sh") for pid, parent in reversed(ppid.items())])
    trees, _, _ = core.tick(ev.at(5))
    [(info, nodes)] = trees
    assert info["processes"] == n and info["live"] == 0 and info["dropped"] == 0
    assert sorted(node[0] for node in nodes) == sorted(ppid)
    for node in nodes[1:]:
        assert nodes[node[2]][0] == ppid[node[0]]
    assert core.stats()["processes"] == 0


def test_the_process_cap_holds_as_before():
    core = Correlator(max_processes=1000, min_processes=1)
    ev = Events()
    feed(core, ev, [ev.exec(20000 + i, 1, "x") for i in range(1500)])
    stats = core.stats()
    assert stats["process_slots"] == 1000 == stats["process_capacity"]
    assert stats["processes"] == 1000 and stats["processes_untracked"] == 500
    assert all(core.process(20000 + i)["pid"] == 20000 + i for i in range(1000))
    assert all(core.process(20000 + i) is None for i in range(1000, 1500))


def test_processes_that_come_and_go_reuse_their_slots():
    core = Correlator(min_processes=1)
    ev = Events()
    # 600 at once grow the table (and the pid map) once past its start ...
    feed(core, ev, [ev.exec(30000 + i, 1, "x") for i in range(600)])
    feed(core, ev, [ev.exit(30000 + i, 1, "x") for i in range(600)])
    trees, _, _ = core.tick(ev.at(5))
    assert len(trees) == 600 and core.stats()["processes"] == 0
    assert core.stats()["process_slots"] == 1024
    # ... then 20,000 more, a few hundred at a time, fit in the slots freed
    pid = 40000
    for _ in range(50):
        execs = [ev.exec(pid + i, 1, "x") for i in range(400)]
        feed(core, ev, execs + [ev.exit(pid + i, 1, "x") for i in range(400)])
        assert all(core.process(pid + i)["pid"] == pid + i for i in range(0, 400, 37))
        trees, _, _ = core.tick(ev.at(5))
        assert len(trees) == 400 and core.stats()["processes"] == 0
        pid += 400
    assert core.stats()["process_slots"] == 1024
    assert core.process(30000) is None and core.process(pid - 1) is None


def test_destinations_spread_over_the_doublings_keep_their_slots():
    core = Correlator(max_connections=600, conn_threshold=2)
    ev = Events()
    opened = {}
    for part in chunks([(f"10.1.{i // 250}.{i % 250}", 1000 + i) for i in range(800)], 50):
        events = []
        for addr, port in part:
            events += [ev.connect(7, "curl", addr, port), ev.connect(7, "curl", addr, port)]
        _, _, slots, _ = core.feed(ev.batch(*events))
        for slot in slots or ():
            info = core.conn_info(slot)
            opened[slot] = (info["daddr"], info["dport"])
    stats = core.stats()
    assert stats["destination_slots"] == 600 == stats["destination_capacity"]
    assert stats["destinations"] == 600 and stats["destinations_untracked"] == 400
    assert len(opened) == 600
    # the slots handed out before the table moved still name the same destinations
    for slot, (daddr, dport) in opened.items():
        info = core.conn_info(slot)
        assert (info["daddr"], info["dport"]) == (daddr, dport) and info["failures"] == 2
    _, closed = core.tick_connections(ev.at(60) + 60 * SEC)
    assert len(closed) == 600 and core.stats()["destinations"] == 0
