"""The extraction worker: untrusted HTML and feeds parsed in a child process with a hard time limit.

In: page bytes, feed bytes or HTML fragments, from the ingest stage. Out: what html.py and
feeds.py make of them (an `ExtractedPage`, a `FeedResult`, texts), or `ExtractionFailed` with
the reason.

Why a process: the extractors spend their time in C (resiliparse's DOM, lxml, expat), where a
signal handler never runs, so SIGALRM cannot stop a page that takes minutes. Here each call has
a wall-clock deadline (`timeout_seconds` plus GRACE_SECONDS); a child that overruns it is killed
(SIGKILL) and the call fails with `extraction_timeout`; the next call starts a fresh child. A
child that dies on its own (a crash in C, its memory limit) fails the call with
`extraction_crashed`. Inside the child, SIGALRM still ends slow Python code at `timeout_seconds`
without a restart. The child has an address-space limit (MEMORY_LIMIT_BYTES), dies with its
parent (PR_SET_PDEATHSIG on Linux, or at the end of its pipe) and exits after IDLE_SECONDS
without work.

One worker per thread that runs ingest units (`worker_for(settings)`), kept between units;
started with subprocess (not multiprocessing), so it works from threads, pool workers and Dask's
daemon workers alike. Its start-up (Python and the extractors' imports, ~1 s) overlaps the
unit's own start: `worker_for` starts it, the first call waits for it.
"""

from __future__ import annotations

import atexit
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from pipeline.ingest.html import ExtractionFailed
from pipeline.processes import die_with_parent

GRACE_SECONDS = 2.0  # past the soft limit, before the child is killed
START_SECONDS = 120.0  # for the child's imports, on a loaded machine
MEMORY_LIMIT_BYTES = 2 * 1024**3  # the child's address space (it starts at ~0.2 GB)
IDLE_SECONDS = 600.0  # an idle child exits (the next call starts another)

_workers: dict[tuple[int, str], Worker] = {}  # (thread, settings) -> its worker
_lock = threading.Lock()


class Worker:
    """A child process running html.HtmlExtractor and feeds.parse_feed; see the module doc."""

    def __init__(self, settings: dict[str, Any], grace: float = GRACE_SECONDS):
        self.settings = settings
        self.timeout = float(settings.get("timeout_seconds", 5.0))
        self.grace = grace
        self.process: subprocess.Popen | None = None
        self.conn: Connection | None = None
        self._ready = False
        self.restarts = 0
        self._lock = threading.Lock()

    # ---------------------------------------------------------------------------- life

    def start(self) -> None:
        """Start the child (without waiting for it to be ready)."""
        if self.process is not None:
            return
        down_r, down_w = os.pipe()  # parent -> child
        up_r, up_w = os.pipe()  # child -> parent
        package_root = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (package_root, env.get("PYTHONPATH", "")) if p
        )
        code = "from pipeline.ingest.sandbox import child_main; child_main()"
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-c", code, str(down_r), str(up_w)],
                pass_fds=(down_r, up_w),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                env=env,
                close_fds=True,
            )
        finally:
            os.close(down_r)
            os.close(up_w)
        self.conn = _Duplex(up_r, down_w)
        self._ready = False
        self.conn.send(("settings", self.settings))

    def _wait_ready(self) -> None:
        if self._ready:
            return
        assert self.conn is not None
        if not self.conn.poll(START_SECONDS):
            self.kill()
            raise RuntimeError("the extraction worker did not start")
        try:
            message = self.conn.recv()
        except (EOFError, OSError):
            code = self.kill()
            raise RuntimeError(f"the extraction worker failed to start (exit {code})") from None
        if message != "ready":
            self.kill()
            raise RuntimeError(f"the extraction worker failed to start: {message}")
        self._ready = True

    def kill(self) -> int | None:
        """Stop the child now (SIGKILL); its exit status."""
        code = None
        if self.process is not None:
            if self.process.poll() is None:
                self.process.kill()
            try:
                code = self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                code = None
        if self.conn is not None:
            self.conn.close()
        self.process, self.conn, self._ready = None, None, False
        return code

    def close(self) -> None:
        """Let the child finish (end of its pipe), or stop it."""
        if self.process is None:
            return
        try:
            if self.conn is not None:
                self.conn.send(("exit", None))
            self.process.wait(timeout=5)
        except (OSError, ValueError, subprocess.TimeoutExpired):
            pass
        self.kill()

    # ---------------------------------------------------------------------------- calls

    def call(self, op: str, *args: Any, timeout: float | None = None) -> Any:
        """Run `op` in the child; ExtractionFailed on a timeout, a crash, or a refusal."""
        limit = (timeout or self.timeout) + self.grace
        with self._lock:
            for attempt in range(2):
                if self.process is None or self.process.poll() is not None:
                    self.kill()
                    self.start()
                try:
                    self._wait_ready()
                    assert self.conn is not None
                    self.conn.send((op, args))
                    break
                except (OSError, EOFError, RuntimeError, ValueError) as exc:
                    # the child was gone before it got the work (idle exit, killed): once more
                    self.kill()
                    if attempt:
                        raise ExtractionFailed(
                            "extraction_crashed", f"the extraction worker cannot run: {exc}"
                        ) from None
            started = time.monotonic()
            assert self.conn is not None
            if not self.conn.poll(limit):
                self.kill()
                self.restarts += 1
                raise ExtractionFailed(
                    "extraction_timeout",
                    f"no result after {time.monotonic() - started:.1f} s (the limit is "
                    f"{limit - self.grace:g} s); the extraction worker was killed",
                )
            try:
                status, *payload = self.conn.recv()
            except (EOFError, OSError):
                code = self.kill()
                self.restarts += 1
                raise ExtractionFailed(
                    "extraction_crashed",
                    f"the extraction worker died (exit status {code}) on this input",
                ) from None
        if status == "ok":
            return payload[0]
        raise ExtractionFailed(payload[0], payload[1])


