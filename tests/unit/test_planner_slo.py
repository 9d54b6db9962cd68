"""Planning against latency targets: the cheapest layout and replica count whose predicted TTFT and TPOT
meet the SLO at the load, and rejections that name the miss."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from kvscale.cli import main
from kvscale.estimator.catalog import resolve_model
from kvscale.estimator.gpus import default_catalog
from kvscale.estimator.memory import estimate
from kvscale.estimator.params import count_params
from kvscale.estimator.performance import engine_limits, latency_percentiles, predict, step_cost
from kvscale.estimator.planner import GPUOption, LatencySLO, LoadTarget, Plan, PlanRequest, plan, serving_config

CAT = default_catalog()
CHAT = LatencySLO(ttft_seconds=2, tpot_milliseconds=50)


def opts(*names: str, nodes: int | None = None) -> tuple[GPUOption, ...]:
    return tuple(GPUOption(gpu=CAT.get(n), nodes=nodes) for n in names)


def judge(model: str, req: PlanRequest, p: Plan, replicas: int) -> tuple[float, float, bool]:
    """The planned layout's p-th percentile TTFT and TPOT with ``replicas`` sharing the load, recomputed
    from the performance model directly."""
    spec = resolve_model(model)
    gpu = CAT.get(p.gpu)
    est = estimate(spec, gpu, serving_config(req, p.tensor_parallel_size, p.quantization,
                                             pp=p.pipeline_parallel_size))
    cost = step_cost(spec, count_params(spec), gpu, est, p.tensor_parallel_size, p.pipeline_parallel_size,
                     p.quantization, req.inter_node_gbits)
    assert req.load is not None and req.slo is not None
    share = req.load.per_replica(replicas)
    pred = predict(cost, share, engine_limits(est))
    ttft, tpot = latency_percentiles(pred, share, req.slo.percentile)
    return ttft, tpot, pred.saturated


@pytest.mark.parametrize("load", [
    LoadTarget(concurrency=32, mean_input_tokens=1000, mean_output_tokens=300),
    LoadTarget(requests_per_second=6, mean_input_tokens=2000, mean_output_tokens=200),
])
def test_each_plan_is_the_fewest_replicas_that_meet_the_slo(load: LoadTarget) -> None:
    model = "google/gemma-3-27b-it"
    req = PlanRequest(max_model_len=32768, load=load, slo=CHAT, options=opts("L4", "A100-80GB", "H100-80GB"))
    result = plan(resolve_model(model), req)
    assert result.plans
    for p in result.plans:
        assert p.ttft_ms is not None and p.tpot_ms is not None and p.output_tok_s is not None
        ttft, tpot, saturated = judge(model, req, p, p.replicas)
        assert ttft <= 2000 and tpot <= 50 and not saturated
        assert (ttft, tpot) == pytest.approx((p.ttft_ms, p.tpot_ms))
        if p.replicas > 1:  # one fewer misses: the count is the smallest
            ttft, tpot, saturated = judge(model, req, p, p.replicas - 1)
            assert ttft > 2000 or tpot > 50 or saturated
    costs = [p.cost_per_hour for p in result.plans]
    assert result.best is not None and result.best.cost_per_hour == min(costs) and costs == sorted(costs)


def test_the_slo_rules_out_the_cheap_memory_only_plan_and_says_what_it_costs() -> None:
    spec = resolve_model("google/gemma-3-27b-it")
    options = opts("L4", "A100-80GB", "H100-80GB")
    memory_only = plan(spec, PlanRequest(max_model_len=32768, concurrency=32, options=options)).best
    load = LoadTarget(concurrency=32, mean_input_tokens=1000, mean_output_tokens=300)
    slo_plan = plan(spec, PlanRequest(max_model_len=32768, load=load, slo=LatencySLO(tpot_milliseconds=25),
                                      options=options)).best
    assert memory_only is not None and slo_plan is not None
    assert slo_plan.tpot_ms is not None and slo_plan.tpot_ms <= 25
    no_slo = plan(spec, PlanRequest(max_model_len=32768, load=load, options=options)).best
    assert no_slo is not None and no_slo.tpot_ms is not None and no_slo.tpot_ms > 25  # the SLO is what binds
    assert slo_plan.cost_per_hour > no_slo.cost_per_hour


def test_a_layout_too_slow_even_for_one_request_is_rejected_with_its_numbers() -> None:
    spec = resolve_model("meta-llama/Llama-3.1-70B-Instruct")
    load = LoadTarget(requests_per_second=1, mean_input_tokens=1000, mean_output_tokens=200)
    result = plan(spec, PlanRequest(max_model_len=8192, load=load, slo=LatencySLO(tpot_milliseconds=20),
                                    options=opts("L4")))
    assert not result.plans
    slow = [r for r in result.rejections if "TPOT" in r.reason]
    assert slow
    for r in slow:
        assert "p99 TPOT" in r.reason and "> 20 ms even at one request at a time" in r.reason


def test_a_cluster_too_small_for_the_slo_names_the_miss_at_what_it_holds() -> None:
    spec = resolve_model("meta-llama/Llama-3.1-8B-Instruct")
    load = LoadTarget(concurrency=400, mean_input_tokens=1000, mean_output_tokens=200)
    result = plan(spec, PlanRequest(max_model_len=8192, load=load, slo=LatencySLO(tpot_milliseconds=15),
                                    options=opts("H100-80GB", nodes=1), tensor_parallel_size=1))
    assert not result.plans
    (r,) = [r for r in result.rejections if r.tensor_parallel_size == 1]
    assert "p99 TPOT" in r.reason and "at 50 sequences per replica: the cluster holds 8 replicas" in r.reason


def test_an_slo_needs_a_load() -> None:
    with pytest.raises(ValidationError, match="latency targets need the load"):
        PlanRequest(max_model_len=8192, concurrency=4, slo=CHAT, options=opts("L4"))
    with pytest.raises(ValidationError, match="give ttftSeconds, tpotMilliseconds or both"):
        LatencySLO()
    with pytest.raises(ValidationError, match="either requests per second or concurrency"):
        LoadTarget(mean_input_tokens=10, mean_output_tokens=10)


def test_plan_cli_shows_predicted_latency_per_plan(capsys: Any) -> None:
    code = main(["plan", "Qwen/Qwen3-30B-A3B", "--max-model-len", "8192", "--clients", "16", "--ttft", "2",
                 "--tpot", "50", "--gpus", "L4", "A100-80GB", "H100-80GB", "--output", "json"])
    got = json.loads(capsys.readouterr().out)
    assert code == 0 and got["plans"]
    for p in got["plans"]:
        assert {"ttft_ms", "tpot_ms", "output_tok_s"} <= set(p)
        assert p["ttft_ms"] <= 2000 and p["tpot_ms"] <= 50
    try:
        code = main(["plan", "Qwen/Qwen3-30B-A3B", "--tpot", "50"])
    except SystemExit as exc:
        code = int(exc.code or 0)
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "--ttft/--tpot: give the load" in err


@pytest.mark.parametrize(("argv", "says"), [
    (["--requests-per-second", "inf"], "--requests-per-second must be a positive finite number, got inf"),
    (["--requests-per-second", "2", "--mean-input-tokens", "60000", "--mean-output-tokens", "1000", "--ttft", "30"],
     "a mean request of 60,000 + 1,000 tokens exceeds max_model_len 8,192"),
    (["--clients", "4", "--tpot", "50", "--percentile", "100"], "--percentile must be in [50, 100), got 100"),
    (["--clients", "4", "--percentile", "90"], "--percentile: it is the percentile of --ttft/--tpot"),
])
def test_plan_refuses_a_load_it_cannot_mean_in_one_line(capsys: Any, argv: list[str], says: str) -> None:
    try:
        code = main(["plan", "meta-llama/Llama-3.1-8B-Instruct", "--max-model-len", "8192", *argv])
    except SystemExit as exc:
        code = int(exc.code or 0)
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and says in err


def test_without_targets_a_load_no_layout_can_carry_is_said_so() -> None:
    spec = resolve_model("meta-llama/Llama-3.1-8B-Instruct")
    load = LoadTarget(requests_per_second=1e7, mean_input_tokens=1000, mean_output_tokens=200)
    result = plan(spec, PlanRequest(max_model_len=8192, load=load, options=opts("L4", nodes=2)))
    assert not result.plans and result.slo_bound
    msg = result.explain_infeasible()
    assert "serves the load:" in msg and "requests queue for a place in the batch" in msg
    assert "latency targets" not in msg  # none was given
