# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""A decoded batch as PostgreSQL COPY rows (binary format), for the event history
(tapio/server/store/postgres.py): one bytes object per batch, written in C from the batch's
records, with no Python object per event.

Each row is HISTORY_COLUMNS, in that order. Text columns must be UTF-8 without NUL for
PostgreSQL, and bytes off the wire are hostile: each byte outside a valid UTF-8 sequence, and
each NUL, becomes '?' (the length stays). The event's own wire bytes go as they arrived (bytea).
"""
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING, PyBytes_GET_SIZE
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int32_t, int64_t, INT64_MAX
from libc.string cimport memcpy

from tapio._fast.codec cimport DecodedBatch
from tapio._fast.records cimport (
    tapio_batch, tapio_record, tapio_ref, tapio_context_rec, ref_ptr, record_context, KIND_EVENT,
)
from tapio._fast.utf8 cimport scrub_copy

HISTORY_COLUMNS = ("collector_id", "batch_id", "idx", "node", "event_id", "type", "pid",
                   "timestamp_ns", "comm", "container_id", "container_name", "received_ns", "event")

cdef enum:
    NCOLUMNS = 13
    CTX_CONTAINER_ID = 1      # Context field numbers
    CTX_CONTAINER_NAME = 9

cdef bytes HEADER = b"PGCOPY\n\xff\r\n\x00" + b"\x00" * 8     # signature, flags, extension length
cdef bytes TRAILER = b"\xff\xff"                                # a tuple of -1 fields: the end


cdef inline uint8_t *put16(uint8_t *p, uint16_t v) noexcept nogil:
    p[0] = v >> 8
    p[1] = v
    return p + 2


cdef inline uint8_t *put32(uint8_t *p, uint32_t v) noexcept nogil:
    p[0] = v >> 24
    p[1] = v >> 16
    p[2] = v >> 8
    p[3] = v
    return p + 4


cdef inline uint8_t *put64(uint8_t *p, uint64_t v) noexcept nogil:
    p = put32(p, <uint32_t>(v >> 32))
    return put32(p, <uint32_t>v)


cdef inline uint8_t *int64_field(uint8_t *p, int64_t v) noexcept nogil:
    p = put32(p, 8)
    return put64(p, <uint64_t>v)


cdef inline uint8_t *int32_field(uint8_t *p, int32_t v) noexcept nogil:
    p = put32(p, 4)
    return put32(p, <uint32_t>v)


cdef inline uint8_t *text_field(uint8_t *p, const uint8_t *src, uint32_t n) noexcept nogil:
    """A text value: length, then the bytes made valid UTF-8 without NUL."""
    cdef uint32_t i
    p = put32(p, n)
    scrub_copy(p, src, n)
    for i in range(n):
        if p[i] == 0:
            p[i] = b'?'
    return p + n


cdef inline uint8_t *raw_field(uint8_t *p, const uint8_t *src, uint32_t n) noexcept nogil:
    p = put32(p, n)
    memcpy(p, src, n)
    return p + n


cdef inline tapio_ref context_field(const tapio_batch *b, const tapio_record *rec, int field) noexcept nogil:
    cdef const tapio_context_rec *ctx = record_context(b, rec)
    cdef tapio_ref none
    if ctx == NULL:
        none.off = 0
        none.len = 0
        return none
    return ctx.fields[field]


cdef inline int64_t clamp64(uint64_t v) noexcept nogil:
    return <int64_t>v if v <= <uint64_t>INT64_MAX else INT64_MAX


COPY_HEADER = HEADER
COPY_TRAILER = TRAILER


def copy_rows(DecodedBatch batch not None, str collector_id not None, int64_t received_ns,
              bint framed=True):
    """The COPY ... (FORMAT BINARY) input of the batch's events: header, one row per event
    (HISTORY_COLUMNS), trailer. `collector_id` is the one the server knows the stream by.
    Without `framed`, the rows alone: several batches' rows between one COPY_HEADER and one
    COPY_TRAILER are one COPY."""
    cdef const tapio_batch *b = &batch.c
    cdef const tapio_record *rec
    cdef bytes collector = collector_id.encode("utf-8", "replace")
    cdef bytes node = batch.node_name.encode("utf-8", "replace")
    cdef bytes merged = None
    cdef const uint8_t *wire_ptr
    cdef uint32_t wire_len
    cdef uint32_t i
    cdef size_t size = len(HEADER) + len(TRAILER) if framed else 0
    cdef uint32_t clen = PyBytes_GET_SIZE(collector)
    cdef uint32_t nlen = PyBytes_GET_SIZE(node)
    cdef tapio_ref cid, cname
    if b.kind == KIND_EVENT and b.event_pieces.more:
        merged = batch.event_wire(0)       # one event sent in pieces: their bytes joined
    # the size first: each row's fixed part, its strings and its wire bytes
    for i in range(b.count):
        rec = &b.records[i]
        wire_len = PyBytes_GET_SIZE(merged) if merged is not None else rec.wire.len
        size += (2 + NCOLUMNS * 4 + 8 * 4 + 4 * 2 + clen + nlen + rec.id.len + rec.comm.len
                 + context_field(b, rec, CTX_CONTAINER_ID).len
                 + context_field(b, rec, CTX_CONTAINER_NAME).len + wire_len)
    out = PyBytes_FromStringAndSize(NULL, size)
    cdef uint8_t *start = <uint8_t *>PyBytes_AS_STRING(out)
    cdef uint8_t *p = start
    if framed:
        memcpy(p, PyBytes_AS_STRING(HEADER), len(HEADER))
        p += len(HEADER)
    for i in range(b.count):
        rec = &b.records[i]
        if merged is not None:
            wire_ptr = <const uint8_t *>PyBytes_AS_STRING(merged)
            wire_len = PyBytes_GET_SIZE(merged)
        else:
            wire_ptr = <const uint8_t *>ref_ptr(b, rec.wire)
            wire_len = rec.wire.len
        cid = context_field(b, rec, CTX_CONTAINER_ID)
        cname = context_field(b, rec, CTX_CONTAINER_NAME)
        p = put16(p, NCOLUMNS)
        p = text_field(p, <const uint8_t *>PyBytes_AS_STRING(collector), clen)
        p = int64_field(p, clamp64(b.batch_id))
        p = int32_field(p, <int32_t>i)
        p = text_field(p, <const uint8_t *>PyBytes_AS_STRING(node), nlen)
        p = text_field(p, <const uint8_t *>ref_ptr(b, rec.id), rec.id.len)
        p = int32_field(p, rec.type)
        p = int64_field(p, rec.pid)
        p = int64_field(p, clamp64(rec.timestamp_ns))
        p = text_field(p, <const uint8_t *>ref_ptr(b, rec.comm), rec.comm.len)
        p = text_field(p, <const uint8_t *>ref_ptr(b, cid), cid.len)
        p = text_field(p, <const uint8_t *>ref_ptr(b, cname), cname.len)
        p = int64_field(p, received_ns)
        p = raw_field(p, wire_ptr, wire_len)
    if framed:
        memcpy(p, PyBytes_AS_STRING(TRAILER), len(TRAILER))
        p += len(TRAILER)
    if <size_t>(p - start) != size:
        raise AssertionError(f"copy_rows wrote {p - start} bytes of {size}")
    return out
