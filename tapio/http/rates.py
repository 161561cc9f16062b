"""Rates from cumulative counters: a trio task samples them once a second, and the API answers
"events per second over the last 10 s" and the last two minutes second by second (the dashboard's
chart) from the samples, without touching the hot path.
"""
import collections
import time

import trio


class RateSampler:
    def __init__(self, read, interval=1.0, keep=121, window=10.0):
        """read: () -> {series: {key: cumulative count}}, e.g. {"type": {"exec": 12}, ...}."""
        self.read = read
        self.interval = interval
        self.window = window
        self._samples = collections.deque(maxlen=keep)     # (monotonic, wall, totals)

    def sample(self, now=None, wall=None):
        self._samples.append((time.monotonic() if now is None else now,
                              time.time() if wall is None else wall, self.read()))

    async def run(self):
        while True:
            self.sample()
            await trio.sleep(self.interval)

    def rates(self, series):
        """{key: per second} over the window (the newest sample against the oldest within it)."""
        if len(self._samples) < 2:
            return {}
        t1, _, newest = self._samples[-1]
        old = self._samples[0]
        for sample in reversed(self._samples):
            if t1 - sample[0] >= self.window:
                old = sample
                break
        t0, _, oldest = old
        if t1 <= t0:
            return {}
        before = oldest.get(series, {})
        return {key: max(0.0, (count - before.get(key, 0)) / (t1 - t0))
                for key, count in newest.get(series, {}).items()}

    def history(self, series):
        """[{"t": wall seconds, "rates": {key: per second}}, ...] between consecutive samples,
        oldest first."""
        out = []
        samples = list(self._samples)
        for (t0, _, a), (t1, wall, b) in zip(samples, samples[1:]):
            if t1 <= t0:
                continue
            before = a.get(series, {})
            out.append({"t": round(wall, 3),
                        "rates": {key: round(max(0.0, (count - before.get(key, 0)) / (t1 - t0)), 3)
                                  for key, count in b.get(series, {}).items()}})
        return out
