"""Autoscaling policies on real traces (Azure 2023 code and conv, Mooncake conversation).

Each trace replays at its real rate for its whole hour. Per trace: GPU-hours, cost, SLO
attainment (TTFT <= 2 s, time per output token <= 100 ms; Mooncake's long prompts get 0.1 s
more TTFT per 1,000 tokens), p99s, preemptions, scale events and the wall time of each replay,
for kvscale, static provisioning (the smallest fixed fleet meeting the SLO), a KEDA
queue-length rule, a WVA-style KV threshold rule, the oracle (per minute, the smallest
fleet meeting the SLO) and the same oracle charged for cold starts (the floor for any policy
whose replicas take the cold start to become ready). Plots go to bench/results/.

    python bench/autoscaling_eval.py [--traces DIR] [--only azure-conv] [--rate-scale 1] [--cold-start S]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from kvscale.sim.evaluate import SCENARIOS, evaluate, plot

HERE = Path(__file__).parent
DEFAULT_TRACES = HERE.parent.parent / "shared" / "traces"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--traces", type=Path, default=DEFAULT_TRACES)
    ap.add_argument("--only", action="append")
    ap.add_argument("--rate-scale", type=float, default=None)
    ap.add_argument("--cold-start", type=float, default=None, help="seconds (default: the GPU catalog's, 90)")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "autoscaling_eval.json")
    args = ap.parse_args()
    console = Console(width=160)
    summary = {}
    for name, sc in SCENARIOS.items():
        if args.only and name not in args.only:
            continue
        sc = dataclasses.replace(sc, trace=str(args.traces / sc.trace),
                                 rate_scale=args.rate_scale or sc.rate_scale,
                                 cold_start_s=args.cold_start if args.cold_start is not None else sc.cold_start_s)
        t0 = time.perf_counter()
        reports, _ = evaluate(sc)
        took = time.perf_counter() - t0
        oracle = reports[-1]
        t = Table(title=f"{name}: {sc.model} on {sc.tp}x {sc.gpu}, max_model_len {sc.max_model_len}, "
                        f"x{sc.rate_scale} rate, {reports[-2].policy.split('+ ')[1]} ({took:.0f}s to simulate)")
        for col in ("policy", "GPU-hours", "x oracle", "cost $", "SLO %", "p99 TTFT s", "p99 TPOT ms",
                    "preemptions", "scale events", "replay s"):
            t.add_column(col, justify="right" if col != "policy" else "left")
        for r in reports:
            t.add_row(r.policy, f"{r.gpu_hours:.2f}", f"{r.gpu_hours / oracle.gpu_hours:.2f}", f"{r.cost:.2f}",
                      f"{r.slo_attainment * 100:.2f}", f"{r.p99_ttft_s:.2f}", f"{r.p99_tpot_s * 1000:.0f}",
                      str(r.preemptions), str(r.scale_events),
                      f"{r.sim_seconds:.1f}" if not r.policy.startswith("oracle") else "")
        console.print(t)
        png = plot(reports, name, HERE / "results" / f"{name}.png")
        console.print(f"plot: {png}")
        summary[name] = [{k: v for k, v in dataclasses.asdict(r).items() if k != "timeline"} for r in reports]
    args.out.write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
