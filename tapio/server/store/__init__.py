"""What the server keeps, behind one facade (`Store`) for ingest, the query services and HTTP:

groups.py         semantic groups in an SQLite file: latest versions, retention, restart
postgres.py       with a postgresql:// --db instead: groups and the event history in PostgreSQL,
                  shared by replicas; then recent_events, recent_wire and recent_matching answer
                  from the history (every replica's events), not from this process's memory
recent.py         recent events: the newest decoded batches per collector, bounded in bytes
subscriptions.py  live subscribers: bounded queues fed through the filter language
                  (tapio/server/filters.py)

Thread safety: the ingest engine thread writes (add_batch, put_group); any thread reads. Each
part has its own lock.
"""
import time

from tapio import vocab
from tapio.server.store.groups import GroupStore
from tapio.server.store.history_rows import decode_events
from tapio.server.store.recent import RecentEvents
from tapio.server.store.subscriptions import Item, Subscription, Subscriptions

__all__ = ["Item", "Store", "StoreUnavailable", "Subscription", "is_postgres"]


class StoreUnavailable(OSError):
    """The database is not there now (PostgreSQL at run time): the caller answers 503 /
    UNAVAILABLE, or waits."""


def is_postgres(db):
    """True when --db names a PostgreSQL database rather than an SQLite file."""
    return isinstance(db, str) and db.startswith(("postgresql://", "postgres://"))


