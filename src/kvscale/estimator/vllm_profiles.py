"""What a vLLM release line does at start-up that the architecture does not say: overheads and defaults.

The overhead terms of the memory model (non-torch memory, NCCL buffers, CUDA-graph pool) are measured,
not derived. They are fitted on the calibration half of the published start-up logs and checked on the
other half (``bench/estimator_accuracy.py``). Release lines differ in where the CUDA-graph pool is taken
from and in their default memory utilization; the logs are too few to fit the overheads per line, so
the lines share one fitted set.
"""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field

MIB = 1 << 20

#: the vLLM release the default images ship, and the CPU build in the tests
VLLM_RELEASE = "0.32.0"

# Fitted by least squares on the calibration split of bench/data/published_vllm_startups.json (8 records that
# report vLLM's KV memory; bench/estimator_accuracy.py prints the fit beside these), rounded to MiB; the held-out
# figures are in bench/results/estimator_accuracy.txt. Three of the eight count CUDA graphs (36, 36 and 24 layers):
# the pool's fixed part and its part per layer cannot be told apart on them, and the fit puts it all per layer.
NON_TORCH_BASE_BYTES = 109 * MIB  # cuBLAS workspaces, allocator slack
NCCL_BYTES = 678 * MIB  # communicators and custom all-reduce buffers when a replica spans GPUs
CUDA_GRAPH_BASE_BYTES = 0  # graph pool at the default capture sizes (1..512): fixed part
CUDA_GRAPH_PER_LAYER_BYTES = 55 * MIB  # and per layer of the busiest stage

class VLLMProfile(BaseModel):
    """One release line: from ``line`` up to the next profile's."""

    model_config = ConfigDict(frozen=True)

    line: tuple[int, int]
    gpu_memory_utilization: float = Field(gt=0, le=1)  # the line's default --gpu-memory-utilization
    # from 0.13 vLLM takes its CUDA-graph estimate from the KV budget; before, graphs were captured after the
    # KV cache was allocated, out of the memory the utilization left over
    graphs_in_kv_budget: bool
    async_scheduling: bool  # the line's default: two steps of tokens in flight (sliding-window and state blocks)
    non_torch_base_bytes: int = NON_TORCH_BASE_BYTES
    nccl_bytes: int = NCCL_BYTES
    cuda_graph_base_bytes: int = CUDA_GRAPH_BASE_BYTES
    cuda_graph_per_layer_bytes: int = CUDA_GRAPH_PER_LAYER_BYTES


#: oldest first. 0.9 was the default utilization before 0.25 (vllm/config/cache.py), 0.92 since (0.32 included).
PROFILES = (
    VLLMProfile(line=(0, 10), gpu_memory_utilization=0.9, graphs_in_kv_budget=False, async_scheduling=False),
    VLLMProfile(line=(0, 13), gpu_memory_utilization=0.9, graphs_in_kv_budget=True, async_scheduling=True),
    VLLMProfile(line=(0, 25), gpu_memory_utilization=0.92, graphs_in_kv_budget=True, async_scheduling=True),
)

_RELEASE = re.compile(r"^(\d+)\.(\d+)")


def release_line(release: str) -> tuple[int, int]:
    """(major, minor) of a release string such as ``0.32.0`` or ``0.10.1.1``."""
    m = _RELEASE.match(release)
    if not m:
        raise ValueError(f"vLLM release {release!r}: expected MAJOR.MINOR[.PATCH]")
    return int(m.group(1)), int(m.group(2))


def profile_for(release: str) -> VLLMProfile:
    """The newest profile at or below the release; releases older than every profile get the oldest."""
    line = release_line(release)
    at_or_below = [p for p in PROFILES if p.line <= line]
    return at_or_below[-1] if at_or_below else PROFILES[0]


DEFAULT_PROFILE = profile_for(VLLM_RELEASE)
