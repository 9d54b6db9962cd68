"""The simulator's commands: sim evaluate."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rich.console import Console

from .errors import UsageError, require_extra


def add_sim_commands(sub: Any) -> None:
    sim = sub.add_parser("sim", help="replay request traces through simulated vLLM replicas")
    ssub = sim.add_subparsers(dest="action", required=True)
    ev = ssub.add_parser("evaluate", help="compare autoscaling policies on a trace (GPU-hours, SLO)")
    ev.add_argument("--trace", type=Path, required=True, help="Azure LLM 2023 CSV or Mooncake JSONL trace")
    ev.add_argument("--model", default="meta-llama/Llama-3.1-8B-Instruct")
    ev.add_argument("--gpu", default="L4")
    ev.add_argument("--tp", type=int, default=1)
    ev.add_argument("--max-model-len", type=int, default=16384)
    ev.add_argument("--rate-scale", type=float, default=1.0, help="N x the trace's request rate")
    ev.add_argument("--cold-start", type=float, default=None,
                    help="seconds from scale-up to a serving replica (default: the GPU's cold_start_s, 90 s built in)")
    ev.add_argument("--ttft-slo", type=float, default=2.0)
    ev.add_argument("--tpot-slo-ms", type=float, default=100.0)
    ev.add_argument("--ttft-slo-per-1k", type=float, default=0.0,
                    help="extra TTFT seconds allowed per 1,000 prompt tokens (long-context traces)")
    ev.add_argument("--max-queue", type=float, default=None,
                    help="kvscale's queue-time objective in seconds (autoscaling.maxQueueSeconds); "
                         "default: the median prompt's TTFT budget less its prefill time")
    ev.add_argument("--max-num-batched-tokens", type=int, default=2048, help="chunked-prefill budget per step")
    ev.add_argument("--gpu-budget", type=int, default=None, help="GPUs of this type in the cluster (default: no limit)")
    ev.add_argument("--gpu-catalog", type=Path, help="GPU catalog YAML (prices, cold_start_s per GPU type)")
    ev.add_argument("--plot", type=Path, help="write a PNG (replicas, KV usage, cost vs SLO)")
    ev.set_defaults(func=cmd_sim_evaluate)


def cmd_sim_evaluate(args: argparse.Namespace, console: Console) -> int:
    from rich.table import Table

    from ..estimator.errors import EstimatorError
    from ..estimator.gpus import load_catalog
    from ..sim.evaluate import SLO, Scenario, evaluate, plot

    if not args.trace.is_file():
        raise UsageError(f"--trace {args.trace}: no such file")
    if args.plot:
        require_extra("sim evaluate --plot", "sim", "matplotlib")
    slo = SLO(args.ttft_slo, args.tpot_slo_ms / 1000, args.ttft_slo_per_1k)
    sc = Scenario(args.trace.stem, str(args.trace), args.model, args.gpu, args.max_model_len, tp=args.tp,
                  rate_scale=args.rate_scale, cold_start_s=args.cold_start, slo=slo, max_queue_s=args.max_queue,
                  max_num_batched_tokens=args.max_num_batched_tokens, gpu_budget=args.gpu_budget)
    try:
        reports, _ = evaluate(sc, catalog=load_catalog(args.gpu_catalog))
    except (ValueError, EstimatorError) as exc:
        raise UsageError(str(exc)) from None
    oracle = reports[-1].gpu_hours or 1e-9
    t = Table(title=f"{args.trace.name}: {args.model} on {args.tp}x {args.gpu}")
    for col in ("policy", "GPU-hours", "x oracle", "cost $", "SLO %", "p99 TTFT s", "p99 TPOT ms", "preemptions",
                "scale events"):
        t.add_column(col)
    for r in reports:
        t.add_row(r.policy, f"{r.gpu_hours:.2f}", f"{r.gpu_hours / oracle:.2f}", f"{r.cost:.2f}",
                  f"{r.slo_attainment * 100:.2f}", f"{r.p99_ttft_s:.2f}", f"{r.p99_tpot_s * 1000:.0f}",
                  str(r.preemptions), str(r.scale_events))
    console.print(t)
    if args.plot:
        console.print(f"plot: {plot(reports, args.trace.name, args.plot)}")
    return 0
