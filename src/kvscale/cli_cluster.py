"""Cluster-facing commands: the local control plane with simulated GPU nodes."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from rich.console import Console

DEFAULT_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "kvscale" / "dev-cluster"


def add_cluster_commands(sub: Any) -> None:
    add_operator_commands(sub)
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
    demo = sub.add_parser("demo", help="local end-to-end run: control plane, real kubelet nodes, operator, "
                                       "real vLLM pods (CPU), load ramp")
    demo.add_argument("--duration", type=float, default=240.0, help="seconds of load (default %(default)s)")
    demo.add_argument("--window", type=int, default=40, help="scale-down stabilization window in seconds")
    demo.add_argument("--peak", type=int, default=12, help="peak concurrent requests")
    demo.set_defaults(func=cmd_demo)
    dev = sub.add_parser("dev-cluster", help="local Kubernetes control plane with simulated (kwok) and real GPU nodes")
    dsub = dev.add_subparsers(dest="action", required=True)
    up = dsub.add_parser("up", help="start it in the background and print its KUBECONFIG")
    up.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="state directory (default %(default)s)")
    up.add_argument("--fleet", default=None,
                    help="GPU node pools as GPU:NODESxGPUS_PER_NODE,... (default H100-80GB:2x8,A100-80GB:2x8,L4:4x1)")
    up.add_argument("--real-nodes", type=int, default=0, metavar="N",
                    help="also start N real kubelet nodes (containerd + runc, 2 fake L4 GPUs each, real pods); "
                         "with the default fleet they replace the simulated L4 pool (needs root)")
    up.set_defaults(func=cmd_up)
    down = dsub.add_parser("down", help="stop it and remove its state")
    down.add_argument("--dir", type=Path, default=DEFAULT_DIR)
    down.set_defaults(func=cmd_down)


def add_operator_commands(sub: Any) -> None:
    crd = sub.add_parser("crd", help="print (or write) the LLMDeployment CustomResourceDefinition")
    crd.add_argument("--output", "-o", type=Path, help="write to this file instead of stdout")
    crd.set_defaults(func=cmd_crd)
    op = sub.add_parser("operator", help="the Kubernetes operator")
    osub = op.add_subparsers(dest="action", required=True)
    run = osub.add_parser("run", help="run the operator (in-cluster config, else KUBECONFIG)")
    run.add_argument("--namespace", "-n", action="append", default=None,
                     help="namespace to watch (repeatable; default: all, or KVSCALE_NAMESPACES)")
    run.add_argument("--metrics-port", type=int, help="Prometheus /metrics port (0 disables; default 8080)")
    run.add_argument("--health-port", type=int, help="liveness/readiness /healthz port (default 8081)")
    run.add_argument("--log-format", choices=["plain", "full", "json"])
    run.add_argument("--gpu-catalog", help="GPU catalog YAML (prices, extra cards)")
    run.add_argument("--leader-election", metavar="LEASE",
                     help="elect one active replica through this Lease (in KVSCALE_LEASE_NAMESPACE, else the "
                          "operator's own namespace)")
    run.add_argument("--verbose", action="store_true")
    run.set_defaults(func=cmd_operator_run)


def cmd_crd(args: argparse.Namespace, console: Console) -> int:
    from .operator.crd import crd_yaml

    text = crd_yaml()
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text)
    else:
        print(text, end="")
    return 0


def cmd_operator_run(args: argparse.Namespace, console: Console) -> int:
    from .operator.main import run
    from .operator.settings import LogFormat, OperatorSettings

    base = OperatorSettings.from_env()
    updates: dict[str, Any] = {}
    if args.namespace:
        updates["namespaces"] = tuple(args.namespace)
    for field in ("metrics_port", "health_port", "gpu_catalog", "leader_election"):
        if getattr(args, field) is not None:
            updates[field] = getattr(args, field)
    if args.log_format:
        updates["log_format"] = LogFormat(args.log_format)
    settings = OperatorSettings.model_validate({**base.model_dump(), **updates})
    if settings.gpu_catalog:
        from .estimator.gpus import load_catalog

        load_catalog(settings.gpu_catalog)  # fail fast with a clear message
    run(settings, verbose=args.verbose)
    return 0


def cmd_sim_evaluate(args: argparse.Namespace, console: Console) -> int:
    from rich.table import Table

    from .cli import UsageError
    from .estimator.errors import EstimatorError
    from .estimator.gpus import load_catalog
    from .sim.evaluate import SLO, Scenario, evaluate, plot

    if not args.trace.is_file():
        raise UsageError(f"--trace {args.trace}: no such file")
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


def cmd_demo(args: argparse.Namespace, console: Console) -> int:
    from .demo import run_demo

    return run_demo(console, duration_s=args.duration, window_s=args.window, peak=args.peak)


def cmd_up(args: argparse.Namespace, console: Console) -> int:
    from .cli import UsageError
    from .testing.cluster import STATE_FILE, LocalCluster
    from .testing.fleet import DEFAULT_FLEET, parse_fleet

    if (args.dir / STATE_FILE).exists():
        raise UsageError(f"a dev cluster already runs from {args.dir}; `kvscale dev-cluster down` first")
    try:
        fleet = parse_fleet(args.fleet) if args.fleet else DEFAULT_FLEET
    except ValueError as exc:
        raise UsageError(f"--fleet: {exc}") from None
    if args.real_nodes < 0:
        raise UsageError(f"--real-nodes must be >= 0, got {args.real_nodes}")
    if args.real_nodes and not args.fleet:
        fleet = tuple(p for p in fleet if p.gpu != "L4")
    cluster = LocalCluster(fleet=fleet, workdir=args.dir, tie_to_parent=False, keep_workdir=True,
                           real_nodes=args.real_nodes)
    cluster.start(timeout=300)
    nodes = sum(p.nodes for p in fleet)
    console.print(f"control plane up in {cluster.started_s:.1f}s with {nodes} simulated GPU nodes"
                  + (f" and {args.real_nodes} real node(s)" if args.real_nodes else ""))
    console.print(f"export KUBECONFIG={cluster.kubeconfig}")
    return 0


def cmd_down(args: argparse.Namespace, console: Console) -> int:
    from .testing.cluster import stop_from_state

    if stop_from_state(args.dir):
        console.print(f"stopped the dev cluster in {args.dir}")
        return 0
    console.print(f"no dev cluster state in {args.dir}")
    return 1
