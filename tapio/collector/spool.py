"""`--spool-dir`: unacked batches also go to disk, so a collector killed with -9 (or a node that
reboots) sends them when it starts again.

Layout: append-only segment files `<first batch id>.seg` of records

    magic "TPS1" | batch id u64 | events u32 | length u32 | crc32 u32 | length bytes of batch

(little endian; the CRC covers batch id, events, length and the batch), and `acked.log`, the ids
of batches acked (or dropped) since, 8 bytes each. A segment is deleted once every batch in it is
acked. On start every segment is read back: a record whose CRC does not match is skipped and
counted, a torn tail (a write cut short) is cut off and counted; neither stops the collector.

Durability: writes go to the page cache at once (a killed process loses nothing) and are
fsync'ed at most once per --spool-fsync-interval (a power loss can lose that much). The spool
is bounded (--spool-max-size): past it the oldest segment goes (its batches stay in memory and
may still be delivered, but no longer survive a crash; they are counted).
"""
import logging
import os
import struct
import time
import zlib

log = logging.getLogger("tapio.collector.spool")

MAGIC = b"TPS1"
HEADER = struct.Struct("<4sQIII")
_CRC_FIELDS = struct.Struct("<QII")
_ID = struct.Struct("<Q")


class Segment:
    def __init__(self, path, first_id):
        self.path = path
        self.first_id = first_id
        self.size = 0
        self.events = {}          # unacked batch id -> events
        self.acked = []           # ids acked while their records still sit in this segment


