"""Cheapest (GPU type, tensor-parallel degree, quantization, replicas) that serves a target.

Pure and exhaustive: every option is estimated, each infeasible one keeps its reason, the
feasible ones are ranked deterministically. Karpenter's Solve -> Results{plans, errors}.
"""

from __future__ import annotations

import math
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .errors import EstimatorError
from .gpus import GIB, GPUType
from .memory import DEFAULT_BLOCK_SIZE, DEFAULT_GPU_MEMORY_UTILIZATION, MemoryEstimate, ServingConfig, estimate
from .model_spec import ModelSpec
from .params import ParamBreakdown, count_params
from .quantization import Quantization, applicable, checkpoint_format
from .vllm_profiles import VLLM_RELEASE

TP_DEGREES = (1, 2, 4, 8, 16)
# lower is better quality; used when preferring quality and as a tie-break
QUALITY_RANK = {Quantization.BF16: 0, Quantization.FP16: 0, Quantization.FP8: 1, Quantization.INT8: 2,
                Quantization.MXFP4: 2, Quantization.AWQ: 3, Quantization.GPTQ: 3, Quantization.BNB_NF4: 4}
BANDWIDTH_EFFICIENCY = 0.75  # share of peak HBM bandwidth a decode step achieves
STEP_OVERHEAD_S = 0.002  # scheduler + kernel launch per decode step


class Preference(StrEnum):
    COST = "cost"
    QUALITY = "quality"


class GPUOption(BaseModel):
    """A GPU type the cluster offers, and how many fit one node (TP stays within a node)."""

    model_config = ConfigDict(frozen=True)
    gpu: GPUType
    gpus_per_node: int = Field(default=8, ge=1)
    nodes: int | None = Field(default=None, ge=0)  # None: unbounded (cloud autoscaling)


class LoadTarget(BaseModel):
    model_config = ConfigDict(frozen=True)
    requests_per_second: float = Field(gt=0)
    mean_input_tokens: int = Field(gt=0)
    mean_output_tokens: int = Field(gt=0)


def layout_key(gpu: str, tp: int, quantization: Quantization) -> str:
    """How a layout is named where measurements refer to it (PlanRequest.excluded, .measured_bytes)."""
    return f"{gpu}/{tp}/{quantization.value}"


class PlanRequest(BaseModel):
    model_config = ConfigDict(frozen=True)

    max_model_len: int = Field(gt=0)
    concurrency: int | None = Field(default=None, gt=0)  # sequences of max_model_len to hold in total
    load: LoadTarget | None = None
    options: tuple[GPUOption, ...]
    quantizations: tuple[Quantization, ...] = (Quantization.AUTO,)
    max_gpus_per_replica: int = Field(default=8, ge=1)
    tensor_parallel_size: int | None = Field(default=None, ge=1)
    kv_cache_dtype: str = "auto"
    gpu_memory_utilization: float = Field(default=DEFAULT_GPU_MEMORY_UTILIZATION, gt=0, le=1)
    max_num_batched_tokens: int | None = Field(default=None, gt=0)
    max_num_seqs: int | None = Field(default=None, gt=0)
    block_size: int = Field(default=DEFAULT_BLOCK_SIZE, gt=0)
    enable_prefix_caching: bool = True
    prefer: Preference = Preference.COST
    vllm_release: str = VLLM_RELEASE  # the release of the image that will run the plan
    # what failed starts taught: per GPU type, memory per GPU the estimate did not account for, and
    # layouts ("GPU/TP/quantization", layout_key) that must not be tried again, with why
    reserved_bytes: dict[str, int] = Field(default_factory=dict)
    excluded: dict[str, str] = Field(default_factory=dict)
    # what live replicas measured, per layout: memory per GPU the estimate did not account for (signed); it
    # replaces the reserve on that layout, so the plan's KV cache is the one vLLM allocated there
    measured_bytes: dict[str, int] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _target(self) -> PlanRequest:
        if not self.options:
            raise ValueError("options: at least one GPU type is needed")
        if not self.quantizations:
            raise ValueError("quantizations: at least one is needed")
        return self


