"""Spec + cluster GPU types -> a plan outcome (pure: values in, values out)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..estimator.catalog import resolve_model
from ..estimator.errors import EstimatorError, InvalidConfig
from ..estimator.gpus import GIB, GPUCatalog
from ..estimator.memory import MemoryEstimate, estimate
from ..estimator.planner import GPUOption, Plan, PlanRequest, PlanResult, plan, serving_config
from ..estimator.quantization import Quantization
from .discovery import allowed_options
from .image_version import sizing_release
from .resource import Alternative, LLMDeploymentSpec, PlanStatus
from .startup_replan import FAILED_START


@dataclass(frozen=True)
class PlanOutcome:
    """Either a chosen plan (with alternatives) or the reason there is none."""

    plan: Plan | None
    result: PlanResult | None
    reason: str  # condition reason (CamelCase)
    message: str  # condition message with numbers

    @property
    def ok(self) -> bool:
        return self.plan is not None


def decide_plan(spec: LLMDeploymentSpec, available: dict[str, GPUOption], catalog: GPUCatalog,
                reserved: dict[str, int] | None = None, excluded: dict[str, str] | None = None,
                measured: dict[str, int] | None = None) -> PlanOutcome:
    """``reserved``, ``excluded``: what failed starts taught (startup_replan.lessons); ``measured``: what
    live replicas did (calibration.measured_bytes)."""
    try:
        model = resolve_model(spec.model.name, spec.model.architecture)
    except EstimatorError as exc:
        field = "spec.model.architecture" if spec.model.architecture and isinstance(exc, InvalidConfig) \
            else "spec.model.name"
        return PlanOutcome(None, None, "ModelUnknown", f"{field}: {exc}")
    options, unknown = allowed_options(available, spec.placement.gpu_types, catalog)
    if unknown:
        return PlanOutcome(None, None, "UnknownGPUType",
                           f"spec.placement.gpuTypes: {', '.join(unknown)} not in the GPU catalog "
                           f"(known: {', '.join(catalog.names())})")
    if not options:
        have = ", ".join(f"{o.gpu.name} ({o.nodes} nodes x {o.gpus_per_node})" for o in available.values()) or "none"
        wanted = ", ".join(spec.placement.gpu_types) or "any"
        return PlanOutcome(None, None, "NoMatchingGPUs",
                           f"no Ready node offers an allowed GPU type (allowed: {wanted}; cluster has: {have})")
    try:
        req = plan_request(spec, tuple(options)).model_copy(update={
            "reserved_bytes": reserved or {}, "excluded": excluded or {}, "measured_bytes": measured or {}})
        result = plan(model, req)
    except (EstimatorError, ValueError) as exc:
        return PlanOutcome(None, None, "InvalidSpec", str(exc))
    if result.best is None:
        return PlanOutcome(None, result, "InsufficientGPUMemory", result.explain_infeasible())
    best = result.best
    return PlanOutcome(best, result, "Planned",
                       f"{best.gpu} x{best.tensor_parallel_size} ({best.quantization.value}): "
                       f"{best.memory.kv_cache_tokens:,} KV tokens, {best.memory.max_concurrency:.1f} sequences of "
                       f"{spec.serving.max_model_len:,} tokens per replica")


def plan_request(spec: LLMDeploymentSpec, options: tuple[GPUOption, ...]) -> PlanRequest:
    """What the planner is asked for a spec (raises ValueError on a combination the request refuses)."""
    return PlanRequest(
        max_model_len=spec.serving.max_model_len, concurrency=spec.serving.target_concurrency,
        options=options, quantizations=tuple(spec.placement.quantization),
        max_gpus_per_replica=spec.placement.max_gpus_per_replica,
        tensor_parallel_size=spec.placement.tensor_parallel_size,
        kv_cache_dtype=spec.serving.kv_cache_dtype.value,
        gpu_memory_utilization=spec.serving.gpu_memory_utilization,
        max_num_batched_tokens=spec.serving.max_num_batched_tokens, max_num_seqs=spec.serving.max_num_seqs,
        block_size=spec.serving.block_size, enable_prefix_caching=spec.serving.enable_prefix_caching,
        prefer=spec.placement.prefer, vllm_release=sizing_release(spec.vllm.image))


def keep_plan(spec: LLMDeploymentSpec, current: dict[str, Any], catalog: GPUCatalog,
              reserved: dict[str, int] | None = None, measured: dict[str, int] | None = None) -> PlanOutcome:
    """The plan recorded in status, made again for the same spec: its GPU type, TP degree and
    quantization, with no regard to which nodes are Ready now (pure).

    A scale or a restart must not move the fleet: the planner is asked for exactly that layout, so
    memory figures and vLLM flags come out as they were. Not ok when it no longer fits (a changed
    GPU catalog): then the caller plans from scratch.
    """
    try:
        gpu = catalog.get(str(current["gpu"]))
        tp = int(current["tensorParallelSize"])
        quant = Quantization(str(current["quantization"]))
    except (KeyError, ValueError, TypeError):
        return PlanOutcome(None, None, "PlanUnreadable", "status.plan cannot be read back")
    placement = spec.placement.model_copy(update={
        "gpu_types": [gpu.name], "tensor_parallel_size": tp, "quantization": [quant]})
    return decide_plan(spec.model_copy(update={"placement": placement}),
                       {gpu.name: GPUOption(gpu=gpu, gpus_per_node=max(tp, 1), nodes=None)}, catalog, reserved,
                       measured=measured)


def layout_memory(spec: LLMDeploymentSpec, current: Mapping[str, Any], catalog: GPUCatalog) -> MemoryEstimate:
    """The estimate of ``current``'s layout for this spec, nothing measured subtracted: what a live
    replica's blocks are compared with (raises EstimatorError, ValueError or KeyError)."""
    model = resolve_model(spec.model.name, spec.model.architecture)
    gpu = catalog.get(str(current["gpu"]))
    tp, quant = int(current["tensorParallelSize"]), Quantization(str(current["quantization"]))
    req = plan_request(spec, (GPUOption(gpu=gpu, gpus_per_node=max(tp, 1), nodes=None),))
    return estimate(model, gpu, serving_config(req, tp, quant))


