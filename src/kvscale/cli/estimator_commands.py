"""The estimator's commands: estimate, plan, models, gpus (no cluster, no Kubernetes client)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from rich.console import Console
from rich.table import Table

from ..estimator.catalog import catalog_ids, resolve_model
from ..estimator.gpus import GIB, load_catalog
from ..estimator.memory import ServingConfig, estimate
from ..estimator.performance import DEFAULT_INTER_NODE_GBITS
from ..estimator.planner import (
    DEFAULT_MAX_NODES_PER_REPLICA,
    GPUOption,
    LatencySLO,
    LoadTarget,
    PlanRequest,
    Preference,
    plan,
)
from ..estimator.quantization import Quantization
from .args import add_model_args, add_replica_args, percentile, positive_float, positive_int, quant, replica_gpu
from .errors import UsageError
from .training_commands import SERVE, add_training_args, cmd_estimate_training, cmd_plan_training


def add_estimator_commands(sub: Any) -> None:
    est = sub.add_parser("estimate", help="predict what vLLM reports at start-up for one replica")
    add_model_args(est)
    add_replica_args(est)
    est.add_argument("--enforce-eager", action="store_true")
    add_training_args(est, with_gpus=True)
    est.set_defaults(func=cmd_estimate)

    pl = sub.add_parser("plan", help="rank GPU type x TP x quantization by cost for a target")
    add_model_args(pl)
    target = pl.add_mutually_exclusive_group()
    target.add_argument("--concurrency", type=positive_int("--concurrency"),
                        help="sequences of max-model-len to hold at once, in total")
    target.add_argument("--requests-per-second", type=positive_float("--requests-per-second"),
                        help="load: Poisson arrivals of mean-input/mean-output token requests")
    target.add_argument("--clients", type=positive_int("--clients"),
                        help="load: clients that each send their next request when the last is answered")
    pl.add_argument("--mean-input-tokens", type=positive_int("--mean-input-tokens"), default=1024)
    pl.add_argument("--mean-output-tokens", type=positive_int("--mean-output-tokens"), default=256)
    pl.add_argument("--ttft", type=positive_float("--ttft"),
                    help="SLO: time to first token, seconds, at --percentile (needs a load)")
    pl.add_argument("--tpot", type=positive_float("--tpot"),
                    help="SLO: time per output token, milliseconds, at --percentile (needs a load)")
    pl.add_argument("--percentile", type=percentile, help="of the SLO, over requests (default 99)")
    pl.add_argument("--gpus", nargs="+", help="allowed GPU types, optionally NAME:GPUS_PER_NODE (default: all)")
    pl.add_argument("--quantizations", nargs="+", type=quant, default=[Quantization.AUTO])
    pl.add_argument("--max-gpus-per-replica", type=positive_int("--max-gpus-per-replica"), default=8)
    pl.add_argument("--tp", type=positive_int("--tp"), help="fix the tensor-parallel size")
    pl.add_argument("--max-nodes-per-replica", type=positive_int("--max-nodes-per-replica"),
                    default=DEFAULT_MAX_NODES_PER_REPLICA,
                    help="nodes one replica may span, a pipeline stage per node (1: single-node replicas only)")
    pl.add_argument("--inter-node-gbits", type=positive_float("--inter-node-gbits"), default=DEFAULT_INTER_NODE_GBITS,
                    help="bandwidth of the link between nodes, Gb/s per node")
    pl.add_argument("--prefer", choices=[p.value for p in Preference], default=Preference.COST.value)
    pl.add_argument("--show-rejections", action="store_true")
    add_training_args(pl, with_gpus=False)
    pl.set_defaults(func=cmd_plan)

    models = sub.add_parser("models", help="list the built-in model catalog")
    models.set_defaults(func=cmd_models)
    gpus = sub.add_parser("gpus", help="list the GPU catalog")
    gpus.add_argument("--gpu-catalog")
    gpus.set_defaults(func=cmd_gpus)


def cmd_estimate(args: argparse.Namespace, console: Console) -> int:
    if args.mode != SERVE:
        return cmd_estimate_training(args, replica_gpu(args), console)
    spec = resolve_model(args.model)
    gpu = replica_gpu(args)
    cfg = ServingConfig(
        tensor_parallel_size=args.tp, pipeline_parallel_size=args.pp, quantization=args.quantization,
        kv_cache_dtype=args.kv_cache_dtype, max_model_len=args.max_model_len,
        gpu_memory_utilization=args.gpu_memory_utilization, max_num_batched_tokens=args.max_num_batched_tokens,
        max_num_seqs=args.max_num_seqs, enforce_eager=args.enforce_eager)
    est = estimate(spec, gpu, cfg)
    result = {
        "weights_gib": round(est.weights_bytes / GIB, 4),
        "kv_cache_gib": round(est.kv_cache_bytes / GIB, 4),
        "kv_cache_tokens": est.kv_cache_tokens if est.kv_cache_bytes > 0 else 0,
        "max_concurrency": round(est.max_concurrency, 2) if est.kv_cache_bytes > 0 else 0.0,
        "fits": est.fits,
        "reason": est.reason,
    }
    if args.output == "json":
        console.print_json(json.dumps(result))
        return 0 if est.fits else 1
    t = Table(title=f"{spec.name} on {args.tp * args.pp}x {gpu.name} "
                    f"(TP {args.tp}, PP {args.pp}, {args.quantization.value})")
    t.add_column("quantity")
    t.add_column("per GPU", justify="right")
    t.add_row("total memory", f"{gpu.memory_gib:.2f} GiB")
    t.add_row(f"requested ({cfg.gpu_memory_utilization:g} x total)", f"{est.requested_bytes / GIB:.2f} GiB")
    t.add_row("model weights", f"{est.weights_bytes / GIB:.2f} GiB")
    t.add_row(f"activation peak ({est.max_num_batched_tokens} batched tokens)", f"{est.activation_bytes / GIB:.2f} GiB")
    t.add_row("non-torch (NCCL, cuBLAS)", f"{est.non_torch_bytes / GIB:.2f} GiB")
    t.add_row("CUDA graphs", f"{est.cuda_graph_bytes / GIB:.2f} GiB")
    t.add_row("available KV cache memory", f"{est.kv_cache_bytes / GIB:.2f} GiB")
    t.add_row("KV cache size", f"{result['kv_cache_tokens']:,} tokens")
    t.add_row(f"maximum concurrency at {est.max_model_len:,} tokens", f"{result['max_concurrency']:.2f}x")
    t.add_row("parameters", f"{est.total_params / 1e9:.2f} B")
    console.print(t)
    console.print(("[green]" if est.fits else "[red]") + est.reason)
    return 0 if est.fits else 1


def _options(args: argparse.Namespace) -> tuple[GPUOption, ...]:
    cat = load_catalog(args.gpu_catalog)
    if not args.gpus:
        return tuple(GPUOption(gpu=g) for g in cat.gpus)
    out = []
    for item in args.gpus:
        name, _, per_node = item.partition(":")
        count = positive_int(f"--gpus {item}")(per_node) if per_node else 8
        out.append(GPUOption(gpu=cat.get(name), gpus_per_node=count))
    return tuple(out)


def cmd_plan(args: argparse.Namespace, console: Console) -> int:
    if args.mode != SERVE:
        return cmd_plan_training(args, console)
    spec = resolve_model(args.model)
    max_len = args.max_model_len or spec.max_position_embeddings
    load = slo = None
    if args.requests_per_second or args.clients:
        load = LoadTarget(requests_per_second=args.requests_per_second, concurrency=args.clients,
                          mean_input_tokens=args.mean_input_tokens, mean_output_tokens=args.mean_output_tokens)
    if args.ttft or args.tpot:
        if load is None:
            raise UsageError("--ttft/--tpot: give the load they hold at (--requests-per-second or --clients)")
        slo = LatencySLO(ttft_seconds=args.ttft, tpot_milliseconds=args.tpot,
                         **({} if args.percentile is None else {"percentile": args.percentile}))
    elif args.percentile is not None:
        raise UsageError("--percentile: it is the percentile of --ttft/--tpot; give one of them")
    req = PlanRequest(
        max_model_len=max_len, concurrency=args.concurrency if load is None else None, load=load, slo=slo,
        options=_options(args), quantizations=tuple(args.quantizations),
        max_gpus_per_replica=args.max_gpus_per_replica, tensor_parallel_size=args.tp,
        max_nodes_per_replica=args.max_nodes_per_replica, inter_node_gbits=args.inter_node_gbits,
        kv_cache_dtype=args.kv_cache_dtype, gpu_memory_utilization=args.gpu_memory_utilization,
        max_num_batched_tokens=args.max_num_batched_tokens, prefer=Preference(args.prefer))
    result = plan(spec, req)
    if args.output == "json":
        console.print_json(result.model_dump_json())
        return 0 if result.plans else 1
    target = f", {load.describe()}" if load else ""
    target += f", p{slo.percentile:g} SLO: " + ", ".join(
        ([f"TTFT <= {slo.ttft_seconds:g} s"] if slo.ttft_seconds else [])
        + ([f"TPOT <= {slo.tpot_milliseconds:g} ms"] if slo.tpot_milliseconds else [])) if slo else ""
    t = Table(title=f"Plans for {spec.name}, max_model_len {max_len:,}{target}")
    p_label = f"p{slo.percentile:g} " if slo else "mean "
    latency_cols = (f"{p_label}TTFT s", f"{p_label}TPOT ms", "out tok/s/replica") if load else ()
    cols = ("#", "GPU", "layout", "nodes", "quant", "replicas", "$/hour", "weights GiB/GPU", "KV tokens/replica",
            "concurrency", *latency_cols, "decode tok/s" if not load else None, "interconnect")
    for col in filter(None, cols):
        t.add_column(col, justify="right" if col not in ("GPU", "layout", "quant", "interconnect") else "left")
    for i, p in enumerate(result.plans, 1):
        latency = (f"{(p.ttft_ms or 0) / 1000:.2f}", f"{p.tpot_ms or 0:.1f}", f"{p.output_tok_s or 0:,.0f}") \
            if load else (f"{p.decode_tokens_per_s:,.0f}",)
        t.add_row(str(i), p.gpu, p.layout, str(p.nodes_per_replica), p.quantization.value, str(p.replicas),
                  f"{p.cost_per_hour:.2f}", f"{p.memory.weights_bytes / GIB:.1f}",
                  f"{p.memory.kv_cache_tokens:,}", f"{p.concurrency_per_replica:.1f}", *latency, p.interconnect)
    console.print(t)
    if args.show_rejections or not result.plans:
        r = Table(title="Rejected options")
        for col in ("GPU", "layout", "quant", "reason"):
            r.add_column(col)
        for rej in result.rejections:
            r.add_row(rej.gpu, rej.layout, rej.quantization, rej.reason)
        console.print(r)
    if not result.plans:
        console.print(f"[red]{result.explain_infeasible()}")
        return 1
    return 0


def cmd_models(args: argparse.Namespace, console: Console) -> int:
    for mid in catalog_ids():
        console.print(mid, highlight=False)
    return 0


def cmd_gpus(args: argparse.Namespace, console: Console) -> int:
    t = Table(title="GPU catalog")
    for col in ("name", "memory GiB", "GB/s", "bf16 TFLOPS", "fp8", "$/hour", "node label"):
        t.add_column(col)
    for g in load_catalog(args.gpu_catalog).gpus:
        t.add_row(g.name, f"{g.memory_gib:g}", f"{g.bandwidth_gbps:g}", f"{g.bf16_tflops:g}", str(g.fp8),
                  f"{g.price_per_hour:.2f}", ", ".join(g.product_labels))
    console.print(t)
    return 0
