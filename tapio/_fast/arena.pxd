from libc.stdint cimport uint32_t, uint64_t
from libc.string cimport memcpy
from tapio._fast.events cimport (
    tapio_event, tapio_header, tapio_exec, tapio_exit, tapio_tcp, tapio_oom, tapio_signal,
    TAPIO_EVENT_EXEC, TAPIO_EVENT_EXIT, TAPIO_EVENT_TCP_CONNECT, TAPIO_EVENT_TCP_ACCEPT,
    TAPIO_EVENT_TCP_CLOSE, TAPIO_EVENT_OOM_KILL, TAPIO_EVENT_SIGNAL,
)


cdef struct arena_t:
    # Slot i holds one event in its kernel layout (union tapio_event). The side arrays hold what
    # the collector's processor adds before encoding: how many identical repeats the event stands
    # for, and references to pre-encoded Context/Process fields (tag, length and body). Such a
    # reference points into a bytes object owned by an enrichment cache, which keeps it alive
    # until the arena is encoded and reset (the processor does both without yielding between).
    char *slots
    uint32_t capacity       # slots allocated
    uint32_t limit          # slots in use before the arena reports full (<= capacity)
    uint32_t count
    uint64_t malformed      # records refused for a bad size or type
    uint32_t *repeat
    const char **ctx_ptr
    uint32_t *ctx_len
    const char **proc_ptr
    uint32_t *proc_len


# arena_push() results
cdef enum:
    PUSH_OK = 0
    PUSH_FULL = 1        # stored, and the arena is now full (count == limit)
    PUSH_MALFORMED = 2   # not stored: counted in `malformed`


cdef inline tapio_event *arena_slot(const arena_t *a, uint32_t i) noexcept nogil:
    # every event struct is a multiple of 8 bytes (tests/test_layout.py): slots stay aligned
    return <tapio_event *>(a.slots + <size_t>i * sizeof(tapio_event))


cdef inline size_t event_size(uint32_t type) noexcept nogil:
    """The size a record of this type has in the kernel layout; 0 for an unknown type."""
    if type == TAPIO_EVENT_EXEC:
        return sizeof(tapio_exec)
    if type == TAPIO_EVENT_EXIT:
        return sizeof(tapio_exit)
    if type == TAPIO_EVENT_TCP_CONNECT or type == TAPIO_EVENT_TCP_ACCEPT or type == TAPIO_EVENT_TCP_CLOSE:
        return sizeof(tapio_tcp)
    if type == TAPIO_EVENT_OOM_KILL:
        return sizeof(tapio_oom)
    if type == TAPIO_EVENT_SIGNAL:
        return sizeof(tapio_signal)
    return 0


cdef inline tapio_event *arena_claim(arena_t *a) noexcept nogil:
    """The next free slot, its side data reset, counted in; the caller fills the event (and has
    made sure there is a free slot)."""
    cdef uint32_t i = a.count
    a.repeat[i] = 1
    a.ctx_ptr[i] = NULL
    a.ctx_len[i] = 0
    a.proc_ptr[i] = NULL
    a.proc_len[i] = 0
    a.count = i + 1
    return arena_slot(a, i)


cdef inline int arena_push(arena_t *a, const void *data, size_t size) noexcept nogil:
    """Copy one record into the next free slot (the caller makes sure there is one).

    The ring buffer promises no alignment, so the header is read through memcpy; the record must
    have exactly the size its type declares."""
    cdef tapio_header hdr
    if size < sizeof(tapio_header):
        a.malformed += 1
        return PUSH_MALFORMED
    memcpy(&hdr, data, sizeof(hdr))
    if size != event_size(hdr.type):
        a.malformed += 1
        return PUSH_MALFORMED
    memcpy(arena_claim(a), data, size)
    return PUSH_FULL if a.count >= a.limit else PUSH_OK


cdef class EventArena:
    cdef arena_t c
