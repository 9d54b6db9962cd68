"""Estimator and planner speed: one estimate, and a full plan over the whole GPU catalog, sized for memory
and sized for a load under a latency SLO (the performance model run for every layout that fits).

Targets: < 5 ms per estimate, < 50 ms per plan (all GPU types x TP 1..16 x 3 quantizations), either way.

    python bench/estimator_speed.py
"""

from __future__ import annotations

import statistics
import time

from kvscale.estimator.catalog import resolve_model
from kvscale.estimator.gpus import default_catalog
from kvscale.estimator.memory import ServingConfig, estimate
from kvscale.estimator.planner import GPUOption, LatencySLO, LoadTarget, PlanRequest, plan
from kvscale.estimator.quantization import Quantization

MODELS = ["meta-llama/Llama-3.1-8B-Instruct", "meta-llama/Llama-3.1-70B-Instruct", "Qwen/Qwen3-30B-A3B",
          "google/gemma-3-27b-it", "deepseek-ai/DeepSeek-V3", "nvidia/Nemotron-H-8B-Base-8K"]


def timed(fn, n: int) -> list[float]:  # type: ignore[no-untyped-def]
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000)
    return out


def main() -> None:
    cat = default_catalog()
    h100 = cat.get("H100-80GB")
    options = tuple(GPUOption(gpu=g) for g in cat.gpus)
    print(f"{'model':40s} {'estimate ms (median/p95)':>26s} {'plan ms (median/p95)':>22s} "
          f"{'SLO plan ms (median/p95)':>26s} {'options':>8s}")
    for mid in MODELS:
        spec = resolve_model(mid)
        cfg = ServingConfig(tensor_parallel_size=8, max_model_len=8192)
        est = timed(lambda spec=spec, cfg=cfg: estimate(spec, h100, cfg), 200)
        req = PlanRequest(max_model_len=8192, concurrency=64, options=options,
                          quantizations=(Quantization.AUTO, Quantization.FP8, Quantization.BNB_NF4))
        result = plan(spec, req)
        pl = timed(lambda spec=spec, req=req: plan(spec, req), 20)
        slo_req = req.model_copy(update={
            "concurrency": None, "slo": LatencySLO(ttft_seconds=2, tpot_milliseconds=50),
            "load": LoadTarget(requests_per_second=10, mean_input_tokens=1000, mean_output_tokens=300)})
        slo = timed(lambda spec=spec, req=slo_req: plan(spec, req), 20)
        n_opts = len(result.plans) + len(result.rejections)
        q = lambda xs: f"{statistics.median(xs):.2f}/{sorted(xs)[int(len(xs) * 0.95) - 1]:.2f}"  # noqa: E731
        print(f"{mid:40s} {q(est):>26s} {q(pl):>22s} {q(slo):>26s} {n_opts:>8d}")
    print("targets: estimate < 5 ms, plan < 50 ms")


if __name__ == "__main__":
    main()
