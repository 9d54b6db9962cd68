"""How fast a vLLM replica serves: engine step times and, from them, TTFT, TPOT and throughput under a load.

One model for the planner and the simulator. A step of vLLM's engine runs every scheduled sequence once:
decoding sequences one token each, prefilling ones a chunk of their prompt, all under the token budget
(``max_num_batched_tokens``, chunked prefill). Its time is a roofline: the larger of the bytes read (the
weights the step touches and every scheduled sequence's KV cache) over memory bandwidth and the FLOPs over
dense GEMM throughput (both as the GPU's published measurements reach them, each at a fitted share), plus
fixed costs per step, sequence and layer (scheduling, sampling, launches) and the tensor-parallel
all-reduces over the link the GPUs have. Pipeline stages run in turn and hand their hidden states over the
link between nodes.

The serving figures come from the step time at the batch a load keeps running: a closed loop of
``concurrency`` clients (vLLM's ``bench serve --max-concurrency``) or Poisson arrivals at ``request_rate``,
with the requests beyond what the batch holds waiting in the queue (Little's law).

The efficiency constants are fitted by ``bench/perf_model_accuracy.py`` on the calibration half of published
``vllm bench serve`` measurements (``bench/data/published_vllm_serving.json``); that script reports the
error on the other half.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from functools import lru_cache

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .errors import EstimatorError
from .gpus import GPUType
from .memory import KVRead, MemoryEstimate, ServingConfig, estimate
from .model_spec import FFN, ModelSpec
from .params import ParamBreakdown, count_params
from .quantization import Quantization, resolved

#: one pipeline hand-off between nodes (NCCL send/recv over RDMA): latency before the bytes, a modelling
#: assumption of the order NCCL's point-to-point tests show
INTER_NODE_HOP_S = 30e-6
#: the link between nodes when none is declared: one 400 Gb/s port per node (NDR InfiniBand, 400 GbE)
DEFAULT_INTER_NODE_GBITS = 400.0
#: hidden states cross links in 16 bits
ACTIVATION_BYTES = 2
#: the peak of the served rate: grid points (squares, denser at small batches), then narrowing steps
PEAK_GRID = 16
PEAK_REFINE_STEPS = 8
#: rounds that settle the batch the token budget can feed (the prefill steps it implies change little)
BUDGET_STEPS = 3
#: Little's-law iterations before falling back to halving, and when two agree (within a hundredth)
FIXED_POINT_STEPS = 8
FIXED_POINT_TOLERANCE = 0.01
#: halvings of the batch range when solving for the batch a request rate keeps running: to 1/4096 of the
#: largest batch, a quarter of a sequence at vLLM's 1024, far inside the model's own error
BISECTION_STEPS = 12
#: ``vllm bench serve --num-prompts`` default: the length of the run a saturated queue builds up over
DEFAULT_NUM_PROMPTS = 1000


class PerfConstants(BaseModel):
    """The few constants of the step-time roofline that are not specifications of the hardware."""

    model_config = ConfigDict(frozen=True)

    # shares of what the GPU's measurements reach (GPUType.achieved_*): weight reads, attention reading the
    # paged KV cache, and a prefill step's GEMMs
    bandwidth_efficiency: float = Field(gt=0, le=1)
    attention_efficiency: float = Field(gt=0, le=1)
    compute_efficiency: float = Field(gt=0, le=1)
    step_overhead_s: float = Field(ge=0)  # scheduler, input preparation, launches: once per step
    seq_overhead_s: float = Field(ge=0)  # sampling and bookkeeping: per scheduled sequence per step
    layer_overhead_s: float = Field(ge=0)  # the floor of one decoder layer's kernels, however small the batch
    moe_layer_overhead_s: float = Field(ge=0)  # and of a routed-expert layer's extra ones (router, top-k, permute)
    allreduce_latency_s: float = Field(ge=0)  # one tensor-parallel all-reduce before its bytes move


#: fitted by bench/perf_model_accuracy.py on the calibration half of the published measurements
DEFAULT_CONSTANTS = PerfConstants(
    bandwidth_efficiency=0.891,
    attention_efficiency=0.710,
    compute_efficiency=0.477,
    step_overhead_s=1.81e-06,
    seq_overhead_s=9.19e-05,
    layer_overhead_s=5.51e-06,
    moe_layer_overhead_s=0.000125,
    allreduce_latency_s=0.000117)


@dataclass(frozen=True)
class StepCost:
    """Seconds one engine step of one replica takes, from what it reads, computes and sends.

    Bytes and FLOPs are per GPU of one pipeline stage; ``stages`` stages run one after another.
    """

    kv_read: KVRead  # the cache a sequence's step reads, one stage, one GPU
    bandwidth: float  # bytes/s achieved reading weights
    flops: float  # FLOP/s achieved
    flops_per_token: float  # one stage, one GPU
    dense_weight_bytes: float = 0.0  # read by every step
    expert_weight_bytes: float = 0.0  # every routed expert; a step reads those its tokens are routed to
    experts: int = 0
    experts_per_token: int = 0
    kv_bandwidth: float = 0.0  # bytes/s achieved reading the KV cache (0: as the weights)
    stages: int = 1
    step_overhead_s: float = 0.0
    seq_overhead_s: float = 0.0
    comm_fixed_s: float = 0.0  # all-reduce and hand-off latencies, per step
    comm_per_token_s: float = 0.0  # all-reduce and hand-off bytes of one token over the links

    def touched_expert_share(self, tokens: float) -> float:
        """Share of the routed experts a step reads: with uniform routing, an expert is missed by all
        ``tokens`` tokens with probability (1 - k/E)^tokens."""
        if not self.experts or tokens <= 0:
            return 0.0
        return float(1.0 - (1.0 - self.experts_per_token / self.experts) ** tokens)

    def seconds(self, kv_tokens_read: float, tokens: float, seqs: float) -> float:
        """One step that reads ``kv_tokens_read`` cached tokens and computes ``tokens`` new ones for
        ``seqs`` scheduled sequences."""
        weights = self.dense_weight_bytes + self.expert_weight_bytes * self.touched_expert_share(tokens)
        memory = weights / self.bandwidth + self.kv_read.bytes(kv_tokens_read, seqs) / (
            self.kv_bandwidth or self.bandwidth)
        compute = tokens * self.flops_per_token / self.flops
        comm = self.comm_fixed_s + tokens * self.comm_per_token_s if tokens > 0 else 0.0
        return self.step_overhead_s + seqs * self.seq_overhead_s + self.stages * max(memory, compute) + comm


#: the median measured share of the datasheet peak over the catalog's GPUs
#: (bench/data/gpu_achieved_rates.json): for a card whose own measurements are not in the catalog
TYPICAL_BANDWIDTH_SHARE = 0.85
TYPICAL_GEMM_SHARE = 0.79
#: fp8 tensor cores run at twice the 16-bit rate (NVIDIA's and AMD's data sheets for H100, H200, L4, L40S,
#: MI300X): the rate taken where no fp8 measurement is in the catalog
FP8_SPEEDUP = 2.0


def achieved_bandwidth(gpu: GPUType) -> float:
    """Bytes/s a stream kernel reaches on ``gpu``."""
    return (gpu.achieved_bandwidth_gbps or gpu.bandwidth_gbps * TYPICAL_BANDWIDTH_SHARE) * 1e9


#: the catalog's link_gbps counts both directions, as data sheets do (NVLink 4: 900 GB/s = 450 each way); a
#: ring all-reduce sends one way at a time over each GPU's link
LINK_DIRECTIONS = 2


def achieved_flops(gpu: GPUType, quantization: Quantization) -> float:
    """Dense FLOP/s a large GEMM reaches: fp8 weights on a GPU with fp8 tensor cores run the fp8 rate."""
    bf16 = (gpu.achieved_bf16_tflops or gpu.bf16_tflops * TYPICAL_GEMM_SHARE) * 1e12
    if quantization is Quantization.FP8 and gpu.fp8:
        return gpu.achieved_fp8_tflops * 1e12 if gpu.achieved_fp8_tflops else bf16 * FP8_SPEEDUP
    return bf16


def step_cost(spec: ModelSpec, params: ParamBreakdown, gpu: GPUType, est: MemoryEstimate, tp: int, pp: int = 1,
              quantization: Quantization = Quantization.BF16,
              inter_node_gbits: float = DEFAULT_INTER_NODE_GBITS,
              constants: PerfConstants = DEFAULT_CONSTANTS) -> StepCost:
    """The step cost of one replica of ``spec`` laid out TP x PP on ``gpu`` as ``est`` sizes it."""
    expert_share = params.expert_linear / params.total if params.total and spec.moe else 0.0
    link = gpu.link_gbps * 1e9 / LINK_DIRECTIONS
    hidden_bytes = spec.hidden_size * ACTIVATION_BYTES
    # a ring all-reduce moves 2 (tp - 1) / tp of the tensor through each GPU's link; two per layer
    # (after attention and after the MLP)
    allreduces = 2 * spec.num_layers if tp > 1 else 0
    ring = 2 * (tp - 1) / tp
    inter = inter_node_gbits / 8 * 1e9
    hops = pp - 1
    moe_layers = sum(1 for f in spec.ffns if f is FFN.MOE) if spec.moe else 0
    return StepCost(
        kv_read=est.kv_read,
        bandwidth=achieved_bandwidth(gpu) * constants.bandwidth_efficiency,
        kv_bandwidth=achieved_bandwidth(gpu) * constants.attention_efficiency,
        flops=achieved_flops(gpu, quantization) * constants.compute_efficiency,
        flops_per_token=2.0 * params.active(spec) / (tp * pp),
        dense_weight_bytes=est.weights_bytes * (1 - expert_share),
        expert_weight_bytes=est.weights_bytes * expert_share,
        experts=spec.moe.num_experts if spec.moe else 0,
        experts_per_token=spec.moe.experts_per_token if spec.moe else 0,
        stages=pp, step_overhead_s=constants.step_overhead_s, seq_overhead_s=constants.seq_overhead_s,
        comm_fixed_s=(allreduces * constants.allreduce_latency_s + hops * INTER_NODE_HOP_S
                      + spec.num_layers * constants.layer_overhead_s + moe_layers * constants.moe_layer_overhead_s),
        comm_per_token_s=allreduces * ring * hidden_bytes / link + hops * hidden_bytes / inter)


class Load(BaseModel):
    """What clients send: mean prompt and output lengths, and either a number of clients that each send
    the next request when the last one finishes, or a Poisson arrival rate."""

    model_config = ConfigDict(frozen=True)

    input_tokens: int = Field(gt=0)
    output_tokens: int = Field(gt=0)
    concurrency: int | None = Field(default=None, gt=0)
    request_rate: float | None = Field(default=None, gt=0)  # requests/s; math.inf: all at once
    num_prompts: int = Field(default=DEFAULT_NUM_PROMPTS, gt=0)
    # how output lengths vary (their coefficient of variation): 0 when every request has the same length,
    # about 1 for chat traces (ShareGPT's are roughly exponential); the longest request of a batch sets
    # when the batch is done
    length_spread: float = Field(default=0.0, ge=0)

    @model_validator(mode="after")
    def _one_kind(self) -> Load:
        if (self.concurrency is None) == (self.request_rate is None):
            raise ValueError("give either concurrency or request_rate")
        return self


class EngineLimits(BaseModel):
    """The scheduler limits of one replica (vLLM's --max-num-seqs, --max-num-batched-tokens, KV blocks)."""

    model_config = ConfigDict(frozen=True)

    max_num_seqs: int = Field(gt=0)
    max_num_batched_tokens: int = Field(gt=0)
    kv_cache_tokens: int = Field(gt=0)


class ServingPrediction(BaseModel):
    """What ``vllm bench serve`` would report for one replica under a load."""

    model_config = ConfigDict(frozen=True)

    output_tok_s: float
    total_tok_s: float
    ttft_ms: float
    tpot_ms: float
    itl_ms: float
    requests_per_s: float
    saturated: bool  # requests wait in the queue for a place in the batch
    batch: float  # sequences the engine keeps running
    # what the percentiles are made of: the two kinds of step, how often a step carries a prompt chunk,
    # how many chunks a prompt takes, and the mean wait for a place in the batch
    prefill_step_ms: float = 0.0
    decode_step_ms: float = 0.0
    prefill_share: float = 0.0
    prefill_steps: int = 1
    queue_ms: float = 0.0
    budget_use: float = 0.0  # how full the prompt budget runs (1: arrivals queue for it)


@dataclass(frozen=True)
class _Steady:
    step_s: float
    requests_per_step: float
    prefill_steps: int
    prefill_step_s: float = 0.0
    decode_step_s: float = 0.0
    share: float = 0.0
    budget_use: float = 0.0  # prompt tokens a step over the room the budget leaves for them

    @property
    def requests_per_s(self) -> float:
        return self.requests_per_step / self.step_s


def _steady(cost: StepCost, batch: float, load: Load, limits: EngineLimits) -> _Steady:
    """The engine with ``batch`` sequences running. Each is prefilled in chunks of what the budget leaves
    beside the decodes, then decodes one token a step, so a request holds its place for
    prefill_steps + output - 1 steps. Prompts arrive in whole chunks, not spread over every step: a share of
    the steps carries a chunk (and runs at its compute-bound time), the rest decode only."""
    i, o = load.input_tokens, load.output_tokens
    room = max(1.0, limits.max_num_batched_tokens - batch)
    prefill_steps = max(1, math.ceil(i / room))
    per_step = batch / (prefill_steps + o - 1)
    prefill = per_step * i  # prompt tokens per step, on average
    if prefill > room:  # the budget, not the batch, bounds the pace
        per_step, prefill = room / i, room
    chunk = min(room, max(float(i), prefill))  # one prompt's chunk, or several short prompts packed
    share = prefill / chunk
    kv_read = batch * (i + o / 2)  # a running sequence holds its prompt and, on average, half its output
    with_chunk = cost.seconds(kv_read, batch + chunk, batch)
    decode = cost.seconds(kv_read, batch, batch)
    return _Steady(share * with_chunk + (1 - share) * decode, per_step, prefill_steps, with_chunk, decode, share,
                   min(1.0, prefill / room))


def _prediction(load: Load, s: _Steady, batch: float, rate: float, wait_s: float, saturated: bool) \
        -> ServingPrediction:
    # a prompt's chunks run in steps that carry them; an arrival first waits out the step in progress
    ttft = wait_s + s.prefill_steps * s.prefill_step_s + s.step_s / 2
    # built from computed floats, not input: no validation (the planner makes thousands per plan)
    return ServingPrediction.model_construct(
        output_tok_s=rate * load.output_tokens, total_tok_s=rate * (load.input_tokens + load.output_tokens),
        ttft_ms=ttft * 1e3, tpot_ms=s.step_s * 1e3, itl_ms=s.step_s * 1e3, requests_per_s=rate,
        saturated=saturated, batch=batch, prefill_step_ms=s.prefill_step_s * 1e3,
        decode_step_ms=s.decode_step_s * 1e3, prefill_share=s.share, prefill_steps=s.prefill_steps,
        queue_ms=wait_s * 1e3, budget_use=s.budget_use)


def admitted(load: Load, limits: EngineLimits) -> int:
    """The most requests the engine takes in at once: the batch limit, or as many whole requests as the KV
    cache holds."""
    return max(1, min(limits.max_num_seqs, limits.kv_cache_tokens // (load.input_tokens + load.output_tokens)))


def max_batch(load: Load, limits: EngineLimits) -> int:
    """The most sequences the engine usefully runs at once: the batch limit, as many whole requests as the
    KV cache holds (vLLM admits a request only when all its prompt fits; more would be preempted), or as
    many as the token budget can feed. b running sequences want b * input / (prefill steps + output - 1)
    prompt tokens a step, and the budget leaves budget - b beside their decodes; past the batch where the
    two meet, more sequences only wait for prompt room and slow every step."""
    i, o, budget = load.input_tokens, load.output_tokens, limits.max_num_batched_tokens
    most = admitted(load, limits)
    fed = float(most)
    for _ in range(BUDGET_STEPS):  # the prefill steps a prompt takes depend on the room the batch leaves
        held = math.ceil(i / max(1.0, budget - fed)) + o - 1
        fed = budget * held / (i + held)
    return max(1, min(most, math.floor(fed)))


def capacity(cost: StepCost, load: Load, limits: EngineLimits) -> float:
    """The most requests/s one replica completes: what a request rate can keep up with at best."""
    return _peak(cost, load.input_tokens, load.output_tokens, limits)[1]


@lru_cache(maxsize=4096)
def _peak(cost: StepCost, input_tokens: int, output_tokens: int, limits: EngineLimits) -> tuple[float, float]:
    """(batch, requests/s) where a replica completes the most requests. The served rate need not grow all the
    way to the largest batch: past a point every sequence's KV read and the prompt chunks slow each step
    more than the extra sequence adds. Scanned on a grid denser at small batches, then narrowed around the best;
    it depends on the request shape, not on the rate, so the planner's many rates share one scan."""
    load = Load.model_construct(input_tokens=input_tokens, output_tokens=output_tokens, concurrency=1,
                                request_rate=None)
    most = max_batch(load, limits)

    def rate(b: float) -> float:
        return _steady(cost, b, load, limits).requests_per_s

    grid = sorted({most * (j / PEAK_GRID) ** 2 for j in range(1, PEAK_GRID + 1)} | {1.0, float(most)})
    grid = [b for b in grid if 1.0 <= b <= most] or [float(most)]
    k = max(range(len(grid)), key=lambda j: rate(grid[j]))
    lo, hi = grid[max(0, k - 1)], grid[min(len(grid) - 1, k + 1)]
    for _ in range(PEAK_REFINE_STEPS):  # a ternary search on the bracket around the best grid point
        a, b = lo + (hi - lo) / 3, hi - (hi - lo) / 3
        if rate(a) < rate(b):
            lo = a
        else:
            hi = b
    best = max((grid[k], (lo + hi) / 2), key=rate)
    return best, rate(best)


def predict(cost: StepCost, load: Load, limits: EngineLimits) -> ServingPrediction:
    """TTFT, TPOT and throughput of one replica under ``load``."""
    most = max_batch(load, limits)
    if load.concurrency is not None:
        batch = min(load.concurrency, most)
        s = _steady(cost, batch, load, limits)
        waiting = load.concurrency - batch
        # a run of num_prompts requests ends with its last batch's longest request decoding alone
        longest = longest_output(load, batch)
        tail = (longest - load.output_tokens) * cost.seconds(load.input_tokens + longest, 1, 1)
        rate = load.num_prompts / (load.num_prompts / s.requests_per_s + tail)
        return _prediction(load, s, batch, rate, waiting / s.requests_per_s, waiting > 0)
    rate = load.request_rate or math.inf
    if math.isinf(rate) and load.num_prompts <= admitted(load, limits):
        return _one_wave(cost, load, limits)
    peak_batch, _ = _peak(cost, load.input_tokens, load.output_tokens, limits)
    full = _steady(cost, peak_batch, load, limits)
    if rate >= full.requests_per_s:
        # arrivals outpace service: the queue grows over the run, the mean request waits half its length
        backlog = load.num_prompts / 2 * (1 / full.requests_per_s - (0.0 if math.isinf(rate) else 1 / rate))
        return _prediction(load, full, peak_batch, full.requests_per_s, max(0.0, backlog), True)
    held = _batch_for_rate(cost, load, limits, rate, peak_batch)
    s = _steady(cost, held, load, limits)
    # Poisson arrivals queue for prompt room: the mean wait of an M/M/1 queue at the budget's use, served in
    # all of a prompt's prefill steps (as latency_percentiles has it)
    rho = min(s.budget_use, 1 - 1e-6)
    wait = rho / (1 - rho) * s.prefill_steps * s.prefill_step_s
    return _prediction(load, s, held, rate, wait, False)


def _batch_for_rate(cost: StepCost, load: Load, limits: EngineLimits, rate: float, most: float) -> float:
    """The batch at which completions keep up with ``rate`` (below capacity). Little's law, iterated: the
    batch is the rate times the time a request holds its place, which grows with the batch; that converges
    in a few steps away from saturation. Close to it, halving the range settles it."""
    batch = min(1.0, most)
    for _ in range(FIXED_POINT_STEPS):
        s = _steady(cost, batch, load, limits)
        nxt = min(most, rate * s.step_s * (s.prefill_steps + load.output_tokens - 1))
        if abs(nxt - batch) <= FIXED_POINT_TOLERANCE * batch:
            return max(nxt, 1e-9)
        batch = max(nxt, 1e-9)
    lo, hi = 0.0, most
    for _ in range(BISECTION_STEPS):  # below the peak, the served rate grows with the batch
        mid = (lo + hi) / 2
        if _steady(cost, max(mid, 1e-9), load, limits).requests_per_s < rate:
            lo = mid
        else:
            hi = mid
    return hi


def _one_wave(cost: StepCost, load: Load, limits: EngineLimits) -> ServingPrediction:
    """Every request sent at once and all of them in the batch: the prompts are prefilled under the token
    budget first, then the batch decodes together (``vllm bench serve --request-rate inf``)."""
    n, i, o = load.num_prompts, load.input_tokens, load.output_tokens
    longest = longest_output(load, n)
    budget = limits.max_num_batched_tokens
    prefill_steps = max(1, math.ceil(n * i / budget))
    tokens = n * i / prefill_steps
    # the cache fills as the prompts go in: on average half of them are cached during a prefill step
    prefill_s = prefill_steps * cost.seconds(n * i / 2, tokens, min(n, math.ceil(budget / i)))
    decode_s = cost.seconds(n * (i + o / 2), n, n)
    ttft = prefill_s / 2 + decode_s / 2
    # the batch thins out as requests end; the longest one, alone at the end, sets the duration
    duration = prefill_s + (o - 1) * decode_s + (longest - o) * cost.seconds(i + longest, 1, 1)
    tpot = (duration - ttft) / max(1, o - 1)
    return ServingPrediction.model_construct(
        output_tok_s=n * o / duration, total_tok_s=n * (i + o) / duration, ttft_ms=ttft * 1e3, tpot_ms=tpot * 1e3,
        itl_ms=decode_s * 1e3, requests_per_s=n / duration, saturated=False, batch=n,
        prefill_step_ms=prefill_s / prefill_steps * 1e3, decode_step_ms=decode_s * 1e3, prefill_steps=prefill_steps,
        queue_ms=prefill_s / 2 * 1e3)


def longest_output(load: Load, batch: float) -> float:
    """Expected length of the longest of ``batch`` outputs: the mean plus the spread times the excess of the
    maximum of that many exponential lengths over their mean (the harmonic number H(n) - 1)."""
    n = max(1, round(batch))
    excess = sum(1.0 / k for k in range(2, n + 1))
    return load.output_tokens * (1 + load.length_spread * excess)


def engine_limits(est: MemoryEstimate) -> EngineLimits:
    return EngineLimits(max_num_seqs=est.max_num_seqs, max_num_batched_tokens=est.max_num_batched_tokens,
                        kv_cache_tokens=max(1, est.kv_cache_tokens))


def predict_serving(spec: ModelSpec, gpu: GPUType, cfg: ServingConfig, load: Load,
                    inter_node_gbits: float = DEFAULT_INTER_NODE_GBITS,
                    constants: PerfConstants = DEFAULT_CONSTANTS) -> tuple[ServingPrediction, MemoryEstimate]:
    """One replica of ``spec`` served as ``cfg`` on ``gpu`` under ``load``: the estimate its KV cache comes
    from, and what it would do. A layout that does not fit, or a request longer than the context it is
    served with, is an error that says by how much."""
    est = estimate(spec, gpu, cfg)
    if not est.fits:
        raise EstimatorError(est.reason)
    need = load.input_tokens + load.output_tokens
    if need > est.max_model_len:
        raise EstimatorError(f"a request of {load.input_tokens:,} + {load.output_tokens:,} tokens exceeds "
                             f"max_model_len {est.max_model_len:,}")
    q = resolved(spec, cfg.quantization)
    cost = step_cost(spec, count_params(spec), gpu, est, cfg.tensor_parallel_size, cfg.pipeline_parallel_size, q,
                     inter_node_gbits, constants)
    return predict(cost, load, engine_limits(est)), est


def latency_percentiles(pred: ServingPrediction, load: Load, percentile: float) -> tuple[float, float]:
    """(TTFT, TPOT) in ms at ``percentile`` (0-100) over requests, from the means' parts.

    TPOT: a request's output steps are each a prompt-carrying step with probability ``prefill_share``, so its
    mean step time is a binomial mixture over output - 1 steps (normal approximation, held between the two
    step times). TTFT: its prefill steps, one step in progress, and the queue: a saturated closed loop waits
    its mean; Poisson arrivals wait for prompt room like an M/M/1 queue at the budget's use rho
    (P(wait > w) = rho exp(-(1 - rho) w / s), s one prompt's prefill steps) and, beyond capacity, behind a
    backlog that grows evenly through the run."""
    z = statistics.NormalDist().inv_cdf(min(0.9999, max(0.5, percentile / 100)))
    n = max(1, load.output_tokens - 1)
    share = pred.prefill_share
    low, high = sorted((pred.decode_step_ms, pred.prefill_step_ms))
    spread = z * math.sqrt(share * (1 - share) / n) * (pred.prefill_step_ms - pred.decode_step_ms)
    tpot = min(max(pred.tpot_ms + spread, low), high) if share > 0 else pred.tpot_ms
    service = pred.prefill_steps * pred.prefill_step_ms
    wait = pred.queue_ms
    tail = 1 - percentile / 100
    rho = min(pred.budget_use, 1 - 1e-6)
    if load.request_rate is not None:
        wait = service / (1 - rho) * math.log(rho / tail) if rho > tail else 0.0
        if pred.saturated:  # and the backlog, which grows through the run: its p-th request waits p x twice the mean
            wait += 2 * percentile / 100 * pred.queue_ms
    ttft = wait + service + max(pred.prefill_step_ms, pred.decode_step_ms)
    return ttft, tpot
