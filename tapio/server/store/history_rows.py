"""Events read back from the history (PostgreSQL rows of wire bytes) as the JSON API's dicts.

The rows hold each tapio.v1.Event as it arrived. Rather than a second decoder, they are framed
as one EventBatch (field 3, repeated Event) inside a TapioStreamEventsRequest (field 2, batch)
and read by the codec that decodes every batch (DecodedBatch): one pass in C for the whole page.
"""
from tapio._fast.codec import DecodedBatch

_EVENTS_FIELD = b"\x1a"      # EventBatch.events = 3, length-delimited
_BATCH_FIELD = b"\x12"       # TapioStreamEventsRequest.batch = 2, length-delimited


def _varint(n):
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def decode_events(rows):
    """[(event dict, event wire bytes, collector id)] of history rows [(event wire bytes,
    collector id, node, batch id)], in their order. The batch's fields of the dict (node,
    collector, batch) are the row's: the events were framed without them."""
    if not rows:
        return []
    wires = [bytes(row[0]) for row in rows]
    body = b"".join(_EVENTS_FIELD + _varint(len(w)) + w for w in wires)
    batch = DecodedBatch.parse(_BATCH_FIELD + _varint(len(body)) + body)
    out = []
    for i, (_, collector_id, node, batch_id) in enumerate(rows):
        event = batch.event_dict(i)
        if node:
            event["node"] = node
        event["collector"] = collector_id
        if batch_id:
            event["batch"] = batch_id
        out.append((event, wires[i], collector_id))
    return out
