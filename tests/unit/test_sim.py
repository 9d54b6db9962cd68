"""The vLLM engine simulator and the policy evaluation, on small synthetic traces."""

from __future__ import annotations

import dataclasses
import random

import pytest

from kvscale.autoscaler.policy import PolicySpec
from kvscale.estimator.memory import KVRead
from kvscale.estimator.performance import StepCost
from kvscale.sim.cluster import ClusterSim, KVScalePolicy, KVThresholdPolicy, QueueLengthPolicy, StaticPolicy
from kvscale.sim.engine import Replica, ReplicaModel, Seq
from kvscale.sim.evaluate import SLO, Scenario, evaluate, report
from kvscale.sim.traces import Request, load_trace

MODEL = ReplicaModel(kv_blocks=200, block_size=16, max_num_seqs=64, max_batched_tokens=2048,
                     cost=StepCost(dense_weight_bytes=16e9, kv_read=KVRead(per_token=131072), bandwidth=2.5e11,
                                   flops=6e13, flops_per_token=1.6e10, step_overhead_s=0.003))


def run_replica(seqs: list[Seq], until: float = 3600, model: ReplicaModel = MODEL) -> Replica:
    r = Replica(model)
    for s in seqs:
        r.submit(s)
    t = 0.0
    while t < until and not r.idle:
        t += 0.5
        r.advance(t)
        assert 0 <= r.used_blocks <= model.kv_blocks
    return r


def test_all_requests_finish_with_correct_token_counts() -> None:
    seqs = [Seq(i, 0.0, 300 + 10 * i, 50 + i) for i in range(20)]
    r = run_replica(seqs)
    assert len(r.finished) == 20 and r.used_blocks == 0
    assert all(s.generated == s.output and s.first_token_at is not None for s in r.finished)


def test_memory_pressure_preempts_and_recomputes() -> None:
    # 10 requests x (500 + 400) tokens need ~570 blocks; only 200 exist
    seqs = [Seq(i, 0.0, 500, 400) for i in range(10)]
    r = run_replica(seqs)
    assert len(r.finished) == 10
    assert r.preemptions > 0
    assert all(s.generated == s.output for s in r.finished)


def test_admission_waits_for_free_blocks() -> None:
    small = ReplicaModel(**{**MODEL.__dict__, "kv_blocks": 40})
    r = Replica(small)
    for i in range(5):
        r.submit(Seq(i, 0.0, 600, 10))  # 38 blocks each: one at a time
    r.advance(0.05)
    assert len(r.running) == 1 and len(r.waiting) == 4


def test_step_time_grows_with_context() -> None:
    assert MODEL.step_time(100_000, 64) > MODEL.step_time(1_000, 64)
    assert MODEL.step_time(0, 2048) > MODEL.step_time(0, 1)  # prefill is compute-bound


def test_usage_metric_is_used_blocks_over_total() -> None:
    r = Replica(MODEL)
    r.submit(Seq(0, 0.0, 160, 1000))
    r.advance(0.2)
    assert r.kv_usage == pytest.approx(r.used_blocks / 200) and r.kv_usage > 0


def trace(rate: float, duration: float, seed: int = 1) -> list[Request]:
    rng = random.Random(seed)
    out, t = [], 0.0
    while t < duration:
        t += rng.expovariate(rate(t) if callable(rate) else rate)
        out.append(Request(t, rng.randint(200, 1500), rng.randint(20, 300)))
    return out


BIG = ReplicaModel(**{**MODEL.__dict__, "kv_blocks": 2000})


def test_kvscale_follows_a_load_step_and_returns() -> None:
    burst = trace(lambda t: 4.0 if 600 <= t < 1200 else 0.5, 1800)
    pol = KVScalePolicy(PolicySpec(min_replicas=1, max_replicas=20, target_kv=0.7, scale_down_window_s=120))
    res = ClusterSim(BIG, 1, pol, cold_start_s=30, tick_s=10).run(burst)
    before = max(n for t, n, _ in res.timeline if 300 <= t < 600)
    during = max(n for t, n, _ in res.timeline if 600 <= t < 1200)
    after = min(n for t, n, _ in res.timeline if t >= 1500)
    assert during >= 2 * before and after <= before + 1, (before, during, after)
    assert res.unfinished == 0


def test_baselines_run_and_static_costs_most() -> None:
    reqs = trace(1.5, 900)
    results = {}
    for pol in (StaticPolicy(6), QueueLengthPolicy(max_replicas=10), KVThresholdPolicy(max_replicas=10),
                KVScalePolicy(PolicySpec(max_replicas=10, target_kv=0.7, scale_down_window_s=120))):
        res = ClusterSim(BIG, 1, pol, cold_start_s=30, tick_s=10,
                         initial_replicas=6 if isinstance(pol, StaticPolicy) else 2).run(reqs)
        results[pol.name] = report(res, SLO(), __import__("kvscale.estimator.gpus", fromlist=["x"]).default_catalog()
                                   .get("L4"), len(reqs))
    assert results["static-peak"].gpu_hours >= max(r.gpu_hours for k, r in results.items() if k != "static-peak")
    assert all(r.unfinished == 0 for r in results.values())


