"""Who a process is: executable, command line, user, ancestors and start time, per pid.

The table is filled from /proc once at start-up (so the trees of processes that started before
the collector are complete) and then kept up to date by exec and exit events. An exited process
stays for `exit_grace_s`: its late events (a TCP close, a signal) still need it, and so do its
children's ancestor chains. Everything is bounded: at most `max_entries` processes, least
recently used out first.

The parent recorded is the one at exec time. When that parent dies the kernel re-parents the
child (to init or a subreaper); the original parent is kept, because it is what explains the tree.
/proc is read in the collector's pid namespace: run it with the host's (hostPID) to see the node.
"""
import os
import pwd
import re
import threading
import time
from collections import OrderedDict, deque

from tapio.v1 import events_pb2

__all__ = ["ProcessTable", "ProcStat", "parse_stat", "read_process", "text_from_kernel_bytes"]

MAX_COMMAND_LINE = 4096
ANCESTORS_KEPT = 16             # the longest ancestor chain a Process carries
CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_NS_PER_S = 1_000_000_000
_UNDECODABLE = re.compile("[\udc80-\udcff]")


def text_from_kernel_bytes(raw):
    """bytes -> str with every byte that is not part of valid UTF-8 replaced by '?' (the wire
    contract's rule for kernel strings)."""
    return _UNDECODABLE.sub("?", raw.decode("utf-8", "surrogateescape"))


class ProcStat:
    """The fields of /proc/<pid>/stat that we use."""
    __slots__ = ("comm", "ppid", "start_ticks")

    def __init__(self, comm, ppid, start_ticks):
        self.comm, self.ppid, self.start_ticks = comm, ppid, start_ticks


def parse_stat(raw):
    """Parse /proc/<pid>/stat bytes; None if malformed. comm (field 2) may itself contain spaces
    and parentheses, so the fields after it are found from the *last* ')'."""
    if not isinstance(raw, (bytes, bytearray)):
        return None
    start, end = raw.find(b"("), raw.rfind(b")")
    if start < 0 or end < start:
        return None
    rest = raw[end + 1:].split()
    # rest[0] is field 3 (state): field n is rest[n - 3]. ppid is field 4, starttime field 22.
    if len(rest) < 20:
        return None
    try:
        return ProcStat(text_from_kernel_bytes(bytes(raw[start + 1:end])), int(rest[1]), int(rest[19]))
    except ValueError:
        return None


def _read(path, limit):
    with open(path, "rb") as f:
        return f.read(limit)


def _real_uid(status):
    for line in status.splitlines():
        if line.startswith(b"Uid:"):
            fields = line.split()
            if len(fields) > 1 and fields[1].isdigit():
                return int(fields[1])
    return None


def _command_line(raw):
    # argv is NUL-separated with a trailing NUL; a process may rewrite it (setproctitle).
    return text_from_kernel_bytes(raw.rstrip(b"\0").replace(b"\0", b" "))


def read_process(pid, proc_root="/proc", max_command_line=MAX_COMMAND_LINE, redactor=None):
    """A dict with ppid, uid, comm, executable, command_line, start_boot_ns, cgroup_path read from
    /proc/<pid>; None when the process is gone or unreadable. Never raises. With a `redactor`
    (tapio._fast.redaction.Redactor), secrets in the command line are replaced."""
    base = f"{proc_root}/{pid}"
    try:
        stat = parse_stat(_read(f"{base}/stat", 4096))
        status = _read(f"{base}/status", 8192)
    except OSError:
        return None
    if stat is None:
        return None
    uid = _real_uid(status)
    if uid is None:
        return None
    try:
        raw = _read(f"{base}/cmdline", max_command_line)
        if redactor is not None:
            raw = redactor.redact_argv(raw)[0][:max_command_line]   # "x" -> "***" may grow it
        command_line = _command_line(raw)
    except OSError:
        command_line = ""
    try:
        # Kernel threads have no executable: readlink fails with ENOENT.
        executable = os.readlink(f"{base}/exe")
    except OSError:
        executable = ""
    return {
        "ppid": stat.ppid,
        "uid": uid,
        "comm": stat.comm,
        "executable": executable,
        "command_line": command_line,
        "start_boot_ns": stat.start_ticks * _NS_PER_S // CLOCK_TICKS,
        "cgroup_path": _read_cgroup_v2_path(base),
    }


def _read_cgroup_v2_path(base):
    try:
        raw = _read(f"{base}/cgroup", 16384)
    except OSError:
        return ""
    for line in raw.splitlines():
        if line.startswith(b"0::"):
            return text_from_kernel_bytes(line[3:])
    return ""


class _Entry:
    __slots__ = ("pid", "ppid", "uid", "comm", "executable", "command_line", "start_boot_ns",
                 "cgroup_path", "exited_at", "wire", "ancestry")

    def __init__(self, pid, ppid, uid, comm, executable, command_line, start_boot_ns, cgroup_path=""):
        self.pid, self.ppid, self.uid, self.comm = pid, ppid, uid, comm
        self.executable, self.command_line = executable, command_line
        self.start_boot_ns, self.cgroup_path = start_boot_ns, cgroup_path
        self.exited_at = None   # monotonic seconds of the exit event
        self.wire = None        # cached serialized Process
        self.ancestry = None    # cached ancestors for the wire (see ProcessTable._ancestry)


