"""What the server keeps: recent events in memory, semantic groups in SQLite, live subscriptions.

- Recent events: per collector, the newest decoded batches (the bytes as they arrived, no dict
  per event) up to `recent_events` events; queries build dicts only for the events they return.
- Groups: an SQLite file (WAL mode) with each group's latest version and its events, so they
  survive a restart; retention by age (`retention_s`, on the group's end) and by count
  (`max_groups`, the oldest go first). A group still open when the server stopped comes back
  with status "interrupted".
- Subscriptions: other threads (gRPC Subscribe, the HTTP live view) get new events and group
  versions matching a Filter through a bounded queue each; a subscriber that does not keep up
  loses items, and they are counted (Subscription.dropped, stats()["subscriber_drops"]).

Thread safety: the ingest engine thread writes (add_batch, put_group); any thread reads. One lock
guards the SQLite connection, another the rings and the subscriber list.
"""
import collections
import dataclasses
import json
import logging
import os
import queue
import re
import sqlite3
import threading
import time

from tapio import vocab
from tapio._fast.correlate import match_records

log = logging.getLogger("tapio.server.store")

EVENT_TYPES = vocab.EVENT_TYPE_NUMBERS
GROUP_KINDS = vocab.GROUP_KINDS

_SCHEMA = """
CREATE TABLE IF NOT EXISTS groups (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    status TEXT NOT NULL,
    severity TEXT NOT NULL,
    start_ns INTEGER NOT NULL,
    end_ns INTEGER NOT NULL,
    collector_id TEXT NOT NULL,
    body TEXT NOT NULL,
    events TEXT NOT NULL,
    updated_at_ns INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS groups_kind_seq ON groups (kind, seq);
CREATE INDEX IF NOT EXISTS groups_end ON groups (end_ns);
"""


# ---- filters ----------------------------------------------------------------------------------

def _compile(pattern, what):
    if pattern in (None, ""):
        return None
    try:
        return re.compile(pattern)
    except re.error as e:
        raise ValueError(f"{what} {pattern!r} is not a regular expression: {e}") from None


def _as_tuple(value):
    if value in (None, "", ()):
        return ()
    if isinstance(value, (list, tuple, set, frozenset)):
        return tuple(value)
    return (value,)


@dataclasses.dataclass(frozen=True)
class Match:
    """One filter, as in Tetragon's allow/deny lists: every field that is set must match; a list
    field matches when any of its values does. Fields that do not apply to an item make it fail
    (`types` selects events only, `kinds` groups only)."""
    types: tuple = ()          # event type names: exec, exit, tcp_connect, ...
    pids: tuple = ()
    comm: object = None        # compiled regex (search)
    binary: object = None      # compiled regex on the executable path
    containers: tuple = ()     # container id prefixes, or container names
    pods: tuple = ()           # pod names (regex search) or pod UIDs
    namespaces: tuple = ()
    kinds: tuple = ()          # group kinds
    collectors: tuple = ()

    @classmethod
    def make(cls, types=(), pids=(), comm=None, binary=None, containers=(), pods=(),
             namespaces=(), kinds=(), collectors=()):
        types = tuple(vocab.event_type_name(vocab.event_type_number(t)) for t in _as_tuple(types))
        kinds = tuple(vocab.group_kind(str(k)) for k in _as_tuple(kinds))
        pods = tuple(str(p) for p in _as_tuple(pods))
        for p in pods:
            _compile(p, "pod")
        return cls(types=types, pids=tuple(int(p) for p in _as_tuple(pids)),
                   comm=_compile(comm, "comm"), binary=_compile(binary, "binary"),
                   containers=tuple(str(c) for c in _as_tuple(containers) if c), pods=pods,
                   namespaces=tuple(str(n) for n in _as_tuple(namespaces)), kinds=kinds,
                   collectors=tuple(str(c) for c in _as_tuple(collectors)))

    def _subject(self, pids, comm, binary, context, collector):
        if self.pids and not any(p in self.pids for p in pids):
            return False
        if self.comm is not None and not self.comm.search(comm or ""):
            return False
        if self.binary is not None and not self.binary.search(binary or ""):
            return False
        if self.containers:
            cid, name = context.get("container_id", ""), context.get("container_name", "")
            if not any((cid and cid.startswith(c)) or c == name for c in self.containers):
                return False
        if self.pods:
            name, uid = context.get("pod_name", ""), context.get("pod_uid", "")
            if not any(p == uid or (name and re.search(p, name)) for p in self.pods):
                return False
        if self.namespaces and context.get("namespace", "") not in self.namespaces:
            return False
        if self.collectors and collector not in self.collectors:
            return False
        return True

    def matches_event(self, event):
        if self.kinds:
            return False
        if self.types and event.get("type") not in self.types:
            return False
        process = event.get("process") or {}
        binary = process.get("executable") or (event.get("exec") or {}).get("filename")
        return self._subject((event.get("pid"),), event.get("comm"), binary,
                             event.get("context") or {}, event.get("collector_id"))

    def matches_group(self, group):
        if self.types:
            return False
        if self.kinds and group.get("kind") not in self.kinds:
            return False
        a = group.get("attributes") or {}
        pids = a.get("pids") or ([a["pid"]] if a.get("pid") is not None else [])
        return self._subject(pids, a.get("comm"), a.get("executable"), a, group.get("collector_id"))


