"""`--output`: every event as one JSON line, to stdout (`-`) or a file (appended)."""
import sys

from tapio._fast.codec import DecodedBatch


class JsonLinesSink:
    """Decodes each batch with the same decoder the server uses, so the lines have exactly the
    shape of the server's --events-out."""

    def __init__(self, path):
        self.path = path
        self._file = sys.stdout.buffer if path == "-" else open(path, "ab")
        self.delivered = 0          # events written

    def ledger(self, open_events=True):
        return {"delivered": self.delivered, "dropped_buffer": 0, "undelivered": 0}

    def idle(self):
        return True     # writing is synchronous: nothing is ever in flight

    def congested(self):
        return False

    def take_buffer_drops(self):
        return 0        # nothing is buffered

    async def submit(self, batch_id, data, count, priority=False):
        self._file.write(DecodedBatch.parse(data).to_json_lines())
        self._file.flush()
        self.delivered += count

    def close(self):
        if self._file is not sys.stdout.buffer:
            self._file.close()
