"""Groups and the event history in PostgreSQL (`tapio-server --db postgresql://...`): what the
replicas of a scaled-out server share (docs/scaling.md).

PostgresStore has GroupStore's methods (put, groups, group, counts, count, retain, db_bytes,
close) over the table tapio_groups, where the latest version of a group wins (upsert by id), and
the event history, tapio_events: every event of every batch, written by record_events with
COPY (binary rows made in C by tapio._fast.history.copy_rows) straight into the table; when some
of the batch is there already (a collector's re-send, a replay from the bus: the unique key
(collector_id, batch_id, idx) refuses the COPY), the rows go through a per-connection staging
table and INSERT ... ON CONFLICT DO NOTHING instead, so that a batch is stored once.

Threads (psycopg 3, its sync client): every write goes through one connection under a lock (the
ingest engine thread writes the history and, through the correlation engine, groups; the
correlation timer thread writes groups); reads take a connection from a small pool, so a slow
query on an HTTP or gRPC worker thread never holds ingest back.

Failures at run time: a lost connection is dropped and opened again with backoff (0.1 s doubling
to 5 s). record_events blocks until its batch is stored: ingest acks a batch only after its
consumers ran, so nothing is acked that is not in the history, and while it waits the ingest
queue fills and collectors are PAUSEd (tapio/server/ingest.py). A group version that cannot be
written is held (latest per id, at most PENDING_GROUPS) and written with the next write that
works. Reads fail fast with StoreUnavailable (HTTP 503, gRPC UNAVAILABLE). Every failure is
counted (`errors`).
"""
import collections
import json
import logging
import threading
import time
import urllib.parse

import psycopg

from tapio._fast.history import COPY_HEADER, COPY_TRAILER, HISTORY_COLUMNS, copy_rows
from tapio.server.store import StoreUnavailable
from tapio.server.store.groups import group_row