class Plan(BaseModel):
    model_config = ConfigDict(frozen=True)

    gpu: str
    tensor_parallel_size: int
    quantization: Quantization  # resolved (never AUTO)
    quantization_flag: str | None  # what to pass to vLLM's --quantization (None: checkpoint's own)
    replicas: int
    gpus_per_replica: int
    cost_per_hour: float
    concurrency_per_replica: float
    decode_tokens_per_s: float  # per replica, at its planned batch
    inter_token_latency_ms: float
    memory: MemoryEstimate
    measured: bool = False  # its KV cache is the one a live replica of this layout allocated (calibrated)

    @property
    def total_gpus(self) -> int:
        return self.replicas * self.gpus_per_replica

    def summary(self) -> str:
        return (f"{self.replicas}x {self.gpu} TP{self.tensor_parallel_size} {self.quantization.value}: "
                f"{self.memory.kv_cache_tokens:,} KV tokens/replica, ${self.cost_per_hour:.2f}/h")


class Rejection(BaseModel):
    model_config = ConfigDict(frozen=True)
    gpu: str
    tensor_parallel_size: int
    quantization: str
    reason: str
    memory_gib: float = 0.0  # GPU memory of the whole replica that was tried (tp x the GPU's)


class PlanResult(BaseModel):
    model_config = ConfigDict(frozen=True)
    model: str
    plans: tuple[Plan, ...]
    rejections: tuple[Rejection, ...]

    @property
    def best(self) -> Plan | None:
        return self.plans[0] if self.plans else None

    def explain_infeasible(self) -> str:
        """One line for a condition message: the closest option and why it failed."""
        if not self.rejections:
            return "no GPU option was offered"
        memory_reasons = [r for r in self.rejections if "GiB" in r.reason]
        # the largest replica tried for memory: the one whose numbers say how far off the model is
        pick = max(memory_reasons, key=lambda r: r.memory_gib) if memory_reasons else self.rejections[-1]
        return (f"no allowed option fits {self.model}: {len(self.rejections)} rejected; largest tried "
                f"{pick.tensor_parallel_size}x {pick.gpu} {pick.quantization}: {pick.reason}")


