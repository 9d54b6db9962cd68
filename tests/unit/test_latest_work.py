"""LatestWork: the newest request per key wins, one key's work runs in order, failures stay local."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from kvscale.operator import metrics
from kvscale.operator.latest_work import LatestWork


def wait_for(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_a_newer_request_replaces_one_still_queued() -> None:
    work, ran, gate = LatestWork(4, "t"), [], threading.Event()

    def first() -> None:
        gate.wait(5)
        ran.append(1)

    work.submit("k", first)
    wait_for(lambda: work.pending() == 0)  # the first one is running, held at the gate
    for v in (2, 3, 4):
        work.submit("k", lambda v=v: ran.append(v))  # type: ignore[misc]
    gate.set()
    wait_for(lambda: ran[-1:] == [4])
    work.shutdown()
    assert ran == [1, 4]  # 2 and 3 were out of date before a thread was free for them


def test_one_keys_work_runs_one_at_a_time_in_the_order_asked() -> None:
    work, ran, active, overlaps = LatestWork(8, "t"), [], [0], []
    lock = threading.Lock()

    def step(v: int) -> None:
        with lock:
            active[0] += 1
            overlaps.append(active[0])
        time.sleep(0.001 * (v % 3))
        ran.append(v)
        with lock:
            active[0] -= 1

    for v in range(200):
        work.submit("k", lambda v=v: step(v))  # type: ignore[misc]
        if v % 7 == 0:
            time.sleep(0.002)
    wait_for(lambda: ran[-1:] == [199])
    work.shutdown()
    assert ran == sorted(ran) and len(set(ran)) == len(ran)
    assert max(overlaps) == 1


def test_keys_do_not_wait_for_each_other_and_a_failure_stays_with_its_key() -> None:
    work, gate, ran = LatestWork(4, "t"), threading.Event(), []
    before = metrics.PERIODIC_FAILURES.labels("child-event")._value.get()
    work.submit("slow", lambda: gate.wait(5))
    work.submit("broken", lambda: 1 / 0)
    work.submit("fast", lambda: ran.append("fast"))
    wait_for(lambda: ran == ["fast"])  # while "slow" still waits
    assert not gate.is_set()
    wait_for(lambda: metrics.PERIODIC_FAILURES.labels("child-event")._value.get() == before + 1)
    work.submit("broken", lambda: ran.append("broken again"))
    wait_for(lambda: "broken again" in ran)
    gate.set()
    work.shutdown()
