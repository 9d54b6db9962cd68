"""Compare autoscaling policies on a trace: GPU-hours, cost, SLO attainment, preemptions.

Every policy sees the same trace, model, GPU and cold start. The oracle has perfect
knowledge and instant scaling: per minute, the fewest replicas with which that minute's
requests meet the SLO (from fixed-size fleets replayed over the whole trace); charged for
cold starts as well, it is what perfect foresight can do when replicas take the cold start to
serve. Both hold every minute to the SLO, so a fleet that meets it only over the whole trace
(static provisioning, on flat load) can come in below them. Static
provisioning is the smallest fixed fleet that meets the SLO over the whole trace, which is
what a user who sized for the peak by trial would run.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path

from ..autoscaler.policy import PolicySpec
from ..autoscaler.vllm_metrics import QUEUE_TIME_BUCKETS
from ..estimator.catalog import resolve_model
from ..estimator.gpus import GPUCatalog, GPUType, default_catalog
from ..estimator.memory import ServingConfig, estimate
from ..estimator.quantization import Quantization, resolved
from .cluster import (
    ClusterSim,
    KVScalePolicy,
    KVThresholdPolicy,
    QueueLengthPolicy,
    ScalingPolicy,
    SimResult,
    StaticPolicy,
)
from .engine import ReplicaModel, Seq
from .traces import Request, load_trace


@dataclass(frozen=True)
class SLO:
    """Per request: TTFT within ``ttft_s`` (+ ``ttft_s_per_1k_input`` per 1,000 prompt tokens, for
    long-context traces whose prompts alone take seconds to prefill) and TPOT within ``tpot_s``."""

    ttft_s: float = 2.0
    tpot_s: float = 0.100
    ttft_s_per_1k_input: float = 0.0
    attainment: float = 0.99  # share of requests that must meet it

    def met(self, s: Seq) -> bool:
        if s.first_token_at is None or s.finished_at is None:
            return False
        ttft = s.first_token_at - s.arrival
        tpot = (s.finished_at - s.first_token_at) / max(1, s.output - 1)
        return ttft <= self.ttft_s + self.ttft_s_per_1k_input * s.prompt / 1000 and tpot <= self.tpot_s


@dataclass(frozen=True)
class Scenario:
    name: str
    trace: str
    model: str
    gpu: str
    max_model_len: int
    tp: int = 1
    rate_scale: float = 1.0
    cold_start_s: float | None = None  # None: the GPU type's cold_start_s from the catalog
    max_replicas: int = 24  # what a user would allow here: several times the need
    # a smaller chunked-prefill budget keeps mixed steps short enough for a TPOT SLO
    max_num_batched_tokens: int | None = 2048
    quantization: Quantization = Quantization.AUTO
    slo: SLO = SLO()
    max_queue_s: float | None = None  # kvscale's queue-time objective; None: derived from the SLO
    gpu_budget: int | None = None  # GPUs of this type available to the policies (not to the oracle)


@dataclass(frozen=True)
class PolicyReport:
    policy: str
    gpu_hours: float
    cost: float
    slo_attainment: float
    p99_ttft_s: float
    p99_tpot_s: float
    preemptions: int
    scale_events: int
    unfinished: int
    timeline: list[tuple[float, int, float]]
    sim_seconds: float = 0.0  # wall time of the replay


def _pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    vs = sorted(values)
    return vs[min(len(vs) - 1, math.ceil(q * len(vs)) - 1)]


def report(res: SimResult, slo: SLO, gpu: GPUType, total: int) -> PolicyReport:
    ttft, tpot, good = [], [], 0
    for s in res.finished:
        assert s.first_token_at is not None and s.finished_at is not None
        ttft.append(s.first_token_at - s.arrival)
        tpot.append((s.finished_at - s.first_token_at) / max(1, s.output - 1))
        good += slo.met(s)
    hours = res.gpu_seconds / 3600
    return PolicyReport(res.policy, hours, hours * gpu.price_per_hour, good / max(1, total), _pct(ttft, 0.99),
                        _pct(tpot, 0.99), res.preemptions, res.scale_events, res.unfinished, res.timeline)


def replica_model(sc: Scenario, catalog: GPUCatalog | None = None) -> tuple[ReplicaModel, GPUType]:
    spec = resolve_model(sc.model)
    gpu = (catalog or default_catalog()).get(sc.gpu)
    est = estimate(spec, gpu, ServingConfig(tensor_parallel_size=sc.tp, max_model_len=sc.max_model_len,
                                            max_num_batched_tokens=sc.max_num_batched_tokens,
                                            quantization=sc.quantization))
    if not est.fits:
        raise ValueError(f"{sc.model} does not fit {sc.tp}x {sc.gpu} at {sc.max_model_len}: {est.reason}")
    return ReplicaModel.from_plan(spec, gpu, est, sc.tp, quantization=resolved(spec, sc.quantization)), gpu


@dataclass(frozen=True)
class FleetSweep:
    """Fixed-size fleets replayed over the trace: per size, the whole-trace and per-minute attainment."""

    sizes: list[int]
    attainment: list[float]
    per_minute: list[list[float]]  # [size index][minute]; 1.0 for minutes without arrivals

    def static_size(self, target: float) -> int:
        """The smallest fixed fleet meeting ``target`` over the whole trace (else the largest tried)."""
        return next((n for n, a in zip(self.sizes, self.attainment, strict=True) if a >= target), self.sizes[-1])

    def oracle(self, target: float) -> list[int]:
        """Per minute, the smallest size whose fleet met ``target`` for that minute's arrivals."""
        minutes = len(self.per_minute[0])
        return [next((n for n, pm in zip(self.sizes, self.per_minute, strict=True) if pm[m] >= target),
                     self.sizes[-1]) for m in range(minutes)]