def _throughput(spec: ModelSpec, params: ParamBreakdown, est: MemoryEstimate, gpu: GPUType, seq_tokens: int,
                ctx_tokens: float) -> tuple[int, float, float]:
    """(batch, decode tokens/s, step seconds) at the largest batch memory allows (roofline)."""
    batch = max(1, min(est.max_num_seqs, est.kv_cache_tokens // max(1, seq_tokens)))
    active_share = params.active(spec) / params.total if params.total else 1.0
    bw = gpu.bandwidth_gbps * 1e9 * BANDWIDTH_EFFICIENCY
    weights_read = est.weights_bytes * active_share
    kv_read = batch * ctx_tokens * est.kv_bytes_per_token
    step = (weights_read + kv_read) / bw + STEP_OVERHEAD_S
    return batch, batch / step, step


def serving_config(req: PlanRequest, tp: int, q: Quantization, unaccounted_bytes: int = 0) -> ServingConfig:
    """How vLLM is configured for one layout of ``req``: the estimate the plan is made of."""
    return ServingConfig(
        tensor_parallel_size=tp, quantization=q, kv_cache_dtype=req.kv_cache_dtype,
        max_model_len=req.max_model_len, gpu_memory_utilization=req.gpu_memory_utilization,
        max_num_batched_tokens=req.max_num_batched_tokens, max_num_seqs=req.max_num_seqs,
        block_size=req.block_size, enable_prefix_caching=req.enable_prefix_caching,
        vllm_release=req.vllm_release, unaccounted_bytes=unaccounted_bytes)


def _resolved(spec: ModelSpec, q: Quantization) -> Quantization:
    return checkpoint_format(spec) if q is Quantization.AUTO else q


def plan(spec: ModelSpec, req: PlanRequest) -> PlanResult:
    plans: list[Plan] = []
    rejections: list[Rejection] = []
    seen: set[tuple[str, int, Quantization]] = set()
    params = count_params(spec)
    for opt in req.options:
        gpu = opt.gpu
        degrees = [req.tensor_parallel_size] if req.tensor_parallel_size else list(TP_DEGREES)
        for tp in degrees:
            for q in req.quantizations:
                quant = _resolved(spec, q)
                key = (gpu.name, tp, quant)
                if key in seen:
                    continue
                seen.add(key)

                def reject(reason: str, tp: int = tp, quant: Quantization = quant, gpu: GPUType = gpu) -> None:
                    rejections.append(Rejection(gpu=gpu.name, tensor_parallel_size=tp, quantization=quant.value,
                                                reason=reason, memory_gib=tp * gpu.memory_gib))

                layout = layout_key(gpu.name, tp, quant)
                failed = req.excluded.get(layout)
                if failed:
                    reject(failed)
                    continue
                if tp > req.max_gpus_per_replica:
                    reject(f"{tp} GPUs exceed maxGPUsPerReplica {req.max_gpus_per_replica}")
                    continue
                if tp > opt.gpus_per_node:
                    reject(f"{tp} GPUs exceed the {opt.gpus_per_node} per {gpu.name} node")
                    continue
                why = applicable(spec, q)
                if why:
                    reject(why)
                    continue
                if quant is Quantization.FP8 and not gpu.fp8 and checkpoint_format(spec) is not Quantization.FP8:
                    reject(f"{gpu.name} has no fp8 support (vLLM would fall back to weight-only Marlin)")
                    continue
                unaccounted = req.measured_bytes.get(layout, req.reserved_bytes.get(gpu.name, 0))
                try:
                    est = estimate(spec, gpu, serving_config(req, tp, q, unaccounted), params)
                except EstimatorError as exc:
                    reject(str(exc))
                    continue
                if not est.fits:
                    reject(_memory_reason(est, tp, gpu, req))
                    continue
                priced = _price(spec, params, est, gpu, tp, quant, req, measured=layout in req.measured_bytes)
                if opt.nodes is not None and priced.total_gpus > opt.nodes * opt.gpus_per_node:
                    reject(f"needs {priced.replicas} replicas x {tp} GPUs = {priced.total_gpus}; the cluster has "
                           f"{opt.nodes * opt.gpus_per_node} {gpu.name}")
                    continue
                plans.append(priced)
    ranked = sorted(plans, key=lambda p: _rank_key(p, req.prefer))
    return PlanResult(model=spec.name, plans=tuple(ranked), rejections=tuple(rejections))


def _memory_reason(est: MemoryEstimate, tp: int, gpu: GPUType, req: PlanRequest) -> str:
    need = est.weights_bytes * tp
    return (f"needs {need / GIB:.1f} GiB of weights per replica; {tp}x{gpu.memory_gib:g} GiB at "
            f"{req.gpu_memory_utilization:g} utilization leaves KV for {max(0, est.kv_cache_tokens):,} tokens "
            f"< {req.max_model_len:,} ({est.reason})")


def _price(spec: ModelSpec, params: ParamBreakdown, est: MemoryEstimate, gpu: GPUType, tp: int, quant: Quantization,
           req: PlanRequest, measured: bool = False) -> Plan:
    if req.load is not None:
        seq = req.load.mean_input_tokens + req.load.mean_output_tokens
        ctx = req.load.mean_input_tokens + req.load.mean_output_tokens / 2
        batch, tps, step = _throughput(spec, params, est, gpu, seq, ctx)
        replicas = max(1, math.ceil(req.load.requests_per_second * req.load.mean_output_tokens / tps))
        conc = float(batch)
    else:
        _, tps, step = _throughput(spec, params, est, gpu, req.max_model_len, req.max_model_len / 2)
        conc = est.max_concurrency
        target = req.concurrency or 1
        replicas = max(1, math.ceil(target / conc - 1e-9))
    own = checkpoint_format(spec)
    flag = None if quant is own else {Quantization.FP8: "fp8", Quantization.BNB_NF4: "bitsandbytes"}.get(quant)
    return Plan(gpu=gpu.name, tensor_parallel_size=tp, quantization=quant, quantization_flag=flag,
                replicas=replicas, gpus_per_replica=tp,
                cost_per_hour=round(replicas * tp * gpu.price_per_hour, 6),
                concurrency_per_replica=conc, decode_tokens_per_s=tps, inter_token_latency_ms=step * 1000,
                memory=est, measured=measured)


def _rank_key(p: Plan, prefer: Preference) -> tuple[float | int | str, ...]:
    quality = QUALITY_RANK.get(p.quantization, 5)
    if prefer is Preference.QUALITY:
        return (quality, p.cost_per_hour, p.total_gpus, -p.concurrency_per_replica, p.gpu, p.tensor_parallel_size)
    return (p.cost_per_hour, quality, p.total_gpus, -p.concurrency_per_replica, p.gpu, p.tensor_parallel_size)
