"""Stopping the process groups the harness starts (servers, control-plane components)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time

import httpx


def stop_group(proc: subprocess.Popen[bytes] | None, timeout: float = 10.0) -> None:
    """SIGTERM the process group, SIGKILL it if it outlives ``timeout``; a no-op if already gone."""
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)


def wait_healthy(proc: subprocess.Popen[bytes], url: str, timeout: float, interval: float = 0.3) -> str | None:
    """Poll ``url`` until it answers 200. None when healthy, else why not (the process exited, or time ran out)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return f"exited with {proc.returncode}"
        try:
            if httpx.get(url, timeout=2.0).status_code == 200:
                return None
        except httpx.HTTPError:
            pass
        time.sleep(interval)
    return f"not healthy after {timeout:.0f}s"
