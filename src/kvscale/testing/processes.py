"""Stopping the process groups the harness starts (servers, control-plane components)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

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


def deprioritise_engine(server_pid: int, niceness: int = 10) -> list[str]:
    """Lower the CPU priority of vLLM's engine core and worker, every thread.

    The engine core and the worker busy-poll each other, so while vLLM serves they keep both cores of
    this host busy, and its API server (which takes requests in and keeps the gauges) and the load
    generator then get the CPU a second or more late: requests reach the engine in clumps and the
    samples have holes, an artefact of a 2-core host that a GPU server with its own CPUs does not have.
    Both use little CPU, so the engine loses next to nothing. Raising nice needs no privileges; the
    client's own priority is raised too where that is allowed (root), for the run only."""
    done = []
    for pid in os.listdir("/proc"):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            comm, fields = stat[stat.index("(") + 1: stat.rindex(")")], stat[stat.rindex(")") + 2:].split()
            if int(fields[2]) != server_pid or not comm.startswith("VLLM::"):
                continue
            for tid in os.listdir(f"/proc/{pid}/task"):
                os.setpriority(os.PRIO_PROCESS, int(tid), niceness)
            done.append(f"{comm} +{niceness}")
        except (OSError, ValueError, IndexError):
            continue
    return done