@dataclasses.dataclass(frozen=True)
class Filter:
    """Allow and deny lists of Matches: an item passes when it matches some allow entry (or the
    allow list is empty) and no deny entry."""
    allow: tuple = ()
    deny: tuple = ()

    @classmethod
    def of(cls, spec):
        """A Filter from None (everything), a Filter, a Match, or a dict of Match.make keywords
        (one allow entry), or {"allow": [dicts], "deny": [dicts]}."""
        if spec is None:
            return cls()
        if isinstance(spec, Filter):
            return spec
        if isinstance(spec, Match):
            return cls(allow=(spec,))
        if isinstance(spec, dict):
            if "allow" in spec or "deny" in spec:
                return cls(allow=tuple(Match.make(**m) for m in spec.get("allow") or ()),
                           deny=tuple(Match.make(**m) for m in spec.get("deny") or ()))
            return cls(allow=(Match.make(**spec),))
        raise TypeError(f"a filter is a Filter, a Match or a dict, not {type(spec).__name__}")

    def matches_event(self, event):
        if self.allow and not any(m.matches_event(event) for m in self.allow):
            return False
        return not any(m.matches_event(event) for m in self.deny)

    def matches_group(self, group):
        if self.allow and not any(m.matches_group(group) for m in self.allow):
            return False
        return not any(m.matches_group(group) for m in self.deny)

    def event_types(self):
        """The event type numbers this filter can let through, or None for any."""
        if not self.allow or any(not m.types and not m.kinds for m in self.allow):
            return None
        return {EVENT_TYPES[t] for m in self.allow for t in m.types}


class Subscription:
    """New items for one subscriber: ("event", dict) and ("group", dict), through a bounded
    queue. get() waits (bounded by its timeout); dropped counts what did not fit."""

    def __init__(self, store, filter, events, groups, maxsize):
        self._store = store
        self.filter = filter
        self.events = events
        self.groups = groups
        self._types = filter.event_types()
        self._queue = queue.Queue(maxsize)
        self.dropped = 0
        self.delivered = 0
        self.closed = False

    def offer(self, item):
        try:
            self._queue.put_nowait(item)
            self.delivered += 1
        except queue.Full:
            self.dropped += 1
            self._store._count_drop()

    def get(self, timeout=None):
        """The next item, or None after `timeout` seconds without one (or once closed)."""
        if self.closed and self._queue.empty():
            return None
        try:
            item = self._queue.get(timeout=timeout)
        except queue.Empty:
            return None
        return None if item is _CLOSED else item

    def close(self):
        if not self.closed:
            self.closed = True
            self._store._unsubscribe(self)
            try:
                self._queue.put_nowait(_CLOSED)   # wakes a get() that waits
            except queue.Full:
                pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


_CLOSED = object()


