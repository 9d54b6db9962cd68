import itertools
import math

import pytest

from kvscale.estimator.catalog import resolve_model
from kvscale.estimator.errors import EstimatorError
from kvscale.estimator.gpus import default_catalog
from kvscale.estimator.memory import ServingConfig, estimate
from kvscale.estimator.planner import GPUOption, LoadTarget, PlanRequest, Preference, plan
from kvscale.estimator.quantization import Quantization, applicable

CAT = default_catalog()


def opts(*names: str, per_node: int = 8) -> tuple[GPUOption, ...]:
    return tuple(GPUOption(gpu=CAT.get(n), gpus_per_node=per_node) for n in names)


def test_70b_on_h100_or_l4_picks_h100_with_required_tp() -> None:
    spec = resolve_model("meta-llama/Llama-3.1-70B-Instruct")
    result = plan(spec, PlanRequest(max_model_len=8192, concurrency=16, options=opts("H100-80GB", "L4")))
    best = result.best
    assert best is not None and best.gpu == "H100-80GB"
    # 131 GiB of bf16 weights cannot fit TP1; the smallest feasible TP is chosen at equal cost per token
    assert best.tensor_parallel_size >= 2
    l4 = [r for r in result.rejections if r.gpu == "L4" and r.tensor_parallel_size == 4]
    assert l4 and "needs 131.4 GiB of weights per replica" in l4[0].reason
    assert all(p.cost_per_hour >= best.cost_per_hour for p in result.plans if p.gpu == "L4")


def brute_force_cost(spec, req: PlanRequest) -> float:  # type: ignore[no-untyped-def]
    best = float("inf")
    for opt, tp, q in itertools.product(req.options, (1, 2, 4, 8, 16), req.quantizations):
        if tp > min(req.max_gpus_per_replica, opt.gpus_per_node) or applicable(spec, q):
            continue
        resolved = q
        if q is Quantization.FP8 and not opt.gpu.fp8:
            continue
        try:
            e = estimate(spec, opt.gpu, ServingConfig(tensor_parallel_size=tp, quantization=resolved,
                                                     max_model_len=req.max_model_len,
                                                     gpu_memory_utilization=req.gpu_memory_utilization))
        except EstimatorError:
            continue
        if not e.fits:
            continue
        replicas = max(1, math.ceil((req.concurrency or 1) / e.max_concurrency - 1e-9))
        best = min(best, replicas * tp * opt.gpu.price_per_hour)
    return best


@pytest.mark.parametrize(
    ("model", "max_len", "conc"),
    [("meta-llama/Llama-3.1-8B-Instruct", 8192, 64), ("meta-llama/Llama-3.1-70B-Instruct", 32768, 20),
     ("Qwen/Qwen3-30B-A3B", 16384, 100), ("google/gemma-2-27b-it", 8192, 8),
     ("mistralai/Mixtral-8x7B-Instruct-v0.1", 32768, 40), ("Qwen/Qwen2.5-0.5B-Instruct", 4096, 500)],
)
def test_chosen_plan_is_the_exhaustive_optimum(model: str, max_len: int, conc: int) -> None:
    spec = resolve_model(model)
    req = PlanRequest(max_model_len=max_len, concurrency=conc, options=tuple(GPUOption(gpu=g) for g in CAT.gpus),
                      quantizations=(Quantization.AUTO, Quantization.FP8, Quantization.BNB_NF4))
    result = plan(spec, req)
    assert result.best is not None
    assert result.best.cost_per_hour == pytest.approx(brute_force_cost(spec, req))
    costs = [p.cost_per_hour for p in result.plans]
    assert costs == sorted(costs)


def test_every_option_is_either_planned_or_rejected_with_a_reason() -> None:
    spec = resolve_model("meta-llama/Llama-3.1-8B-Instruct")
    req = PlanRequest(max_model_len=8192, concurrency=8, options=opts("L4", "A100-80GB"),
                      quantizations=(Quantization.AUTO, Quantization.FP8))
    result = plan(spec, req)
    assert len(result.plans) + len(result.rejections) == 2 * 5 * 2
    assert all(r.reason for r in result.rejections)
    assert any("no fp8 support" in r.reason for r in result.rejections if r.gpu == "A100-80GB")


def test_plan_is_deterministic() -> None:
    spec = resolve_model("Qwen/Qwen3-32B")
    req = PlanRequest(max_model_len=16384, concurrency=32, options=tuple(GPUOption(gpu=g) for g in CAT.gpus))
    assert plan(spec, req) == plan(spec, req)


def test_nothing_fits_explains_with_numbers() -> None:
    spec = resolve_model("meta-llama/Llama-3.1-405B-Instruct")
    result = plan(spec, PlanRequest(max_model_len=32768, concurrency=1, options=opts("L4", per_node=4)))
    assert result.best is None
    msg = result.explain_infeasible()
    assert "L4" in msg and "GiB" in msg


def test_prefer_quality_keeps_bf16_when_it_fits() -> None:
    spec = resolve_model("meta-llama/Llama-3.1-8B-Instruct")
    base = dict(max_model_len=8192, concurrency=4, options=opts("L4"),
                quantizations=(Quantization.AUTO, Quantization.FP8, Quantization.BNB_NF4))
    cheap = plan(spec, PlanRequest(**base)).best
    good = plan(spec, PlanRequest(**base, prefer=Preference.QUALITY)).best
    assert good is not None and cheap is not None
    assert good.quantization is Quantization.BF16
    assert cheap.cost_per_hour <= good.cost_per_hour


def test_load_target_sizes_replicas_from_roofline_throughput() -> None:
    spec = resolve_model("meta-llama/Llama-3.1-8B-Instruct")
    low = plan(spec, PlanRequest(max_model_len=8192, options=opts("H100-80GB"),
                                 load=LoadTarget(requests_per_second=1, mean_input_tokens=1000,
                                                 mean_output_tokens=200))).best
    high = plan(spec, PlanRequest(max_model_len=8192, options=opts("H100-80GB"),
                                  load=LoadTarget(requests_per_second=200, mean_input_tokens=1000,
                                                  mean_output_tokens=200))).best
    assert low is not None and high is not None
    assert low.total_gpus == 1 and high.total_gpus > low.total_gpus
    assert high.decode_tokens_per_s > 1000


def test_checkpoint_quantization_cannot_be_replaced() -> None:
    spec = resolve_model("openai/gpt-oss-120b")
    result = plan(spec, PlanRequest(max_model_len=8192, concurrency=1, options=opts("H100-80GB"),
                                    quantizations=(Quantization.AUTO, Quantization.BF16)))
    assert result.best is not None and result.best.quantization is Quantization.MXFP4
    assert any("already quantized" in r.reason for r in result.rejections)
