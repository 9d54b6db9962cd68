"""Host resources and start-up budget of one vLLM replica, from its plan (pure).

QoS: Burstable, with memory requested at its limit and CPU requested without a limit. Memory at its
limit keeps the replica last in line for node-pressure eviction (the kubelet evicts pods above their
requests first) and bounds it by the cgroup rather than by the node's OOM killer. CPU has no limit
because vLLM's engine loop and workers poll: a CFS quota throttles exactly the thread that schedules
the GPUs, and the token latency shows it. Setting ``limits.cpu`` equal to ``requests.cpu`` in
``spec.vllm.resources`` gives Guaranteed QoS instead (exclusive cores under the static CPU manager).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..estimator.gpus import GIB
from ..estimator.planner import Plan
from .model_source import ModelSource, Origin

# Host memory: the API server, engine core and one worker per GPU each hold a CUDA context, the tokenizer
# and Python (about 1.5 GiB each on vLLM's CUDA image); each worker also pins staging buffers and the
# shared-memory channels between workers. Weights pass through host memory while they load (safetensors
# pages are charged to the container's memory cgroup), so a replica needs its whole checkpoint once.
HOST_BASE_BYTES = 4 * GIB  # API server + engine core
HOST_PER_GPU_BYTES = 3 * GIB  # worker process, pinned buffers, shared-memory channel share
LOAD_FACTOR = 1.0  # of the replica's weights, resident while loading
SHM_PER_GPU_BYTES = 1 * GIB  # /dev/shm written by the workers' message queues (counts as memory)
# CPU: the API server (HTTP, detokenization), the engine core's busy loop, one polling worker per GPU
CPU_BASE = 2
CPU_PER_GPU = 1
# Ephemeral storage beside the weights: torch.compile and CUDA graph caches, logs
SCRATCH_BYTES = 10 * GIB

# Start-up budget (the startupProbe's): pessimistic rates, since a probe that gives up kills a replica that
# was about to serve and starts it over
DOWNLOAD_BYTES_PER_S = 50e6  # from the Hub (a busy link or a throttled mirror)
READ_BYTES_PER_S = 200e6  # from a network volume or the image
STREAM_BYTES_PER_S = 200e6  # object storage through the Run:ai streamer
ENGINE_START_S = 600  # torch.compile, profiling and CUDA graph capture without a compile cache
PROBE_PERIOD_S = 10
ROLLOUT_MARGIN_S = 120  # the Deployment's progress deadline beyond the start-up budget


@dataclass(frozen=True)
class StartupBudget:
    seconds: int
    why: str

    @property
    def failure_threshold(self) -> int:
        return math.ceil(self.seconds / PROBE_PERIOD_S)

    @property
    def progress_deadline_s(self) -> int:
        return self.seconds + ROLLOUT_MARGIN_S


def checkpoint_bytes(plan: Plan, size_gib: float | None) -> int:
    """Bytes of the checkpoint on disk: given, or the replica's estimated weights (all GPUs)."""
    if size_gib is not None:
        return int(size_gib * GIB)
    return plan.memory.weights_bytes * plan.gpus_per_replica


def _gib(n: float) -> str:
    return f"{math.ceil(n / GIB)}Gi"


def shm_bytes(plan: Plan) -> int:
    return SHM_PER_GPU_BYTES * plan.gpus_per_replica


def host_resources(plan: Plan, source: ModelSource, size_bytes: int,
                   loaded_bytes: int | None = None) -> dict[str, dict[str, str]]:
    """Requests and limits (without the GPUs) for the vLLM container. ``loaded_bytes``: the part of the
    checkpoint this pod loads (a pipeline stage's share); a download still fetches every file, so the
    disk is sized from the whole ``size_bytes``."""
    loaded = size_bytes if loaded_bytes is None else loaded_bytes
    memory = (HOST_BASE_BYTES + HOST_PER_GPU_BYTES * plan.gpus_per_replica + LOAD_FACTOR * loaded
              + shm_bytes(plan))
    requests = {"cpu": str(CPU_BASE + CPU_PER_GPU * plan.gpus_per_replica), "memory": _gib(memory)}
    limits = {"memory": _gib(memory)}
    if source.writes_to_container:
        requests["ephemeral-storage"] = _gib(size_bytes * 1.1 + SCRATCH_BYTES)
    return {"requests": requests, "limits": limits}


def merged_resources(derived: dict[str, dict[str, str]], user: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The user's requests and limits override the derived ones key by key."""
    out = {k: dict(v) for k, v in derived.items()}
    for section in ("requests", "limits"):
        given = user.get(section)
        if isinstance(given, dict):
            out.setdefault(section, {}).update(given)
    if "memory" in (user.get("requests") or {}) and "memory" not in (user.get("limits") or {}):
        out.setdefault("limits", {})["memory"] = out["requests"]["memory"]  # a request given alone: limit too
    return out


def startup_budget(source: ModelSource, size_bytes: int, given_s: int | None) -> StartupBudget:
    if given_s is not None:
        return StartupBudget(given_s, "spec.vllm.startupSeconds")
    gb = size_bytes / 1e9
    if source.origin in (Origin.DOWNLOAD, Origin.CACHE):
        # the first replica on an empty cache downloads too
        fetch = size_bytes / DOWNLOAD_BYTES_PER_S + size_bytes / READ_BYTES_PER_S
        how = f"download {gb:.1f} GB at {DOWNLOAD_BYTES_PER_S / 1e6:.0f} MB/s and read it back"
    elif source.origin is Origin.STREAM:
        fetch = size_bytes / STREAM_BYTES_PER_S
        how = f"stream {gb:.1f} GB at {STREAM_BYTES_PER_S / 1e6:.0f} MB/s"
    else:
        fetch = size_bytes / READ_BYTES_PER_S
        how = f"read {gb:.1f} GB at {READ_BYTES_PER_S / 1e6:.0f} MB/s"
    seconds = int(math.ceil((ENGINE_START_S + fetch) / PROBE_PERIOD_S) * PROBE_PERIOD_S)
    return StartupBudget(seconds, f"{how}, {ENGINE_START_S} s engine start-up")
