"""Compare autoscaling policies on a trace: GPU-hours, cost, SLO attainment, preemptions.

Every policy sees the same trace, model, GPU and cold start. The oracle is a lower bound:
per minute, the fewest replicas that hold the KV blocks and the decode throughput a
generously provisioned run actually used, with instant scaling.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from ..autoscaler.policy import PolicySpec
from ..estimator.catalog import resolve_model
from ..estimator.gpus import GPUType, default_catalog
from ..estimator.memory import ServingConfig, estimate
from ..estimator.quantization import Quantization
from .cluster import (
    ClusterSim,
    KVScalePolicy,
    KVThresholdPolicy,
    QueueLengthPolicy,
    ScalingPolicy,
    SimResult,
    StaticPolicy,
)
from .engine import Replica, ReplicaModel, Seq
from .traces import Request, load_trace


@dataclass(frozen=True)
class SLO:
    ttft_s: float = 2.0
    tpot_s: float = 0.100


@dataclass(frozen=True)
class Scenario:
    name: str
    trace: str
    model: str
    gpu: str
    max_model_len: int
    tp: int = 1
    rate_scale: float = 1.0
    cold_start_s: float = 90.0
    max_replicas: int = 64
    # a smaller chunked-prefill budget keeps mixed steps short enough for a TPOT SLO
    max_num_batched_tokens: int | None = 2048
    quantization: Quantization = Quantization.AUTO


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


def _pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    vs = sorted(values)
    return vs[min(len(vs) - 1, math.ceil(q * len(vs)) - 1)]


def report(res: SimResult, slo: SLO, gpu: GPUType, total: int) -> PolicyReport:
    ttft, tpot, good = [], [], 0
    for s in res.finished:
        assert s.first_token_at is not None and s.finished_at is not None
        t1 = s.first_token_at - s.arrival
        t2 = (s.finished_at - s.first_token_at) / max(1, s.output - 1)
        ttft.append(t1)
        tpot.append(t2)
        good += t1 <= slo.ttft_s and t2 <= slo.tpot_s
    hours = res.gpu_seconds / 3600
    return PolicyReport(res.policy, hours, hours * gpu.price_per_hour, good / max(1, total), _pct(ttft, 0.99),
                        _pct(tpot, 0.99), res.preemptions, res.scale_events, res.unfinished, res.timeline)


def replica_model(sc: Scenario) -> tuple[ReplicaModel, GPUType]:
    spec = resolve_model(sc.model)
    gpu = default_catalog().get(sc.gpu)
    est = estimate(spec, gpu, ServingConfig(tensor_parallel_size=sc.tp, max_model_len=sc.max_model_len,
                                            gpu_memory_utilization=0.9,
                                            max_num_batched_tokens=sc.max_num_batched_tokens,
                                            quantization=sc.quantization))
    if not est.fits:
        raise ValueError(f"{sc.model} does not fit {sc.tp}x {sc.gpu} at {sc.max_model_len}: {est.reason}")
    return ReplicaModel.from_plan(spec, gpu, est, sc.tp), gpu


def oracle_replicas(trace: list[Request], model: ReplicaModel, max_replicas: int) -> list[int]:
    """Per minute: replicas needed for the KV blocks and decode rate observed with ample capacity."""
    fleet = [Replica(model, name=f"o{i}") for i in range(max_replicas)]
    horizon = int(trace[-1].arrival_s // 60) + 2 if trace else 1
    peak_blocks = [0] * horizon
    i = 0
    seqs: list[Seq] = []
    for minute in range(horizon):
        for k in range(12):  # sample every 5 s within the minute
            now = minute * 60 + k * 5
            while i < len(trace) and trace[i].arrival_s <= now:
                s = Seq(i, trace[i].arrival_s, trace[i].input_tokens, trace[i].output_tokens)
                seqs.append(s)
                min(fleet, key=lambda r: r.used_blocks + len(r.waiting) * 1000).submit(s)
                i += 1
            for r in fleet:
                r.advance(now)
            peak_blocks[minute] = max(peak_blocks[minute], sum(r.used_blocks for r in fleet))
    # throughput a replica sustains: prefill at its compute roofline, decode at a full-cache batch
    mean_seq = sum(r.input_tokens + r.output_tokens for r in trace) / max(1, len(trace))
    batch = max(1, min(model.max_num_seqs, int(model.kv_blocks * model.block_size / mean_seq)))
    decode_tps = batch / model.step_time(batch * mean_seq / 2, batch)
    prefill_tps = model.flops / model.flops_per_token
    by_minute: dict[int, list[Request]] = {}
    for req in trace:
        by_minute.setdefault(int(req.arrival_s // 60), []).append(req)
    need = []
    for minute in range(horizon):
        arrivals = by_minute.get(minute, [])
        if not arrivals and peak_blocks[minute] == 0:
            need.append(0)
            continue
        busy_s = (sum(r.input_tokens for r in arrivals) / prefill_tps
                  + sum(r.output_tokens for r in arrivals) / decode_tps)
        need.append(max(1, math.ceil(peak_blocks[minute] / model.kv_blocks), math.ceil(busy_s / 60)))
    return need


def evaluate(sc: Scenario, slo: SLO = SLO(), trace: list[Request] | None = None,
             policies: list[ScalingPolicy] | None = None) -> tuple[list[PolicyReport], list[int]]:
    model, gpu = replica_model(sc)
    reqs = trace if trace is not None else load_trace(sc.trace, rate_scale=sc.rate_scale,
                                                      max_input_tokens=sc.max_model_len - 2048)
    reqs = [r for r in reqs if r.input_tokens + r.output_tokens <= sc.max_model_len]
    oracle = oracle_replicas(reqs, model, sc.max_replicas)
    peak = max(oracle) if oracle else 1
    start = max(1, oracle[0] if oracle else 1)
    if policies is None:
        policies = [
            KVScalePolicy(PolicySpec(min_replicas=1, max_replicas=sc.max_replicas, target_kv=0.7,
                                     scale_down_window_s=300, max_scale_up_step=8)),
            StaticPolicy(peak),
            QueueLengthPolicy(target_waiting=5, max_replicas=sc.max_replicas),
            KVThresholdPolicy(max_replicas=sc.max_replicas),
        ]
    reports = []
    for pol in policies:
        sim = ClusterSim(model, sc.tp, pol, cold_start_s=sc.cold_start_s,
                         initial_replicas=peak if isinstance(pol, StaticPolicy) else start,
                         max_replicas=sc.max_replicas)
        reports.append(report(sim.run(reqs), slo, gpu, len(reqs)))
    last = reqs[-1].arrival_s if reqs else 0.0  # until the last arrival: a bound, not a schedule
    oracle_hours = sum(n * max(0.0, min(60.0, last - m * 60)) for m, n in enumerate(oracle)) * sc.tp / 3600
    reports.append(PolicyReport("oracle (lower bound)", oracle_hours, oracle_hours * gpu.price_per_hour, 1.0,
                                0.0, 0.0, 0, 0, 0, [(m * 60.0, n, 0.0) for m, n in enumerate(oracle)]))
    return reports, oracle


SCENARIOS = {
    "azure-conv": Scenario("azure-conv", "AzureLLMInferenceTrace_conv.csv", "meta-llama/Llama-3.1-8B-Instruct",
                           "H100-80GB", 16384, rate_scale=8.0),
    "azure-code": Scenario("azure-code", "AzureLLMInferenceTrace_code.csv", "meta-llama/Llama-3.1-8B-Instruct",
                           "H100-80GB", 16384, rate_scale=8.0),
    "mooncake": Scenario("mooncake", "conversation_trace.jsonl", "meta-llama/Llama-3.1-8B-Instruct",
                         "H100-80GB", 131072),
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
