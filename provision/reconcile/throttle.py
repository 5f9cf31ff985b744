"""Pacing: a token-bucket rate limit per provider and per-item exponential back-off with jitter."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from provision.clock import Clock
from provision.retry import RetryPolicy


class RateLimiter:
    """At most ``rate`` calls per second on average, bursts up to ``burst``; shared by threads."""

    def __init__(self, clock: Clock, rate: float | None, burst: float | None = None) -> None:
        self.clock = clock
        self.rate = rate
        self.burst = burst if burst is not None else max(1.0, rate or 1.0)
        self._tokens = self.burst
        self._stamp = clock.now()
        self._lock = threading.Lock()

    def acquire(self) -> None:
        if not self.rate:
            return
        while True:
            with self._lock:
                now = self.clock.now()
                self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
                self._stamp = now
                if self._tokens >= 1:
                    self._tokens -= 1
                    return
                wait = (1 - self._tokens) / self.rate
            self.clock.sleep(wait)


@dataclass
class _Attempts:
    count: int
    next_at: float


class Backoff:
    """Per-item back-off on the one retry policy's schedule (:meth:`RetryPolicy.delay`): an
    item that failed n times is skipped until a random wait of up to ``initial * 2**(n-1)``
    seconds (capped at ``maximum``) has passed, or exactly the ``retry_after`` the provider
    asked for. Items are keys like ``web:create`` or ``web:destroy:i-123``."""

    def __init__(self, clock: Clock, initial: float = 0.5, maximum: float = 300.0) -> None:
        self.clock = clock
        self.policy = RetryPolicy(initial=initial, maximum=maximum, clock=clock)
        self._items: dict[str, _Attempts] = {}
        self._lock = threading.Lock()

    def ready(self, item: str) -> bool:
        with self._lock:
            entry = self._items.get(item)
        return entry is None or self.clock.now() >= entry.next_at

    def failed(self, item: str, retry_after: float | None = None) -> float:
        """Record a failure; return the delay before the item is tried again."""
        with self._lock:
            entry = self._items.get(item) or _Attempts(0, 0.0)
            entry.count += 1
            delay = self.policy.delay(entry.count, retry_after)
            entry.next_at = self.clock.now() + delay
            self._items[item] = entry
            return delay

    def succeeded(self, item: str) -> None:
        with self._lock:
            self._items.pop(item, None)

    def attempts(self, item: str) -> int:
        with self._lock:
            entry = self._items.get(item)
        return entry.count if entry else 0

    def earliest(self) -> float | None:
        with self._lock:
            return min((e.next_at for e in self._items.values()), default=None)