class Store:
    def __init__(self, db_path=None, *, recent_events=10000, retention_s=7 * 86400,
                 max_groups=100_000, max_group_events=200, clock=time.time_ns):
        self.db_path = db_path
        self.recent_events_max = recent_events
        self.retention_ns = int(retention_s * 1e9)
        self.max_groups = max_groups
        self.max_group_events = max_group_events
        self._clock = clock
        self._db_lock = threading.Lock()
        self._lock = threading.Lock()
        self._rings = {}            # collector id -> deque of DecodedBatch
        self._ring_events = {}      # collector id -> events in its ring
        self._subscribers = []
        self.stats_sources = {}     # name -> callable returning a dict, merged into stats()
        self._counters = collections.Counter()
        self._writes_since_retention = 0
        self._db = self._open(db_path)

    # -- SQLite ---------------------------------------------------------------------------------
    def _open(self, path):
        if path and path != ":memory:":
            directory = os.path.dirname(os.path.abspath(path))
            os.makedirs(directory, exist_ok=True)
        try:
            db = sqlite3.connect(path or ":memory:", check_same_thread=False, isolation_level=None,
                                 timeout=10)
            if path and path != ":memory:":
                mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                if mode.lower() != "wal":
                    log.warning("SQLite %s: journal mode is %s, not WAL", path, mode)
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(_SCHEMA)
            interrupted = db.execute(
                "UPDATE groups SET status = 'interrupted' WHERE status = 'open'").rowcount
        except sqlite3.DatabaseError as e:
            raise OSError(f"cannot use {path} as the group database: {e}") from None
        if interrupted:
            log.info("%d group(s) were still open when the server stopped: marked interrupted",
                     interrupted)
        return db

    def put_group(self, group, closed=None):
        """Insert or update a group (its latest version wins), then tell subscribers. `group` is
        the engine's dict, with "events" when it has them."""
        events = group.get("events") or []
        body = {k: v for k, v in group.items() if k != "events"}
        now = self._clock()
        row = (group["id"], group["kind"], group.get("status", "closed"), group.get("severity", "info"),
               int(group.get("start_ns") or 0), int(group.get("end_ns") or 0),
               group.get("collector_id") or "", json.dumps(body, separators=(",", ":")),
               json.dumps(events[: self.max_group_events], separators=(",", ":")), now)
        with self._db_lock:
            self._db.execute(
                "INSERT INTO groups (id, kind, status, severity, start_ns, end_ns, collector_id, body,"
                " events, updated_at_ns) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT(id) DO UPDATE SET status=excluded.status, severity=excluded.severity,"
                " start_ns=excluded.start_ns, end_ns=excluded.end_ns, body=excluded.body,"
                " events=excluded.events, updated_at_ns=excluded.updated_at_ns", row)
            self._writes_since_retention += 1
            if self._writes_since_retention >= 100:
                self._retain_locked(now)
        self._counters["group_writes"] += 1
        self._publish_group(body)

    __call__ = put_group

    def retain(self):
        """Apply retention now (put_group does every 100 writes)."""
        with self._db_lock:
            self._retain_locked(self._clock())

    def _retain_locked(self, now):
        self._writes_since_retention = 0
        removed = 0
        if self.retention_ns:
            removed += self._db.execute("DELETE FROM groups WHERE end_ns < ? AND status != 'open'",
                                        (now - self.retention_ns,)).rowcount
        if self.max_groups:
            removed += self._db.execute(
                "DELETE FROM groups WHERE seq <= (SELECT seq FROM groups ORDER BY seq DESC"
                " LIMIT 1 OFFSET ?)", (self.max_groups,)).rowcount
        self._counters["groups_expired"] += removed

    @staticmethod
    def _row_group(body, status):
        group = json.loads(body)
        group["status"] = status
        return group

    def groups(self, *, kind=None, since_ns=None, limit=100, before=None):
        """Groups newest first (by when they were first stored): of one kind, active since
        `since_ns` (their end is at or after it), older than the group `before` (a cursor: the
        last id of the previous page)."""
        where, args = [], []
        if kind:
            where.append("kind = ?")
            args.append(kind)
        if since_ns:
            where.append("end_ns >= ?")
            args.append(int(since_ns))
        with self._db_lock:
            if before:
                row = self._db.execute("SELECT seq FROM groups WHERE id = ?", (before,)).fetchone()
                if row is None:
                    return []
                where.append("seq < ?")
                args.append(row[0])
            sql = "SELECT body, status FROM groups"
            if where:
                sql += " WHERE " + " AND ".join(where)
            sql += " ORDER BY seq DESC LIMIT ?"
            rows = self._db.execute(sql, (*args, max(0, int(limit)))).fetchall()
        return [self._row_group(body, status) for body, status in rows]

    def group(self, group_id):
        """One group with its "events" (in full, the first max_group_events), or None."""
        with self._db_lock:
            row = self._db.execute("SELECT body, status, events FROM groups WHERE id = ?",
                                   (group_id,)).fetchone()
        if row is None:
            return None
        group = self._row_group(row[0], row[1])
        group["events"] = json.loads(row[2])
        return group

    def group_counts(self):
        with self._db_lock:
            rows = self._db.execute("SELECT kind, COUNT(*) FROM groups GROUP BY kind").fetchall()
        return dict(rows)

    def db_bytes(self):
        if not self.db_path or self.db_path == ":memory:":
            with self._db_lock:
                pages = self._db.execute("PRAGMA page_count").fetchone()[0]
                size = self._db.execute("PRAGMA page_size").fetchone()[0]
            return pages * size
        total = 0
        for suffix in ("", "-wal", "-shm"):
            try:
                total += os.path.getsize(self.db_path + suffix)
            except OSError:
                pass
        return total

    # -- recent events --------------------------------------------------------------------------
    def add_batch(self, batch, state=None):
        """The ingest consumer: keep the batch in its collector's ring; tell event subscribers."""
        n = len(batch)
        if not n:
            return
        collector = getattr(state, "collector_id", None) or batch.collector_id or "unknown"
        with self._lock:
            ring = self._rings.get(collector)
            if ring is None:
                ring = self._rings[collector] = collections.deque()
                self._ring_events[collector] = 0
            ring.append(batch)
            self._ring_events[collector] += n
            while self._ring_events[collector] > self.recent_events_max and len(ring) > 1:
                self._ring_events[collector] -= len(ring.popleft())
            subscribers = [s for s in self._subscribers if s.events]
        self._counters["events_received"] += n
        if subscribers:
            self._publish_events(batch, collector, subscribers)

    def recent_events(self, *, type=None, pid=None, comm=None, container=None, collector=None,
                      limit=100):
        """Recent events newest first, as dicts with "collector_id"; each filter is exact (type a
        name like "exec"; container an id prefix or a container name)."""
        type_number = 0
        if type:
            type_number = vocab.event_type_number(type)
        limit = max(0, int(limit))
        comm_b = comm.encode() if comm else None
        container_b = container.encode() if container else None
        with self._lock:
            rings = {cid: list(ring) for cid, ring in self._rings.items()
                     if collector is None or cid == collector}
        found = []
        for cid, batches in rings.items():
            wanted = limit
            for batch in reversed(batches):
                if wanted <= 0:
                    break
                for i in match_records(batch, type_number, int(pid or 0), comm_b, container_b, wanted):
                    event = batch.event_dict(i)
                    event["collector_id"] = cid
                    found.append(event)
                    wanted -= 1
        found.sort(key=lambda e: e["timestamp_ns"], reverse=True)
        return found[:limit]

    def events_kept(self):
        with self._lock:
            return sum(self._ring_events.values())

    # -- subscriptions --------------------------------------------------------------------------
    def subscribe(self, filter=None, *, events=True, groups=True, maxsize=1000):
        """A Subscription to new events and/or group versions that pass `filter` (see
        Filter.of). Close it when done (it is a context manager)."""
        sub = Subscription(self, Filter.of(filter), events, groups, maxsize)
        with self._lock:
            self._subscribers.append(sub)
        return sub

    def _unsubscribe(self, sub):
        with self._lock:
            if sub in self._subscribers:
                self._subscribers.remove(sub)

    def _count_drop(self):
        self._counters["subscriber_drops"] += 1

    def _publish_group(self, group):
        with self._lock:
            subscribers = [s for s in self._subscribers if s.groups]
        for sub in subscribers:
            if sub.filter.matches_group(group):
                sub.offer(("group", group))

    def _publish_events(self, batch, collector, subscribers):
        types = set()
        for sub in subscribers:
            t = sub._types
            if t is None:
                types = None
                break
            types |= t
        if types is None:
            indices = range(len(batch))
        else:
            indices = sorted(i for t in types for i in match_records(batch, t))
        for i in indices:
            event = batch.event_dict(i)
            event["collector_id"] = collector
            for sub in subscribers:
                if sub.filter.matches_event(event):
                    sub.offer(("event", event))

    # -- health and counters --------------------------------------------------------------------
    def stats(self):
        with self._lock:
            subscribers = len(self._subscribers)
            collectors = len(self._rings)
            kept = sum(self._ring_events.values())
        with self._db_lock:
            groups = self._db.execute("SELECT COUNT(*) FROM groups").fetchone()[0]
        out = {
            "events_received": self._counters["events_received"],
            "events_kept": kept,
            "collectors": collectors,
            "groups": groups,
            "group_writes": self._counters["group_writes"],
            "groups_expired": self._counters["groups_expired"],
            "db_path": self.db_path or ":memory:",
            "db_bytes": self.db_bytes(),
            "subscribers": subscribers,
            "subscriber_drops": self._counters["subscriber_drops"],
        }
        for name, source in list(self.stats_sources.items()):
            try:
                out[name] = source()
            except Exception as e:   # a stats source must not break the others
                out[name] = {"error": str(e)}
        return out

    def close(self):
        with self._lock:
            subscribers = list(self._subscribers)
        for sub in subscribers:
            sub.close()
        with self._db_lock:
            if self._db is not None:
                try:
                    self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                except sqlite3.DatabaseError:
                    pass
                self._db.close()
                self._db = None
