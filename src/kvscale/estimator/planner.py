"""Cheapest (GPU type, parallel layout, quantization, replicas) that serves a target.

Pure and exhaustive: every option is estimated, each infeasible one keeps its reason, the
feasible ones are ranked deterministically. Karpenter's Solve -> Results{plans, errors}.

Layouts: tensor parallel within one node; a model that fits no single node of a GPU type is tried
as tensor parallel over each node's GPUs x pipeline parallel across nodes, one stage per node (vLLM's
guidance for models larger than a node: docs/serving/parallelism_scaling.md).
"""

from __future__ import annotations

import math
from enum import StrEnum
from typing import NamedTuple

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .errors import EstimatorError
from .gpus import GIB, GPUType
from .memory import DEFAULT_BLOCK_SIZE, DEFAULT_GPU_MEMORY_UTILIZATION, MemoryEstimate, ServingConfig, estimate
from .model_spec import ModelSpec
from .params import ParamBreakdown, count_params
from .performance import (
    DEFAULT_INTER_NODE_GBITS,
    Load,
    ServingPrediction,
    StepCost,
    capacity,
    engine_limits,
    latency_percentiles,
    predict,
    step_cost,
)
from .quantization import Quantization, applicable, checkpoint_format, resolved
from .vllm_profiles import VLLM_RELEASE

TP_DEGREES = (1, 2, 4, 8, 16)
# lower is better quality; used when preferring quality and as a tie-break
QUALITY_RANK = {Quantization.BF16: 0, Quantization.FP16: 0, Quantization.FP8: 1, Quantization.INT8: 2,
                Quantization.MXFP4: 2, Quantization.AWQ: 3, Quantization.GPTQ: 3, Quantization.BNB_NF4: 4}
#: nodes one replica may span unless the request says otherwise: two to four 8-GPU nodes is how the
#: largest open models (DeepSeek-R1, Llama-3.1-405B in bf16) are served multi-node
DEFAULT_MAX_NODES_PER_REPLICA = 4
#: how many nodes an infeasible model's "would fit on" search looks at
SUGGEST_MAX_NODES = 16


class Preference(StrEnum):
    COST = "cost"
    QUALITY = "quality"


class GPUOption(BaseModel):
    """A GPU type the cluster offers, and how many fit one node (TP stays within a node; a replica
    larger than a node spans whole nodes)."""

    model_config = ConfigDict(frozen=True)
    gpu: GPUType
    gpus_per_node: int = Field(default=8, ge=1)
    nodes: int | None = Field(default=None, ge=0)  # None: unbounded (cloud autoscaling)


class LoadTarget(BaseModel):
    """The load the fleet must carry: Poisson arrivals at a rate, or clients that each send their next
    request when the last is answered, with the mean prompt and output lengths."""

    model_config = ConfigDict(frozen=True)
    requests_per_second: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    concurrency: int | None = Field(default=None, gt=0)
    mean_input_tokens: int = Field(gt=0)
    mean_output_tokens: int = Field(gt=0)

    @model_validator(mode="after")
    def _one_kind(self) -> LoadTarget:
        if (self.requests_per_second is None) == (self.concurrency is None):
            raise ValueError("load: give either requests per second or concurrency")
        return self

    def per_replica(self, replicas: int) -> Load:
        """What one of ``replicas`` replicas gets when the load is spread evenly (this target was validated;
        its shares are built unchecked, the planner makes thousands)."""
        if self.requests_per_second is not None:
            return Load.model_construct(input_tokens=self.mean_input_tokens, output_tokens=self.mean_output_tokens,
                                        request_rate=self.requests_per_second / replicas, concurrency=None)
        assert self.concurrency is not None
        return Load.model_construct(input_tokens=self.mean_input_tokens, output_tokens=self.mean_output_tokens,
                                    concurrency=math.ceil(self.concurrency / replicas), request_rate=None)

    def describe(self) -> str:
        what = (f"{self.requests_per_second:g} requests/s" if self.requests_per_second is not None
                else f"{self.concurrency} concurrent clients")
        return f"{what} of {self.mean_input_tokens} in / {self.mean_output_tokens} out tokens"


