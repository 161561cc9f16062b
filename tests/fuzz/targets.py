"""Fuzz targets: bytes that arrive over a socket, into the code that reads them first.

Each target takes one input and returns; an exception other than the clean rejection the code
promises (DecodeError, ValueError naming the bad part) is a finding, as is a crash, a hang or,
under AddressSanitizer, an over-read. `python -m tests.fuzz.run TARGET` runs one under atheris;
tests/test_fuzz_smoke.py runs every seed through it and each target for a few seconds.
"""
from google.protobuf.message import DecodeError as LibraryDecodeError

from tapio._fast.codec import DecodedBatch, DecodeError
from tapio.v1 import query_pb2


def decoder(data):
    """The server's batch decoder (every StreamEvents request), and every view of what it read."""
    try:
        batch = DecodedBatch.parse(data)
    except DecodeError:
        return
    batch.kind, batch.message, batch.ledger, batch.collector_id, batch.node_name
    batch.checksum()
    batch.type_counts()
    batch.to_json_lines()
    for i in range(len(batch)):
        batch.event_id(i)
        batch.event_wire(i)
        batch.event_dict(i)


def response(data):
    """The collector's reader of what its server sends back (acks, controls, errors)."""
    from tapio.collector.connection import BadReply, read_reply
    try:
        read_reply(data)
    except BadReply:
        return


# What the filters are matched against: short strings, so that a pathological pattern (the
# server's filters must not backtrack) shows as a hang on a few characters, not on long ones.
_EVENT = {"type": "exec", "pid": 7, "comm": "aaaaaaaaaaaaaaaaaaaaaaaaaaa!", "collector_id": "node-a",
          "process": {"executable": "/usr/bin/aaaaaaaaaaaaaaaaaaaaaaaa!"},
          "exec": {"filename": "/bin/sh"},
          "context": {"container_id": "0123abcd", "container_name": "web", "pod_name": "web-1",
                      "pod_uid": "u-1", "namespace": "default"}}
_GROUP = {"kind": "process_tree", "collector_id": "node-a",
          "attributes": {"pid": 7, "comm": "sh", "executable": "/bin/sh", "namespace": "default"}}


def filters(data):
    """The server's filter parser (Subscribe's allow and deny lists), and one match of each."""
    from tapio.server.filters import Filter
    try:
        request = query_pb2.SubscribeRequest.FromString(data)
    except LibraryDecodeError:
        return
    try:
        flt = Filter.from_request(request)
    except ValueError:
        return
    flt.event_types()
    flt.events_by_type_only()
    flt.matches_event(_EVENT)
    flt.matches_group(_GROUP)


TARGETS = {"decoder": decoder, "response": response, "filters": filters}
