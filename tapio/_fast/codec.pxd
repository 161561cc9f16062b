# The codec's decoded batch, for Cython consumers: `batch.c` is the tapio_batch of records.pxd.
from tapio._fast.records cimport tapio_batch


cdef class DecodedBatch:
    cdef tapio_batch c
    cdef bytes data           # owns the bytes c.buf points into
    cdef object _message      # hello / control: the protobuf library's message
    cdef Py_ssize_t _index(self, Py_ssize_t i) except -1
