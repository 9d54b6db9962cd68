"""Commands around a local cluster: demo, dev-cluster up/down."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from rich.console import Console

from .errors import UsageError, require_extra

DEFAULT_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "kvscale" / "dev-cluster"


def add_cluster_commands(sub: Any) -> None:
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


#: what the local-cluster harness imports beyond the runtime
HARNESS_MODULES = ("cryptography", "grpc", "google.protobuf")


def cmd_demo(args: argparse.Namespace, console: Console) -> int:
    require_extra("demo", "testing", *HARNESS_MODULES)
    from ..demo import run_demo

    return run_demo(console, duration_s=args.duration, window_s=args.window, peak=args.peak)


def cmd_up(args: argparse.Namespace, console: Console) -> int:
    require_extra("dev-cluster up", "testing", *HARNESS_MODULES)
    from ..testing.cluster import STATE_FILE, LocalCluster
    from ..testing.fleet import DEFAULT_FLEET, parse_fleet

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
    require_extra("dev-cluster down", "testing", *HARNESS_MODULES)
    from ..testing.cluster import stop_from_state

    if stop_from_state(args.dir):
        console.print(f"stopped the dev cluster in {args.dir}")
        return 0
    console.print(f"no dev cluster state in {args.dir}")
    return 1
