"""Correlation side of a replica: which replica consumes which node partition, and from where.

Leases, not durable consumers, decide the owner. Every partition has a key `pPP` in the KV bucket
`tapio_leases`, whose TTL (`lease` seconds) makes a key vanish when its owner stops renewing it.
Every change is a compare-and-set on the key's revision (a KV update with the last revision,
0 for a key never written): a replica takes a free partition (no key, or an empty value), renews it
with an update on the revision it holds (which fails once someone else took it), and releases it
by writing an empty value. Each replica also keeps a heartbeat key `replica.<id>` in the bucket, so every replica
knows how many are alive and takes at most its share (PARTITIONS / live replicas, rounded up):
a replica that joins gets partitions that others release, and the partitions of one that died
are free once their leases expire.

A JetStream consumer alone would also give one reader per partition (a durable pull consumer that
replicas share), but not one *owner*: two replicas pulling from it would each get part of a node's
events, and a node's correlation state needs all of them in one place. A lease says who that place
is, and lets the new owner choose where to start.

Where: the owner reads its partition through a consumer of its own (R3 like the stream, created at
the partition's checkpoint), processes each fetched set of messages in the owner thread (history
first, then the correlation engine) and only then fetches more. Every few seconds it writes the
partition's checkpoint to the bucket `tapio_checkpoints`: the stream sequence of the oldest message
it processed within the last `replay` seconds (the correlation windows), or the next one when there
is none. A new owner replays from there: the history ignores what it stored already (idempotent on
collector, batch and index), and the correlation engine, fed the same events again, rebuilds the
open groups with the same ids (groups.group_id), so a crash loop that spans a takeover stays one
group, updated by the new owner.
"""
import asyncio
import collections
import concurrent.futures
import logging
import math
import random
import time

from tapio.server.bus import subjects

log = logging.getLogger("tapio.server.bus")

MAX_SEEN = 200_000


class _Partition:
    def __init__(self, number, revision, start_seq):
        self.number = number
        self.revision = revision          # of its lease key, for the next renewal
        self.renewed = time.monotonic()
        self.next_seq = start_seq         # the next stream sequence to process
        # (stream seq, wall time) processed, for the checkpoint; bounded: past MAX_SEEN messages
        # within the replay window the checkpoint moves on, and a takeover replays less
        self.seen = collections.deque(maxlen=MAX_SEEN)
        self.consumer = None
        self.sub = None
        self.task = None
        self.processed = 0