def test_evaluate_reports_oracle_below_policies(tmp_path) -> None:  # type: ignore[no-untyped-def]
    sc = Scenario("syn", "unused", "Qwen/Qwen2.5-0.5B-Instruct", "L4", 8192, cold_start_s=30, max_replicas=8)
    reports, oracle = evaluate(sc, trace=trace(3.0, 600))
    names = [r.policy for r in reports]
    assert names[-1].startswith("oracle") and names[-2] == "oracle + 30s cold start" and len(reports) == 6
    assert reports[-1].gpu_hours <= min(r.gpu_hours for r in reports[:-1]) + 1e-9
    assert oracle and all(n >= 0 for n in oracle)


def test_cold_start_bound_idles_through_short_gaps_and_restarts_across_long_ones() -> None:
    from kvscale.sim.evaluate import cold_start_bound_hours

    reqs = [Request(0.0, 10, 10), Request(600.0, 10, 10)]  # 10 minutes long
    # one replica all along, a second busy in minutes 2, 3 and 8: a 4-minute gap costs one 90 s start
    oracle = [1, 1, 2, 2, 1, 1, 1, 1, 2, 1]
    first = 600.0
    second = 90 + 120 + 90 + 60
    assert cold_start_bound_hours(oracle, reqs, 1, 90.0, initial=1) * 3600 == first + second
    # a gap shorter than the cold start is cheaper to idle through
    oracle = [1, 1, 2, 1, 2, 1, 1, 1, 1, 1]
    assert cold_start_bound_hours(oracle, reqs, 1, 90.0, initial=1) * 3600 == first + 90 + 60 + 60 + 60
    # replicas ready at the start idle up to the cold start before they are first needed; 2 GPUs each
    assert cold_start_bound_hours([2, 1, 2], [Request(0, 1, 1), Request(180, 1, 1)], 2, 90.0, initial=2) \
        * 3600 == 2 * (180 + 60 + 60 + 60)
    from kvscale.sim.evaluate import oracle_hours
    assert cold_start_bound_hours(oracle, reqs, 1, 0.0, initial=1) == oracle_hours(oracle, reqs, 1)


def test_trace_loaders(tmp_path) -> None:  # type: ignore[no-untyped-def]
    csv = tmp_path / "t.csv"
    csv.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.6805900,374,44\n"
                   "2023-11-16 18:15:50.9951690,396,109\n")
    a = load_trace(csv)
    assert [(round(r.arrival_s, 4), r.input_tokens, r.output_tokens) for r in a] == [(0.0, 374, 44),
                                                                                     (4.3146, 396, 109)]
    jl = tmp_path / "t.jsonl"
    jl.write_text('{"timestamp": 0, "input_length": 6758, "output_length": 500, "hash_ids": [0]}\n'
                  '{"timestamp": 3000, "input_length": 10, "output_length": 0, "hash_ids": [1]}\n')
    b = load_trace(jl, rate_scale=2.0)
    assert [(r.arrival_s, r.input_tokens, r.output_tokens) for r in b] == [(0.0, 6758, 500), (1.5, 10, 1)]


def test_fleet_sweep_sizes_static_and_oracle_from_replays() -> None:
    from kvscale.sim.evaluate import sweep_fleets

    small = ReplicaModel(**{**MODEL.__dict__, "kv_blocks": 300,
                            "cost": dataclasses.replace(MODEL.cost, bandwidth=2.5e12, flops=4e14)})
    reqs = trace(lambda t: 6.0 if 300 <= t < 600 else 1.0, 900)
    slo = SLO()
    sweep = sweep_fleets(reqs, small, 1, slo, max_replicas=12)
    static = sweep.static_size(slo.attainment)
    assert sweep.attainment[sweep.sizes.index(static)] >= slo.attainment
    assert all(a < slo.attainment for n, a in zip(sweep.sizes, sweep.attainment, strict=True) if n < static)
    oracle = sweep.oracle(slo.attainment)
    assert max(oracle) <= sweep.sizes[-1] and min(oracle) >= 1
    busy = max(oracle[5:10])
    quiet = max(oracle[:4] + oracle[11:15])
    assert busy > quiet, oracle  # the burst minutes need more replicas than the quiet ones


