"""What the server keeps, behind one facade (`Store`) for ingest, the query services and HTTP:

groups.py         semantic groups in an SQLite file: latest versions, retention, restart
recent.py         recent events: the newest decoded batches per collector, bounded in bytes
subscriptions.py  live subscribers: bounded queues fed through the filter language
                  (tapio/server/filters.py)

Thread safety: the ingest engine thread writes (add_batch, put_group); any thread reads. Each
part has its own lock.
"""
import time

from tapio import vocab
from tapio.server.store.groups import GroupStore
from tapio.server.store.recent import RecentEvents
from tapio.server.store.subscriptions import Item, Subscription, Subscriptions

__all__ = ["Item", "Store", "Subscription"]


class Store:
    def __init__(self, db_path=None, *, recent_events=10000, recent_bytes=64 << 20,
                 retention_s=7 * 86400, max_groups=100_000, max_group_events=200,
                 clock=time.time_ns):
        self._clock = clock
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

    def recent_events(self, *, type=None, pid=None, comm=None, container=None, collector=None,
                      limit=100):
        """Recent events newest first, as dicts with "collector_id"; each filter is exact (type a
        name like "exec"; container an id prefix or a container name)."""
        out = []
        for batch, i, cid in self._find(type, pid, comm, container, collector, limit):
            event = batch.event_dict(i)
            event["collector_id"] = cid
            out.append(event)
        return out

    def recent_wire(self, *, type=None, pid=None, comm=None, container=None, collector=None,
                    limit=100):
        """The same events as recent_events, as [(tapio.v1.Event bytes as received, collector id)]."""
        return [(batch.event_wire(i), cid)
                for batch, i, cid in self._find(type, pid, comm, container, collector, limit)]

    def recent_matching(self, filter, limit, scan=10000):
        """Up to `limit` of the newest `scan` events that pass `filter` (a Filter), newest first,
        as [(event dict with "collector_id", its tapio.v1.Event bytes)]."""
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
        out = {
            "events_received": self.events_received,
            "events_kept": self.recent.events,
            "events_kept_bytes": self.recent.nbytes,
            "events_kept_max_bytes": self.recent.max_bytes,
            "batches_evicted": self.recent.batches_evicted,
            "collectors": self.recent.collectors(),
            "groups": self.group_db.count(),
            "group_writes": self.group_db.writes,
            "groups_expired": self.group_db.expired,
            "db_path": self.db_path or ":memory:",
            "db_bytes": self.db_bytes(),
            "subscribers": len(self.subscriptions),
            "subscriber_drops": self.subscriptions.drops,
        }
        for name, source in list(self.stats_sources.items()):
            try:
                out[name] = source()
            except Exception as e:   # a stats source must not break the others
                out[name] = {"error": str(e)}
        return out

    def close(self):
        self.subscriptions.close()
        self.group_db.close()
