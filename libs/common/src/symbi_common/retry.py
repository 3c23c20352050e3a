"""The one retry policy: which errors retry, jittered exponential backoff, a deadline."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from symbi_common.errors import DeadlineExceededError, UnavailableError

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    initial_backoff_s: float = 0.05
    max_backoff_s: float = 2.0
    multiplier: float = 2.0
    jitter: float = 0.2
    deadline_s: float = 10.0
    retry_on: tuple[type[BaseException], ...] = (UnavailableError, ConnectionError, OSError)

    def backoff(self, attempt: int) -> float:
        base = min(self.max_backoff_s, self.initial_backoff_s * self.multiplier**attempt)
        return base * (1 + random.uniform(-self.jitter, self.jitter))  # noqa: S311 - jitter, not crypto


async def retry(fn: Callable[[], Awaitable[T]], policy: RetryPolicy, *, what: str) -> T:
    """Call ``fn`` until it succeeds, a non-retryable error escapes, or the deadline passes."""
    deadline = time.monotonic() + policy.deadline_s
    attempt = 0
    while True:
        try:
            return await fn()
        except policy.retry_on as exc:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DeadlineExceededError(
                    f"{what}: gave up after {attempt + 1} attempts in {policy.deadline_s:.1f}s: {exc}"
                ) from exc
            delay = min(policy.backoff(attempt), remaining)
            log.debug("%s failed (%s); retry %d in %.2fs", what, exc, attempt + 1, delay)
            await asyncio.sleep(delay)
            attempt += 1