class LatencySLO(BaseModel):
    """Latency targets at a percentile over requests: time to first token, time per output token."""

    model_config = ConfigDict(frozen=True)
    ttft_seconds: float | None = Field(default=None, gt=0)
    tpot_milliseconds: float | None = Field(default=None, gt=0)
    percentile: float = Field(default=99.0, ge=50, lt=100)

    @model_validator(mode="after")
    def _a_target(self) -> LatencySLO:
        if self.ttft_seconds is None and self.tpot_milliseconds is None:
            raise ValueError("slo: give ttftSeconds, tpotMilliseconds or both")
        return self

    def excess(self, ttft_ms: float, tpot_ms: float) -> float:
        """How far a prediction is from the targets: the larger predicted / target ratio."""
        ratios = ([ttft_ms / (self.ttft_seconds * 1000)] if self.ttft_seconds else []) + (
            [tpot_ms / self.tpot_milliseconds] if self.tpot_milliseconds else [])
        return max(ratios)

    def misses(self, ttft_ms: float, tpot_ms: float) -> list[str]:
        """What a prediction misses, with its numbers (empty: met)."""
        p = f"p{self.percentile:g} "
        out = []
        if self.ttft_seconds is not None and ttft_ms > self.ttft_seconds * 1000:
            out.append(f"{p}TTFT {ttft_ms / 1000:.3g} s > {self.ttft_seconds:g} s")
        if self.tpot_milliseconds is not None and tpot_ms > self.tpot_milliseconds:
            out.append(f"{p}TPOT {tpot_ms:.3g} ms > {self.tpot_milliseconds:g} ms")
        return out


def layout_key(gpu: str, tp: int, quantization: Quantization, pp: int = 1) -> str:
    """How a layout is named where measurements refer to it (PlanRequest.excluded, .measured_bytes)."""
    return f"{gpu}/{tp}/{quantization.value}" if pp == 1 else f"{gpu}/{tp}x{pp}/{quantization.value}"


def layout_name(tp: int, pp: int = 1) -> str:
    return f"TP{tp}" if pp == 1 else f"TP{tp}xPP{pp}"


class PlanRequest(BaseModel):
    model_config = ConfigDict(frozen=True)

    max_model_len: int = Field(gt=0)
    concurrency: int | None = Field(default=None, gt=0)  # sequences of max_model_len to hold in total
    load: LoadTarget | None = None
    slo: LatencySLO | None = None  # with a load: each replica's predicted latencies must meet it
    options: tuple[GPUOption, ...]
    quantizations: tuple[Quantization, ...] = (Quantization.AUTO,)
    max_gpus_per_replica: int = Field(default=8, ge=1)  # the largest tensor-parallel degree
    tensor_parallel_size: int | None = Field(default=None, ge=1)
    # nodes one replica may span (pipeline stages across nodes); 1: single-node replicas only
    max_nodes_per_replica: int = Field(default=DEFAULT_MAX_NODES_PER_REPLICA, ge=1)
    # why replicas cannot span nodes here (None: they can), e.g. no LeaderWorkerSet API in the cluster
    multi_node_unavailable: str | None = None
    inter_node_gbits: float = Field(default=DEFAULT_INTER_NODE_GBITS, gt=0)
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
        if self.slo is not None and self.load is None:
            raise ValueError("slo: latency targets need the load they hold at (requests/s or concurrency)")
        if self.load is not None and self.load.mean_input_tokens + self.load.mean_output_tokens > self.max_model_len:
            raise ValueError(f"load: a mean request of {self.load.mean_input_tokens:,} + "
                             f"{self.load.mean_output_tokens:,} tokens exceeds max_model_len {self.max_model_len:,}")
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
    pipeline_parallel_size: int = 1
    nodes_per_replica: int = 1  # > 1: one pipeline stage per node, tensor parallel over each node's GPUs
    interconnect: str = ""  # the links the replica's GPUs talk over, as the plan table shows it
    concurrency_per_replica: float
    decode_tokens_per_s: float  # per replica, at its planned batch
    inter_token_latency_ms: float
    memory: MemoryEstimate
    measured: bool = False  # its KV cache is the one a live replica of this layout allocated (calibrated)
    # predicted per replica at the planned load (None: no load given): TTFT and TPOT at the SLO's percentile
    # (the mean without an SLO), output tokens/s
    ttft_ms: float | None = None
    tpot_ms: float | None = None
    output_tok_s: float | None = None

    @property
    def total_gpus(self) -> int:
        return self.replicas * self.gpus_per_replica

    @property
    def layout(self) -> str:
        return layout_name(self.tensor_parallel_size, self.pipeline_parallel_size)

    @property
    def multi_node(self) -> bool:
        return self.nodes_per_replica > 1

    def summary(self) -> str:
        nodes = f" over {self.nodes_per_replica} nodes" if self.multi_node else ""
        return (f"{self.replicas}x {self.gpu} {self.layout}{nodes} {self.quantization.value}: "
                f"{self.memory.kv_cache_tokens:,} KV tokens/replica, ${self.cost_per_hour:.2f}/h")


