"""Waiting between tries of something that may come back (a store, a server, a web host): one
exponential backoff for every retry loop of the package."""

from __future__ import annotations

import time
from typing import Callable


class Backoff:
    """Delays of ``first_s`` seconds doubling up to ``max_s``, for at most ``patience_s`` seconds
    of trying in all (counted from construction).

    ``wait()`` sleeps the next delay and returns True, or returns False without sleeping once the
    patience is spent: with ``whole=True`` when the whole next delay no longer fits in it (a try
    after the deadline would not count), else when nothing is left (the last delay is cut short).
    """

    def __init__(self, patience_s: float = float("inf"), first_s: float = 1.0, max_s: float = 30.0,
                 sleep: Callable[[float], None] | None = None, clock: Callable[[], float] = time.monotonic):
        self.patience_s, self.max_s = patience_s, max_s
        self.sleep, self.clock = sleep or time.sleep, clock
        self.start, self.delay = clock(), first_s

    @property
    def elapsed(self) -> float:
        """Seconds since the first try."""
        return self.clock() - self.start

    def wait(self, whole: bool = False) -> bool:
        left = self.patience_s - self.elapsed
        if left <= 0 or (whole and self.delay > left):
            return False
        self.sleep(min(self.delay, left))
        self.delay = min(self.max_s, self.delay * 2)
        return True
