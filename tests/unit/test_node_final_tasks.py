"""node.final_tasks: who waits for which task to become final, and the signal that it did."""

from __future__ import annotations

import threading

import pytest

from gpuscribe.node.final_tasks import FinalTasks


def test_a_signal_before_the_wait_is_not_missed() -> None:
    finals = FinalTasks()
    finished = threading.Event()
    with finals.watch("t1", finished.set):
        finals.signal("t1")
        assert finished.wait(0)


def test_a_waiting_thread_wakes_when_the_task_is_signalled() -> None:
    finals = FinalTasks()
    finished = threading.Event()
    woke: list[bool] = []
    with finals.watch("t1", finished.set):
        waiter = threading.Thread(target=lambda: woke.append(finished.wait(60)))
        waiter.start()
        finals.signal("t1")
        waiter.join()
    assert woke == [True]


def test_a_wait_without_a_signal_times_out() -> None:
    finals = FinalTasks()
    finished = threading.Event()
    with finals.watch("t1", finished.set):
        finals.signal("another task")
        assert not finished.wait(0.01)


def test_an_entry_lasts_as_long_as_its_watchers() -> None:
    finals = FinalTasks()
    first, second = threading.Event(), threading.Event()
    with finals.watch("t1", first.set):
        with finals.watch("t1", second.set), finals.watch("t2", second.set):
            assert len(finals) == 2
        assert len(finals) == 1
        finals.signal("t1")
        assert first.is_set() and not second.is_set()  # the one who left is not told
    assert len(finals) == 0


def test_a_signal_nobody_watches_leaves_nothing_behind() -> None:
    finals = FinalTasks()
    finals.signal_all(["t1", "t2"])
    assert len(finals) == 0
    finished = threading.Event()
    with finals.watch("t1", finished.set):
        assert not finished.is_set()  # a signal is for the watchers of its moment


def test_every_watcher_is_told_though_one_fails() -> None:
    finals = FinalTasks()
    finished = threading.Event()

    def broken() -> None:
        raise RuntimeError("its event loop is closed")

    with finals.watch("t1", broken), finals.watch("t1", finished.set):
        finals.signal("t1")
    assert finished.is_set()
    assert len(finals) == 0


def test_an_entry_goes_when_its_watcher_raises() -> None:
    finals = FinalTasks()
    with pytest.raises(TimeoutError), finals.watch("t1", lambda: None):
        raise TimeoutError
    assert len(finals) == 0
