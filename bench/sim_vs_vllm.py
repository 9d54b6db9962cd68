"""The replica simulator against real vLLM (CPU build, dummy weights), same requests, same KV cache.

Starts one vLLM server (32 blocks of 128 tokens, max_num_seqs 16, max_num_batched_tokens 256, no prefix
caching), calibrates the simulator's step time on it (one-request probes for the shape, a 20 s trace slice
for the level under load), then replays on the server and in the simulator:
two bursts of trace requests sent at once (the scheduler's rules decide what happens) and a 90 s slice of
the Azure conversation trace (prompts / 8, outputs capped at 256), the slice twice on the server to show
the real system's own run-to-run spread. Prints the agreement; writes bench/results/sim_vs_vllm.{json,png}.

    .venv/bin/python bench/sim_vs_vllm.py [--start 1860 --duration 90 --rate-scale 1.0]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from kvscale.sim.comparison import plot, table_rows
from kvscale.sim.step_model import ServerConfig
from kvscale.sim.workloads import Burst, Workload
from kvscale.testing.sim_vs_vllm import run_comparison

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--trace", default=Workload.trace)
    ap.add_argument("--start", type=float, default=Workload.start_s, help="slice start in the trace (s)")
    ap.add_argument("--duration", type=float, default=Workload.duration_s, help="slice length (s)")
    ap.add_argument("--rate-scale", type=float, default=Workload.rate_scale)
    ap.add_argument("--num-blocks", type=int, default=ServerConfig.num_blocks)
    ap.add_argument("--calibration-reps", type=int, default=5)
    ap.add_argument("--no-repeat", action="store_true", help="replay the slice once only (no noise floor)")
    ap.add_argument("--out", type=Path, default=RESULTS / "sim_vs_vllm")
    args = ap.parse_args()

    console = Console(width=110)
    workloads: list[Workload | Burst] = [
        Burst(trace=args.trace, start_s=args.start, n=40),
        Burst(name="burst100", trace=args.trace, start_s=args.start, n=100),
        Workload(trace=args.trace, start_s=args.start, duration_s=args.duration, rate_scale=args.rate_scale)]
    server = ServerConfig(num_blocks=args.num_blocks)
    t0 = time.monotonic()
    with console.status("vLLM: start, calibrate, replay ..."):
        c = run_comparison(workloads, server, calibration_reps=args.calibration_reps,
                           calibration_slice=Workload(name="calibration", trace=args.trace,
                                                      start_s=args.start - 20.0 * args.rate_scale, duration_s=20.0,
                                                      rate_scale=args.rate_scale),
                           repeat=() if args.no_repeat else ("trace",))
    wall = time.monotonic() - t0

    cal = Table(title="Step-time calibration (engine-side timestamps, medians)")
    for col in ("step", "measured (ms)", "model (ms)"):
        cal.add_column(col, justify="left" if col == "step" else "right")
    for p in c.calibration.points:
        cal.add_row(p.name, f"{p.measured_s * 1e3:.2f}", f"{p.model_s * 1e3:.2f}")
    console.print(cal)
    k = c.calibration
    console.print(f"probes: step = {k.step_overhead_s * 1e3:.2f} ms + {k.seq_overhead_s * 1e3:.3f} ms x seqs + max("
                  f"{k.per_kv_token_s * 1e6:.3f} us x cached tokens read, {k.per_token_s * 1e6:.1f} us x tokens "
                  f"computed)")
    m = c.model.cost
    console.print(f"under trace load (calibration slice) every step ran {k.load_scale:.2f}x slower: engine mean "
                  f"TPOT {k.load_tpot_real_s * 1e3:.2f} ms, simulator {k.load_tpot_sim_s * 1e3:.2f} ms; model used: "
                  f"step_overhead_s={m.step_overhead_s:.5f} seq_overhead_s={m.seq_overhead_s:.6f} "
                  f"flops={m.flops:.4g} flops_per_token={m.flops_per_token:.4g} bandwidth={m.bandwidth:.4g} "
                  f"kv_bytes_per_token={m.kv_read.per_token:.0f} weights_bytes={m.dense_weight_bytes:.0f} "
                  f"kv_blocks={c.model.kv_blocks}")

    t = Table(title=f"Simulator vs vLLM: {server.num_blocks} blocks x {server.block_size} tokens, max_num_seqs "
                    f"{server.max_num_seqs}, max_num_batched_tokens {server.max_batched_tokens}")
    t.add_column("")
    for rp in c.replays:
        t.add_column(f"{rp.workload.name} ({rp.requests} req.)\nvLLM", justify="right")
        t.add_column("\nsim", justify="right")
    for name in c.real_vs_real:
        t.add_column(f"{name} again\nvLLM #1", justify="right")
        t.add_column("\nvLLM #2", justify="right")
    tables = [table_rows(rp.figures) for rp in c.replays] + [table_rows(f) for f in c.real_vs_real.values()]
    for i, (label, *_) in enumerate(tables[0]):
        t.add_row(label, *[cell for rows in tables for cell in rows[i][1:]])
    console.print(t)
    for rp in c.replays:
        x = rp.real_extra
        console.print(f"{rp.workload.name}: server-side means TTFT {x['server_ttft_mean_s']:.3f}s, e2e "
                      f"{x['server_e2e_mean_s']:.2f}s; engine steps {x['engine_steps']:.0f}; client stalled "
                      f"{x['client_stalled_s']:.1f}s ({x['client_stalls']} stalls, longest "
                      f"{x['client_stall_max_s']:.1f}s); longest gap between samples {x['sample_gap_max_s']:.1f}s; "
                      f"send lag p90 {x['send_lag_p90_s'] * 1e3:.0f} ms; failed {len(x['errors'])}, wrong token "
                      f"counts {len(x['wrong_token_counts'])}")
    console.print("phases (s): " + ", ".join(f"{k} {v:.1f}" for k, v in c.timings_s.items()) + f"; total {wall:.1f}")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    data = c.to_json()
    data["timings_s"]["total"] = wall
    args.out.with_suffix(".json").write_text(json.dumps(data, indent=1) + "\n")
    plot(c, args.out.with_suffix(".png"))
    console.print(f"wrote {args.out.with_suffix('.json')} and {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
