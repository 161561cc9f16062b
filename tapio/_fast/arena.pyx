# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The batch arena: preallocated slots that kernel (or synthetic) events are copied into."""
from cpython.mem cimport PyMem_Calloc, PyMem_Free
from libc.stdint cimport uint32_t
from tapio._fast.events cimport tapio_event
from tapio._fast.redaction cimport Redactor

SLOT_SIZE = sizeof(tapio_event)


cdef class EventArena:

    def __cinit__(self, uint32_t capacity):
        if capacity == 0:
            raise ValueError("an event arena needs a capacity of at least 1 slot")
        self.c.capacity = capacity
        self.c.limit = capacity
        self.c.redact = NULL
        self.c.throttle = NULL
        self.c.slots = <char *>PyMem_Calloc(capacity, sizeof(tapio_event))
        self.c.repeat = <uint32_t *>PyMem_Calloc(capacity, sizeof(uint32_t))
        self.c.totals = <slot_totals *>PyMem_Calloc(capacity, sizeof(slot_totals))
        self.c.ctx_ptr = <const char **>PyMem_Calloc(capacity, sizeof(char *))
        self.c.ctx_len = <uint32_t *>PyMem_Calloc(capacity, sizeof(uint32_t))
        self.c.proc_ptr = <const char **>PyMem_Calloc(capacity, sizeof(char *))
        self.c.proc_len = <uint32_t *>PyMem_Calloc(capacity, sizeof(uint32_t))
        if (self.c.slots == NULL or self.c.repeat == NULL or self.c.totals == NULL or self.c.ctx_ptr == NULL
                or self.c.ctx_len == NULL or self.c.proc_ptr == NULL or self.c.proc_len == NULL):
            raise MemoryError(f"cannot allocate an event arena of {capacity} slots")

    def __dealloc__(self):
        PyMem_Free(self.c.slots)
        PyMem_Free(self.c.repeat)
        PyMem_Free(self.c.totals)
        PyMem_Free(<void *>self.c.ctx_ptr)
        PyMem_Free(self.c.ctx_len)
        PyMem_Free(<void *>self.c.proc_ptr)
        PyMem_Free(self.c.proc_len)

    def __len__(self):
        return self.c.count

    @property
    def capacity(self):
        return self.c.capacity

    @property
    def malformed(self):
        """Records refused because their size did not match their type."""
        return self.c.malformed

    @property
    def limit(self):
        """How many events make the arena full (at most its capacity)."""
        return self.c.limit

    @limit.setter
    def limit(self, uint32_t n):
        if n == 0 or n > self.c.capacity:
            raise ValueError(f"an arena limit must be between 1 and its capacity ({self.c.capacity})")
        self.c.limit = n

    @property
    def full(self):
        return self.c.count >= self.c.limit

    def clear(self):
        """Forget the events; every push overwrites its slot, so nothing is zeroed."""
        self.c.count = 0

    def set_redactor(self, Redactor redactor):
        """Redact the argv of every exec event pushed from now on (None: keep argv as it is).
        The kernel's records and push_bytes() both come in through arena_push(); synthetic
        events, made in place, carry no argv of a real process."""
        self.redactor = redactor
        self.c.redact = &redactor.cfg if redactor is not None else NULL

    def push_bytes(self, const unsigned char[::1] record not None):
        """Append one record in kernel layout (tests, synthetic sources). False when the arena is
        full, or the record is malformed or over its cgroup's budget (and counted)."""
        if self.c.count >= self.c.limit:
            return False
        return arena_push(&self.c, &record[0], record.shape[0]) <= PUSH_FULL

    def slot_bytes(self, uint32_t i):
        """Slot i in kernel layout, as many bytes as its type has (tests, debugging)."""
        if i >= self.c.count:
            raise IndexError(f"slot {i} is not filled (the arena holds {self.c.count})")
        cdef tapio_event *e = arena_slot(&self.c, i)
        return (<char *>e)[:event_size(e.hdr.type)]
