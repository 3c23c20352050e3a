"""Background tasks that are never lost: references kept, failures reported, clean cancel."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

log = logging.getLogger(__name__)


class Supervisor:
    """Owns a service's background tasks.

    ``spawn`` keeps a reference to each task; when one fails, the error is logged
    and passed to ``on_failure`` (the health registry records it). ``aclose``
    cancels what is left and waits for it, within a grace period.
    """

    def __init__(self, on_failure: Callable[[str, BaseException], None] | None = None) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()
        self._on_failure = on_failure
        self._closed = False

    def spawn(self, coro: Coroutine[Any, Any, Any], *, name: str) -> asyncio.Task[Any]:
        if self._closed:
            coro.close()
            raise RuntimeError(f"supervisor is closed; cannot start {name}")
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.error("background task %s failed: %r", task.get_name(), exc, exc_info=exc)
            if self._on_failure is not None:
                self._on_failure(task.get_name(), exc)

    @property
    def running(self) -> int:
        return len(self._tasks)

    async def aclose(self, grace_s: float = 5.0) -> None:
        self._closed = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            _done, pending = await asyncio.wait(tasks, timeout=grace_s)
            for task in pending:
                log.warning("background task %s did not stop within %.1fs", task.get_name(), grace_s)
