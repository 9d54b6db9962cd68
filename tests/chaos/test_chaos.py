"""Faults against the real control plane and the operator as a process (scenarios: kvscale.testing.chaos)."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from kubernetes import client

from kvscale.testing import chaos
from kvscale.testing.cluster import LocalCluster
from kvscale.testing.fleet import NodePool
from kvscale.testing.hostile_specs import SPECS
from kvscale.testing.operator_process import OperatorProcess

pytestmark = [pytest.mark.chaos, pytest.mark.cluster]


@pytest.fixture
def alone(operator: OperatorProcess) -> Iterator[None]:
    """The session's operator steps aside: the scenario runs its own."""
    operator.stop()
    try:
        yield
    finally:
        operator.start()


def test_sigkill_at_random_points_leaves_a_consistent_fleet(api, namespace: str, cluster: LocalCluster,  # type: ignore[no-untyped-def]
                                                            alone: None, tmp_path: Path) -> None:
    report = chaos.kill_points(cluster, api, namespace, tmp_path, kills=20, objects=4)
    print(f"\n{report.kills} kills ({', '.join(report.actions[:6])}, ...): converged in {report.converge_s:.1f} s, "
          f"{report.writes_after_restart} writes on a clean restart")
    assert report.problems == [], report.problems  # no duplicate, orphan, lost scale or stale status
    assert report.writes_after_restart <= report.objects, "more than one extra write per object"


def test_the_operator_rides_out_an_apiserver_and_etcd_outage(tmp_path: Path) -> None:
    own = LocalCluster(fleet=(NodePool(gpu="L4", nodes=3, gpus_per_node=1),), workdir=tmp_path / "cluster")
    own.start()
    op = OperatorProcess(kubeconfig=own.kubeconfig, extra_env={"KVSCALE_AUTOSCALE_INTERVAL": "2"},
                         log_path=tmp_path / "operator.log")
    try:
        own.install_crd((Path(__file__).resolve().parents[2] / "crds" / "kvscale.io_llmdeployments.yaml").read_text())
        op.start()
        api = own.api_client()
        client.CoreV1Api(api).create_namespace({"metadata": {"name": "outage"}})
        report = chaos.control_plane_outage(own, api, op, "outage", down_s=5.0)
        print(f"\napiserver + etcd down {report.down_s:.1f} s; caught up {report.catch_up_s:.1f} s after")
        assert report.same_process, "the operator crashed or restarted"
        assert report.replicas_after == report.replicas_before, "replicas moved while the operator was blind"
        assert report.spec_change_applied
        assert "Traceback" not in op.log_tail(400)
    finally:
        op.stop()
        own.stop()


def test_bad_metrics_hold_replicas_and_never_scale_to_zero(api, namespace: str, operator: OperatorProcess) -> None:  # type: ignore[no-untyped-def]
    report = chaos.metrics_faults(api, namespace, interval_s=3.0)
    for phase, seen in report.phases.items():
        print(f"\n{phase}: {seen}")
        assert seen["faulty replicas"] == [2], (phase, seen)
        assert seen["blind replicas"] == [2], (phase, seen)
        assert seen["guarded replicas"] == [1], (phase, seen)  # idle, but its activation query fails: not 0
        assert seen["faulty MetricsAvailable"] == "False", (phase, seen)
        assert seen["blind MetricsAvailable"] == "False", (phase, seen)


def log_since(op: OperatorProcess, offset: int) -> str:
    assert op.log_path is not None
    with op.log_path.open("rb") as fh:
        fh.seek(offset)
        return fh.read().decode(errors="replace")


def test_a_second_writer_loses_nothing(api, namespace: str, cluster: LocalCluster, operator: OperatorProcess) -> None:  # type: ignore[no-untyped-def]
    assert operator.log_path is not None
    offset = operator.log_path.stat().st_size
    report = chaos.conflicting_writer(cluster, api, namespace, seconds=15)
    print(f"\n{report.foreign_writes} foreign writes, {report.operator_conflicts} conflicts answered")
    assert report.converged, report.problems
    assert report.foreign_condition.startswith("write "), "the other client's condition was lost"
    assert {"Planned", "Ready", "Available"} <= set(report.own_conditions), report.own_conditions
    assert "Traceback" not in log_since(operator, offset)


# ----- hostile input ------------------------------------------------------------------------------------

#: found by another seed of the generator: per-layer lists for a billion layers grew the operator to
#: 24 GB until the kernel killed it; kept here so every run tries it against the real operator
ABSURD_DEPTH = {"model": {"name": "meta-llama/Llama-3.1-8B-Instruct", "uri": "pvc://c/p", "sizeGiB": 16,
                          "architecture": {"model_type": "llama", "num_hidden_layers": 10**9}},
                "serving": {"maxModelLen": 32768}}


def test_hostile_specs_are_refused_or_explained(api, namespace: str, operator: OperatorProcess) -> None:  # type: ignore[no-untyped-def]
    assert operator.log_path is not None
    offset = operator.log_path.stat().st_size
    created: list[str] = []
    rejected: list[str] = []
    counter = itertools.count()
    run = uuid.uuid4().hex[:4]

    @settings(max_examples=500, deadline=None, database=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
    @given(SPECS)
    @example(ABSURD_DEPTH)
    def submit(spec: dict[str, Any]) -> None:
        name = f"h{run}-{next(counter):04d}"
        body = {"apiVersion": "kvscale.io/v1alpha1", "kind": "LLMDeployment", "metadata": {"name": name},
                "spec": {**spec, "replicas": 0}}  # no pods: what is under test is admission and reconcile
        ok, message = chaos.admission(api, namespace, body)
        (created.append(name) if ok else rejected.append(message))

    submit()

    def new_log() -> str:
        return log_since(operator, offset)

    report = chaos.settle_hostile(api, namespace, created, rejected, new_log, operator)
    print(f"\n{report.generated} generated: {report.rejected} refused at admission, "
          f"{report.generated - report.rejected} created: {report.reconciled}")
    assert report.generated >= 500
    assert report.rejected_unnamed == [], report.rejected_unnamed
    assert report.unexplained == [], report.unexplained
    assert report.tracebacks == 0, new_log()[-4000:]
    assert report.operator_restarts == 0