class _Duplex:
    """Two one-way pipes used as one connection (multiprocessing's framing and pickling)."""

    def __init__(self, read_fd: int, write_fd: int):
        self._reader = Connection(read_fd, writable=False)
        self._writer = Connection(write_fd, readable=False)

    def send(self, obj: Any) -> None:
        self._writer.send_bytes(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))

    def recv(self) -> Any:
        return pickle.loads(self._reader.recv_bytes())

    def poll(self, timeout: float) -> bool:
        return self._reader.poll(timeout)

    def close(self) -> None:
        for conn in (self._reader, self._writer):
            try:
                conn.close()
            except OSError:
                pass


def worker_for(settings: Any) -> Worker:
    """This thread's worker for these extraction settings (started, maybe not yet ready):
    threads that run units side by side (a Dask worker's) each get their own."""
    values = settings.model_dump() if hasattr(settings, "model_dump") else dict(settings)
    key = (threading.get_ident(), repr(sorted(values.items())))
    with _lock:
        worker = _workers.get(key)
        if worker is None:
            worker = _workers[key] = Worker(values)
        if worker.process is None:
            worker.start()
    return worker


def close_workers(this_thread_only: bool = True) -> None:
    """Stop this thread's workers (at the end of a stage), or all of them (at exit)."""
    me = threading.get_ident()
    with _lock:
        keys = [k for k in _workers if not this_thread_only or k[0] == me]
        workers = [_workers.pop(k) for k in keys]
    for worker in workers:
        worker.close()


atexit.register(close_workers, this_thread_only=False)


# ------------------------------------------------------------------------------ the child


def _limit_memory() -> None:
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        limit = (
            MEMORY_LIMIT_BYTES if hard == resource.RLIM_INFINITY else min(hard, MEMORY_LIMIT_BYTES)
        )
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    except (ImportError, ValueError, OSError):
        pass


class _Settings:
    def __init__(self, values: dict[str, Any]):
        self.__dict__.update(values)


def _serve(conn: _Duplex) -> None:
    import pipeline.ingest.feeds as feeds
    import pipeline.ingest.html as html

    op, values = conn.recv()
    assert op == "settings"
    settings = _Settings(values)
    extractor = html.HtmlExtractor(settings)  # imports and warms up the extractors
    conn.send("ready")
    while True:
        if not conn.poll(IDLE_SECONDS):
            return
        try:
            op, args = conn.recv()
        except EOFError:
            return
        if op == "exit":
            return
        started = time.monotonic()
        timeout = (
            "fail",
            "extraction_timeout",
            f"extraction took longer than {settings.timeout_seconds} s",
        )
        try:
            if op == "extract":  # under its own time limit (extraction, not decoding)
                result: Any = extractor.extract(*args)
            else:
                with html.time_limit(settings.timeout_seconds):
                    if op == "feed":
                        result = feeds.parse_feed(*args)
                    elif op == "fragments":
                        result = [html.fragment_text(part) if part else "" for part in args[0]]
                    elif op == "canonical_url":
                        result = html.page_canonical_url(*args)
                    else:
                        raise ValueError(f"unknown operation {op!r}")
            reply: tuple = ("ok", result)
        except html._PageTimeout:
            reply = timeout
        except ExtractionFailed as exc:
            reply = ("fail", exc.reason, exc.detail)
        except MemoryError:
            reply = ("fail", "extraction_out_of_memory", "the extractor ran out of memory")
        except RecursionError:
            reply = ("fail", "too_deeply_nested", "the input is nested too deeply to parse")
        except Exception as exc:  # an extractor bug on one odd input refuses that input only
            reply = ("fail", "extraction_error", f"{type(exc).__name__}: {str(exc)[:300]}")
            if time.monotonic() - started > settings.timeout_seconds:
                reply = timeout  # the alarm broke the parser where it was swallowed
        conn.send(reply)


def child_main() -> None:
    read_fd, write_fd = int(sys.argv[1]), int(sys.argv[2])
    die_with_parent(signal.SIGKILL)
    if os.getppid() == 1:  # the parent is already gone
        return
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides; Ctrl-C reaches it too
    _limit_memory()
    conn = _Duplex(read_fd, write_fd)
    try:
        _serve(conn)
    except (EOFError, OSError, KeyboardInterrupt):
        pass
