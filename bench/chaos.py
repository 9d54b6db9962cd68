"""Chaos figures: the scenarios of tests/chaos, run once on fresh local clusters, with what they measured.

    python bench/chaos.py [--kills 20] [--hostile 500]

SIGKILL of the operator at random points (convergence time, what was wrong after, writes on a clean
restart), a kube-apiserver + etcd outage (time down, catch-up), metrics that are garbage, slow or gone
(the replica counts seen), a second writer in a tight loop (its writes, the conflicts answered), and
generated hostile specs (refused at admission vs reconciled to a condition, by reason).
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from kubernetes import client

from kvscale.operator.crd import crd_yaml
from kvscale.testing import chaos
from kvscale.testing.cluster import LocalCluster
from kvscale.testing.fleet import NodePool
from kvscale.testing.hostile_specs import SPECS
from kvscale.testing.operator_process import OperatorProcess

FLEET = (NodePool(gpu="L4", nodes=8, gpus_per_node=1), NodePool(gpu="H100-80GB", nodes=2, gpus_per_node=8))


def _cluster(work: Path) -> LocalCluster:
    c = LocalCluster(fleet=FLEET, workdir=work)
    c.start()
    c.install_crd(crd_yaml())
    return c


def _namespace(api: Any, name: str) -> str:
    client.CoreV1Api(api).create_namespace({"metadata": {"name": name}})
    return name


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--hostile", type=int, default=500)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="kvscale-chaos-"))

    c = _cluster(work / "a")
    try:
        api = c.api_client()
        kills = chaos.kill_points(c, api, _namespace(api, "kills"), work, kills=args.kills)
        print(f"SIGKILL x{kills.kills} over {kills.objects} objects: converged {kills.converge_s:.1f} s after the "
              f"last start; problems {kills.problems or 'none'}; {kills.writes_after_restart} writes on a clean "
              "restart")
        op = OperatorProcess(kubeconfig=c.kubeconfig, log_path=work / "operator.log",
                             extra_env={"KVSCALE_AUTOSCALE_INTERVAL": "3",
                                        "KVSCALE_PROMETHEUS_URLS": "http://127.0.0.1"}).start()
        try:
            faults = chaos.metrics_faults(api, _namespace(api, "faults"), interval_s=3.0)
            for phase, seen in faults.phases.items():
                print(f"metrics {phase:8s}: {seen}")
            conflict = chaos.conflicting_writer(c, api, _namespace(api, "conflict"), seconds=15)
            print(f"second writer: {conflict.foreign_writes} writes, {conflict.operator_conflicts} conflicts answered, "
                  f"converged {conflict.converged}, its condition kept: {conflict.foreign_condition!r}")
            ns = _namespace(api, "hostile")
            offset = (work / "operator.log").stat().st_size
            created: list[str] = []
            rejected: list[str] = []
            counter = itertools.count()

            @settings(max_examples=args.hostile, deadline=None, database=None, derandomize=True,
                      suppress_health_check=list(HealthCheck))
            @given(SPECS)
            def submit(spec: dict[str, Any]) -> None:
                name = f"h{next(counter):04d}"
                ok, message = chaos.admission(api, ns, {"apiVersion": "kvscale.io/v1alpha1", "kind": "LLMDeployment",
                                                        "metadata": {"name": name}, "spec": {**spec, "replicas": 0}})
                (created.append(name) if ok else rejected.append(message))

            submit()

            def new_log() -> str:
                with (work / "operator.log").open("rb") as fh:
                    fh.seek(offset)
                    return fh.read().decode(errors="replace")

            hostile = chaos.settle_hostile(api, ns, created, rejected, new_log, op)
            print(f"hostile specs: {hostile.generated} generated, {hostile.rejected} refused at admission "
                  f"({len(hostile.rejected_unnamed)} without a field named), {hostile.generated - hostile.rejected} "
                  f"reconciled: {hostile.reconciled}; unexplained {len(hostile.unexplained)}, tracebacks "
                  f"{hostile.tracebacks}, operator restarts {hostile.operator_restarts}")
        finally:
            op.stop()
    finally:
        c.stop()

    c = LocalCluster(fleet=FLEET, workdir=work / "b")
    c.start()
    try:
        c.install_crd(crd_yaml())
        op = OperatorProcess(kubeconfig=c.kubeconfig, log_path=work / "operator-b.log",
                             extra_env={"KVSCALE_AUTOSCALE_INTERVAL": "2"}).start()
        try:
            api = c.api_client()
            out = chaos.control_plane_outage(c, api, op, _namespace(api, "outage"), down_s=5.0)
            print(f"apiserver + etcd outage: down {out.down_s:.1f} s; operator rode it out: {out.same_process}; "
                  f"replicas {out.replicas_before} -> {out.replicas_after}; caught up {out.catch_up_s:.1f} s after; "
                  f"spec change applied: {out.spec_change_applied}")
        finally:
            op.stop()
    finally:
        c.stop()


if __name__ == "__main__":
    main()
