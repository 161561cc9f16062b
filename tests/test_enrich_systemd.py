"""UnitRestarts: sequences of exec/exit events (as the processor feeds them) -> restart counts."""
import pytest

from tapio.collector.enrich.systemd import UnitRestarts

S = 1_000_000_000   # ns
U = "api.service"


def run(steps, restarts=None):
    """Apply steps; returns the list of on_exec results (True = a restart) in order."""
    restarts = restarts or UnitRestarts(window_ns=10 * S)
    results = []
    for step in steps:
        op, args = step[0], step[1:]
        if op == "exec":
            results.append(restarts.on_exec(*args))
        elif op == "exit":
            restarts.on_exit(*args)
        elif op == "track":
            restarts.track(*args)
    return restarts, results


CASES = [
    ("crash and come back at once",
     [("exec", U, 100, 0, 1), ("exit", U, 100, 5 * S), ("exec", U, 101, 5 * S + S // 10, 1)], 1, [False, True]),
    ("come back after the window: a new start, not a restart",
     [("exec", U, 100, 0, 1), ("exit", U, 100, S), ("exec", U, 101, 12 * S, 1)], 0, [False, False]),
    ("exactly at the window edge counts",
     [("exec", U, 100, 0, 1), ("exit", U, 100, S), ("exec", U, 101, 11 * S, 1)], 1, [False, True]),
    ("a crash loop",
     [("exec", U, 100, 0, 1), ("exit", U, 100, S), ("exec", U, 101, 2 * S, 1), ("exit", U, 101, 3 * S),
      ("exec", U, 102, 4 * S, 1), ("exit", U, 102, 5 * S), ("exec", U, 103, 6 * S, 1)], 3,
     [False, True, True, True]),
    ("helpers of the main process are not starts",
     [("exec", U, 100, 0, 1), ("exec", U, 200, S, 100), ("exit", U, 200, 2 * S), ("exec", U, 201, 3 * S, 100)],
     0, [False, False, False]),
    ("main exits while a helper lives; the next start is a restart",
     [("exec", U, 100, 0, 1), ("exec", U, 200, S, 100), ("exit", U, 100, 2 * S), ("exit", U, 200, 2 * S),
      ("exec", U, 101, 3 * S, 1)], 1, [False, False, True]),
    ("the exit that empties the unit stops it (main started before us)",
     [("track", U, 50), ("exec", U, 60, S, 50), ("exit", U, 60, 2 * S), ("exit", U, 50, 3 * S),
      ("exec", U, 70, 4 * S, 1)], 1, [False, True]),
    ("seeded main: its helpers never count",
     [("track", U, 50), ("exec", U, 60, S, 50), ("exit", U, 60, 2 * S), ("exec", U, 61, 3 * S, 50),
      ("exit", U, 61, 4 * S), ("exec", U, 62, 5 * S, 50)], 0, [False, False, False]),
    ("the main process exec'ing again is not a restart",
     [("exec", U, 100, 0, 1), ("exec", U, 100, S, 1), ("exec", U, 100, 2 * S, 1)], 0, [False, False, False]),
    ("an exec stamped before the exit is not its restart",
     [("exec", U, 100, 0, 1), ("exit", U, 100, 5 * S), ("exec", U, 101, 4 * S, 1)], 0, [False, False]),
    ("units are independent",
     [("exec", "a.service", 100, 0, 1), ("exit", "a.service", 100, S), ("exec", "b.service", 101, 2 * S, 1)],
     0, [False, False]),
    ("exit of a pid never seen in the unit",
     [("exec", U, 100, 0, 1), ("exit", U, 999, S), ("exec", U, 101, 2 * S, 1)], 0, [False, False]),
    ("exit in a unit never seen", [("exit", U, 100, S), ("exec", U, 101, 2 * S, 1)], 0, [False]),
    ("no unit: ignored", [("exec", "", 100, 0, 1), ("exit", "", 100, S), ("exec", "", 101, 2 * S, 1)], 0,
     [False, False]),
    ("junk arguments: ignored",
     [("exec", U, None, 0, 1), ("exec", U, 100, "soon", 1), ("exit", U, 100, None), ("exec", U, -5, 0, 1),
      ("exec", ["unhashable"], 5, 0, 1), ("exit", ["unhashable"], 5, 0), ("exec", U, 7, 0, ["unhashable"]),
      ("exit", U, ["unhashable"], S)],
     0, [False, False, False, False, False]),
]


@pytest.mark.parametrize("steps,count,results", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_unit_restarts(steps, count, results):
    restarts, got = run(steps)
    assert got == results
    units = {s[1] for s in steps if isinstance(s[1], str) and s[1]}
    assert sum(restarts.restarts(u) for u in units) == count
    assert restarts.stats()["restarts"] == count


def test_units_are_bounded_least_recently_used_first():
    restarts = UnitRestarts(window_ns=10 * S, max_units=2)
    run([("exec", "a.service", 1, 0, 1), ("exit", "a.service", 1, S), ("exec", "a.service", 2, S, 1)], restarts)
    run([("exec", "b.service", 3, 0, 1), ("exec", "c.service", 4, 0, 1)], restarts)
    assert restarts.stats() == {"units": 2, "restarts": 1, "evictions": 1}
    assert restarts.restarts("a.service") == 0   # evicted with its count


def test_too_many_members_stop_the_emptied_rule_but_not_the_main_rule():
    restarts = UnitRestarts(window_ns=10 * S, max_pids_per_unit=2)
    steps = [("exec", U, 100, 0, 1)] + [("exec", U, 200 + i, S, 100) for i in range(5)]
    steps += [("exit", U, 200 + i, 2 * S) for i in range(5)]
    run(steps, restarts)
    # Helpers went untracked, so their exits cannot be said to empty the unit; the main's exit can.
    assert restarts.restarts(U) == 0
    run([("exit", U, 100, 3 * S), ("exec", U, 300, 4 * S, 1)], restarts)
    assert restarts.restarts(U) == 1
