"""Polling for a condition in tests and scripts that drive a real cluster."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def wait_for(pred: Callable[[], Any], timeout: float = 60.0, what: str = "condition", every: float = 0.5,
             not_yet: Callable[[BaseException], bool] | None = None) -> Any:
    """Return the first truthy ``pred()``; an exception ``not_yet`` accepts counts as "not yet"."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = pred()
        except Exception as exc:
            if not_yet is None or not not_yet(exc):
                raise
            last = None
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")