class Rejection(BaseModel):
    model_config = ConfigDict(frozen=True)
    gpu: str
    tensor_parallel_size: int
    quantization: str
    reason: str
    memory_gib: float = 0.0  # GPU memory of the whole replica that was tried (tp x pp x the GPU's)
    pipeline_parallel_size: int = 1
    # fits in memory but misses the latency targets: by how much (predicted / target, the worse of the two)
    slo_excess: float | None = None

    @property
    def layout(self) -> str:
        return layout_name(self.tensor_parallel_size, self.pipeline_parallel_size)


class PlanResult(BaseModel):
    model_config = ConfigDict(frozen=True)
    model: str
    plans: tuple[Plan, ...]
    rejections: tuple[Rejection, ...]
    # when nothing fits: per offered GPU type, the fewest whole nodes whose memory would hold one replica
    # (no bound on nodes per replica or on the cluster's nodes), e.g. "2 nodes of 8x H100-80GB (TP8xPP2, fp8)"
    would_fit: tuple[str, ...] = ()
    latency_targets: bool = False  # the load came with an SLO (else only its throughput was asked for)

    @property
    def best(self) -> Plan | None:
        return self.plans[0] if self.plans else None

    @property
    def slo_bound(self) -> bool:
        """Nothing was planned although some layout fits in memory: the latency targets rule them all out."""
        return not self.plans and any(r.slo_excess is not None for r in self.rejections)

    def explain_infeasible(self) -> str:
        """One line for a condition message: the closest option and why it failed."""
        if not self.rejections:
            return "no GPU option was offered"
        if self.slo_bound:
            pick = min((r for r in self.rejections if r.slo_excess is not None), key=lambda r: r.slo_excess or 0)
            gpus = pick.tensor_parallel_size * pick.pipeline_parallel_size
            within = " within the latency targets" if self.latency_targets else ""
            return (f"no allowed option of {self.model} serves the load{within}: "
                    f"{len(self.rejections)} rejected; closest {gpus}x {pick.gpu} {pick.layout} {pick.quantization}: "
                    f"{pick.reason}")
        memory_reasons = [r for r in self.rejections if "GiB" in r.reason]
        # the largest replica tried for memory: the one whose numbers say how far off the model is
        pick = max(memory_reasons, key=lambda r: r.memory_gib) if memory_reasons else self.rejections[-1]
        gpus = pick.tensor_parallel_size * pick.pipeline_parallel_size
        fit = f"; needs {' or '.join(self.would_fit)}" if self.would_fit else ""
        return (f"no allowed option fits {self.model}: {len(self.rejections)} rejected; largest tried "
                f"{gpus}x {pick.gpu} {pick.layout} {pick.quantization}: {pick.reason}{fit}")


