"""Random draws for simulated request streams, shared by the canary statistics tests and ``bench/canary``."""

from __future__ import annotations

import math
import random


def binomial(rng: random.Random, n: int, p: float) -> int:
    """Binomial(n, p) by the waiting times between successes: exact, and fast for the small p simulated here."""
    if p <= 0:
        return 0
    count, position, log_q = 0, 0, math.log1p(-p)
    while True:
        position += int(math.log(1.0 - rng.random()) / log_q) + 1
        if position > n:
            return count
        count += 1
