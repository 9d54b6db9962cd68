"""Work where only the newest request per key matters, run on a few threads off Kopf's event loop.

A child's events (Deployment, Service, PodDisruptionBudget) ask for a status mirror or a restore.
Run as sync Kopf handlers, each event waited for an executor thread behind the reconciles, holding the
child's whole body; a thousand LLMDeployments coming up at once then kept hundreds of MB of queued
bodies alive. The handlers now take the few values the work needs and hand it here: a newer request for
a key replaces one still queued (the older one is already out of date), and one key's work runs one at
a time, in the order it was asked for.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor

from . import metrics

log = logging.getLogger("kvscale.operator")


class LatestWork:
    def __init__(self, threads: int, name: str) -> None:
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix=name)
        self._queued: dict[Hashable, Callable[[], object]] = {}
        self._running: dict[Hashable, threading.Lock] = {}
        self._guard = threading.Lock()

    def submit(self, key: Hashable, work: Callable[[], object]) -> None:
        with self._guard:
            waiting = key in self._queued
            self._queued[key] = work
        if not waiting:
            try:
                self._pool.submit(self._run, key)
            except RuntimeError:  # shut down: nothing runs this key, so it must not look queued
                with self._guard:
                    if self._queued.get(key) is work:
                        del self._queued[key]
                raise

    def _run(self, key: Hashable) -> None:
        with self._guard:
            lock = self._running.setdefault(key, threading.Lock())
        with lock:  # taken before the queued work: a later request for the key runs after this one
            with self._guard:
                work = self._queued.pop(key, None)
            if work is None:  # an earlier run took it, with the newest request
                return
            try:
                work()
            except Exception:  # one write's failure is logged and counted, and never stops the others
                metrics.PERIODIC_FAILURES.labels("child-event").inc()
                log.exception("work for %s failed", key)
        with self._guard:
            if key not in self._queued and not lock.locked():
                self._running.pop(key, None)

    def pending(self) -> int:
        with self._guard:
            return len(self._queued)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=False)