def _decode_rate(spec: ModelSpec, params: ParamBreakdown, est: MemoryEstimate, gpu: GPUType, tp: int, pp: int,
                 quant: Quantization, inter_node_gbits: float) -> tuple[float, float]:
    """(decode tokens/s, step seconds) of pure decode steps with as many max_model_len sequences as memory
    holds, each half-way through."""
    seq = est.max_model_len
    batch = max(1, min(est.max_num_seqs, est.kv_cache_tokens // max(1, seq)))
    step = step_cost(spec, params, gpu, est, tp, pp, quant, inter_node_gbits).seconds(batch * seq / 2, batch, batch)
    return batch / step, step


def interconnect(gpu: GPUType, tp: int, nodes: int, inter_node_gbits: float) -> str:
    """What the plan table says a replica's GPUs talk over."""
    within = f"{gpu.link} {gpu.link_gbps:g} GB/s" if tp > 1 else "one GPU per stage" if nodes > 1 else "one GPU"
    if nodes == 1:
        return within
    return f"{within} in a node; {inter_node_gbits:g} Gb/s between {nodes} nodes"


def serving_config(req: PlanRequest, tp: int, q: Quantization, unaccounted_bytes: int = 0,
                   pp: int = 1) -> ServingConfig:
    """How vLLM is configured for one layout of ``req``: the estimate the plan is made of."""
    return ServingConfig(
        tensor_parallel_size=tp, pipeline_parallel_size=pp, quantization=q, kv_cache_dtype=req.kv_cache_dtype,
        max_model_len=req.max_model_len, gpu_memory_utilization=req.gpu_memory_utilization,
        max_num_batched_tokens=req.max_num_batched_tokens, max_num_seqs=req.max_num_seqs,
        block_size=req.block_size, enable_prefix_caching=req.enable_prefix_caching,
        vllm_release=req.vllm_release, unaccounted_bytes=unaccounted_bytes)


def plan(spec: ModelSpec, req: PlanRequest) -> PlanResult:
    plans: list[Plan] = []
    rejections: list[Rejection] = []
    seen: set[tuple[str, int, Quantization]] = set()
    # (GPU, format) -> a single-node layout fits (True), or one was tried and ran short of memory (False)
    node_fit: dict[tuple[str, Quantization], bool] = {}
    params = count_params(spec)
    for opt in req.options:
        degrees = [req.tensor_parallel_size] if req.tensor_parallel_size else list(TP_DEGREES)
        for tp in degrees:
            for q in req.quantizations:
                quant = resolved(spec, q)
                if (opt.gpu.name, tp, quant) in seen:
                    continue
                seen.add((opt.gpu.name, tp, quant))
                _try_layout(spec, params, req, opt, tp, 1, q, plans, rejections, node_fit)
    for opt in req.options:
        for q in dict.fromkeys(resolved(spec, q) for q in req.quantizations):
            if node_fit.get((opt.gpu.name, q)) is not False:
                continue  # a replica spans nodes only for a model no single node of this type holds in memory
            tp = req.tensor_parallel_size or opt.gpus_per_node
            for nodes in range(2, req.max_nodes_per_replica + 1):
                _try_layout(spec, params, req, opt, tp, nodes, q, plans, rejections, node_fit)
    ranked = sorted(plans, key=lambda p: _rank_key(p, req.prefer))
    would_fit = () if ranked else _would_fit(spec, params, req)
    return PlanResult(model=spec.name, plans=tuple(ranked), rejections=tuple(rejections), would_fit=would_fit,
                      latency_targets=req.slo is not None)


def _try_layout(spec: ModelSpec, params: ParamBreakdown, req: PlanRequest, opt: GPUOption, tp: int, pp: int,
                q: Quantization, plans: list[Plan], rejections: list[Rejection],
                node_fit: dict[tuple[str, Quantization], bool]) -> None:
    """Estimate one layout: a plan, or a rejection with its reason (appended)."""
    gpu, quant = opt.gpu, resolved(spec, q)

    def reject(reason: str, slo_excess: float | None = None) -> None:
        rejections.append(Rejection(gpu=gpu.name, tensor_parallel_size=tp, quantization=quant.value, reason=reason,
                                    memory_gib=tp * pp * gpu.memory_gib, pipeline_parallel_size=pp,
                                    slo_excess=slo_excess))

    layout = layout_key(gpu.name, tp, quant, pp)
    failed = req.excluded.get(layout)
    if failed:
        return reject(failed)
    if tp > req.max_gpus_per_replica:
        return reject(f"{tp} GPUs exceed maxGPUsPerReplica {req.max_gpus_per_replica}")
    if tp > opt.gpus_per_node:
        return reject(f"{tp} GPUs exceed the {opt.gpus_per_node} per {gpu.name} node")
    if pp > 1 and req.multi_node_unavailable:
        return reject(f"needs {pp} nodes per replica; {req.multi_node_unavailable}")
    why = applicable(spec, q)
    if why:
        return reject(why)
    if quant is Quantization.FP8 and not gpu.fp8 and checkpoint_format(spec) is not Quantization.FP8:
        return reject(f"{gpu.name} has no fp8 support (vLLM would fall back to weight-only Marlin)")
    unaccounted = req.measured_bytes.get(layout, req.reserved_bytes.get(gpu.name, 0))
    try:
        est = estimate(spec, gpu, serving_config(req, tp, q, unaccounted, pp), params)
    except EstimatorError as exc:
        return reject(str(exc))
    if not est.fits:
        if pp == 1:
            node_fit.setdefault((gpu.name, quant), False)
        return reject(_memory_reason(est, tp, pp, gpu, req))
    if pp == 1:
        node_fit[(gpu.name, quant)] = True
    priced = _price(spec, params, est, opt, tp, pp, quant, req, measured=layout in req.measured_bytes)
    if isinstance(priced, SLOMiss):
        return reject(priced.reason, priced.excess)
    cap = _replica_cap(opt, tp, pp)
    if cap is not None and priced.replicas > cap and pp > 1:
        return reject(f"needs {priced.replicas} replicas x {pp} nodes = {priced.replicas * pp} {gpu.name} nodes; "
                      f"the cluster has {opt.nodes}")
    if cap is not None and priced.replicas > cap:
        # a replica's GPUs are on one node: TP3 on 8-GPU nodes leaves 2 GPUs of each idle
        return reject(f"needs {priced.replicas} replicas x {priced.gpus_per_replica} GPUs; the cluster's {opt.nodes} "
                      f"{gpu.name} nodes of {opt.gpus_per_node} hold {cap}")
    plans.append(priced)


def _would_fit(spec: ModelSpec, params: ParamBreakdown, req: PlanRequest) -> tuple[str, ...]:
    """Per offered GPU type, the fewest whole nodes (TP over a node's GPUs, a stage per node) that hold
    one replica in the best-fitting allowed format, ignoring the limits that rejected it."""
    out = []
    for opt in req.options:
        tp = req.tensor_parallel_size or opt.gpus_per_node
        for nodes in range(1, SUGGEST_MAX_NODES + 1):
            fitting = []
            for q in dict.fromkeys(req.quantizations):
                if applicable(spec, q):
                    continue
                unaccounted = req.reserved_bytes.get(opt.gpu.name, 0)
                try:
                    est = estimate(spec, opt.gpu, serving_config(req, tp, q, unaccounted, nodes), params)
                except EstimatorError:
                    continue
                if est.fits:
                    fitting.append(resolved(spec, q))
            if fitting:
                best = min(fitting, key=lambda f: QUALITY_RANK.get(f, 5))
                where = f"{nodes} node{'s' if nodes > 1 else ''} of {opt.gpus_per_node}x {opt.gpu.name}"
                out.append(f"{where} ({layout_name(tp, nodes)}, {best.value})")
                break
    return tuple(out)


def _memory_reason(est: MemoryEstimate, tp: int, pp: int, gpu: GPUType, req: PlanRequest) -> str:
    need = est.weights_bytes * tp * pp
    gpus = f"{tp}x{gpu.memory_gib:g} GiB" if pp == 1 else f"{pp} nodes x {tp}x{gpu.memory_gib:g} GiB"
    return (f"needs {need / GIB:.1f} GiB of weights per replica; {gpus} at "
            f"{req.gpu_memory_utilization:g} utilization leaves KV for {max(0, est.kv_cache_tokens):,} tokens "
            f"< {req.max_model_len:,} ({est.reason})")


def _price(spec: ModelSpec, params: ParamBreakdown, est: MemoryEstimate, opt: GPUOption, tp: int, pp: int,
           quant: Quantization, req: PlanRequest, measured: bool = False) -> Plan | SLOMiss:
    """The plan of one layout that fits: its replica count and cost (or, under a load, why no replica
    count of it meets the latency targets)."""
    gpu = opt.gpu
    ttft = tpot = out_tps = None
    if req.load is not None:
        cost = step_cost(spec, params, gpu, est, tp, pp, quant, req.inter_node_gbits)
        sized = _size_for_load(cost, est, req.load, req.slo, _replica_cap(opt, tp, pp))
        if isinstance(sized, SLOMiss):
            return sized
        replicas, pred, ttft, tpot = sized
        conc, tps, step, out_tps = pred.batch, pred.output_tok_s, pred.tpot_ms / 1000, pred.output_tok_s
    else:
        tps, step = _decode_rate(spec, params, est, gpu, tp, pp, quant, req.inter_node_gbits)
        conc = est.max_concurrency
        target = req.concurrency or 1
        replicas = max(1, math.ceil(target / conc - 1e-9))
    own = checkpoint_format(spec)
    flag = None if quant is own else {Quantization.FP8: "fp8", Quantization.BNB_NF4: "bitsandbytes"}.get(quant)
    # a replica that spans nodes holds them whole: nothing else is scheduled beside its stages
    billed_gpus = pp * opt.gpus_per_node if pp > 1 else tp
    return Plan(gpu=gpu.name, tensor_parallel_size=tp, quantization=quant, quantization_flag=flag,
                replicas=replicas, gpus_per_replica=tp * pp, pipeline_parallel_size=pp, nodes_per_replica=pp,
                cost_per_hour=round(replicas * billed_gpus * gpu.price_per_hour, 6),
                concurrency_per_replica=conc, decode_tokens_per_s=tps, inter_token_latency_ms=step * 1000,
                interconnect=interconnect(gpu, tp, pp, req.inter_node_gbits), memory=est, measured=measured,
                ttft_ms=ttft, tpot_ms=tpot, output_tok_s=out_tps)


#: the most replicas a load is spread over before a layout is called unable to meet it
MAX_REPLICAS_FOR_LOAD = 4096


def _replica_cap(opt: GPUOption, tp: int, pp: int) -> int | None:
    """The most replicas of this layout the offered nodes hold (None: unbounded)."""
    if opt.nodes is None:
        return None
    return opt.nodes // pp if pp > 1 else opt.nodes * (opt.gpus_per_node // tp)


class SLOMiss(NamedTuple):
    """Why no replica count of a layout that fits meets the load's latency targets."""

    reason: str
    excess: float  # predicted / target, the worse of TTFT and TPOT; at least 1 when it cannot keep up


def _judge(cost: StepCost, est: MemoryEstimate, load: LoadTarget, slo: LatencySLO | None, replicas: int) \
        -> tuple[ServingPrediction, float, float, list[str]]:
    """One replica's prediction when ``replicas`` share the load: its TTFT and TPOT (at the SLO's percentile,
    else the means) and what it misses."""
    share = load.per_replica(replicas)
    pred = predict(cost, share, engine_limits(est))
    ttft, tpot = latency_percentiles(pred, share, slo.percentile) if slo else (pred.ttft_ms, pred.tpot_ms)
    misses = slo.misses(ttft, tpot) if slo else []
    if pred.saturated and not misses:
        misses.append("requests queue for a place in the batch")
    return pred, ttft, tpot, misses


def _excess(slo: LatencySLO | None, pred: ServingPrediction, ttft: float, tpot: float) -> float:
    """How far a miss is: the latency ratio, and at least 1 when the replica cannot keep up at all."""
    ratio = slo.excess(ttft, tpot) if slo else 1.0
    return max(ratio, 1.0) if pred.saturated else ratio


def _per_replica(load: LoadTarget, replicas: int, pred: ServingPrediction) -> str:
    share = load.per_replica(replicas)
    if pred.batch < 1.5:
        return "one request at a time"
    if share.concurrency is not None:
        return f"{share.concurrency} sequences per replica"
    return f"{share.request_rate:.3g} requests/s per replica ({pred.batch:.0f} sequences running)"


def _size_for_load(cost: StepCost, est: MemoryEstimate, load: LoadTarget, slo: LatencySLO | None,
                   cap: int | None) -> tuple[int, ServingPrediction, float, float] | SLOMiss:
    """The fewest replicas whose share of ``load`` each meets ``slo`` and keeps up, or why none does.
    More replicas only lighten each one's share, so the smallest count is found by doubling, then halving."""
    seen: dict[int, tuple[ServingPrediction, float, float, list[str]]] = {}

    def judged(n: int) -> tuple[ServingPrediction, float, float, list[str]]:
        if n not in seen:
            seen[n] = _judge(cost, est, load, slo, n)
        return seen[n]

    most = MAX_REPLICAS_FOR_LOAD if load.concurrency is None else min(MAX_REPLICAS_FOR_LOAD, load.concurrency)
    # no fewer replicas than the load at full batches needs: where the search starts
    full = capacity(cost, load.per_replica(1), engine_limits(est)) if load.requests_per_second is not None else None
    pred, ttft, tpot, misses = judged(most)  # the lightest share first: a layout too slow even then is out
    if misses:
        return SLOMiss(f"{'; '.join(misses)} even at {_per_replica(load, most, pred)}", _excess(slo, pred, ttft, tpot))
    hi = max(1, min(most, math.ceil((load.requests_per_second or 0) / full))) if full else 1
    while judged(hi)[3] and hi < most:
        hi = min(most, hi * 2)
    lo = hi // 2  # misses at lo (or lo is 0)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if judged(mid)[3]:
            lo = mid
        else:
            hi = mid
    if cap is not None and hi > cap:
        if cap == 0:
            return SLOMiss("the offered nodes hold no replica of this layout", math.inf)
        pred, ttft, tpot, misses = judged(cap)
        return SLOMiss(f"{'; '.join(misses)} at {_per_replica(load, cap, pred)}: the cluster holds {cap} replicas, "
                       f"{hi} are needed", _excess(slo, pred, ttft, tpot))
    pred, ttft, tpot, _ = judged(hi)
    return hi, pred, ttft, tpot


def _rank_key(p: Plan, prefer: Preference) -> tuple[float | int | str, ...]:
    quality = QUALITY_RANK.get(p.quantization, 5)
    tail = (p.total_gpus, p.nodes_per_replica, -p.concurrency_per_replica, p.gpu, p.tensor_parallel_size)
    if prefer is Preference.QUALITY:
        return (quality, p.cost_per_hour, *tail)
    return (p.cost_per_hour, quality, *tail)
