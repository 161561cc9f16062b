"""The names every replica agrees on: one place for them.

Events of node N go to `tapio.events.pPP.<N>`, where PP is N's partition (a CRC-32 of the node name
modulo PARTITIONS). The subject names the node, and the partition token in front of it lets one
consumer take a whole partition with one filter (`tapio.events.pPP.>`): NATS 2.9 gives a consumer
one filter subject only. PARTITIONS is fixed for the life of a stream: changing it moves nodes
between partitions, and with them their correlation state.
"""
import re
import zlib

STREAM = "TAPIO_EVENTS"
SUBJECTS = "tapio.events.>"
GROUPS_SUBJECT = "tapio.groups"
LEASES = "tapio_leases"            # KV bucket with a TTL: partition leases and replica heartbeats
CHECKPOINTS = "tapio_checkpoints"  # KV bucket: where a new owner starts replaying each partition
PARTITIONS = 32
REPLICAS = 3                       # copies JetStream keeps of the stream and the buckets

# headers on each published batch (the request bytes themselves are the payload)
MSG_ID = "Nats-Msg-Id"             # JetStream drops a second message with this id in its window
COLLECTOR = "Tapio-Collector"
NODE = "Tapio-Node"
REPLICA = "Tapio-Replica"          # on tapio.groups: which replica made the group

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def partition(node):
    return zlib.crc32(node.encode("utf-8", "replace")) % PARTITIONS


def token(text, limit=128):
    """`text` as one subject or key token: anything but letters, digits, _ and - becomes _."""
    return _UNSAFE.sub("_", text)[:limit] or "_"


def event_subject(node):
    return f"tapio.events.p{partition(node):02d}.{token(node)}"


def partition_filter(p):
    return f"tapio.events.p{p:02d}.>"


def message_id(collector_id, batch_id):
    return f"{collector_id}/{batch_id}"