class Store:
    def __init__(self, db_path=None, *, recent_events=10000, recent_bytes=64 << 20,
                 retention_s=7 * 86400, max_groups=100_000, max_group_events=200,
                 history_retention_s=86400, clock=time.time_ns):
        self._clock = clock
        self.history = None             # the event history: PostgreSQL only
        if is_postgres(db_path):
            from tapio.server.store.postgres import PostgresStore
            self.group_db = self.history = PostgresStore(
                db_path, retention_s=retention_s, max_groups=max_groups,
                max_group_events=max_group_events, history_retention_s=history_retention_s,
                clock=clock)
        else:
            self.group_db = GroupStore(db_path, retention_s=retention_s, max_groups=max_groups,
                                       max_group_events=max_group_events)
        self.recent = RecentEvents(recent_events, recent_bytes)
        self.subscriptions = Subscriptions()
        self.stats_sources = {}     # name -> callable returning a dict, merged into stats()
        self.events_received = 0

    @property
    def db_path(self):
        return self.group_db.db_path

    # -- groups ---------------------------------------------------------------------------------
    def put_group(self, group, closed=None):
        """Insert or update a group (its latest version wins), then tell subscribers. `group` is
        the engine's dict, with "events" when it has them."""
        body, nbytes = self.group_db.put(group, self._clock())
        self.subscriptions.publish_group(body, nbytes)

    __call__ = put_group

    def retain(self):
        """Apply retention now (put_group does every 100 writes)."""
        self.group_db.retain(self._clock())

    def groups(self, *, kind=None, since_ns=None, limit=100, before=None):
        """Groups newest first; see GroupStore.groups."""
        return self.group_db.groups(kind=kind, since_ns=since_ns, limit=limit, before=before)

    def group(self, group_id):
        """One group with its "events", or None."""
        return self.group_db.group(group_id)

    def group_counts(self):
        return self.group_db.counts()

    def db_bytes(self):
        return self.group_db.db_bytes()

    # -- the event history (PostgreSQL) ---------------------------------------------------------
    def record_events(self, batch, collector_id):
        """Store every event of a decoded batch in the history, once per (collector_id, batch id,
        index): a batch recorded again adds nothing. Blocks while the database is away (see
        postgres.py). Returns the events inserted; 0 without a history."""
        if self.history is None:
            return 0
        return self.history.record_events(batch, collector_id)

    def record_many(self, batches):
        """record_events for several [(batch, collector id)] in one transaction (one commit):
        for a consumer that has several batches at hand. Returns the events inserted."""
        if self.history is None:
            return 0
        return self.history.record_many(batches)

    def record_batch(self, batch, state=None):
        """record_events as an ingest consumer: the collector id is the stream's."""
        collector = getattr(state, "collector_id", None) or batch.collector_id or "unknown"
        self.record_events(batch, collector)

    def history_count(self, collector_id=None):
        """Events in the history (of one collector)."""
        if self.history is None:
            raise ValueError("no event history: --db is not a postgresql:// database")
        return self.history.history_count(collector_id)

    # -- recent events --------------------------------------------------------------------------
    def add_batch(self, batch, state=None):
        """The ingest consumer: keep the batch; tell event subscribers."""
        if not len(batch):
            return
        collector = getattr(state, "collector_id", None) or batch.collector_id or "unknown"
        self.recent.add(batch, collector)
        self.events_received += len(batch)
        self.subscriptions.publish_events(batch, collector)

    def forget_collectors(self, collector_ids):
        """The ingest forget listener: the recent events of ids the server no longer tracks."""
        self.recent.forget(collector_ids)

    def _find(self, type, pid, comm, container, collector, limit):
        return self.recent.find(type_number=vocab.event_type_number(type) if type else 0,
                                pid=int(pid or 0), comm=comm.encode() if comm else None,
                                container=container.encode() if container else None,
                                collector=collector, limit=max(0, int(limit)))

    def _history_find(self, type, pid, comm, container, collector, limit):
        return self.history.find_events(
            type_number=vocab.event_type_number(type) if type else 0, pid=int(pid or 0),
            comm=comm or None, container=container or None, collector=collector,
            limit=max(0, int(limit)))

    def recent_events(self, *, type=None, pid=None, comm=None, container=None, collector=None,
                      limit=100):
        """Recent events newest first, as dicts with "collector_id"; each filter is exact (type a
        name like "exec"; container an id prefix or a container name)."""
        if self.history is not None:
            found = self._history_find(type, pid, comm, container, collector, limit)
            return [dict(event, collector_id=cid) for event, _, cid in decode_events(found)]
        out = []
        for batch, i, cid in self._find(type, pid, comm, container, collector, limit):
            event = batch.event_dict(i)
            event["collector_id"] = cid
            out.append(event)
        return out

    def recent_wire(self, *, type=None, pid=None, comm=None, container=None, collector=None,
                    limit=100):
        """The same events as recent_events, as [(tapio.v1.Event bytes as received, collector id)]."""
        if self.history is not None:
            return [(bytes(row[0]), row[1])
                    for row in self._history_find(type, pid, comm, container, collector, limit)]
        return [(batch.event_wire(i), cid)
                for batch, i, cid in self._find(type, pid, comm, container, collector, limit)]

    def recent_matching(self, filter, limit, scan=10000):
        """Up to `limit` of the newest `scan` events that pass `filter` (a Filter), newest first,
        as [(event dict with "collector_id", its tapio.v1.Event bytes)]."""
        if self.history is not None:
            out = []
            for event, wire, cid in decode_events(self.history.find_events(limit=scan)):
                event["collector_id"] = cid
                if filter.matches_event(event):
                    out.append((event, wire))
                    if len(out) >= limit:
                        break
            return out
        out = []
        for batch, i, cid in self.recent.find(limit=scan):
            event = batch.event_dict(i)
            event["collector_id"] = cid
            if filter.matches_event(event):
                out.append((event, batch.event_wire(i)))
                if len(out) >= limit:
                    break
        return out

    def events_kept(self):
        return self.recent.events

    # -- subscriptions --------------------------------------------------------------------------
    def subscribe(self, filter=None, *, events=True, groups=True, maxsize=1000, max_bytes=8 << 20):
        """A Subscription to new events and/or group versions that pass `filter` (see
        Filter.of), bounded by `maxsize` items and `max_bytes`. Close it when done (it is a
        context manager)."""
        return self.subscriptions.subscribe(filter, events=events, groups=groups, maxsize=maxsize,
                                            max_bytes=max_bytes)

    # -- health and counters --------------------------------------------------------------------
    def stats(self):
        def ask(question):
            try:
                return question()
            except StoreUnavailable:
                return None         # PostgreSQL away: the rest still answers
        out = {
            "events_received": self.events_received,
            "events_kept": self.recent.events,
            "events_kept_bytes": self.recent.nbytes,
            "events_kept_max_bytes": self.recent.max_bytes,
            "batches_evicted": self.recent.batches_evicted,
            "collectors": self.recent.collectors(),
            "groups": ask(self.group_db.count),
            "group_writes": self.group_db.writes,
            "groups_expired": self.group_db.expired,
            "db_path": self.db_path or ":memory:",
            "db_bytes": ask(self.db_bytes),
            "subscribers": len(self.subscriptions),
            "subscriber_drops": self.subscriptions.drops,
        }
        if self.history is not None:
            out["postgresql"] = self.history.stats()
        for name, source in list(self.stats_sources.items()):
            try:
                out[name] = source()
            except Exception as e:   # a stats source must not break the others
                out[name] = {"error": str(e)}
        return out

    def close(self):
        self.subscriptions.close()
        self.group_db.close()
