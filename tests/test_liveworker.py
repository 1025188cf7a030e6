"""The live worker runs the live PCA's tasks in the order handed over, inline or on its thread."""

from __future__ import annotations

import threading

import pytest

from edxlive.service.liveworker import LiveWorker


@pytest.mark.parametrize("threaded", [False, True])
def test_tasks_run_in_order_and_results_come_back(threaded: bool) -> None:
    worker = LiveWorker(threaded=threaded)
    seen: list[int] = []
    for i in range(200):
        worker.post(seen.append, i, events=1)
    total = worker.submit(lambda: sum(seen))  # sees exactly what was handed over before it
    worker.post(seen.append, 200)
    assert total.result(timeout=10) == sum(range(200))
    worker.wait()
    assert seen == list(range(201))
    worker.close()


def test_inline_runs_in_the_callers_thread_at_once() -> None:
    worker = LiveWorker()
    where = worker.submit(threading.current_thread)
    assert where.done() and where.result() is threading.current_thread()
    with pytest.raises(ZeroDivisionError):
        worker.post(lambda: 1 / 0)


def test_threaded_failure_of_a_posted_task_is_raised_once_by_the_next_call() -> None:
    worker = LiveWorker(threaded=True)
    worker.post(lambda: 1 / 0)
    with pytest.raises(RuntimeError, match="ZeroDivisionError"):
        worker.wait()
    worker.wait()  # raised once
    failed = worker.submit(lambda: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        failed.result(timeout=10)  # a submitted task's failure comes back in its future
    worker.close()


def test_the_backlog_bound_holds_the_caller_back() -> None:
    worker = LiveWorker(threaded=True, max_backlog_events=10)
    gate = threading.Event()
    worker.post(gate.wait, events=11)  # the worker is busy; the backlog is over the bound
    posted = threading.Event()

    def post_more() -> None:
        worker.post(lambda: None, events=1)
        posted.set()

    caller = threading.Thread(target=post_more)
    caller.start()
    assert not posted.wait(0.2)  # held back while the backlog is over the bound
    gate.set()
    assert posted.wait(10)
    caller.join()
    worker.close()
