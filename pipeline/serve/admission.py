"""A bounded queue in front of generation: at most `concurrency` requests generate at once,
at most `queue` more wait for their turn, and any beyond that are refused at once (HTTP 429).

In: requests calling `await admission.enter()` and, when their generation is over,
`admission.leave()`. Out: `QueueFull` for a request that finds every running and waiting place
taken; the counts for /healthz. Waiting requests are served in arrival order (asyncio's
semaphore is fair).
"""

from __future__ import annotations

import asyncio


class QueueFull(Exception):
    pass


class Admission:
    def __init__(self, concurrency: int, queue: int):
        if concurrency < 1 or queue < 0:
            raise ValueError("concurrency must be at least 1 and queue at least 0")
        self.concurrency = concurrency
        self.queue = queue
        self.admitted = 0  # running + waiting
        self.refused = 0
        self._slots: asyncio.Semaphore | None = None  # made in the server's event loop

    @property
    def running(self) -> int:
        return min(self.admitted, self.concurrency)

    @property
    def waiting(self) -> int:
        return self.admitted - self.running

    async def enter(self) -> None:
        """Wait for a generation slot, or raise QueueFull when the queue is full."""
        if self.admitted >= self.concurrency + self.queue:
            self.refused += 1
            raise QueueFull(
                f"the server is busy ({self.concurrency} generating, {self.queue} waiting); "
                "retry shortly"
            )
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.concurrency)
        self.admitted += 1
        try:
            await self._slots.acquire()
        except BaseException:  # the request went away while it waited
            self.admitted -= 1
            raise

    def leave(self) -> None:
        """Give the slot back (call in the event loop's thread)."""
        self.admitted -= 1
        assert self._slots is not None
        self._slots.release()

    def stats(self) -> dict[str, int]:
        return {
            "running": self.running,
            "waiting": self.waiting,
            "concurrency": self.concurrency,
            "queue": self.queue,
            "refused": self.refused,
        }
