"""Why a vLLM replica failed to start, from its container's termination and its log (pure).

vLLM says why it will not start in the engine core's error, well above the log's last lines: the
API server's own traceback ("Engine core initialization failed. See root cause above") ends it, so
the termination message kubelet keeps (the rendered pods set FallbackToLogsOnError: the log's last 80
lines, 2 KiB at most) rarely holds the cause. The previous container's log does, where the operator may
read pod logs (``readPodLogs``); the termination message is read too, for causes printed last.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class StartupCause(StrEnum):
    KV_TOO_SMALL = "KVCacheTooSmall"  # the KV cache left cannot hold one max_model_len request
    NO_KV_MEMORY = "NoKVCacheMemory"  # weights and overheads took all of the utilization budget
    GPU_OUT_OF_MEMORY = "GPUOutOfMemory"
    HOST_OUT_OF_MEMORY = "HostOutOfMemory"  # the container's memory limit: the kernel killed it
    UNSUPPORTED = "UnsupportedOnGPU"  # a weight format or dtype this GPU cannot run


@dataclass(frozen=True)
class StartupFailure:
    cause: StartupCause
    evidence: str  # vLLM's own words, or the container's termination
    max_model_len: int | None = None
    needed_kv_gib: float | None = None
    available_kv_gib: float | None = None
    estimated_max_model_len: int | None = None

    def summary(self) -> str:
        if self.cause is StartupCause.KV_TOO_SMALL and self.available_kv_gib is not None:
            fits = f"; vLLM estimates it fits {self.estimated_max_model_len:,} tokens" \
                if self.estimated_max_model_len else ""
            needed = f"{self.needed_kv_gib:g} GiB" if self.needed_kv_gib is not None else "more"
            return (f"{self.cause}: one {self.max_model_len:,}-token request needs {needed} of KV cache, vLLM had "
                    f"{self.available_kv_gib:g} GiB{fits}")
        return f"{self.cause}: {self.evidence}"


#: vLLM 0.32 (v1/core/kv_cache_utils.py) and the wording of releases before it
_KV_TOO_SMALL = re.compile(
    r"max seq len \((?P<len>\d+)\), \((?P<need>[\d.]+) GiB KV cache is needed, which is larger than the available "
    r"KV cache memory \((?P<have>[\d.]+) GiB\)\.(?: Based on the available memory, the estimated maximum model "
    r"length is (?P<est>\d+))?")
_KV_TOO_SMALL_OLD = re.compile(r"max seq len \((?P<len>\d+)\) is larger than the maximum number of tokens that can "
                               r"be stored in KV cache \((?P<tokens>\d+)\)")
_NO_KV_MEMORY = re.compile(r"No available memory for the cache blocks")
_GPU_OOM = re.compile(r"CUDA out of memory|OutOfMemoryError|CUDA error: out of memory|HIP out of memory")
_UNSUPPORTED = re.compile(r"\w*Error: [^\n]*(?:is not supported|is only supported|Minimum capability)[^\n]*")
#: how much of vLLM's line is kept as evidence (the condition message is bounded too)
EVIDENCE_CHARS = 300


def _line_of(text: str, m: re.Match[str]) -> str:
    """The matched line from its error name on, without the logger's prefix."""
    start = text.rfind("\n", 0, m.start()) + 1
    end = text.find("\n", m.end())
    line = text[start: end if end >= 0 else len(text)]
    err = re.search(r"\w*(?:Error|Exception): ", line)
    return (line[err.start():] if err else line.strip())[:EVIDENCE_CHARS]


def classify_log(text: str) -> StartupFailure | None:
    """The root cause in a vLLM log, or None when the log names none of the known ones."""
    if m := _KV_TOO_SMALL.search(text):
        return StartupFailure(StartupCause.KV_TOO_SMALL, _line_of(text, m), int(m["len"]), float(m["need"]),
                              float(m["have"]), int(m["est"]) if m["est"] else None)
    if m := _KV_TOO_SMALL_OLD.search(text):
        return StartupFailure(StartupCause.KV_TOO_SMALL, _line_of(text, m), int(m["len"]),
                              estimated_max_model_len=int(m["tokens"]))
    for cause, pattern in ((StartupCause.NO_KV_MEMORY, _NO_KV_MEMORY), (StartupCause.GPU_OUT_OF_MEMORY, _GPU_OOM),
                           (StartupCause.UNSUPPORTED, _UNSUPPORTED)):
        if m := pattern.search(text):
            return StartupFailure(cause, _line_of(text, m))
    return None


def classify_container(container_status: dict[str, Any], log: str | None = None) -> StartupFailure | None:
    """From a container status (its last termination) and, where read, the previous container's log."""
    terminated = (container_status.get("lastState") or {}).get("terminated") or \
        (container_status.get("state") or {}).get("terminated") or {}
    if terminated.get("reason") == "OOMKilled":
        return StartupFailure(StartupCause.HOST_OUT_OF_MEMORY,
                              f"OOMKilled (exit code {terminated.get('exitCode')}): the container's memory limit")
    for text in (log, terminated.get("message")):
        if text and (found := classify_log(text)):
            return found
    return None
