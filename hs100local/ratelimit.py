"""Per-client token buckets, shared by the DNS and NTP servers.

Bounded memory: a flood of spoofed sources cannot grow the table past
``max_clients`` (it starts over instead, which at worst lets a burst through).
"""

from __future__ import annotations

import time


class RateLimiter:
    """Token bucket per client address: ``rate`` per second, bursts of ``burst``.

    ``rate`` 0 disables the limit.
    """

    def __init__(self, rate: float = 200.0, burst: float = 400.0, max_clients: int = 10_000):
        self.rate = rate
        self.burst = burst
        self.max_clients = max_clients
        self.buckets: dict[str, tuple[float, float]] = {}

    def allow(self, client: str, now: float | None = None) -> bool:
        if self.rate <= 0:
            return True
        now = time.monotonic() if now is None else now
        tokens, last = self.buckets.get(client, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if len(self.buckets) >= self.max_clients and client not in self.buckets:
            self.buckets.clear()  # crude but bounded: start over rather than grow
        if tokens < 1:
            self.buckets[client] = (tokens, now)
            return False
        self.buckets[client] = (tokens - 1, now)
        return True
