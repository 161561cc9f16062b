from libc.stdint cimport uint64_t
from tapio._fast.throttle cimport throttle_t


cdef class Throttle:
    cdef throttle_t c
    cdef void _forget_idle(self, uint64_t now) noexcept
