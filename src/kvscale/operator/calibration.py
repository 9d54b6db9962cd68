"""What live replicas measured, and how plans use it (pure).

A running vLLM replica reports the KV blocks it allocated (``vllm:cache_config_info``). The gap
between that and the estimate of the same layout, in bytes per GPU, is memory the model does not
account for (a driver's reserve, another release's overheads, a checkpoint unlike its config). It is
kept per (model, GPU type, TP degree, weight format, KV dtype, vLLM release line, extra engine arguments)
in the
LLMDeployment's status, and optionally in a ConfigMap shared by every LLMDeployment of the cluster.
A plan of a layout with a measurement subtracts that memory: its KV cache is the one vLLM allocated
there (``planner.PlanRequest.measured_bytes``), and so is the replica count the target needs.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any

from ..autoscaler.snapshot import ReplicaMetrics
from ..estimator.gpus import GPUCatalog
from ..estimator.planner import layout_key
from ..estimator.quantization import Quantization
from .image_version import sizing_release
from .planning import layout_memory
from .render import PLAN_HASH_ANNOTATION
from .resource import LLMDeploymentSpec

#: layouts one LLMDeployment's status keeps (a spec tried on a few GPU types and TP degrees)
MAX_RECORDS = 8
#: layouts the shared ConfigMap keeps, newest kept: ~450 bytes each, far below a ConfigMap's 1 MiB
MAX_SHARED_RECORDS = 500
_KEY_CHARS = re.compile(r"[^-._a-zA-Z0-9]")


def calibration_key(r: Mapping[str, Any]) -> str:
    """A record's layout as a ConfigMap data key (letters, digits, ``-._`` only)."""
    pp = f".pp{r['pipelineParallelSize']}" if r.get("pipelineParallelSize") else ""
    raw = (f"{r['model']}.{r['gpu']}.tp{r['tensorParallelSize']}{pp}.{r['quantization']}.kv-{r['kvCacheDtype']}"
           f".vllm-{r['vllmRelease']}.args-{r.get('engineArgs', '')}")
    return _KEY_CHARS.sub("_", raw)


def engine_args_key(spec: LLMDeploymentSpec) -> str:
    """What else changes the KV memory vLLM finds: extra engine arguments (speculative decoding, eager
    mode, CPU offload, LoRA) and an architecture override. A measurement speaks for the same only."""
    raw = json.dumps([spec.vllm.extra_args, spec.model.architecture or {}], sort_keys=True, default=str)
    return hashlib.sha256(raw.encode()).hexdigest()[:10]


def observation(metrics: Mapping[str, ReplicaMetrics], pods: list[dict[str, Any]],
                plan_hash: str | None) -> tuple[str, int, int] | None:
    """(pod, KV blocks, block size) that the first replica of the current plan reports, if any does.

    A pod of an earlier plan (a rollout in progress) measured another layout, and is not read."""
    for pod in sorted(pods, key=lambda p: p["metadata"]["name"]):
        meta = pod["metadata"]
        m = metrics.get(meta["name"])
        if m is None or not m.num_gpu_blocks or not m.block_size or not plan_hash:
            continue
        if (meta.get("annotations") or {}).get(PLAN_HASH_ANNOTATION) == plan_hash:
            return meta["name"], m.num_gpu_blocks, m.block_size
    return None


def measure(spec: LLMDeploymentSpec, plan: Mapping[str, Any], catalog: GPUCatalog, pod: str, blocks: int,
            block_size: int, now: str) -> dict[str, Any]:
    """The calibration record of ``plan``'s layout from one replica's blocks (raises EstimatorError,
    ValueError or KeyError where the plan's layout cannot be estimated again)."""
    est = layout_memory(spec, plan, catalog)
    # blocks of vLLM's own size (it may choose another than the plan's, as MLA backends do) as bytes per GPU
    measured = round(blocks * block_size * est.block_bytes / est.block_size)
    stages = {"pipelineParallelSize": int(plan["pipelineParallelSize"])} if plan.get("pipelineParallelSize") else {}
    return {"model": spec.model.name, "gpu": plan["gpu"], "tensorParallelSize": int(plan["tensorParallelSize"]),
            **stages, "quantization": plan["quantization"], "kvCacheDtype": spec.serving.kv_cache_dtype.value,
            "vllmRelease": sizing_release(spec.vllm.image), "engineArgs": engine_args_key(spec),
            "predictedBlocks": est.num_blocks,
            "measuredBlocks": blocks, "blockSize": block_size, "unaccountedBytes": est.kv_cache_bytes - measured,
            "pod": pod, "time": now}


#: replicas of one layout may allocate a few blocks more or less than one another (what else runs on the GPU):
#: a new reading within this share of the recorded one is the same measurement, not news to write and act on
SAME_MEASUREMENT_SHARE = 0.005


def same_blocks(blocks: int) -> int:
    return max(1, int(blocks * SAME_MEASUREMENT_SHARE))


def updated(records: list[dict[str, Any]], record: dict[str, Any], limit: int = MAX_RECORDS
            ) -> list[dict[str, Any]] | None:
    """``records`` with ``record`` in place of the one of its layout, newest last; None when that one already
    says the same (the same blocks against the same estimate): nothing to write."""
    key = calibration_key(record)
    same = next((r for r in records if calibration_key(r) == key), None)
    blocks = record["measuredBlocks"]
    if same is not None and all(same.get(f) == record[f] for f in ("blockSize", "predictedBlocks")) and \
            abs(int(same.get("measuredBlocks") or 0) - blocks) <= same_blocks(blocks):
        return None
    return [*(r for r in records if calibration_key(r) != key), record][-limit:]


def measured_bytes(records: list[dict[str, Any]], spec: LLMDeploymentSpec) -> dict[str, int]:
    """Per layout (``planner.layout_key``), the unaccounted memory per GPU measured for this spec's model,
    KV dtype and vLLM release; the first record of a layout wins (the object's own before shared ones)."""
    release, kv_dtype = sizing_release(spec.vllm.image), spec.serving.kv_cache_dtype.value
    args = engine_args_key(spec)
    out: dict[str, int] = {}
    for r in records:
        try:
            if r["model"] != spec.model.name or r["kvCacheDtype"] != kv_dtype or r["vllmRelease"] != release \
                    or r.get("engineArgs", args) != args:
                continue
            key = layout_key(str(r["gpu"]), int(r["tensorParallelSize"]), Quantization(r["quantization"]),
                             int(r.get("pipelineParallelSize") or 1))
            out.setdefault(key, int(r["unaccountedBytes"]))
        except (KeyError, ValueError, TypeError):  # a hand-edited or older entry: not evidence
            continue
    return out


def describe(record: Mapping[str, Any]) -> str:
    """One line for an Event: what was measured against what was estimated."""
    pred, got = int(record["predictedBlocks"]), int(record["measuredBlocks"])
    err = (got - pred) / pred * 100 if pred else 0.0
    return (f"replica {record['pod']} allocated {got:,} KV blocks of {record['blockSize']} tokens on "
            f"{record['tensorParallelSize']}x {record['gpu']} ({record['quantization']}); the estimate was "
            f"{pred:,} ({err:+.1f} %): plans of this layout use the measurement")
