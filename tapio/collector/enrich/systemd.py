"""Unit restarts, recognised from exec and exit events alone (no D-Bus, no journal).

A unit's main process is the first process seen exec'ing in the unit's cgroup. The unit stops
when its main process exits, or when the exit of its last known process empties it. A new process
that starts in the unit within `window_ns` after it stopped is a restart (systemd's Restart=, or
anything else that brings it straight back); later than that it is just a new start.

A process started by a process already in the unit (ppid is a member) is a helper, not a start:
it neither becomes the main process nor counts as a restart. Processes that were running before
the collector started are unknown to the events; seed them with `track()` (ProcessTable.cgroup_paths
gives them), or the first helper seen would be taken for the main process.
Known limit: a unit that runs short jobs back to back (a timer firing more often than the window,
an ExecStop= after a crash without a restart) looks like a restarting one.
"""
import threading
from collections import OrderedDict

__all__ = ["UnitRestarts"]


def _valid(unit, pid, ts_ns):
    return (isinstance(unit, str) and unit != "" and isinstance(pid, int) and pid > 0
            and isinstance(ts_ns, int))


class _Unit:
    __slots__ = ("main", "members", "stopped_at", "restarts", "overflow")

    def __init__(self):
        self.main = 0              # pid of the main process, 0 when none is running
        self.members = set()       # live pids known to be in the unit
        self.stopped_at = None     # ts_ns of the exit that stopped the unit, until the next start
        self.restarts = 0
        self.overflow = False      # more members than we track: "emptied" cannot be known


class UnitRestarts:
    """Counts restarts per systemd unit. Bounded: at most `max_units` units (least recently used
    out first) and `max_pids_per_unit` members each. Thread-safe."""

    def __init__(self, window_ns=10_000_000_000, *, max_units=4096, max_pids_per_unit=1024):
        self._window_ns = int(window_ns)
        self._max_units = max(1, int(max_units))
        self._max_pids = max(1, int(max_pids_per_unit))
        self._units = OrderedDict()
        self._lock = threading.Lock()
        self._restarts_total = self._evictions = 0

    def _unit(self, unit, create):
        state = self._units.get(unit)
        if state is None:
            if not create:
                return None
            state = self._units[unit] = _Unit()
            while len(self._units) > self._max_units:
                self._units.popitem(last=False)
                self._evictions += 1
        self._units.move_to_end(unit)
        return state

    def _add_member(self, state, pid):
        if len(state.members) >= self._max_pids:
            state.overflow = True
        else:
            state.members.add(pid)

    def track(self, unit, pid):
        """A process already running in the unit (from the start-up snapshot)."""
        if not _valid(unit, pid, 0):
            return
        with self._lock:
            state = self._unit(unit, create=True)
            self._add_member(state, pid)

    def on_exec(self, unit, pid, ts_ns, ppid=0):
        """A process exec'd in the unit. Returns True when this exec is a restart of the unit."""
        if not _valid(unit, pid, ts_ns):
            return False
        with self._lock:
            state = self._unit(unit, create=True)
            if pid in state.members:
                return False       # a member exec'ing again is not a new start
            helper = isinstance(ppid, int) and ppid > 0 and ppid in state.members
            self._add_member(state, pid)
            if helper:
                return False
            if state.stopped_at is not None:
                since_stop = ts_ns - state.stopped_at
                state.stopped_at = None
                state.main = pid
                if 0 <= since_stop <= self._window_ns:
                    state.restarts += 1
                    self._restarts_total += 1
                    return True
                return False
            if state.main == 0:
                state.main = pid
            return False

    def on_exit(self, unit, pid, ts_ns):
        """A process exited in the unit."""
        if not _valid(unit, pid, ts_ns):
            return
        with self._lock:
            state = self._unit(unit, create=False)
            if state is None:
                return
            was_member = pid in state.members
            state.members.discard(pid)
            if pid == state.main and pid:
                state.main = 0
                state.stopped_at = ts_ns
            elif was_member and not state.members and not state.overflow and state.stopped_at is None:
                state.main = 0
                state.stopped_at = ts_ns

    def restarts(self, unit):
        """Restarts counted for the unit so far (0 for a unit never seen or evicted)."""
        with self._lock:
            state = self._units.get(unit) if isinstance(unit, str) else None
            return state.restarts if state is not None else 0

    def stats(self):
        with self._lock:
            return {"units": len(self._units), "restarts": self._restarts_total,
                    "evictions": self._evictions}