def test_cli_sim_evaluate_on_a_trace_file(tmp_path, capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from kvscale.cli import main

    monkeypatch.setenv("COLUMNS", "200")
    rows = ["TIMESTAMP,ContextTokens,GeneratedTokens"]
    for r in trace(lambda t: 3.0 if t < 300 else 0.5, 600):
        whole, frac = divmod(r.arrival_s, 1)
        stamp = f"2023-11-16 18:{int(whole) // 60:02d}:{int(whole) % 60:02d}.{int(frac * 1e7):07d}"
        rows.append(f"{stamp},{r.input_tokens},{r.output_tokens}")
    csv = tmp_path / "mini.csv"
    csv.write_text("\n".join(rows) + "\n")
    png = tmp_path / "mini.png"
    rc = main(["sim", "evaluate", "--trace", str(csv), "--model", "Qwen/Qwen2.5-0.5B-Instruct", "--gpu", "L4",
               "--max-model-len", "4096", "--cold-start", "30", "--plot", str(png)])
    out = capsys.readouterr().out
    assert rc == 0 and png.stat().st_size > 10_000
    for name in ("kvscale", "static-peak", "queue-length", "kv-threshold", "oracle"):
        assert name in out
    assert "oracle + 30s cold start" in out
    assert main(["sim", "evaluate", "--trace", str(tmp_path / "nope.csv")]) == 2

    # the cold start is a property of the GPU type: a catalog entry sets it, --cold-start overrides it
    from importlib import resources

    import yaml

    data = yaml.safe_load(resources.files("kvscale.estimator").joinpath("catalog/gpus.yaml").read_text())
    next(g for g in data["gpus"] if g["name"] == "L4")["cold_start_s"] = 45
    catalog = tmp_path / "gpus.yaml"
    catalog.write_text(yaml.safe_dump(data))
    args = ["sim", "evaluate", "--trace", str(csv), "--model", "Qwen/Qwen2.5-0.5B-Instruct", "--gpu", "L4",
            "--max-model-len", "4096", "--gpu-catalog", str(catalog)]
    assert main(args) == 0
    assert "oracle + 45s cold start" in capsys.readouterr().out
    next(g for g in data["gpus"] if g["name"] == "L4")["cold_start_s"] = -5
    catalog.write_text(yaml.safe_dump(data))
    assert main(args) == 2
    assert "cold_start_s" in capsys.readouterr().err


def test_queue_objective_leaves_room_for_the_prefill_within_the_ttft_budget() -> None:
    from kvscale.sim.evaluate import queue_objective

    short = [Request(0, 500, 10)] * 3
    assert queue_objective(SLO(ttft_s=2.0), MODEL, short) == 1.8  # 2 s less ~0.15 s prefill, down to 0.1 s
    long = [Request(0, 60_000, 10)] * 3  # prefill alone ~16 s on this replica: the smallest bucket is left
    assert queue_objective(SLO(ttft_s=2.0), MODEL, long) == 0.3
    assert queue_objective(SLO(ttft_s=2.0, ttft_s_per_1k_input=0.5), MODEL, long) >= 10


def test_gpu_budget_caps_the_fleet_and_the_policy_sees_unschedulable_replicas() -> None:
    heavy = trace(6.0, 600)
    seen: list[int] = []

    class Watching(KVScalePolicy):
        def desired(self, snap):  # type: ignore[no-untyped-def]
            seen.append(snap.unschedulable)
            return super().desired(snap)

    spec = PolicySpec(max_replicas=10, target_kv=0.5, scale_down_window_s=120)
    free = ClusterSim(MODEL, 2, KVScalePolicy(spec), cold_start_s=30, tick_s=10).run(heavy)
    capped = ClusterSim(MODEL, 2, Watching(spec), cold_start_s=30, tick_s=10, gpu_budget=4).run(heavy)
    assert max(n for _, n, _ in free.timeline) > 2
    assert max(n for _, n, _ in capped.timeline) <= 2 and max(seen) >= 1
    assert capped.gpu_seconds < free.gpu_seconds


def test_load_scale_fit_reaches_the_engine_pace_on_the_calibration_slice() -> None:
    """Where attention reads dominate, the simulated TPOT grows about twice as fast as the scale (slower
    steps batch more and preempt more): a proportional correction then swings past the target each time and
    ended up to 47% off it. The fit must land on the engine's pace and report the TPOT of the scale it returns."""
    import dataclasses

    from kvscale.sim.series import replay_sim
    from kvscale.sim.step_model import Calibration, ServerConfig, fit_load_scale
    from kvscale.sim.workloads import CALIBRATION_SLICE
    from kvscale.testing.vllm_server import tiny_model_config

    cal = Calibration([], step_overhead_s=5.3e-3, seq_overhead_s=1.1e-4, per_token_s=5.9e-5, per_kv_token_s=3.5e-6)
    cfg, arrivals = ServerConfig(), CALIBRATION_SLICE.requests()
    arch = tiny_model_config("llama_gqa")

    def tpot(c: Calibration) -> float:
        xs = replay_sim(c.model(cfg, arch), arrivals, sample_every=0.5).tpot
        return sum(xs) / len(xs)

    for engine_tpot in (0.006, 0.009, 0.012):
        fit = fit_load_scale(cal, cfg, arch, arrivals, engine_tpot)
        assert fit.load_tpot_sim_s == pytest.approx(engine_tpot, rel=0.011)
        assert tpot(fit) == pytest.approx(fit.load_tpot_sim_s, rel=1e-9)
        assert tpot(dataclasses.replace(fit, load_scale=fit.load_scale * 1.1)) > engine_tpot * 1.1