def _per_minute(res: SimResult, slo: SLO, trace: list[Request]) -> list[float]:
    horizon = int(trace[-1].arrival_s // 60) + 1 if trace else 1
    total, good = [0] * horizon, [0] * horizon
    for req in trace:
        total[int(req.arrival_s // 60)] += 1
    for s in res.finished:
        good[int(s.arrival // 60)] += slo.met(s)
    return [g / t if t else 1.0 for g, t in zip(good, total, strict=True)]


def sweep_fleets(trace: list[Request], model: ReplicaModel, gpus_per_replica: int, slo: SLO,
                 max_replicas: int) -> FleetSweep:
    """Replay fixed fleets of 1, 2, ... replicas until every minute meets the SLO (or ``max_replicas``)."""
    sizes: list[int] = []
    attain: list[float] = []
    per_minute: list[list[float]] = []
    for n in range(1, max_replicas + 1):
        res = ClusterSim(model, gpus_per_replica, StaticPolicy(n), initial_replicas=n).run(trace)
        sizes.append(n)
        attain.append(sum(slo.met(s) for s in res.finished) / max(1, len(trace)))
        per_minute.append(_per_minute(res, slo, trace))
        if min(per_minute[-1]) >= slo.attainment:
            break
    return FleetSweep(sizes, attain, per_minute)


def oracle_hours(oracle: list[int], trace: list[Request], gpus_per_replica: int) -> float:
    last = trace[-1].arrival_s if trace else 0.0  # until the last arrival: a bound, not a schedule
    return sum(n * max(0.0, min(60.0, last - m * 60)) for m, n in enumerate(oracle)) * gpus_per_replica / 3600


def cold_start_bound_hours(oracle: list[int], trace: list[Request], gpus_per_replica: int, cold_start_s: float,
                           initial: int) -> float:
    """The oracle's per-minute fleet for a policy that knows the future but must start replicas
    ``cold_start_s`` ahead: each replica either idles through a gap or pays a cold start before its next
    busy minute, whichever is cheaper. No policy that waits for cold starts can hold that per-minute
    fleet for fewer GPU-hours."""
    last = trace[-1].arrival_s if trace else 0.0
    seconds = 0.0
    for k in range(1, max(oracle, default=0) + 1):
        free_until = None  # end of this replica's last busy minute; None: not used yet
        for m, n in enumerate(oracle):
            if n < k:
                continue
            start = m * 60.0
            if free_until is None:
                seconds += min(start, cold_start_s) if k <= initial else cold_start_s
            elif start > free_until:
                seconds += min(start - free_until, cold_start_s)
            seconds += max(0.0, min(60.0, last - start))
            free_until = start + 60.0
    return seconds * gpus_per_replica / 3600


def queue_objective(slo: SLO, model: ReplicaModel, trace: list[Request]) -> float:
    """What a user would set as maxQueueSeconds: the TTFT budget of the median prompt less its prefill time
    on an idle replica, rounded down to a tenth of a second (at least vLLM's first bucket bound, 0.3 s)."""
    prompts = sorted(r.input_tokens for r in trace) or [0]
    median = prompts[len(prompts) // 2]
    budget = slo.ttft_s + slo.ttft_s_per_1k_input * median / 1000
    steps = -(-median // model.max_batched_tokens)
    prefill = median * model.cost.flops_per_token / model.cost.flops + model.cost.step_overhead_s * steps
    return max(QUEUE_TIME_BUCKETS[0], math.floor((budget - prefill) * 10 + 1e-9) / 10)


def default_policies(sc: Scenario, static_n: int, max_queue_s: float) -> list[ScalingPolicy]:
    return [
        KVScalePolicy(PolicySpec(min_replicas=1, max_replicas=sc.max_replicas, target_kv=0.8,
                                 scale_down_window_s=300, max_scale_up_step=8,
                                 max_queue_s=max_queue_s, max_scale_down_fraction=0.25, scale_down_period_s=60,
                                 burst_memory_s=1800,
                                 max_slow_fraction=1 - sc.slo.attainment)),
        StaticPolicy(static_n),
        QueueLengthPolicy(target_waiting=5, max_replicas=sc.max_replicas),
        KVThresholdPolicy(max_replicas=sc.max_replicas),
    ]


def evaluate(sc: Scenario, slo: SLO | None = None, trace: list[Request] | None = None,
             policies: list[ScalingPolicy] | None = None,
             catalog: GPUCatalog | None = None) -> tuple[list[PolicyReport], list[int]]:
    slo = slo or sc.slo
    model, gpu = replica_model(sc, catalog)
    reqs = trace if trace is not None else load_trace(sc.trace, rate_scale=sc.rate_scale,
                                                      max_input_tokens=sc.max_model_len - 2048)
    reqs = [r for r in reqs if r.input_tokens + r.output_tokens <= sc.max_model_len]
    sweep = sweep_fleets(reqs, model, sc.tp, slo, sc.max_replicas)
    oracle = sweep.oracle(slo.attainment)
    static_n = sweep.static_size(slo.attainment)
    start = max(1, oracle[0] if oracle else 1)
    cold_start_s = sc.cold_start_s if sc.cold_start_s is not None else gpu.cold_start_s
    reports = []
    max_queue_s = sc.max_queue_s or queue_objective(slo, model, reqs)
    for pol in policies if policies is not None else default_policies(sc, static_n, max_queue_s):
        sim = ClusterSim(model, sc.tp, pol, cold_start_s=cold_start_s,
                         initial_replicas=pol.replicas if isinstance(pol, StaticPolicy) else start,
                         max_replicas=sc.max_replicas, gpu_budget=sc.gpu_budget)
        t0 = time.perf_counter()
        res = sim.run(reqs)
        reports.append(dataclasses.replace(report(res, slo, gpu, len(reqs)), sim_seconds=time.perf_counter() - t0))
    hours = oracle_hours(oracle, reqs, sc.tp)
    bound = cold_start_bound_hours(oracle, reqs, sc.tp, cold_start_s, start)
    reports.append(PolicyReport(f"oracle + {cold_start_s:.0f}s cold start", bound, bound * gpu.price_per_hour,
                                slo.attainment, 0.0, 0.0, 0, 0, 0, []))
    reports.append(PolicyReport("oracle (lower bound)", hours, hours * gpu.price_per_hour, slo.attainment,
                                0.0, 0.0, 0, 0, 0, [(m * 60.0, n, 0.0) for m, n in enumerate(oracle)]))
    return reports, oracle


# Real time (x1): each trace is an hour of traffic, so scaling meets the trace's own dynamics.
SCENARIOS = {
    # long conversations on a 32B model: the KV cache (30k tokens per H100) is what runs out
    "azure-conv": Scenario("azure-conv", "AzureLLMInferenceTrace_conv.csv", "Qwen/Qwen2.5-32B-Instruct",
                           "H100-80GB", 16384),
    # bursts of long prompts with short answers: prefill compute is what runs out
    "azure-code": Scenario("azure-code", "AzureLLMInferenceTrace_code.csv", "Qwen/Qwen2.5-14B-Instruct",
                           "H100-80GB", 16384, max_num_batched_tokens=1024),
    # 12k-token prompts on average, up to 128k: TTFT allows 0.1 s per 1,000 prompt tokens on top of 2 s
    "mooncake": Scenario("mooncake", "conversation_trace.jsonl", "meta-llama/Llama-3.1-8B-Instruct",
                         "H100-80GB", 131072, slo=SLO(ttft_s_per_1k_input=0.1)),
}


def plot(reports: list[PolicyReport], title: str, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2, ax3) = plt.subplots(3, 1, figsize=(10, 10))
    for r in reports:
        ts = [t / 60 for t, _, _ in r.timeline]
        ax1.step(ts, [n for _, n, _ in r.timeline], where="post", label=r.policy)
        if not r.policy.startswith("oracle"):
            ax2.plot(ts, [kv for _, _, kv in r.timeline], label=r.policy, linewidth=0.8)
    ax1.set_ylabel("replicas")
    ax1.set_title(title)
    ax1.legend(fontsize=8)
    ax2.set_ylabel("mean KV-cache usage")
    ax2.set_xlabel("minutes")
    for r in reports:
        ax3.scatter(r.gpu_hours, r.slo_attainment * 100, label=r.policy)
        ax3.annotate(r.policy.split(" ")[0], (r.gpu_hours, r.slo_attainment * 100), fontsize=8)
    ax3.set_xlabel("GPU-hours")
    ax3.set_ylabel("SLO attainment %")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out
