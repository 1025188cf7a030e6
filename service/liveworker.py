"""The live PCA's work, in order: in the caller's thread, or on one thread beside ingest.

Per chunk the live X takes every event (a compiled loop, ~5 ns/event); per frame a refresh brings
S = XᵀX up to date and diagonalises it (~0.1 s at 256² binned). On the daemon's one ingest thread
that was half the receive loop's time with short frames (docs/performance.md, "Ingest, fourth
round"). The engine hands both over as tasks, run one at a time in the order they were handed
over, so a refresh sees exactly the counts handed over before it was requested: the same result,
bit for bit, as running it in place. The compiled loops and BLAS release the GIL, so the worker
runs beside decoding and accumulation.

Inline (the default, for the Engine's tests and the tools): every task runs at once in the
caller's thread, and the future ``submit`` returns is already done.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

MAX_BACKLOG_EVENTS = 1 << 24  # the caller waits while more wait; their chunks' arrays are held until added


class LiveTaskFailed(RuntimeError):
    """A posted task failed on the worker's thread; ``__cause__`` is its exception."""


class LiveWorker:
    def __init__(self, threaded: bool = False, max_backlog_events: int = MAX_BACKLOG_EVENTS) -> None:
        self._cond = threading.Condition()
        self._tasks: deque[tuple[Callable[..., Any], tuple[Any, ...], Future[Any] | None, int]] = deque()
        self._backlog = 0  # events in the waiting tasks
        self._max_backlog = max_backlog_events
        self._failure: BaseException | None = None  # of a posted task (no future to carry it)
        self._closed = False
        self.cpu_s = 0.0  # CPU time the thread has spent on tasks (benchmarks: the busiest thread's load)
        self._thread: threading.Thread | None = None
        if threaded:
            self._thread = threading.Thread(target=self._run, name="edxlive-live", daemon=True)
            self._thread.start()

    @property
    def threaded(self) -> bool:
        return self._thread is not None

    def post(self, fn: Callable[..., Any], *args: Any, events: int = 0) -> None:
        """Run ``fn(*args)`` after every task handed over before it; its result is not wanted. A
        failure is raised to the caller: inline at once, threaded by the next ``post``, ``submit``
        or ``wait``. ``events``: the task's size, for the backlog bound."""
        self._enqueue(fn, args, None, events)

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        """Like ``post``, and the result (or the failure) comes back in the future."""
        fut: Future[Any] = Future()
        self._enqueue(fn, args, fut, 0)
        return fut

    def wait(self) -> None:
        """Until every task handed over has run."""
        with self._cond:
            while self._tasks:
                self._cond.wait()
        self._raise_failure()

    def close(self) -> None:
        """Run what is waiting, then stop the thread."""
        if self._thread is None:
            return
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join()
        self._thread = None

    def _enqueue(self, fn: Callable[..., Any], args: tuple[Any, ...], fut: Future[Any] | None, events: int) -> None:
        if self._thread is None:
            if fut is None:
                fn(*args)
            else:
                _run(fn, args, fut)
            return
        self._raise_failure()
        with self._cond:
            while self._backlog > self._max_backlog and self._tasks:
                self._cond.wait()
            self._tasks.append((fn, args, fut, events))
            self._backlog += events
            self._cond.notify_all()

    def _raise_failure(self) -> None:
        failure, self._failure = self._failure, None
        if failure is not None:
            raise LiveTaskFailed(f"live PCA worker: {type(failure).__name__}: {failure}") from failure

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._tasks and not self._closed:
                    self._cond.wait()
                if not self._tasks:
                    return
                task = self._tasks[0]  # left in the queue until done: ``wait`` sees it
            t0 = time.thread_time()
            self._do(*task)
            self.cpu_s += time.thread_time() - t0
            del task  # a finished scan's arrays must not stay referenced here (fresh_zeros reuses them)
            with self._cond:
                self._backlog -= self._tasks.popleft()[3]
                self._cond.notify_all()

    def _do(self, fn: Callable[..., Any], args: tuple[Any, ...], fut: Future[Any] | None, events: int) -> None:
        if fut is not None:
            _run(fn, args, fut)
            return
        try:
            fn(*args)
        except BaseException as exc:
            self._failure = self._failure or exc


def _run(fn: Callable[..., Any], args: tuple[Any, ...], fut: Future[Any]) -> None:
    try:
        fut.set_result(fn(*args))
    except BaseException as exc:
        fut.set_exception(exc)