class Owner:
    """Takes, keeps and consumes this replica's share of the partitions. `process(items)` runs in
    the owner thread for each fetched set, items being [(payload bytes, collector id, node)]; it
    raises to have the same items given again after a pause (e.g. the database is down)."""

    def __init__(self, bus, replica_id, process, replay=300.0, lease=6.0, fetch=64):
        self.bus = bus
        self.replica_id = replica_id
        self.process = process
        self.replay = replay
        self.lease = lease
        self.fetch = fetch
        self.owned = {}                   # partition number -> _Partition
        self.taken = 0
        self.lost = 0
        self.released = 0
        self.live_replicas = 1
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="bus-owner")
        self._task = None
        self._stopping = False

    # -- started and stopped from other threads ---------------------------------------------------
    def start(self, timeout=10.0):
        self.bus.call(self._setup(), timeout)
        if self._task is None:
            self._task = self.bus.submit(self._run())

    def close(self, timeout=10.0):
        try:
            self.bus.call(self._shutdown(), timeout)
        except Exception as e:
            log.warning("Bus: releasing partitions failed: %s", e)
        self._pool.shutdown(wait=True)

    def partitions(self):
        return sorted(dict(self.owned))     # a copy: the bus loop changes it meanwhile

    def stats(self):
        owned = dict(self.owned)
        return {"replica": self.replica_id, "partitions": sorted(owned),
                "live_replicas": self.live_replicas, "taken": self.taken, "lost": self.lost,
                "released": self.released,
                "processed": {f"p{p:02d}": s.processed for p, s in sorted(owned.items())}}

    # -- on the bus loop --------------------------------------------------------------------------
    async def _setup(self):
        js = self.bus.js
        self.leases = await _bucket(js, subjects.LEASES, ttl=self.lease)
        self.checkpoints = await _bucket(js, subjects.CHECKPOINTS)

    async def _run(self):
        while not self._stopping:
            started = time.monotonic()
            try:
                await self._round()
            except Exception as e:
                log.warning("Bus: lease round failed: %s", str(e) or type(e).__name__)
            # a round every lease/3 seconds from start to start, however long one takes
            await asyncio.sleep(max(0.1, self.lease / 3 - (time.monotonic() - started)))

    async def _round(self):
        now = time.monotonic()
        # renewals first and all at once: a slow round must not let a lease lapse
        await asyncio.gather(*(self._renew(part, now) for part in list(self.owned.values())))
        await self.leases.put(f"replica.{subjects.token(self.replica_id)}", b"alive")
        info = await self.bus.js.stream_info(f"KV_{subjects.LEASES}",
                                             subjects_filter=f"$KV.{subjects.LEASES}.replica.>")
        self.live_replicas = max(1, len(info.state.subjects or {}))
        share = math.ceil(subjects.PARTITIONS / self.live_replicas)
        while len(self.owned) > share:
            part = self.owned[max(self.owned)]
            await self._stop(part, release=True)
            self.released += 1
        if len(self.owned) < share:
            free = [p for p in range(subjects.PARTITIONS) if p not in self.owned]
            random.shuffle(free)
            won = []
            for p in free:
                if len(self.owned) + len(won) >= share:
                    break
                revision = await self._acquire(f"p{p:02d}")
                if revision is not None:
                    won.append((p, revision))
            if won:
                # read the leases back before consuming: see docs/scaling.md on two replicas
                # that both saw their write to one key accepted
                await asyncio.sleep(0.3)
                for p, revision in won:
                    try:
                        entry = await self.leases.get(f"p{p:02d}")
                    except Exception:
                        continue
                    if entry.revision == revision and entry.value == self.replica_id.encode():
                        await self._take(p, revision)

    async def _renew(self, part, now):
        try:
            part.revision = await self.leases.update(f"p{part.number:02d}",
                                                     self.replica_id.encode(), last=part.revision)
            part.renewed = now
        except Exception as e:
            wrong = type(e).__name__ == "KeyWrongLastSequenceError"
            if wrong or now - part.renewed > self.lease * 0.8:
                log.warning("Bus: lost partition p%02d (%s)", part.number,
                            "taken by another replica" if wrong else "lease not renewed")
                self.lost += 1
                await self._stop(part, release=False)
            return
        await self._checkpoint(part)

    async def _acquire(self, key):
        """The new revision of lease `key`, now ours; None when someone holds it."""
        from nats.js import errors
        try:
            entry = await self.leases.get(key)
            if entry.value:
                return None
            last = entry.revision
        except errors.KeyDeletedError as e:
            last = e.entry.revision
        except errors.KeyNotFoundError:
            last = 0
        try:
            return await self.leases.update(key, self.replica_id.encode(), last=last)
        except errors.KeyWrongLastSequenceError:
            return None           # someone else was faster

    async def _take(self, number, revision):
        from nats.js import errors
        start = 1
        try:
            entry = await self.checkpoints.get(f"p{number:02d}")
            start = max(1, int(entry.value or b"1"))
        except (errors.KeyNotFoundError, errors.KeyDeletedError):
            pass                  # no checkpoint yet: from the start of the stream
        except Exception as e:
            # not "none": replaying the whole stream would correlate a day of events again.
            # Not taken; the lease, not renewed, lapses and this or another replica tries again
            log.warning("Bus: partition p%02d not taken, its checkpoint unreadable: %s", number,
                        str(e) or type(e).__name__)
            return
        part = _Partition(number, revision, start)
        self.owned[number] = part
        self.taken += 1
        log.info("Bus: took partition p%02d, replaying from stream sequence %d", number, start)
        part.task = asyncio.ensure_future(self._consume(part))

    async def _subscribe(self, part):
        from nats.js import api
        name = f"own-p{part.number:02d}-{subjects.token(self.replica_id, 64)}"
        try:
            await self.bus.js.delete_consumer(subjects.STREAM, name)
        except Exception:
            pass
        config = api.ConsumerConfig(
            deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=part.next_seq,
            ack_policy=api.AckPolicy.EXPLICIT, ack_wait=3600, max_ack_pending=-1,
            inactive_threshold=max(30.0, self.lease * 5))
        part.consumer = name
        part.sub = await self.bus.js.pull_subscribe(
            subjects.partition_filter(part.number), durable=name, stream=subjects.STREAM,
            config=config)

    async def _consume(self, part):
        loop = asyncio.get_running_loop()
        delay = 0.1
        while part.number in self.owned and self.owned[part.number] is part:
            try:
                if part.sub is None:
                    await self._subscribe(part)
                try:
                    msgs = await part.sub.fetch(self.fetch, timeout=1.0)
                except asyncio.TimeoutError:
                    continue
                except Exception as e:
                    if type(e).__name__ == "TimeoutError":
                        continue
                    raise
                items = [(m.data, (m.headers or {}).get(subjects.COLLECTOR, ""),
                          (m.headers or {}).get(subjects.NODE, "")) for m in msgs]
                await loop.run_in_executor(self._pool, self.process, items)
                for m in msgs:
                    meta = m.metadata
                    part.seen.append((meta.sequence.stream, meta.timestamp.timestamp()))
                    part.next_seq = meta.sequence.stream + 1
                    await m.ack()
                part.processed += len(msgs)
                delay = 0.1
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning("Bus: partition p%02d: %s; again from stream sequence %d",
                            part.number, str(e) or type(e).__name__, part.next_seq)
                part.sub = None       # a new consumer from next_seq (its server may be gone)
                await asyncio.sleep(delay)
                delay = min(5.0, delay * 2)

    async def _checkpoint(self, part):
        horizon = time.time() - self.replay
        while part.seen and part.seen[0][1] < horizon:
            part.seen.popleft()
        seq = part.seen[0][0] if part.seen else part.next_seq
        await self.checkpoints.put(f"p{part.number:02d}", str(seq).encode())

    async def _stop(self, part, release):
        self.owned.pop(part.number, None)
        if part.task is not None:
            part.task.cancel()
            try:
                await part.task
            except BaseException:
                pass
        if release:
            try:
                await self._checkpoint(part)
                await self.leases.update(f"p{part.number:02d}", b"", last=part.revision)
            except Exception as e:
                log.warning("Bus: releasing partition p%02d: %s", part.number, e)
            log.info("Bus: released partition p%02d", part.number)
        if part.consumer:
            try:
                await self.bus.js.delete_consumer(subjects.STREAM, part.consumer)
            except Exception:
                pass

    async def _shutdown(self):
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
        for part in list(self.owned.values()):
            await self._stop(part, release=True)
        try:
            await self.leases.delete(f"replica.{subjects.token(self.replica_id)}")
        except Exception:
            pass


async def _bucket(js, name, ttl=None):
    """The KV bucket `name`, created (replicated like the stream) when missing."""
    try:
        return await js.key_value(name)
    except Exception:
        pass
    from nats.js.errors import APIError
    try:
        return await js.create_key_value(bucket=name, ttl=ttl, history=1, replicas=subjects.REPLICAS)
    except APIError as e:
        if "already in use" in str(e):
            return await js.key_value(name)              # another replica was first
        if "replicas" not in str(e).lower() and "insufficient" not in str(e).lower():
            raise
        log.warning("Bus: fewer JetStream servers than %d: bucket %s kept once", subjects.REPLICAS,
                    name)
        return await js.create_key_value(bucket=name, ttl=ttl, history=1, replicas=1)