def _int(value):
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):
        return 0


def _as_text(value):
    if isinstance(value, str):
        return value
    if isinstance(value, (bytes, bytearray)):
        return text_from_kernel_bytes(bytes(value))
    return ""


def _bounded_join(args, limit):
    # Stops reading `args` once past the limit: it may be a long (even endless) iterator.
    out, size = [], 0
    for arg in args:
        text = _as_text(arg)
        out.append(text)
        size += len(text) + 1
        if size > limit:
            break
    return " ".join(out)[:limit]


class ProcessTable:
    """pid -> process facts. `boot_to_wall_ns` turns CLOCK_BOOTTIME ns into Unix-epoch ns (see
    tapio.collector.clock.boot_to_wall_ns). Thread-safe; never raises on bad /proc data."""

    def __init__(self, boot_to_wall_ns, *, proc_root="/proc", max_entries=65536, exit_grace_s=30.0,
                 max_command_line=MAX_COMMAND_LINE, max_users=4096, clock=time.monotonic,
                 redactor=None):
        self.boot_to_wall_ns = int(boot_to_wall_ns)
        self._proc_root = proc_root
        self._max_entries = max(1, int(max_entries))
        self._exit_grace_s = float(exit_grace_s)
        self._max_command_line = int(max_command_line)
        self._redactor = redactor       # secrets out of command lines read from /proc
        self._max_users = max(1, int(max_users))
        self._clock = clock
        self._lock = threading.Lock()
        self._entries = OrderedDict()   # pid -> _Entry, least recently used first
        self._exits = deque()           # (exit time, pid, entry) in exit order, for expiry
        self._users = {}
        # pids just found missing from /proc (monotonic time): not re-read for each late event.
        self._gone = OrderedDict()
        self._counts = dict.fromkeys(
            ("hits", "misses", "proc_reads", "proc_read_failures", "evictions", "expired", "execs",
             "exits", "snapshot_processes", "user_lookups"), 0)

    # -- filling the table ----------------------------------------------------------------------

    def snapshot(self):
        """Read every process in /proc into the table; returns how many were read."""
        try:
            names = os.listdir(self._proc_root)
        except OSError:
            return 0
        loaded = 0
        for name in names:
            if not name.isdigit():
                continue
            facts = read_process(int(name), self._proc_root, self._max_command_line,
                                 self._redactor)
            if facts is None:
                continue   # exited since listdir
            with self._lock:
                self._insert(_Entry(int(name), **facts))
            loaded += 1
        with self._lock:
            self._counts["snapshot_processes"] += loaded
        return loaded

    def on_exec(self, pid, ppid, uid, filename, args, boot_ts_ns):
        """An exec event: the process `pid` now runs `filename` with `args` (argv)."""
        pid, ppid, uid, boot_ts_ns = _int(pid), _int(ppid), _int(uid), _int(boot_ts_ns)
        if pid <= 0:
            return
        filename = _as_text(filename)
        if isinstance(args, (str, bytes, bytearray)):
            args = [args]
        try:
            command_line = _bounded_join(iter(args), self._max_command_line) if args is not None else ""
        except TypeError:
            command_line = ""
        command_line = command_line or filename
        with self._lock:
            self._counts["execs"] += 1
            self._gone.pop(pid, None)
            old = self._entries.get(pid)
            start = boot_ts_ns
            if old is not None and old.exited_at is None and old.ppid == ppid:
                # The same process exec'ing again: it started when it was forked, not now.
                start = old.start_boot_ns
            cgroup_path = old.cgroup_path if old is not None and old.exited_at is None else ""
            # The kernel names the process after the file it exec'd, cut to TASK_COMM_LEN - 1.
            comm = filename.rsplit("/", 1)[-1][:15]
            self._insert(_Entry(pid, ppid, uid, comm, filename, command_line, start, cgroup_path))
            self._expire()

    def on_exit(self, pid):
        """An exit event: keep the entry for the grace period, then drop it."""
        pid = _int(pid)
        now = self._clock()
        with self._lock:
            self._counts["exits"] += 1
            entry = self._entries.get(pid)
            if entry is not None and entry.exited_at is None:
                entry.exited_at = now
                self._exits.append((now, pid, entry))
            self._expire()

    def _insert(self, entry):
        self._entries[entry.pid] = entry
        self._entries.move_to_end(entry.pid)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)
            self._counts["evictions"] += 1

    def _expire(self):
        deadline = self._clock() - self._exit_grace_s
        while self._exits and self._exits[0][0] <= deadline:
            _, pid, entry = self._exits.popleft()
            # Only if that pid still holds the exited entry (not a new process reusing the pid).
            if self._entries.get(pid) is entry:
                del self._entries[pid]
                self._counts["expired"] += 1
        # Entries can be evicted before they expire: keep the queue no larger than the table.
        while len(self._exits) > self._max_entries:
            self._exits.popleft()

    # -- lookups --------------------------------------------------------------------------------

    def _lookup(self, pid, counted=True):
        """The entry for pid, reading /proc/<pid> once when the table does not have it."""
        if type(pid) is not int or pid <= 0:
            return None
        with self._lock:
            entry = self._entries.get(pid)
            if entry is not None:
                self._entries.move_to_end(pid)
                self._counts["hits"] += counted
                return entry
            self._counts["misses"] += counted
            gone_at = self._gone.get(pid)
            if gone_at is not None and self._clock() - gone_at < self._exit_grace_s:
                return None
        facts = read_process(pid, self._proc_root, self._max_command_line,
                             self._redactor)
        with self._lock:
            if facts is None:
                self._counts["proc_read_failures"] += 1
                self._gone[pid] = self._clock()
                self._gone.move_to_end(pid)
                while len(self._gone) > 1024:
                    self._gone.popitem(last=False)
                return None
            self._counts["proc_reads"] += 1
            entry = self._entries.get(pid)
            if entry is None:   # an exec event may have raced us here
                entry = _Entry(pid, **facts)
                self._insert(entry)
            return entry

    def ancestors(self, pid, limit=16):
        """[ppid, its parent, ...] up to pid 1 and at most `limit` long; stops at a loop or at a
        parent it cannot find."""
        return self._chain(self._lookup(pid), limit)

    def _chain(self, entry, limit=16):
        chain = []
        seen = {entry.pid} if entry is not None else set()
        while entry is not None and len(chain) < limit:
            parent = entry.ppid
            if parent <= 0 or parent in seen:
                break
            chain.append(parent)
            seen.add(parent)
            child, entry = entry, self._lookup(parent, counted=False)
            if entry is not None and entry.start_boot_ns > child.start_boot_ns > 0:
                # Younger than its child: the parent is gone and a new process reuses its pid.
                break
        return chain

    def _ancestry(self, entry, visiting=()):
        """The ancestors of entry as a tuple, built from its parent's (cached on each entry):
        an exec storm's thousands of children share one walk up the tree. As _chain(), except
        that a chain, once built, keeps ancestors that expire later (it is what they were)."""
        chain = entry.ancestry
        if chain is not None:
            return chain
        parent_pid = entry.ppid
        chain = ()
        if parent_pid in visiting:
            chain = (parent_pid,)       # a loop no real kernel makes, but data can
        elif parent_pid > 0 and parent_pid != entry.pid:
            chain = (parent_pid,)
            parent = self._lookup(parent_pid, counted=False)
            # a parent younger than its child: the parent is gone and a new process reuses its pid
            if parent is not None and not parent.start_boot_ns > entry.start_boot_ns > 0:
                inherited = self._ancestry(parent, visiting + (entry.pid,))
                for i, pid in enumerate(inherited):
                    if pid == entry.pid or pid in visiting:
                        inherited = inherited[:i]     # a loop no real kernel makes, but data can
                        break
                chain += inherited[:ANCESTORS_KEPT - 1]
        entry.ancestry = chain
        return chain

    def user_name(self, uid):
        """The user name of uid from the passwd database, or str(uid) when it has none."""
        with self._lock:
            name = self._users.get(uid)
        if name is not None:
            return name
        try:
            name = pwd.getpwuid(uid).pw_name
        except (KeyError, TypeError, ValueError, OverflowError):
            name = str(uid)
        with self._lock:
            self._counts["user_lookups"] += 1
            if len(self._users) >= self._max_users:
                self._users.clear()   # uids are few; a full cache means churn, start again
            self._users[uid] = name
        return name

    def info(self, pid):
        """The tapio.v1.Process message for pid, or None when it is unknown."""
        entry = self._lookup(pid)
        if entry is None:
            return None
        return self._message(entry)

    def _message(self, entry):
        message = events_pb2.Process()
        if entry.executable:
            message.executable = entry.executable
        if entry.command_line:
            message.command_line = entry.command_line
        message.user = self.user_name(entry.uid)
        message.ancestors.extend(self._ancestry(entry))
        if entry.start_boot_ns:
            message.start_time_ns = max(0, entry.start_boot_ns + self.boot_to_wall_ns)
        return message

    def process_bytes(self, pid):
        """The serialized tapio.v1.Process for pid (cached until the process execs), or None."""
        entry = self._lookup(pid)
        if entry is None:
            return None
        wire = entry.wire
        if wire is None:
            wire = self._message(entry).SerializeToString()
            entry.wire = wire
        return wire

    def cgroup_paths(self):
        """(pid, cgroup v2 path) of the live processes read from /proc: seeds for state that is
        otherwise learnt from events (e.g. systemd.UnitRestarts.track)."""
        with self._lock:
            return [(e.pid, e.cgroup_path) for e in self._entries.values()
                    if e.cgroup_path and e.exited_at is None]

    def __len__(self):
        with self._lock:
            return len(self._entries)

    def __contains__(self, pid):
        with self._lock:
            return pid in self._entries

    def stats(self):
        with self._lock:
            out = dict(self._counts)
            out["entries"] = len(self._entries)
            return out
