"""The kernel as an event source: Tapio's BPF probes, read with trio.

The ring buffer's epoll fd is awaited with trio.lowlevel.wait_readable (the pattern of trio's
own pipe reader); reading moves records straight into the batch arena in C.
"""
import functools
import logging

import trio

from tapio._fast.kernel import EVENT_TYPE_NAMES, KernelProbes

log = logging.getLogger("tapio.collector.ebpf")


# the smallest ring-buffer record: 8 bytes of libbpf's header and the common event header
MIN_RECORD_BYTES = 64


class EbpfSource:
    exhausted = False       # the kernel never runs out

    def __init__(self, probes):
        self.probes = probes
        self._fd = probes.epoll_fd
        self._drops_seen = 0
        self._budget = None     # after detach(): the most events fill() still reads

    @classmethod
    async def start(cls, event_types, ring_buffer_bytes, cgroup_allow=None):
        """Load and attach the probes in a worker thread (a BPF load takes a while and is never
        abandoned half-way: cancellation waits for it, then the probes are closed)."""
        load = functools.partial(KernelProbes.start, event_types=event_types,
                                 ring_buffer_bytes=ring_buffer_bytes, cgroup_allow=cgroup_allow)
        probes = await trio.to_thread.run_sync(load)
        for name, why in sorted(probes.skipped.items()):
            log.warning("event type %s is off on this host: %s", name, why)
        names = ",".join(EVENT_TYPE_NAMES[t] for t in sorted(probes.event_types))
        log.info("eBPF probes attached: %s (ring buffer %d KiB)", names, ring_buffer_bytes >> 10)
        return cls(probes)

    @property
    def event_types(self):
        return self.probes.event_types

    async def wait(self):
        """Until the ring buffer has records."""
        await trio.lowlevel.wait_readable(self._fd)

    def read_within(self, seconds):
        """Promise to read again within `seconds` without being woken (0: no promise, wait()
        follows); the kernel then spares itself the wakeups (KernelProbes.read_within)."""
        if self._fd >= 0:
            self.probes.read_within(seconds)

    def fill(self, arena):
        """Move what the ring buffer holds into the arena (until it is full); returns the count."""
        if self._budget is not None and self._budget <= 0:
            return 0
        n = self.probes.consume(arena)
        if self._budget is not None:
            self._budget -= n
        return n

    def detach(self):
        """From now on read what the ring buffer holds now, not what the kernel keeps writing:
        under a flood it writes as fast as we read, and a drain would never end. (The probes
        stay attached until close(): what they write meanwhile is read or dropped unseen.)"""
        try:
            self._budget = self.probes.ring_buffer_used() // MIN_RECORD_BYTES + 1
        except (ValueError, OSError):
            self._budget = 0

    def kernel_drops_total(self):
        return sum(self.probes.kernel_drops().values())

    def kernel_drops_since_last(self):
        """Failed reserves since the previous call (what a batch reports)."""
        total = self.kernel_drops_total()
        delta, self._drops_seen = total - self._drops_seen, total
        return delta

    def close(self):
        """Detach the probes. Idempotent."""
        if self._fd >= 0:
            trio.lowlevel.notify_closing(self._fd)
            self._fd = -1
        self.probes.close()
