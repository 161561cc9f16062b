"""Replicas of tapio-server on NATS JetStream (`--bus`), see docs/scaling.md.

subjects.py   names: the stream, its per-node subjects and their partitions, the KV buckets
loop.py       the NATS client (nats-py) in its own thread with its own asyncio loop; other
              threads call it through thread-safe futures, each with a timeout
relay.py      ingest side: a validated batch is published to JetStream, and its collector is
              acked only once JetStream acked it; the bus down pauses collectors
owner.py      correlation side: a lease per partition (KV bucket with a TTL) gives each node
              partition one owner among the live replicas; the owner consumes it from its
              checkpoint and feeds the history and the correlation engine
fanout.py     groups: the owner publishes each group on tapio.groups; every replica hands the
              groups it did not make to its own subscribers
replica.py    the whole, as app.py starts it
"""
