"""Groups across replicas: the owner of a node stores its groups (PostgreSQL) and publishes each
version on `tapio.groups`; every replica hands the versions it did not make to its own live
subscribers, so Subscribe on any replica sees the groups of every node.

This is core NATS (at most once), not JetStream: a live view may miss a version while a replica
reconnects, and the stored groups (any replica's /api/v1/groups, TapioQuery) stay the record.
"""
import json
import logging

from tapio.server.bus import subjects
from tapio.server.bus.loop import BusError

log = logging.getLogger("tapio.server.bus")

MAX_GROUP_BYTES = 4 << 20        # a group body bigger than this is hostile: not handed on


def group_body(group):
    """A group as subscribers get it (without its events), and its JSON."""
    body = {k: v for k, v in group.items() if k != "events"}
    return body, json.dumps(body, separators=(",", ":"), default=str).encode()


class GroupFanout:
    def __init__(self, bus, replica_id, subscriptions):
        self.bus = bus
        self.replica_id = replica_id
        self.subscriptions = subscriptions
        self.sent = 0
        self.received = 0
        self.send_errors = 0
        self._sub = None

    def start(self, timeout=5.0):
        self._sub = self.bus.call(self.bus.nc.subscribe(subjects.GROUPS_SUBJECT, cb=self._on_message),
                                  timeout)

    def publish(self, group):
        """Tell the other replicas about a group version (does not wait)."""
        _, data = group_body(group)
        headers = {subjects.REPLICA: self.replica_id}
        try:
            future = self.bus.submit(self.bus.nc.publish(subjects.GROUPS_SUBJECT, data, headers=headers))
        except BusError:                # the bus is closed (shutting down)
            self.send_errors += 1
            return
        future.add_done_callback(self._sent)

    def _sent(self, future):
        if future.cancelled() or future.exception() is not None:
            self.send_errors += 1
        else:
            self.sent += 1

    async def _on_message(self, msg):
        if (msg.headers or {}).get(subjects.REPLICA) == self.replica_id:
            return            # ours: the store told our subscribers already
        if len(msg.data) > MAX_GROUP_BYTES:
            return
        try:
            body = json.loads(msg.data)
        except ValueError:
            return
        if not isinstance(body, dict) or not isinstance(body.get("id"), str):
            return
        self.received += 1
        self.subscriptions.publish_group(body, len(msg.data))

    def stats(self):
        return {"sent": self.sent, "received": self.received, "send_errors": self.send_errors}