class Spool:
    def __init__(self, directory, max_bytes=256 << 20, segment_bytes=8 << 20, fsync_interval=1.0):
        self.directory = directory
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self.fsync_interval = fsync_interval
        self.segments = []
        self.corrupt_records = 0
        self.torn_tails = 0
        self.unpersisted_events = 0   # unacked events whose segment the size bound removed
        self._file = None
        self._last_fsync = time.monotonic()
        os.makedirs(directory, exist_ok=True)
        self._ack_path = os.path.join(directory, "acked.log")
        self._acks = None

    # -- start-up -------------------------------------------------------------------------------
    def recover(self):
        """Read every segment back. Returns the unacked batches, oldest first, as
        (batch_id, data, events); also opens the spool for appending."""
        acked = self._read_acks()
        pending = []
        names = sorted((n for n in os.listdir(self.directory) if n.endswith(".seg")),
                       key=lambda n: int(n[:-4]) if n[:-4].isdigit() else -1)
        for name in names:
            path = os.path.join(self.directory, name)
            if not name[:-4].isdigit():
                continue
            segment = Segment(path, int(name[:-4]))
            acked_here = []
            for batch_id, data, events in self._read_segment(segment):
                if batch_id in acked:
                    acked_here.append(batch_id)
                else:
                    segment.events[batch_id] = events
                    pending.append((batch_id, data, events))
            segment.size = os.path.getsize(path)
            if segment.events:
                segment.acked = acked_here
                self.segments.append(segment)
            else:
                os.unlink(path)
        self._rewrite_acks()
        if pending or self.corrupt_records or self.torn_tails:
            log.info("Spool %s: %d unacked batches to resend, %d corrupt records skipped, "
                     "%d torn tails cut", self.directory, len(pending), self.corrupt_records,
                     self.torn_tails)
        return pending

    def _read_acks(self):
        try:
            with open(self._ack_path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return set()
        usable = len(data) - len(data) % _ID.size          # a torn last id is ignored
        return {_ID.unpack_from(data, i)[0] for i in range(0, usable, _ID.size)}

    def _read_segment(self, segment):
        with open(segment.path, "rb") as f:
            data = f.read()
        pos = 0
        while pos < len(data):
            if len(data) - pos < HEADER.size:
                self._cut(segment, pos, "a torn header")
                return
            magic, batch_id, events, length, crc = HEADER.unpack_from(data, pos)
            if magic != MAGIC:
                # without a trustworthy header the rest of the segment cannot be framed
                self.corrupt_records += 1
                self._cut(segment, pos, "a record without its magic")
                return
            body = data[pos + HEADER.size:pos + HEADER.size + length]
            if len(body) < length:
                self._cut(segment, pos, "a torn record")
                return
            pos += HEADER.size + length
            if zlib.crc32(_CRC_FIELDS.pack(batch_id, events, length) + body) != crc:
                self.corrupt_records += 1
                continue
            yield batch_id, body, events

    def _cut(self, segment, pos, what):
        self.torn_tails += 1
        log.warning("Spool segment %s ends in %s at byte %d: cutting it there", segment.path, what, pos)
        with open(segment.path, "r+b") as f:
            f.truncate(pos)

    def _rewrite_acks(self):
        """Start the ack log afresh with the ids that still matter: acked records that remain
        in segments kept for their unacked neighbours."""
        tmp = self._ack_path + ".tmp"
        with open(tmp, "wb") as f:
            f.write(b"".join(_ID.pack(i) for segment in self.segments for i in segment.acked))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self._ack_path)
        if self._acks is not None:
            self._acks.close()
        self._acks = open(self._ack_path, "ab")

    # -- while running ------------------------------------------------------------------------
    def append(self, batch_id, data, events):
        if self._acks is None:
            raise RuntimeError("Spool.recover() must run before append()")
        segment = self.segments[-1] if self.segments else None
        if self._file is None or segment is None or segment.size >= self.segment_bytes:
            segment = self._new_segment(batch_id)
        record = HEADER.pack(MAGIC, batch_id, events, len(data),
                             zlib.crc32(_CRC_FIELDS.pack(batch_id, events, len(data)) + data))
        self._file.write(record)
        self._file.write(data)
        self._file.flush()
        segment.size += len(record) + len(data)
        segment.events[batch_id] = events
        self._maybe_fsync()
        self._enforce_bound()

    def _new_segment(self, first_id):
        if self._file is not None:
            self._file.close()
        path = os.path.join(self.directory, f"{first_id:020d}.seg")
        self._file = open(path, "ab")
        segment = Segment(path, first_id)
        self.segments.append(segment)
        return segment

    def _maybe_fsync(self):
        now = time.monotonic()
        if now - self._last_fsync >= self.fsync_interval:
            os.fsync(self._file.fileno())
            os.fsync(self._acks.fileno())
            self._last_fsync = now

    def ack(self, batch_id):
        """An acked (or dropped) batch: it will not be sent again."""
        for segment in self.segments:
            if segment.events.pop(batch_id, None) is not None:
                segment.acked.append(batch_id)
                self._acks.write(_ID.pack(batch_id))
                self._acks.flush()
                break
        self._delete_finished()

    def _delete_finished(self):
        # whole segments that are fully acked go (never the one being written), and the ack
        # log forgets their ids
        deleted = False
        while len(self.segments) > 1 and not self.segments[0].events:
            os.unlink(self.segments.pop(0).path)
            deleted = True
        if deleted:
            self._rewrite_acks()

    def _enforce_bound(self):
        while len(self.segments) > 1 and sum(s.size for s in self.segments) > self.max_bytes:
            oldest = self.segments.pop(0)
            # its batches are still in memory and may yet be delivered: only their copy on disk
            # goes (a crash now would lose them)
            lost = sum(oldest.events.values())
            self.unpersisted_events += lost
            log.warning("Spool over %d bytes: removed segment %s (%d unacked events no longer on disk)",
                        self.max_bytes, oldest.path, lost)
            os.unlink(oldest.path)
            self._rewrite_acks()

    def bytes(self):
        return sum(s.size for s in self.segments)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        for f in (self._file, self._acks):
            if f is not None:
                f.flush()
                os.fsync(f.fileno())
                f.close()
        self._file = self._acks = None
        # nothing left to send: leave an empty spool behind
        if self.segments and not any(s.events for s in self.segments):
            for segment in self.segments:
                os.unlink(segment.path)
            self.segments = []
            os.unlink(self._ack_path)
