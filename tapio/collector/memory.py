"""The collector's hard memory cap (--memory-limit): its resident memory stays under the limit
under any load and any server outage, by shedding counted events, never by an OOM kill.

Most of what grows with load and with an outage is the unacked-batch buffer (--max-memory);
everything else (the interpreter, the arena, the processor's bounded tables, gRPC) is about
constant once running. So the guard samples the process's resident set (/proc/self/statm, a
read of a few bytes) a few times a second and moves the buffer's bound:

- above the high mark (90 % of the limit) the bound drops to what the buffer holds minus the
  excess (and a step more), and the buffer lets go of its oldest routine batches at once:
  each of their events counted as dropped from the send buffer, in the ledger;
- below the low mark (75 %) the bound grows back, a step at a time, up to --max-memory.

Freed batches go back to the allocator: large ones (most batches) to the kernel at once, small
ones for reuse, so the resident set stops growing even where it does not shrink.
"""
import logging
import os

import trio

log = logging.getLogger("tapio.collector")

HIGH, LOW = 0.90, 0.75
STEP = 4 << 20                 # bytes the bound moves by, at the least
FLOOR = 1 << 20                # the buffer always holds one batch's worth
INTERVAL = 0.1                 # seconds between samples


def resident_bytes():
    with open("/proc/self/statm", "rb") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class MemoryGuard:
    def __init__(self, limit, buffer, read_rss=resident_bytes):
        self.limit = limit
        self.buffer = buffer
        self.ceiling = buffer.max_bytes      # --max-memory: the bound never grows past it
        self.read_rss = read_rss
        self.rss = 0
        self.peak_rss = 0
        self.shrinks = 0                     # times the bound went down
        self.shed_events = 0                 # events the guard made the buffer drop

    def check(self):
        """One sample: move the buffer's bound. Returns the resident bytes."""
        rss = self.rss = self.read_rss()
        self.peak_rss = max(self.peak_rss, rss)
        high, low = int(self.limit * HIGH), int(self.limit * LOW)
        buffer = self.buffer
        if rss > high:
            bound = max(FLOOR, buffer.bytes - (rss - high) - STEP)
            if bound < buffer.max_bytes:
                if not self.shrinks:
                    log.warning("Memory at %d MiB of --memory-limit %d MiB: the send buffer sheds its "
                                "oldest batches (counted as dropped)", rss >> 20, self.limit >> 20)
                self.shrinks += 1
                before = buffer.dropped_events
                buffer.set_bound(bound)
                self.shed_events += buffer.dropped_events - before
        elif rss < low and buffer.max_bytes < self.ceiling:
            buffer.set_bound(min(self.ceiling, buffer.max_bytes + max(STEP, (low - rss) // 2)))
        return rss

    async def run(self):
        while True:
            self.check()
            await trio.sleep(INTERVAL)

    def stats(self):
        return {"memory_limit_bytes": self.limit, "resident_bytes": self.rss,
                "peak_resident_bytes": self.peak_rss, "buffer_bound_bytes": self.buffer.max_bytes,
                "memory_shrinks": self.shrinks, "memory_shed_events": self.shed_events}
