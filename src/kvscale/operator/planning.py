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
from ..estimator.planner import (
    GPUOption,
    LatencySLO,
    LoadTarget,
    Plan,
    PlanRequest,
    PlanResult,
    plan,
    serving_config,
)
from ..estimator.quantization import Quantization
from .discovery import allowed_options
from .image_version import sizing_release
from .resource import Alternative, LLMDeploymentSpec, PlanStatus
from .startup_replan import FAILED_START

#: why a replica cannot span nodes in a cluster without the LeaderWorkerSet API (multi-node replicas run as one)
NO_LWS = ("the cluster does not serve leaderworkerset.x-k8s.io/v1 (install LeaderWorkerSet to run replicas "
          "across nodes)")


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
                measured: dict[str, int] | None = None, multi_node: bool = True) -> PlanOutcome:
    """``reserved``, ``excluded``: what failed starts taught (startup_replan.lessons); ``measured``: what
    live replicas did (calibration.measured_bytes); ``multi_node``: whether the cluster serves the
    LeaderWorkerSet API, which replicas spanning nodes run as."""
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
            "reserved_bytes": reserved or {}, "excluded": excluded or {}, "measured_bytes": measured or {},
            "multi_node_unavailable": None if multi_node else NO_LWS})
        result = plan(model, req)
    except (EstimatorError, ValueError) as exc:
        return PlanOutcome(None, None, "InvalidSpec", str(exc))
    if result.best is None:
        why = "SLOUnattainable" if result.slo_bound else "InsufficientGPUMemory"
        return PlanOutcome(None, result, why, result.explain_infeasible())
    best = result.best
    nodes = f" over {best.nodes_per_replica} nodes" if best.multi_node else ""
    return PlanOutcome(best, result, "Planned",
                       f"{best.gpu} x{best.gpus_per_replica} {best.layout}{nodes} ({best.quantization.value}): "
                       f"{best.memory.kv_cache_tokens:,} KV tokens, {best.memory.max_concurrency:.1f} sequences of "
                       f"{spec.serving.max_model_len:,} tokens per replica")


def plan_request(spec: LLMDeploymentSpec, options: tuple[GPUOption, ...]) -> PlanRequest:
    """What the planner is asked for a spec (raises ValueError on a combination the request refuses)."""
    slo = spec.serving.slo
    load = LoadTarget(requests_per_second=slo.requests_per_second, concurrency=slo.concurrency,
                      mean_input_tokens=slo.mean_input_tokens, mean_output_tokens=slo.mean_output_tokens) \
        if slo else None
    targets = LatencySLO(ttft_seconds=slo.ttft_seconds, tpot_milliseconds=slo.tpot_milliseconds,
                         percentile=slo.percentile) if slo else None
    return PlanRequest(
        max_model_len=spec.serving.max_model_len, concurrency=None if slo else spec.serving.target_concurrency,
        load=load, slo=targets,
        options=options, quantizations=tuple(spec.placement.quantization),
        max_gpus_per_replica=spec.placement.max_gpus_per_replica,
        tensor_parallel_size=spec.placement.tensor_parallel_size,
        max_nodes_per_replica=spec.placement.max_nodes_per_replica,
        inter_node_gbits=spec.placement.inter_node_gbits,
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
        pp = int(current.get("pipelineParallelSize") or 1)
        per_node = int(current.get("gpusPerNode") or tp)
        quant = Quantization(str(current["quantization"]))
    except (KeyError, ValueError, TypeError):
        return PlanOutcome(None, None, "PlanUnreadable", "status.plan cannot be read back")
    placement = spec.placement.model_copy(update={
        "gpu_types": [gpu.name], "tensor_parallel_size": tp, "quantization": [quant], "max_nodes_per_replica": pp})
    # one node of the plan's size: the single-node layout fits it or not as before, so exactly pp stages come out
    outcome = decide_plan(spec.model_copy(update={"placement": placement}),
                          {gpu.name: GPUOption(gpu=gpu, gpus_per_node=max(per_node, tp, 1), nodes=None)}, catalog,
                          reserved, measured=measured)
    if outcome.plan is not None and outcome.plan.pipeline_parallel_size != pp:
        return PlanOutcome(None, None, "PlanChanged", f"the recorded {pp}-stage layout is not what fits now")
    return outcome


def layout_memory(spec: LLMDeploymentSpec, current: Mapping[str, Any], catalog: GPUCatalog) -> MemoryEstimate:
    """The estimate of ``current``'s layout for this spec, nothing measured subtracted: what a live
    replica's blocks are compared with (raises EstimatorError, ValueError or KeyError)."""
    model = resolve_model(spec.model.name, spec.model.architecture)
    gpu = catalog.get(str(current["gpu"]))
    tp, quant = int(current["tensorParallelSize"]), Quantization(str(current["quantization"]))
    pp = int(current.get("pipelineParallelSize") or 1)
    req = plan_request(spec, (GPUOption(gpu=gpu, gpus_per_node=max(tp, 1), nodes=None),))
    return estimate(model, gpu, serving_config(req, tp, quant, pp=pp))


def plan_status(p: Plan, catalog: GPUCatalog) -> PlanStatus:
    gpu = catalog.get(p.gpu)
    return PlanStatus(
        gpu=p.gpu, gpu_product_label=gpu.product_labels[0] if gpu.product_labels else None,
        tensor_parallel_size=p.tensor_parallel_size, quantization=p.quantization.value,
        pipeline_parallel_size=p.pipeline_parallel_size if p.multi_node else None,
        nodes_per_replica=p.nodes_per_replica if p.multi_node else None,
        gpus_per_node=p.gpus_per_replica // p.nodes_per_replica if p.multi_node else None,
        interconnect=p.interconnect or None,
        replicas_for_target=p.replicas, weights_gib=round(p.memory.weights_bytes / GIB, 2),
        kv_cache_gib=round(p.memory.kv_cache_bytes / GIB, 2), kv_cache_tokens=p.memory.kv_cache_tokens,
        kv_cache_blocks=p.memory.num_blocks, kv_cache_measured=p.measured,
        max_concurrency=round(p.memory.max_concurrency, 2),
        cost_per_hour=round(p.cost_per_hour / max(1, p.replicas), 4),
        decode_tokens_per_second=round(p.decode_tokens_per_s, 1),
        ttft_ms=round(p.ttft_ms, 1) if p.ttft_ms is not None else None,
        tpot_ms=round(p.tpot_ms, 2) if p.tpot_ms is not None else None)


def alternatives(result: PlanResult, n: int = 5) -> list[Alternative]:
    return [Alternative(summary=p.summary()) for p in result.plans[1:n + 1]]


def rejected(result: PlanResult | None, n: int = 10) -> list[str]:
    if result is None:
        return []
    failed = [r for r in result.rejections if r.reason.startswith(FAILED_START)][:n]  # the news: always shown
    rest = [r for r in result.rejections if not r.reason.startswith(FAILED_START)][-(n - len(failed)):] \
        if n > len(failed) else []
    return [f"{r.tensor_parallel_size * r.pipeline_parallel_size}x {r.gpu} {r.layout} {r.quantization}: {r.reason}"
            for r in failed + rest]


def plan_hash(p: Plan) -> str:
    """What the pods are rendered from; a single-node plan hashes as it always has (no pod rolls on upgrade)."""
    layout: list[object] = [p.gpu, p.tensor_parallel_size, p.quantization.value, p.quantization_flag]
    if p.multi_node:
        layout.append(p.pipeline_parallel_size)
    key = json.dumps(layout, sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:16]
