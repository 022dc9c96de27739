"""Units of work for the data stages, and the executors that run them.

A data stage that can be split maps a module-level function over small, picklable units of work
(a file, a byte range of a large file, a document shard) with `executor.map(fn, units)`. Results
come back in unit order whatever ran them, and each unit writes files named after its unit index,
so a stage's output is the same for any executor and any number of workers.

A stage may run several such maps one after the other (phases of a map-reduce: signatures per
shard, then buckets per band, then a filter per shard). An executor is a context manager that
keeps its workers between phases (`with make_executor(n) as executor: ...`); it is still usable
without `with`, and then starts its workers on the first map.

In: a function and a list of units. Out: the list of the function's results, in unit order.
`SerialExecutor` runs in this process; `ProcessExecutor` in local worker processes;
`DaskExecutor` on the workers of a Dask cluster, through a `distributed.Client` that the
orchestrator hands in (the Prefect flow builds one from prefect-dask's task runner).
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Protocol, TypeVar

T = TypeVar("T")
Log = Callable[[str], None]


class Executor(Protocol):
    workers: int
    # Its units may run on other machines (no shared disk: with a work dir on object storage
    # they meet through the store, pipeline/store_units.py).
    remote: bool

    def map(self, fn: Callable[[Any], T], units: Sequence[Any]) -> list[T]: ...


class _Closing:
    """`with executor:` support; `close()` releases whatever workers an executor holds, and
    `close(stop=True)` stops them without waiting for their units."""

    remote = False

    def close(self, stop: bool = False) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        # Stopped from outside (Ctrl-C, SIGTERM: not an Exception): the run is going away.
        self.close(stop=exc_type is not None and not issubclass(exc_type, Exception))


class SerialExecutor(_Closing):
    workers = 1

    def map(self, fn: Callable[[Any], T], units: Sequence[Any]) -> list[T]:
        return [fn(unit) for unit in units]


class ProcessExecutor(_Closing):
    """Local worker processes ("spawn": no inherited threads or locks from the parent).

    The pool starts on the first map that has more than one unit and is kept for the next
    phases until `close()`, so a map-reduce pays the process start-up once.
    """

    def __init__(self, workers: int):
        self.workers = max(1, workers)
        self._pool: ProcessPoolExecutor | None = None

    def map(self, fn: Callable[[Any], T], units: Sequence[Any]) -> list[T]:
        if self.workers == 1 or len(units) <= 1:
            return SerialExecutor().map(fn, units)
        if self._pool is None:
            context = multiprocessing.get_context("spawn")
            self._pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=context)
        return list(self._pool.map(fn, units))

    def close(self, stop: bool = False) -> None:
        if self._pool is not None:
            if stop:
                for process in list((self._pool._processes or {}).values()):
                    process.terminate()
                self._pool.shutdown(wait=False, cancel_futures=True)
            else:
                self._pool.shutdown()
            self._pool = None


class DaskExecutor(_Closing):
    """Runs units on a Dask cluster through `client` (a `distributed.Client`).

    When the caller itself runs inside a Dask worker (a Prefect task on a `DaskTaskRunner`),
    it leaves its worker's thread pool while it waits (`secede`/`rejoin`), so that its own
    worker can run units too instead of sitting idle.
    """

    remote = True

    def __init__(self, client: Any):
        self.client = client
        threads = client.nthreads() if hasattr(client, "nthreads") else {}
        self.workers = max(1, sum(threads.values()) if threads else 1)

    def map(self, fn: Callable[[Any], T], units: Sequence[Any]) -> list[T]:
        if not units:
            return []
        import distributed

        futures = self.client.map(fn, list(units), pure=False)
        try:
            distributed.get_worker()
            inside_worker = True
        except ValueError:
            inside_worker = False
        if inside_worker:
            distributed.secede()
        try:
            return self.client.gather(futures)
        finally:
            if inside_worker:
                distributed.rejoin()


def make_executor(workers: int) -> SerialExecutor | ProcessExecutor:
    return SerialExecutor() if workers <= 1 else ProcessExecutor(workers)


def describe(executor: Executor) -> str:
    """'ProcessExecutor(2)', for a manifest: what ran the units (it does not change them);
    'StoreUnits(DaskExecutor(2))' for one that wraps another."""
    inner = getattr(executor, "inner", None)
    if inner is not None:
        return f"{type(executor).__name__}({describe(inner)})"
    return f"{type(executor).__name__}({executor.workers})"


def timed_map(
    executor: Executor,
    phase: str,
    fn: Callable[[Any], T],
    units: Sequence[Any],
    seconds: dict[str, float],
    log: Log | None = None,
) -> list[T]:
    """`executor.map` as one named phase of a stage; its wall time goes into `seconds[phase]`."""
    started = time.perf_counter()
    results = executor.map(fn, units)
    seconds[phase] = round(seconds.get(phase, 0.0) + time.perf_counter() - started, 3)
    if log:
        log(f"{phase}: {len(units)} units in {seconds[phase]:.2f} s")
    return results
