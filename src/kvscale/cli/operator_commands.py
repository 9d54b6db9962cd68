"""The operator's commands: crd, operator run."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rich.console import Console


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
    run.add_argument("--read-pod-logs", action="store_true", default=None,
                     help="read a failed vLLM container's previous log to say why it did not start (RBAC pods/log)")
    run.add_argument("--calibration-configmap", metavar="NAME",
                     help="share the KV blocks live replicas allocated through this ConfigMap (in the operator's "
                          "namespace), so every LLMDeployment of the same model and layout plans with them")
    run.add_argument("--verbose", action="store_true")
    run.set_defaults(func=cmd_operator_run)


def cmd_crd(args: argparse.Namespace, console: Console) -> int:
    from ..operator.crd import crd_yaml

    text = crd_yaml()
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text)
    else:
        print(text, end="")
    return 0


def cmd_operator_run(args: argparse.Namespace, console: Console) -> int:
    from ..operator.main import run
    from ..operator.settings import LogFormat, OperatorSettings

    base = OperatorSettings.from_env()
    updates: dict[str, Any] = {}
    if args.namespace:
        updates["namespaces"] = tuple(args.namespace)
    for field in ("metrics_port", "health_port", "gpu_catalog", "leader_election", "read_pod_logs",
                  "calibration_configmap"):
        if getattr(args, field) is not None:
            updates[field] = getattr(args, field)
    if args.log_format:
        updates["log_format"] = LogFormat(args.log_format)
    settings = OperatorSettings.model_validate({**base.model_dump(), **updates})
    if settings.gpu_catalog:
        from ..estimator.gpus import load_catalog

        load_catalog(settings.gpu_catalog)  # fail fast with a clear message
    run(settings, verbose=args.verbose)
    return 0
