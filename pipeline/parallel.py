"""Units of work for the data stages, and the executors that run them.

A data stage that can be split maps a module-level function over small, picklable units of work
(a file, a byte range of a large file, a document shard) with `executor.map(fn, units)`. Results
come back in unit order whatever ran them, and each unit writes files named after its unit index,
so a stage's output is the same for any executor and any number of workers.

In: a function and a list of units. Out: the list of the function's results, in unit order.
`SerialExecutor` runs in this process; `ProcessExecutor` in local worker processes. Orchestrators
may pass others with the same `map` (the Prefect flow can hand in a Dask-backed one).
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Protocol, TypeVar

T = TypeVar("T")


class Executor(Protocol):
    workers: int

    def map(self, fn: Callable[[Any], T], units: Sequence[Any]) -> list[T]: ...


class SerialExecutor:
    workers = 1

    def map(self, fn: Callable[[Any], T], units: Sequence[Any]) -> list[T]:
        return [fn(unit) for unit in units]


class ProcessExecutor:
    """Local worker processes ("spawn": no inherited threads or locks from the parent)."""

    def __init__(self, workers: int):
        self.workers = max(1, workers)

    def map(self, fn: Callable[[Any], T], units: Sequence[Any]) -> list[T]:
        if self.workers == 1 or len(units) <= 1:
            return SerialExecutor().map(fn, units)
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=self.workers, mp_context=context) as pool:
            return list(pool.map(fn, units))


def make_executor(workers: int) -> Executor:
    return SerialExecutor() if workers <= 1 else ProcessExecutor(workers)
