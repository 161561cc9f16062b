# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Synthetic kernel events, written straight into the batch arena in the kernel's layout.

`tapio-collector --source synthetic` uses them to load the same arena -> processor -> codec ->
gRPC path as real eBPF does (benchmarks, demos on hosts without eBPF). Event n becomes ebpf-<n>
on the wire, so a test can count exactly which events arrived. The mix is a busy node's: mostly
connections, some process churn, a few signals; the events come from a pool of 997 processes.
"""
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy, memset
from libc.stdio cimport snprintf

from tapio._fast.arena cimport EventArena, arena_t, arena_claim
from tapio._fast.events cimport (
    tapio_event, tapio_header, tapio_exec, tapio_exit, tapio_tcp, tapio_signal,
    TAPIO_EVENT_EXEC, TAPIO_EVENT_EXIT, TAPIO_EVENT_TCP_CONNECT, TAPIO_EVENT_TCP_ACCEPT,
    TAPIO_EVENT_TCP_CLOSE, TAPIO_EVENT_SIGNAL, TAPIO_TCP_ACTIVE, TAPIO_TCP_PASSIVE,
)

cdef extern from "time.h" nogil:
    ctypedef long time_t
    struct timespec:
        time_t tv_sec
        long tv_nsec
    int clock_gettime(int clk_id, timespec *tp)
    enum:
        CLOCK_BOOTTIME

# One cycle of the mix (20 events): 35% connects, 20% accepts, 35% closes, 5% execs with their
# exits, a signal now and then.
cdef uint32_t MIX[20]
MIX[:] = [TAPIO_EVENT_TCP_CONNECT, TAPIO_EVENT_TCP_ACCEPT, TAPIO_EVENT_TCP_CLOSE,
          TAPIO_EVENT_TCP_CONNECT, TAPIO_EVENT_TCP_CLOSE, TAPIO_EVENT_EXEC, TAPIO_EVENT_TCP_ACCEPT,
          TAPIO_EVENT_TCP_CONNECT, TAPIO_EVENT_TCP_CLOSE, TAPIO_EVENT_TCP_CLOSE,
          TAPIO_EVENT_TCP_CONNECT, TAPIO_EVENT_TCP_ACCEPT, TAPIO_EVENT_TCP_CLOSE,
          TAPIO_EVENT_TCP_CONNECT, TAPIO_EVENT_EXIT, TAPIO_EVENT_TCP_CLOSE,
          TAPIO_EVENT_TCP_ACCEPT, TAPIO_EVENT_TCP_CONNECT, TAPIO_EVENT_TCP_CLOSE, TAPIO_EVENT_SIGNAL]


cdef inline uint64_t boottime_ns() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_BOOTTIME, &ts)
    return <uint64_t>ts.tv_sec * 1000000000 + ts.tv_nsec


cdef void fill_header(tapio_header *h, uint32_t type, uint64_t seq, uint64_t now) noexcept nogil:
    h.timestamp_ns = now
    h.cgroup_id = 1 + seq % 7
    h.type = type
    h.pid = <uint32_t>(100000 + seq % 997)
    h.tid = h.pid
    h.ppid = 1
    h.uid = 1000
    h.gid = 1000
    memset(h.comm, 0, sizeof(h.comm))
    memcpy(h.comm, b"synthetic", 9)


cdef void fill_event(tapio_event *e, uint64_t seq, uint64_t now) noexcept nogil:
    cdef uint32_t type = MIX[seq % 20]
    cdef int n
    fill_header(&e.hdr, type, seq, now)
    if type == TAPIO_EVENT_EXEC:
        memcpy(e.exec.filename, b"/usr/bin/synthetic\0", 19)
        n = snprintf(e.exec.args, sizeof(e.exec.args), b"synthetic%c--seq%c%llu", 0, 0,
                     <unsigned long long>seq)
        e.exec.args_size = n + 1
        e.exec.args_count = 3
        e.exec.flags = 0
    elif type == TAPIO_EVENT_EXIT:
        e.exit.exit_code = 0
        e.exit.signal = 0
        e.exit.core_dumped = 0
        e.exit.start_ns = now - 1000000
        e.exit.duration_ns = 1000000
    elif type == TAPIO_EVENT_SIGNAL:
        e.signal.signal = 15
        e.signal.code = 0
        e.signal.sender_pid = 1
        memset(e.signal.sender_comm, 0, sizeof(e.signal.sender_comm))
        memcpy(e.signal.sender_comm, b"init", 4)
    else:
        memset(e.tcp.saddr, 0, 32)
        e.tcp.saddr[0] = 10
        e.tcp.saddr[3] = 1
        e.tcp.daddr[0] = 10
        e.tcp.daddr[2] = <uint8_t>(seq >> 8)
        e.tcp.daddr[3] = <uint8_t>seq
        e.tcp.sport = <uint16_t>(32768 + seq % 28000)
        e.tcp.dport = 443
        e.tcp.family = 2
        e.tcp.direction = TAPIO_TCP_PASSIVE if type == TAPIO_EVENT_TCP_ACCEPT else TAPIO_TCP_ACTIVE
        e.tcp.error = 0
        e.tcp.duration_ns = 250000
        e.tcp.bytes_sent = 512 if type == TAPIO_EVENT_TCP_CLOSE else 0
        e.tcp.bytes_received = 4096 if type == TAPIO_EVENT_TCP_CLOSE else 0



def fill(EventArena arena not None, uint64_t first_seq, uint32_t count):
    """Write up to `count` events (sequence numbers first_seq, first_seq+1, ...) into the arena,
    stamped with the current CLOCK_BOOTTIME; returns how many fit."""
    cdef arena_t *a = &arena.c
    cdef uint32_t i, room
    cdef uint64_t now
    with nogil:
        room = a.limit - a.count if a.limit > a.count else 0
        if count > room:
            count = room
        now = boottime_ns()
        for i in range(count):
            fill_event(arena_claim(a), first_seq + i, now)
    return count
