"""--cgroup-budget: one noisy cgroup (a fork bomb, a connect storm) must not crowd out the node.

The per-event work is C (tapio/_fast/throttle.pxd, applied as records enter the arena); this module
parses the flag, turns due summaries into `throttled` events once per round, and keeps what the
collector's metrics show: the total held back, and per cgroup only for the few that held back the
most (bounded: never one series per pod).
"""
import argparse

from tapio.flags import parse_duration

MAX_TRACKED = 256        # cgroups whose running totals are kept for the metrics (the top ones)


def parse_budget(text):
    """"2000/s", "500/100ms", "2000" (per second) -> (events, interval in ns); "0" -> None (off)."""
    value = str(text).strip().lower()
    if value in ("0", "off", ""):
        return None
    count, sep, per = value.partition("/")
    if not count.isdigit():
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a budget: use events per interval, like 2000/s or 500/100ms (0: off)")
    per = per.strip() if sep else "1s"
    seconds = parse_duration(per if per[:1].isdigit() else "1" + per)
    events = int(count)
    if events == 0:
        return None
    if not 0.001 <= seconds <= 3600 or events > 10**9 or seconds * 1e9 < events:
        raise argparse.ArgumentTypeError(
            f"{text!r}: the interval must be 1ms to 1h, and the budget at most one event per ns")
    return events, int(round(seconds * 1e9))


def parse_burst(text):
    """--cgroup-burst: events a cgroup may send at once, 0 (one interval's budget) to 10^9."""
    value = str(text).strip()
    if not value.isdigit() or int(value) > 10**9:
        raise argparse.ArgumentTypeError(f"{text!r} is not a burst: a count of events, 0 to 1000000000")
    return int(value)


class CgroupBudget:
    """The collector's Throttle and what it held back so far, per cgroup (the top ones)."""

    def __init__(self, budget, interval_ns, burst=0):
        from tapio._fast.throttling import KINDS, Throttle
        self.throttle = Throttle(budget, interval_ns, burst)
        self.kinds = KINDS
        self.by_cgroup = {}          # cgroup id -> [held back, by kind...]; bounded by _prune
        self.events = 0              # `throttled` events made

    def attach(self, arena):
        self.throttle.attach(arena)

    @property
    def suppressed(self):
        return self.throttle.suppressed

    def emit(self, arena, everything=False):
        """Put the due `throttled` events into the arena; returns how many."""
        made = self.throttle.emit(arena, everything)
        for cgroup_id, counts in made:
            tally = self.by_cgroup.get(cgroup_id)
            if tally is None:
                tally = self.by_cgroup[cgroup_id] = [0] * (1 + len(counts))
            tally[0] += sum(counts)
            for k, n in enumerate(counts, 1):
                tally[k] += n
        if len(self.by_cgroup) > MAX_TRACKED:
            self._prune()
        self.events += len(made)
        return len(made)

    def _prune(self):
        keep = sorted(self.by_cgroup.items(), key=lambda item: item[1][0], reverse=True)
        self.by_cgroup = dict(keep[:MAX_TRACKED // 2])

    def top(self, n=5):
        """[(cgroup id, held back, {kind: count})] of the n cgroups that held back the most."""
        ranked = sorted(self.by_cgroup.items(), key=lambda item: item[1][0], reverse=True)[:n]
        return [(cgroup_id, tally[0], dict(zip(self.kinds, tally[1:]))) for cgroup_id, tally in ranked]

    def stats(self):
        return {**self.throttle.stats(), "budget": self.throttle.budget, "burst": self.throttle.burst,
                "interval_ns": self.throttle.interval_ns, "throttled_events": self.events}
