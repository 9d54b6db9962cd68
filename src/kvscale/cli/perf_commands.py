"""`kvscale perf`: what one replica would do under a load (TTFT, TPOT, throughput), from the performance model."""

from __future__ import annotations

import argparse
import json
from typing import Any

from rich.console import Console
from rich.table import Table

from ..estimator.catalog import resolve_model
from ..estimator.memory import ServingConfig
from ..estimator.performance import DEFAULT_INTER_NODE_GBITS, Load, predict_serving
from .args import add_model_args, add_replica_args, positive_float, positive_int, replica_gpu

#: the context vLLM is assumed to be started with when --max-model-len is not given: the model's own,
#: capped where a long context would only shrink the batch the estimate is made for
DEFAULT_PERF_MAX_MODEL_LEN = 8192
#: the JSON keys, in order: what a caller can rely on
JSON_KEYS = ("output_tok_s", "total_tok_s", "ttft_ms", "tpot_ms", "itl_ms", "requests_per_s", "saturated")


def add_perf_command(sub: Any) -> None:
    pf = sub.add_parser("perf", help="predict TTFT, TPOT and throughput of one replica under a load")
    add_model_args(pf)
    add_replica_args(pf)
    pf.add_argument("--input-tokens", type=positive_int("--input-tokens"), required=True,
                    help="mean prompt length")
    pf.add_argument("--output-tokens", type=positive_int("--output-tokens"), required=True,
                    help="mean output length")
    load = pf.add_mutually_exclusive_group(required=True)
    load.add_argument("--concurrency", type=positive_int("--concurrency"),
                      help="clients that each send the next request when the last one is answered")
    load.add_argument("--request-rate", type=positive_float("--request-rate"), help="Poisson arrivals, requests/s")
    pf.add_argument("--inter-node-gbits", type=positive_float("--inter-node-gbits"), default=DEFAULT_INTER_NODE_GBITS,
                    help="bandwidth of the link between nodes, Gb/s per node (with --pp over nodes)")
    pf.set_defaults(func=cmd_perf)


def cmd_perf(args: argparse.Namespace, console: Console) -> int:
    spec = resolve_model(args.model)
    gpu = replica_gpu(args)
    length = args.max_model_len or min(spec.max_position_embeddings,
                                       max(DEFAULT_PERF_MAX_MODEL_LEN, args.input_tokens + args.output_tokens))
    cfg = ServingConfig(
        tensor_parallel_size=args.tp, pipeline_parallel_size=args.pp, quantization=args.quantization,
        kv_cache_dtype=args.kv_cache_dtype, max_model_len=length,
        gpu_memory_utilization=args.gpu_memory_utilization, max_num_batched_tokens=args.max_num_batched_tokens,
        max_num_seqs=args.max_num_seqs)
    load = Load(input_tokens=args.input_tokens, output_tokens=args.output_tokens, concurrency=args.concurrency,
                request_rate=args.request_rate)
    pred, est = predict_serving(spec, gpu, cfg, load, args.inter_node_gbits)
    values = pred.model_dump()
    if args.output == "json":
        console.print_json(json.dumps({k: round(v, 3) if isinstance(v, float) else v
                                       for k, v in values.items() if k in JSON_KEYS}))
        return 0
    what = (f"{args.concurrency} concurrent clients" if args.concurrency else f"{args.request_rate:g} requests/s")
    t = Table(title=f"{spec.name} on {args.tp * args.pp}x {gpu.name} (TP {args.tp}, PP {args.pp}): "
                    f"{args.input_tokens} in / {args.output_tokens} out, {what}")
    t.add_column("quantity")
    t.add_column("predicted", justify="right")
    t.add_row("output tokens/s", f"{pred.output_tok_s:,.0f}")
    t.add_row("total tokens/s", f"{pred.total_tok_s:,.0f}")
    t.add_row("requests/s", f"{pred.requests_per_s:,.2f}")
    t.add_row("time to first token (mean)", f"{pred.ttft_ms:,.0f} ms")
    t.add_row("time per output token (mean)", f"{pred.tpot_ms:,.1f} ms")
    t.add_row("sequences running", f"{pred.batch:,.0f} (max-num-seqs {est.max_num_seqs}, "
                                   f"KV cache {est.kv_cache_tokens:,} tokens)")
    console.print(t)
    if pred.saturated:
        console.print("[yellow]saturated: requests wait for a place in the batch; the load exceeds what one "
                      "replica serves")
    return 0
