"""Semantic groups in an SQLite file (WAL mode): each group's latest version and its events, so
they survive a restart.

Retention by age (`retention_s`, on the group's end) and by count (`max_groups`, the oldest go
first), applied every 100 writes and on retain(). A group still open when the server stopped
comes back with status "interrupted". One lock guards the connection: any thread may call.
"""
import json
import logging
import os
import sqlite3
import threading

log = logging.getLogger("tapio.server.store")

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

RETAIN_EVERY = 100      # writes between two retention passes


def _json(value):
    return json.dumps(value, separators=(",", ":"))


def group_row(group, max_events, now_ns):
    """(the group without its events, the stored row) of an engine group dict, with "events" when
    it has them: id, kind, status, severity, start_ns, end_ns, collector_id, body JSON, events
    JSON (at most `max_events`), updated_at_ns. The row of both the SQLite and PostgreSQL stores."""
    events = group.get("events") or []
    body = {k: v for k, v in group.items() if k != "events"}
    return body, (group["id"], group["kind"], group.get("status", "closed"),
                  group.get("severity", "info"), int(group.get("start_ns") or 0),
                  int(group.get("end_ns") or 0), group.get("collector_id") or "", _json(body),
                  _json(events[:max_events]), now_ns)


class GroupStore:
    def __init__(self, db_path=None, *, retention_s=7 * 86400, max_groups=100_000,
                 max_group_events=200):
        self.db_path = db_path
        self.retention_ns = int(retention_s * 1e9)
        self.max_groups = max_groups
        self.max_group_events = max_group_events
        self.writes = 0
        self.expired = 0
        self._lock = threading.Lock()
        self._writes_since_retention = 0
        self._db = self._open(db_path)

    @property
    def in_memory(self):
        return not self.db_path or self.db_path == ":memory:"

    def _open(self, path):
        if not self.in_memory:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        try:
            db = sqlite3.connect(path or ":memory:", check_same_thread=False, isolation_level=None,
                                 timeout=10)
            if not self.in_memory:
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

    def put(self, group, now_ns):
        """Insert or update a group (its latest version wins); returns (the group without its
        events, the size in bytes of its stored JSON body). `group` is the engine's dict, with
        "events" when it has them."""
        body, row = group_row(group, self.max_group_events, now_ns)
        with self._lock:
            self._db.execute(
                "INSERT INTO groups (id, kind, status, severity, start_ns, end_ns, collector_id, body,"
                " events, updated_at_ns) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT(id) DO UPDATE SET status=excluded.status, severity=excluded.severity,"
                " start_ns=excluded.start_ns, end_ns=excluded.end_ns, body=excluded.body,"
                " events=excluded.events, updated_at_ns=excluded.updated_at_ns", row)
            self.writes += 1
            self._writes_since_retention += 1
            if self._writes_since_retention >= RETAIN_EVERY:
                self._retain_locked(now_ns)
        return body, len(row[7])

    def retain(self, now_ns):
        with self._lock:
            self._retain_locked(now_ns)

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
        self.expired += removed

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
        with self._lock:
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
        with self._lock:
            row = self._db.execute("SELECT body, status, events FROM groups WHERE id = ?",
                                   (group_id,)).fetchone()
        if row is None:
            return None
        group = self._row_group(row[0], row[1])
        group["events"] = json.loads(row[2])
        return group

    def counts(self):
        """{kind: groups stored}."""
        with self._lock:
            return dict(self._db.execute("SELECT kind, COUNT(*) FROM groups GROUP BY kind").fetchall())

    def count(self):
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM groups").fetchone()[0]

    def db_bytes(self):
        """The database's size: on disk with its WAL, or its pages in memory."""
        if self.in_memory:
            with self._lock:
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

    def close(self):
        with self._lock:
            if self._db is not None:
                try:
                    self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                except sqlite3.DatabaseError:
                    pass
                self._db.close()
                self._db = None
