"""The one retry policy for network calls (registries, cloud APIs, provider back-ends).

- Bounded: at most ``attempts`` tries and ``total`` seconds from the first try, sleeps
  included; a wait that would end past the time budget is not started.
- Honours the server: a ``Retry-After`` (delta-seconds or an HTTP-date, RFC 9110 10.2.3)
  carried by the failure is waited exactly; otherwise exponential back-off with full jitter
  (``uniform(0, min(maximum, initial * 2**(n-1)))`` after the n-th failure).
- Time is injected: a clock with ``now()`` (seconds since the epoch) and ``sleep()``; tests
  pass a fake clock and never wait.

An attempt asks for another try by raising :class:`RetryLater` (or an exception type the
caller names in ``retry_on``; a ``retry_after`` attribute on it is honoured too). When the
policy gives up it re-raises the last failure; a :class:`RetryLater` then carries how many
attempts were made and why the policy stopped (``gave_up``).

The loop is tenacity's ``Retrying``; :meth:`RetryPolicy.delay` is also what callers that keep
their own per-item schedule (the reconcile engine's back-off) use for the n-th failure.
"""

from __future__ import annotations

import email.utils
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import tenacity

from provision.clock import Clock, SystemClock

log = logging.getLogger(__name__)
T = TypeVar("T")


class RetryLater(Exception):
    """Raised by an attempt that should be tried again (after ``retry_after`` seconds, when
    the server said so)."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after
        self.attempts = 0  # set when the policy gives up
        self.gave_up = ""  # why the policy stopped, e.g. "after 5 attempts"


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait that a ``Retry-After`` header asks for, from ``now`` (epoch seconds):
    delta-seconds or an HTTP-date; None when absent or unreadable; never negative."""
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # RFC 9110: HTTP-dates are UTC
        return None
    return max(0.0, when.timestamp() - now)


def _retry_after_of(exc: BaseException | None) -> float | None:
    value = getattr(exc, "retry_after", None)
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        return float(value)
    return None


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to retry. Immutable; share one per client."""

    attempts: int = 5
    total: float = 120.0
    initial: float = 0.5
    maximum: float = 30.0
    clock: Clock = field(default_factory=SystemClock, compare=False)
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.total < 0 or self.initial < 0 or self.maximum < 0:
            raise ValueError(f"invalid retry policy {self!r}")

    def backoff(self, failures: int) -> float:
        """The jittered exponential wait after the ``failures``-th failure (1-based)."""
        ceiling = min(self.maximum, self.initial * 2.0 ** max(0, failures - 1))
        return self.rng.uniform(0.0, ceiling)

    def delay(self, failures: int, retry_after: float | None = None) -> float:
        """The wait after the ``failures``-th failure: what the server asked, else back-off."""
        return max(0.0, retry_after) if retry_after is not None else self.backoff(failures)

    def call(
        self,
        attempt: Callable[[], T],
        *,
        retry_on: tuple[type[BaseException], ...] = (RetryLater,),
        what: str = "request",
    ) -> T:
        """Run ``attempt`` until it returns, raises something not in ``retry_on``, or the
        policy gives up (then the last failure is re-raised)."""
        started = self.clock.now()
        why: list[str] = []
        tries = [0]

        def counted() -> T:
            tries[0] += 1
            return attempt()

        def stop(state: tenacity.RetryCallState) -> bool:
            if state.attempt_number >= self.attempts:
                why.append(f"after {state.attempt_number} attempts")
                return True
            spent = self.clock.now() - started
            if spent + state.upcoming_sleep > self.total:
                why.append(
                    f"after {state.attempt_number} attempts: waiting {state.upcoming_sleep:.1f} s "
                    f"more would pass the {self.total:g} s limit"
                )
                return True
            return False

        def wait(state: tenacity.RetryCallState) -> float:
            failure = state.outcome.exception() if state.outcome else None
            return self.delay(state.attempt_number, _retry_after_of(failure))

        def before_sleep(state: tenacity.RetryCallState) -> None:
            failure = state.outcome.exception() if state.outcome else None
            log.info(
                "%s failed (%s); try %d of %d in %.1f s",
                what,
                failure,
                state.attempt_number + 1,
                self.attempts,
                state.upcoming_sleep,
            )

        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(retry_on),
            stop=stop,
            wait=wait,
            sleep=self.clock.sleep,
            before_sleep=before_sleep,
            reraise=True,
        )
        try:
            return retrying(counted)
        except RetryLater as exc:
            exc.attempts = tries[0]
            exc.gave_up = why[-1] if why else f"after {exc.attempts} attempts"
            raise
