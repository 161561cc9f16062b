# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Tapio's protobuf codec: kernel events <-> `tapio.v1.TapioStreamEventsRequest` wire bytes.

Collector side, `BatchEncoder.encode`: the events of an EventArena, in their kernel layout, go
straight to canonical protobuf bytes (byte for byte what the `protobuf` library writes for the
same message), with no Python object per event: each event is measured, then written, into a
buffer the encoder reuses; the bytes object returned is one copy of it.

Server side, `DecodedBatch.parse`: wire bytes -> typed C records (records.pxd) in one nogil pass
that checks every read against the end of the input; malformed input raises DecodeError. Python
dicts, in the JSON shape of tapio.vocab, are built only when asked for.

One extension, its parts included (as uvloop's loop.pyx includes its parts), so that calls
between them are plain inline C:

    encode_event.pxi    one arena slot -> the bytes of one Event (measure, then write)
    batch_encoder.pxi   collector: BatchEncoder, encode_field
    decode_request.pxi  wire bytes -> the C records of records.pxd (bounds-checked, nogil)
    decoded_batch.pxi   server: DecodedBatch, DecodeError, the dict views
    latency.pxi         server: LatencyHistogram
"""
import time

from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Realloc, PyMem_Free, PyMem_RawRealloc, PyMem_RawFree
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.stdint cimport uint8_t, uint32_t, uint64_t, int32_t, int64_t, UINT32_MAX, UINT64_MAX
from libc.string cimport memchr, memcpy, memset
from posix.unistd cimport sysconf, _SC_PAGESIZE

from tapio._fast.events cimport (
    tapio_event, tapio_header, tapio_exec, tapio_exit, tapio_tcp, tapio_oom, tapio_signal,
    tapio_throttled, TAPIO_EVENT_THROTTLED, TAPIO_EVENT_EXEC, TAPIO_EVENT_EXIT, TAPIO_EVENT_TCP_CONNECT, TAPIO_EVENT_TCP_ACCEPT,
    TAPIO_EVENT_TCP_CLOSE, TAPIO_EVENT_OOM_KILL, TAPIO_EVENT_SIGNAL, TAPIO_COMM_LEN,
    TAPIO_FILENAME_LEN, TAPIO_ARGS_LEN, TAPIO_CGROUP_NAME_LEN, TAPIO_EXEC_ARGS_TRUNCATED,
    TAPIO_EXEC_ARGS_REDACTED,
    TAPIO_TCP_PASSIVE,
)
from tapio._fast.arena cimport EventArena, arena_t, arena_slot, slot_totals
from tapio._fast.wire cimport *
from tapio._fast.records cimport *
from tapio._fast.utf8 cimport scrub_copy

from google.protobuf.message import DecodeError as LibraryDecodeError

from tapio import vocab
from tapio.v1 import events_pb2, stream_pb2


def struct_sizes():
    """sizeof() of each kernel event struct as this module was compiled (layout tests)."""
    return {
        "tapio_header": sizeof(tapio_header), "tapio_exec": sizeof(tapio_exec),
        "tapio_exit": sizeof(tapio_exit), "tapio_tcp": sizeof(tapio_tcp),
        "tapio_oom": sizeof(tapio_oom), "tapio_signal": sizeof(tapio_signal),
        "tapio_throttled": sizeof(tapio_throttled), "tapio_event": sizeof(tapio_event),
    }


include "encode_event.pxi"
include "batch_encoder.pxi"
include "decode_request.pxi"
include "decoded_batch.pxi"
include "latency.pxi"
