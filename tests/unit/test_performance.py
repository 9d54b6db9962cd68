"""The performance model: step times, serving figures under a load, percentiles, `kvscale perf`."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import sys
from pathlib import Path
from typing import Any

import pytest

from kvscale.cli import main
from kvscale.estimator.catalog import resolve_model
from kvscale.estimator.gpus import default_catalog
from kvscale.estimator.memory import ServingConfig, estimate
from kvscale.estimator.params import count_params
from kvscale.estimator.performance import (
    DEFAULT_CONSTANTS,
    EngineLimits,
    Load,
    StepCost,
    engine_limits,
    latency_percentiles,
    predict,
    predict_serving,
    step_cost,
)
from kvscale.estimator.quantization import Quantization
from kvscale.sim.engine import ReplicaModel

CAT = default_catalog()
LLAMA8 = resolve_model("meta-llama/Llama-3.1-8B-Instruct")
H100 = CAT.get("H100-80GB")


def cost_of(model: str, gpu: str, tp: int = 1, q: Quantization = Quantization.AUTO) -> tuple[StepCost, EngineLimits]:
    spec = resolve_model(model)
    est = estimate(spec, CAT.get(gpu), ServingConfig(tensor_parallel_size=tp, max_model_len=8192, quantization=q))
    assert est.fits
    resolved = q if q is not Quantization.AUTO else Quantization.BF16
    cost = step_cost(spec, count_params(spec), CAT.get(gpu), est, tp, quantization=resolved)
    return cost, engine_limits(est)


def test_a_single_sequence_decodes_at_the_pace_its_weights_stream() -> None:
    cost, _ = cost_of("meta-llama/Llama-3.1-8B-Instruct", "H100-80GB")
    one = cost.seconds(kv_tokens_read=1000, tokens=1, seqs=1)
    stream = cost.dense_weight_bytes / cost.bandwidth
    assert stream < one < stream * 1.5  # bandwidth-bound: the weights dominate, the overheads are small
    # at batch 1 the weights are read once for many tokens: a bigger batch costs little more per step
    assert cost.seconds(64 * 1000, 64, 64) < 3 * one
    # a long prompt chunk is compute-bound: 2 FLOPs per parameter per token at the achieved rate
    chunk = cost.seconds(0, 8192, 1)
    assert chunk == pytest.approx(8192 * cost.flops_per_token / cost.flops, rel=0.2)


def test_a_moe_step_reads_only_the_experts_its_tokens_are_routed_to() -> None:
    cost, _ = cost_of("Qwen/Qwen3-30B-A3B", "H100-80GB")
    assert cost.experts == 128 and cost.experts_per_token == 8
    assert cost.touched_expert_share(1) == pytest.approx(8 / 128)
    assert cost.touched_expert_share(256) > 0.99
    reads = dataclasses.replace(cost, step_overhead_s=0.0, seq_overhead_s=0.0, comm_fixed_s=0.0)
    assert reads.seconds(1000, 1, 1) < reads.seconds(64 * 1000, 64, 64) / 3  # few experts at batch 1, all at 64


def test_tensor_parallel_all_reduces_cost_more_over_pcie_than_nvlink() -> None:
    spec = resolve_model("meta-llama/Llama-3.1-70B-Instruct")
    gpu = CAT.get("H100-80GB")
    pcie = gpu.model_copy(update={"link": "pcie", "link_gbps": 64.0})
    est = estimate(spec, gpu, ServingConfig(tensor_parallel_size=4, max_model_len=8192))
    fast = step_cost(spec, count_params(spec), gpu, est, 4)
    slow = step_cost(spec, count_params(spec), pcie, est, 4)
    assert slow.comm_per_token_s > 10 * fast.comm_per_token_s
    assert slow.seconds(0, 2048, 1) > fast.seconds(0, 2048, 1)


def test_below_capacity_a_request_rate_is_served_in_full_and_above_it_the_queue_grows() -> None:
    cost, limits = cost_of("meta-llama/Llama-3.1-8B-Instruct", "H100-80GB")
    light = predict(cost, Load(input_tokens=1000, output_tokens=200, request_rate=2.0), limits)
    assert not light.saturated and light.output_tok_s == pytest.approx(400.0)
    capacity = predict(cost, Load(input_tokens=1000, output_tokens=200, request_rate=1e6), limits)
    assert capacity.saturated and capacity.requests_per_s > light.requests_per_s
    heavy = predict(cost, Load(input_tokens=1000, output_tokens=200, request_rate=capacity.requests_per_s * 2),
                    limits)
    longer = predict(cost, Load(input_tokens=1000, output_tokens=200, request_rate=capacity.requests_per_s * 2,
                                num_prompts=4000), limits)
    assert heavy.saturated and heavy.requests_per_s == pytest.approx(capacity.requests_per_s)
    assert longer.ttft_ms > 3 * heavy.ttft_ms  # the backlog grows with the run
    assert heavy.tpot_ms > light.tpot_ms  # a fuller batch steps slower


def test_clients_beyond_what_the_kv_cache_holds_wait_in_the_queue() -> None:
    cost, limits = cost_of("meta-llama/Llama-3.1-8B-Instruct", "H100-80GB")
    small = limits.model_copy(update={"kv_cache_tokens": 16 * 1200})
    fits = predict(cost, Load(input_tokens=1000, output_tokens=200, concurrency=16), small)
    over = predict(cost, Load(input_tokens=1000, output_tokens=200, concurrency=64), small)
    assert not fits.saturated and fits.batch == 16
    assert over.saturated and over.batch == 16
    assert over.output_tok_s == pytest.approx(fits.output_tok_s, rel=0.01)
    assert over.ttft_ms > fits.ttft_ms + 1000 * 47 / fits.requests_per_s * 0.9  # 48 clients wait their turn


def test_percentiles_bracket_the_mean() -> None:
    cost, limits = cost_of("meta-llama/Llama-3.1-8B-Instruct", "H100-80GB")
    load = Load(input_tokens=2000, output_tokens=100, request_rate=5.0)
    pred = predict(cost, load, limits)
    ttft99, tpot99 = latency_percentiles(pred, load, 99)
    ttft50, _ = latency_percentiles(pred, load, 50)
    assert 0 < pred.prefill_share < 1
    assert pred.tpot_ms < tpot99 <= pred.prefill_step_ms  # no request is slower than every step carrying a chunk
    assert ttft50 < ttft99 and ttft99 >= pred.prefill_steps * pred.prefill_step_ms


def test_the_simulator_steps_with_the_planners_model() -> None:
    spec = resolve_model("Qwen/Qwen3-30B-A3B")
    est = estimate(spec, H100, ServingConfig(tensor_parallel_size=2, max_model_len=8192))
    model = ReplicaModel.from_plan(spec, H100, est, 2)
    shared = step_cost(spec, count_params(spec), H100, est, 2)
    for kv, tokens, seqs in ((0, 1, 1), (40_000, 32, 32), (10_000, 2048, 3)):
        assert model.step_time(kv, tokens, seqs) == shared.seconds(kv, tokens, seqs)


def test_predict_serving_refuses_what_vllm_would_refuse() -> None:
    from kvscale.estimator.errors import EstimatorError
    load = Load(input_tokens=60_000, output_tokens=1000, concurrency=1)
    with pytest.raises(EstimatorError, match=r"KV cache 3.\d+ GiB holds [\d,]+ tokens, less than one 65,536-token"):
        predict_serving(LLAMA8, CAT.get("L4"), ServingConfig(max_model_len=65536), load)
    with pytest.raises(EstimatorError, match="a request of 60,000 \\+ 1,000 tokens exceeds max_model_len 8,192"):
        predict_serving(LLAMA8, CAT.get("L4"), ServingConfig(max_model_len=8192), load)


def run(capsys: Any, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_perf_json_has_exactly_the_documented_keys(capsys: Any) -> None:
    code, out, _ = run(capsys, "perf", "meta-llama/Llama-3.1-8B-Instruct", "--gpu", "A100-80GB", "--input-tokens",
                       "1000", "--output-tokens", "200", "--request-rate", "3", "--output", "json")
    got = json.loads(out)
    assert code == 0
    assert list(got) == ["output_tok_s", "total_tok_s", "ttft_ms", "tpot_ms", "itl_ms", "requests_per_s", "saturated"]
    assert got["output_tok_s"] == pytest.approx(600, rel=1e-3) and got["saturated"] is False
    code, out, _ = run(capsys, "perf", "meta-llama/Llama-3.1-8B-Instruct", "--gpu", "L4", "--input-tokens", "1000",
                       "--output-tokens", "200", "--concurrency", "256", "--output", "json")
    assert code == 0 and json.loads(out)["saturated"] is True


@pytest.mark.parametrize(("argv", "says"), [
    (["--input-tokens", "0", "--output-tokens", "10", "--concurrency", "1"], "--input-tokens must be positive"),
    (["--input-tokens", "10", "--output-tokens", "10"], "one of the arguments --concurrency --request-rate"),
    (["--input-tokens", "10", "--output-tokens", "10", "--concurrency", "1", "--gpu", "Z80"], "Z80"),
    (["--input-tokens", "100000", "--output-tokens", "10", "--concurrency", "1", "--gpu", "L4",
      "--max-model-len", "8192"], "a request of 100,000 + 10 tokens exceeds max_model_len 8,192"),
])
def test_perf_bad_input_is_one_line_and_exit_2(capsys: Any, argv: list[str], says: str) -> None:
    try:
        code = main(["perf", "meta-llama/Llama-3.1-8B-Instruct", *argv])
    except SystemExit as exc:  # argparse's errors exit from inside the parser
        code = exc.code
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and says in err


def test_the_committed_constants_are_the_fit_of_the_calibration_half() -> None:
    path = Path(__file__).parents[2] / "bench" / "perf_model_accuracy.py"
    spec = importlib.util.spec_from_file_location("perf_model_accuracy", path)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench  # its dataclasses look their module up while they are made
    spec.loader.exec_module(bench)
    cases = [c for c in (bench.build(p) for p in bench.load_points()) if not isinstance(c, str)]
    calibration, held_out = bench.split(cases)
    assert not {bench.document(c.point.source) for c in calibration} & {bench.document(c.point.source)
                                                                         for c in held_out}
    fitted = bench.fit(calibration)
    assert bench.constants_match(DEFAULT_CONSTANTS, fitted) == []
    assert all(math.isfinite(getattr(fitted, n)) for n in bench.NAMES)


@pytest.mark.parametrize("share", [0.02, 0.5, 0.97])
def test_the_batch_a_rate_keeps_running_completes_requests_at_that_rate(share: float) -> None:
    from kvscale.estimator.performance import _steady, capacity
    cost, limits = cost_of("meta-llama/Llama-3.1-8B-Instruct", "A100-80GB")
    full = capacity(cost, Load(input_tokens=1500, output_tokens=250, request_rate=1.0), limits)
    rate = share * full
    load = Load(input_tokens=1500, output_tokens=250, request_rate=rate)
    pred = predict(cost, load, limits)
    assert not pred.saturated
    served = _steady(cost, pred.batch, load, limits).requests_per_s
    assert served == pytest.approx(rate, rel=0.02)


def test_a_closed_loop_the_budget_cannot_feed_queues_and_keeps_littles_law() -> None:
    # 1024 clients of 500-token prompts and 10-token answers: the prompt budget, not the batch limit, sets
    # the pace, so most clients wait for prompt room and the time a request takes is what Little's law says
    cost, limits = cost_of("Qwen/Qwen3-30B-A3B", "H100-80GB", tp=2)
    load = Load(input_tokens=500, output_tokens=10, concurrency=1024)
    pred = predict(cost, load, limits)
    assert pred.saturated and pred.batch < 1024
    latency_ms = pred.ttft_ms + (load.output_tokens - 1) * pred.tpot_ms
    assert 1000 * 1024 / pred.requests_per_s == pytest.approx(latency_ms, rel=0.15)


def test_capacity_is_the_most_any_batch_serves() -> None:
    from kvscale.estimator.performance import _steady, capacity, max_batch
    cost, limits = cost_of("meta-llama/Llama-3.1-8B-Instruct", "H100-80GB")
    for i, o in ((500, 10), (100, 50), (2000, 300), (8000, 20)):
        load = Load(input_tokens=i, output_tokens=o, request_rate=1.0)
        best = max(_steady(cost, b, load, limits).requests_per_s for b in range(1, max_batch(load, limits) + 1))
        assert capacity(cost, load, limits) >= best * 0.98, (i, o)


@pytest.mark.parametrize(("i", "o"), [(100, 10), (2000, 3), (1000, 300), (7000, 1)])
def test_percentiles_never_rise_as_replicas_share_the_load(i: int, o: int) -> None:
    from kvscale.estimator.planner import LoadTarget
    cost, limits = cost_of("meta-llama/Llama-3.1-8B-Instruct", "H100-80GB")
    for target in (LoadTarget(requests_per_second=400, mean_input_tokens=i, mean_output_tokens=o),
                   LoadTarget(concurrency=64, mean_input_tokens=i, mean_output_tokens=o)):
        before = (math.inf, math.inf)
        for n in range(1, 65):
            share = target.per_replica(n)
            pred = predict(cost, share, limits)
            ttft, tpot = latency_percentiles(pred, share, 99)
            assert tpot <= max(pred.prefill_step_ms, pred.decode_step_ms) + 1e-9
            assert ttft <= before[0] * 1.001 and tpot <= before[1] * 1.001, (target, n)
            before = (ttft, tpot)
