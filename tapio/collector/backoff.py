"""Exponential backoff with full jitter (each wait uniform in [0, min(max, initial * multiplier^n)])."""
import random


class Backoff:
    def __init__(self, initial=0.25, maximum=30.0, multiplier=2.0, rng=None):
        if initial <= 0 or maximum < initial or multiplier < 1:
            raise ValueError("backoff needs 0 < initial <= maximum and multiplier >= 1")
        self.initial = initial
        self.maximum = maximum
        self.multiplier = multiplier
        self.attempt = 0
        self._rng = rng or random.Random()

    def ceiling(self):
        """The upper bound of the next wait."""
        return min(self.maximum, self.initial * self.multiplier ** self.attempt)

    def next(self):
        """The next wait, in seconds; each call raises the ceiling until it reaches the maximum."""
        wait = self._rng.uniform(0, self.ceiling())
        if self.ceiling() < self.maximum:
            self.attempt += 1
        return wait

    def reset(self):
        self.attempt = 0