def plan_status(p: Plan, catalog: GPUCatalog) -> PlanStatus:
    gpu = catalog.get(p.gpu)
    return PlanStatus(
        gpu=p.gpu, gpu_product_label=gpu.product_labels[0] if gpu.product_labels else None,
        tensor_parallel_size=p.tensor_parallel_size, quantization=p.quantization.value,
        replicas_for_target=p.replicas, weights_gib=round(p.memory.weights_bytes / GIB, 2),
        kv_cache_gib=round(p.memory.kv_cache_bytes / GIB, 2), kv_cache_tokens=p.memory.kv_cache_tokens,
        kv_cache_blocks=p.memory.num_blocks, kv_cache_measured=p.measured,
        max_concurrency=round(p.memory.max_concurrency, 2),
        cost_per_hour=round(p.cost_per_hour / max(1, p.replicas), 4),
        decode_tokens_per_second=round(p.decode_tokens_per_s, 1))


def alternatives(result: PlanResult, n: int = 5) -> list[Alternative]:
    return [Alternative(summary=p.summary()) for p in result.plans[1:n + 1]]


def rejected(result: PlanResult | None, n: int = 10) -> list[str]:
    if result is None:
        return []
    failed = [r for r in result.rejections if r.reason.startswith(FAILED_START)][:n]  # the news: always shown
    rest = [r for r in result.rejections if not r.reason.startswith(FAILED_START)][-(n - len(failed)):] \
        if n > len(failed) else []
    return [f"{r.tensor_parallel_size}x {r.gpu} {r.quantization}: {r.reason}" for r in failed + rest]


def plan_hash(p: Plan) -> str:
    key = json.dumps([p.gpu, p.tensor_parallel_size, p.quantization.value, p.quantization_flag], sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:16]