log = logging.getLogger("tapio.server.store")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tapio_groups (
    seq bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
    id text PRIMARY KEY,
    kind text NOT NULL,
    status text NOT NULL,
    severity text NOT NULL,
    start_ns bigint NOT NULL,
    end_ns bigint NOT NULL,
    collector_id text NOT NULL,
    body text NOT NULL,
    events text NOT NULL,
    updated_at_ns bigint NOT NULL
);
CREATE INDEX IF NOT EXISTS tapio_groups_kind_seq ON tapio_groups (kind, seq);
CREATE INDEX IF NOT EXISTS tapio_groups_end ON tapio_groups (end_ns);
CREATE TABLE IF NOT EXISTS tapio_events (
    seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    collector_id text NOT NULL,
    batch_id bigint NOT NULL,
    idx integer NOT NULL,
    node text NOT NULL,
    event_id text NOT NULL,
    type integer NOT NULL,
    pid bigint NOT NULL,
    timestamp_ns bigint NOT NULL,
    comm text NOT NULL,
    container_id text NOT NULL,
    container_name text NOT NULL,
    received_ns bigint NOT NULL,
    event bytea NOT NULL,
    UNIQUE (collector_id, batch_id, idx)
);
"""
# replicas that start together must not create the tables twice: one at a time
_SCHEMA_LOCK = "SELECT pg_advisory_xact_lock(hashtext('tapio-schema'))"

_COLUMNS = ", ".join(HISTORY_COLUMNS)
# the staging table of one connection: a batch is copied in, then inserted where it is new
_STAGE = (f"CREATE TEMP TABLE tapio_events_in ON COMMIT DELETE ROWS AS SELECT {_COLUMNS} "
          f"FROM tapio_events WITH NO DATA")
_COPY_NEW = f"COPY tapio_events ({_COLUMNS}) FROM STDIN (FORMAT BINARY)"
_COPY_IN = f"COPY tapio_events_in ({_COLUMNS}) FROM STDIN (FORMAT BINARY)"
# in the order of the COPY (seq is the order of arrival): the staging table is emptied at every
# commit and only appended to, so its physical order (ctid) is that order
_INSERT_NEW = (f"INSERT INTO tapio_events ({_COLUMNS}) SELECT {_COLUMNS} FROM tapio_events_in "
               f"ORDER BY ctid ON CONFLICT (collector_id, batch_id, idx) DO NOTHING")

_UPSERT_GROUP = (
    "INSERT INTO tapio_groups (id, kind, status, severity, start_ns, end_ns, collector_id, body,"
    " events, updated_at_ns) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
    " ON CONFLICT (id) DO UPDATE SET status=excluded.status, severity=excluded.severity,"
    " start_ns=excluded.start_ns, end_ns=excluded.end_ns, body=excluded.body,"
    " events=excluded.events, updated_at_ns=excluded.updated_at_ns")

RETAIN_EVERY = 100          # group writes between two group retention passes
HISTORY_RETAIN_EVERY = 30.0  # seconds between two history retention passes
RETAIN_CHUNK = 50_000       # history rows deleted per statement (short locks, bounded WAL)
RETAIN_CHUNKS = 10          # statements per pass: a large backlog goes over several passes,
                            # so that ingest, whose thread runs them, is held back only briefly
HISTORY_SCAN = 1_000_000    # a history query looks at the newest events at most
PENDING_GROUPS = 10_000     # group versions held while the database is away
READERS = 4                 # pooled read connections
CONNECT_TIMEOUT = 5         # seconds
STATEMENT_TIMEOUT_MS = 15_000
BACKOFF_MIN, BACKOFF_MAX = 0.1, 5.0


def redacted(dsn):
    """The DSN without its password, for messages."""
    try:
        parts = urllib.parse.urlsplit(dsn)
    except ValueError:
        return "the --db URL"
    if parts.password is None:
        return dsn
    netloc = f"{parts.username or ''}:***@{parts.hostname or ''}"
    if parts.port:
        netloc += f":{parts.port}"
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def one_line(error):
    """A psycopg error as one line (libpq's messages span several)."""
    return "; ".join(line.strip() for line in str(error).splitlines() if line.strip())


class PostgresStore:
    def __init__(self, dsn, *, retention_s=7 * 86400, max_groups=100_000, max_group_events=200,
                 history_retention_s=86400, clock=time.time_ns):
        self.dsn = dsn
        self.db_path = redacted(dsn)
        self.in_memory = False
        self.retention_ns = int(retention_s * 1e9)
        self.history_retention_ns = int(history_retention_s * 1e9)
        self.max_groups = max_groups
        self.max_group_events = max_group_events
        self._clock = clock
        self.writes = 0
        self.expired = 0
        self.events_written = 0          # history rows inserted by this process
        self.events_replayed = 0         # history rows already there (a batch stored again)
        self.history_expired = 0
        self.errors = 0                  # failed connects and statements
        self.groups_lost = 0             # held versions pushed out (PENDING_GROUPS) or refused
        self.available = True
        self._closing = threading.Event()
        self._write_lock = threading.Lock()
        self._writer = None
        self._pending = collections.OrderedDict()       # group id -> row, oldest first
        self._writes_since_retention = 0
        self._history_retained_at = 0.0
        self._readers = []
        self._readers_lock = threading.Lock()
        try:
            self._writer = self._connect()
            with self._writer.transaction():
                self._writer.execute(_SCHEMA_LOCK)
                self._writer.execute(_SCHEMA)
            self._writer.execute(_STAGE)
        except psycopg.Error as e:
            if self._writer is not None:
                self._writer.close()
            raise OSError(f"cannot use the PostgreSQL database {self.db_path}: {one_line(e)}") from None

    # -- connections ---------------------------------------------------------------------------
    def _connect(self, stage=False):
        conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=CONNECT_TIMEOUT,
                               application_name="tapio-server",
                               options=f"-c statement_timeout={STATEMENT_TIMEOUT_MS}")
        if stage:
            conn.execute(_STAGE)
        return conn

    def _failed(self, what, error):
        self.errors += 1
        if self.available:
            log.warning("PostgreSQL %s: %s failed: %s (retrying with backoff)", self.db_path, what,
                        one_line(error))
        self.available = False

    def _write(self, what, work, block):
        """work(connection) on the write connection; a lost connection is opened again. With
        `block`, retried with backoff until it works (StoreUnavailable only when the store
        closes); without, StoreUnavailable at once."""
        delay = BACKOFF_MIN
        while True:
            with self._write_lock:
                if self._closing.is_set():
                    raise StoreUnavailable(f"the store is closed: {what} not written")
                try:
                    if self._writer is None or self._writer.closed:
                        self._writer = self._connect(stage=True)
                    self._flush_pending()
                    result = work(self._writer)
                    if not self.available:
                        log.info("PostgreSQL %s: writing again", self.db_path)
                    self.available = True
                    return result
                except (psycopg.OperationalError, psycopg.InterfaceError) as e:
                    self._failed(what, e)
                    if self._writer is not None:
                        self._writer.close()
                    self._writer = None
                    if not block:
                        raise StoreUnavailable(f"PostgreSQL {self.db_path}: {one_line(e)}") from None
            if self._closing.wait(delay):
                raise StoreUnavailable(f"the store is closed: {what} not written")
            delay = min(delay * 2, BACKOFF_MAX)

    def _read(self, work):
        """work(connection) on a pooled read connection; StoreUnavailable when the database is
        not there."""
        with self._readers_lock:
            conn = self._readers.pop() if self._readers else None
        try:
            if conn is None or conn.closed:
                conn = self._connect()
            result = work(conn)
        except (psycopg.OperationalError, psycopg.InterfaceError) as e:
            self.errors += 1
            if conn is not None:
                conn.close()
            raise StoreUnavailable(f"PostgreSQL {self.db_path}: {one_line(e)}") from None
        except BaseException:
            if conn is not None:
                conn.close()        # not back into the pool in a state nobody checked
            raise
        with self._readers_lock:
            if len(self._readers) < READERS and not self._closing.is_set():
                self._readers.append(conn)
                conn = None
        if conn is not None:
            conn.close()
        return result

    # -- groups (GroupStore's interface) -------------------------------------------------------
    def put(self, group, now_ns):
        """Insert or update a group (its latest version wins); returns (the group without its
        events, the size in bytes of its stored JSON body). Never blocks on a missing database:
        the version is held and written with the next write that works."""
        body, row = group_row(group, self.max_group_events, now_ns)
        with self._write_lock:
            self._pending.pop(row[0], None)
            self._pending[row[0]] = row
            if len(self._pending) > PENDING_GROUPS:
                self._pending.popitem(last=False)
                self.groups_lost += 1
        try:
            self._write("a group", lambda conn: self._retain_maybe(conn, now_ns), block=False)
        except StoreUnavailable:
            pass            # held in _pending
        return body, len(row[7])

    def _flush_pending(self):
        """Write the held group versions (under the write lock). A version PostgreSQL refuses
        (not for a lost connection: for what it holds) is logged and dropped, one by one, so that
        it cannot hold back the others and the history."""
        if not self._pending:
            return
        rows = list(self._pending.values())
        try:
            with self._writer.transaction():
                with self._writer.cursor() as cur:
                    cur.executemany(_UPSERT_GROUP, rows)
        except (psycopg.OperationalError, psycopg.InterfaceError):
            raise
        except psycopg.Error:
            for row in rows:
                try:
                    self._writer.execute(_UPSERT_GROUP, row)
                    self.writes += 1
                except (psycopg.OperationalError, psycopg.InterfaceError):
                    raise
                except psycopg.Error as e:
                    self.errors += 1
                    self.groups_lost += 1
                    log.warning("PostgreSQL %s: group %r refused: %s", self.db_path, row[0][:64],
                                one_line(e))
                self._pending.pop(row[0], None)
            return
        self._pending.clear()
        self.writes += len(rows)
        self._writes_since_retention += len(rows)

    def _retain_maybe(self, conn, now_ns):
        if self._writes_since_retention >= RETAIN_EVERY:
            self._retain_groups(conn, now_ns)

    def retain(self, now_ns):
        def work(conn):
            self._retain_groups(conn, now_ns)
            self._retain_history(conn, now_ns)
        self._write("retention", work, block=False)

    def _retain_groups(self, conn, now):
        self._writes_since_retention = 0
        removed = 0
        if self.retention_ns:
            removed += conn.execute("DELETE FROM tapio_groups WHERE end_ns < %s AND status != 'open'",
                                    (now - self.retention_ns,)).rowcount
        if self.max_groups:
            removed += conn.execute(
                "DELETE FROM tapio_groups WHERE seq <= (SELECT seq FROM tapio_groups ORDER BY seq"
                " DESC LIMIT 1 OFFSET %s)", (self.max_groups,)).rowcount
        self.expired += removed

    def _retain_history(self, conn, now):
        """Remove the events received before the retention cut, oldest first, in chunks (at most
        RETAIN_CHUNKS of them). The history is in arrival order (seq), so the cut is the first row
        received after it."""
        self._history_retained_at = time.monotonic()
        if not self.history_retention_ns:
            return
        cut = now - self.history_retention_ns
        row = conn.execute("SELECT seq FROM tapio_events WHERE received_ns >= %s ORDER BY seq"
                           " LIMIT 1", (cut,)).fetchone()
        if row is None:
            row = conn.execute("SELECT max(seq) + 1 FROM tapio_events").fetchone()
        end = row[0]
        if end is None:
            return
        for _ in range(RETAIN_CHUNKS):
            if self._closing.is_set():
                break
            first = conn.execute("SELECT min(seq) FROM tapio_events").fetchone()[0]
            if first is None or first >= end:
                break
            self.history_expired += conn.execute(
                "DELETE FROM tapio_events WHERE seq < %s", (min(end, first + RETAIN_CHUNK),)).rowcount

    @staticmethod
    def _row_group(body, status):
        group = json.loads(body)
        group["status"] = status
        return group

    def groups(self, *, kind=None, since_ns=None, limit=100, before=None):
        """Groups newest first (by when they were first stored); see GroupStore.groups."""
        where, args = [], []
        if kind:
            where.append("kind = %s")
            args.append(kind)
        if since_ns:
            where.append("end_ns >= %s")
            args.append(int(since_ns))
        if before:
            where.append("seq < (SELECT seq FROM tapio_groups WHERE id = %s)")
            args.append(before)
        sql = "SELECT body, status FROM tapio_groups"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY seq DESC LIMIT %s"
        rows = self._read(lambda conn: conn.execute(sql, (*args, max(0, int(limit)))).fetchall())
        return [self._row_group(body, status) for body, status in rows]

    def group(self, group_id):
        """One group with its "events" (the first max_group_events), or None."""
        row = self._read(lambda conn: conn.execute(
            "SELECT body, status, events FROM tapio_groups WHERE id = %s", (group_id,)).fetchone())
        if row is None:
            return None
        group = self._row_group(row[0], row[1])
        group["events"] = json.loads(row[2])
        return group

    def counts(self):
        """{kind: groups stored}."""
        return dict(self._read(lambda conn: conn.execute(
            "SELECT kind, COUNT(*) FROM tapio_groups GROUP BY kind").fetchall()))

    def count(self):
        return self._read(lambda conn: conn.execute("SELECT COUNT(*) FROM tapio_groups").fetchone()[0])

    def db_bytes(self):
        """The tables' size on disk, indexes included."""
        return self._read(lambda conn: conn.execute(
            "SELECT pg_total_relation_size('tapio_groups') + pg_total_relation_size('tapio_events')"
        ).fetchone()[0])

    # -- the event history ---------------------------------------------------------------------
    def record_events(self, batch, collector_id):
        """Store every event of a decoded batch, once: a batch stored again adds nothing.
        Blocks (with backoff) while the database is away. Returns the events inserted."""
        return self.record_many([(batch, collector_id)])

    def record_many(self, batches):
        """record_events for several (batch, collector id) in one transaction: one commit (one
        flush of the WAL) for all of them, for a consumer that has several at hand."""
        batches = [(b, c) for b, c in batches if len(b)]
        if not batches:
            return 0
        now = self._clock()
        if len(batches) == 1:
            data = copy_rows(batches[0][0], batches[0][1], now)
        else:
            data = b"".join([COPY_HEADER, *(copy_rows(b, c, now, False) for b, c in batches),
                             COPY_TRAILER])
        events = sum(len(b) for b, _ in batches)

        def work(conn):
            try:
                # the common case, a batch not seen before: straight into the table
                with conn.transaction():
                    with conn.cursor() as cur:
                        with cur.copy(_COPY_NEW) as copy:
                            copy.write(data)
                inserted = events
            except psycopg.errors.UniqueViolation:
                # some of it is there already (a re-send, a replay): only what is new
                with conn.transaction():
                    with conn.cursor() as cur:
                        with cur.copy(_COPY_IN) as copy:
                            copy.write(data)
                        cur.execute(_INSERT_NEW)
                        inserted = cur.rowcount
            return inserted
        inserted = self._write("the event history", work, block=True)
        self.events_written += inserted
        self.events_replayed += events - inserted
        if time.monotonic() - self._history_retained_at > HISTORY_RETAIN_EVERY:
            try:
                self._write("history retention", lambda conn: self._retain_history(conn, now),
                            block=False)
            except StoreUnavailable:
                pass            # the next batch tries again
        return inserted

    def history_count(self, collector_id=None):
        if collector_id is None:
            sql, args = "SELECT COUNT(*) FROM tapio_events", ()
        else:
            sql, args = "SELECT COUNT(*) FROM tapio_events WHERE collector_id = %s", (collector_id,)
        return self._read(lambda conn: conn.execute(sql, args).fetchone()[0])

    def find_events(self, *, type_number=0, pid=0, comm=None, container=None, collector=None,
                    limit=100):
        """[(event wire bytes, collector id, node, batch id)] of the matching events, newest
        first (by arrival), among the newest HISTORY_SCAN: filters as RecentEvents.find, as text."""
        where, args = ["seq > (SELECT COALESCE(max(seq), 0) FROM tapio_events) - %s"], [HISTORY_SCAN]
        if type_number:
            where.append("type = %s")
            args.append(int(type_number))
        if pid:
            where.append("pid = %s")
            args.append(int(pid))
        if comm is not None:
            where.append("comm = %s")
            args.append(comm)
        if container is not None:
            where.append("((%s <> '' AND starts_with(container_id, %s)) OR container_name = %s)")
            args += [container, container, container]
        if collector is not None:
            where.append("collector_id = %s")
            args.append(collector)
        sql = (f"SELECT event, collector_id, node, batch_id FROM tapio_events WHERE {' AND '.join(where)} "
               f"ORDER BY seq DESC LIMIT %s")
        args.append(max(0, int(limit)))
        return self._read(lambda conn: conn.execute(sql, args).fetchall())

    # -- health and closing --------------------------------------------------------------------
    def stats(self):
        return {"backend": "postgresql", "available": self.available, "errors": self.errors,
                "events_written": self.events_written, "events_replayed": self.events_replayed,
                "history_expired": self.history_expired, "groups_held": len(self._pending),
                "groups_lost": self.groups_lost}

    def close(self):
        self._closing.set()
        with self._write_lock:
            if self._writer is not None and not self._writer.closed:
                try:
                    self._flush_pending()
                except psycopg.Error as e:
                    log.warning("PostgreSQL %s: %d group version(s) not written at exit: %s",
                                self.db_path, len(self._pending), one_line(e))
                self._writer.close()
            self._writer = None
        with self._readers_lock:
            readers, self._readers = self._readers, []
        for conn in readers:
            conn.close()
