"""Faults against the real control plane and the operator as a process (scenarios: kvscale.testing.chaos)."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kubernetes import client

from kvscale.testing import chaos
from kvscale.testing.cluster import LocalCluster
from kvscale.testing.fleet import NodePool
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


def test_a_second_writer_loses_nothing(api, namespace: str, cluster: LocalCluster, operator: OperatorProcess) -> None:  # type: ignore[no-untyped-def]
    report = chaos.conflicting_writer(cluster, api, namespace, seconds=15)
    print(f"\n{report.foreign_writes} foreign writes, {report.operator_conflicts} conflicts answered")
    assert report.converged, report.problems
    assert report.foreign_condition.startswith("write "), "the other client's condition was lost"
    assert {"Planned", "Ready", "Available"} <= set(report.own_conditions), report.own_conditions
    assert "kept changing under us" not in operator.log_tail(200)


# ----- hostile input ------------------------------------------------------------------------------------

JUNK = st.one_of(st.none(), st.booleans(), st.integers(-2**40, 2**40),
                 st.floats(allow_nan=False, allow_infinity=False, width=32), st.text(max_size=30),
                 st.lists(st.integers(-3, 3), max_size=3), st.dictionaries(st.text(min_size=1, max_size=5),
                                                                           st.integers(), max_size=2))


def field(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(valid, valid, JUNK)  # mostly plausible, often not


MODELS = st.sampled_from(["Qwen/Qwen2.5-0.5B-Instruct", "meta-llama/Llama-3.1-8B-Instruct",
                          "meta-llama/Llama-3.1-405B-Instruct", "acme/unknown-7b", ""])
SPECS = st.fixed_dictionaries({
    "model": st.fixed_dictionaries({"name": field(MODELS)}, optional={
        "uri": field(st.sampled_from(["s3://b/m", "pvc://c/p", "gs://", "ftp://x", "/models/x", "pvc://"])),
        "sizeGiB": field(st.floats(0, 5000)), "hfTokenSecret": field(st.text(max_size=300))}),
    "serving": st.fixed_dictionaries({"maxModelLen": field(st.integers(-10, 2**31))}, optional={
        "targetConcurrency": field(st.integers(-1, 10**6)), "gpuMemoryUtilization": field(st.floats(-1, 2)),
        "kvCacheDtype": field(st.sampled_from(["auto", "fp8", "fp4", "int3"])),
        "maxNumSeqs": field(st.integers(-1, 10**6)), "blockSize": field(st.sampled_from([1, 8, 16, 17, 128, 4096]))}),
}, optional={
    "placement": st.fixed_dictionaries({}, optional={
        "gpuTypes": field(st.lists(st.sampled_from(["L4", "H100-80GB", "MI300X", "TPU-v5"]), max_size=4)),
        "quantization": field(st.lists(st.sampled_from(["auto", "fp8", "awq", "int3", "bitsandbytes"]), max_size=3)),
        "tensorParallelSize": field(st.integers(-1, 64)), "maxGPUsPerReplica": field(st.integers(-1, 64))}),
    "autoscaling": st.fixed_dictionaries({"enabled": st.just(False)}, optional={
        "minReplicas": field(st.integers(-5, 2000)), "maxReplicas": field(st.integers(-5, 2000)),
        "targetKVCacheUtilization": field(st.floats(-1, 2)),
        "metrics": field(st.fixed_dictionaries({"type": st.sampled_from(["pod", "prometheus", "statsd"])},
                                               optional={"prometheusURL": st.text(max_size=50)}))}),
    "vllm": st.fixed_dictionaries({}, optional={
        "extraArgs": field(st.lists(st.sampled_from(["--enforce-eager", "--tensor-parallel-size", "4",
                                                     "--max-model-len=9", "--seed", "x" * 300]), max_size=5)),
        "port": field(st.integers(-1, 70000)), "image": field(st.text(max_size=600)),
        "drainSeconds": field(st.integers(-10, 10**6))}),
    "bogusField": JUNK,
})


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
    def submit(spec: dict[str, Any]) -> None:
        name = f"h{run}-{next(counter):04d}"
        body = {"apiVersion": "kvscale.io/v1alpha1", "kind": "LLMDeployment", "metadata": {"name": name},
                "spec": {**spec, "replicas": 0}}  # no pods: what is under test is admission and reconcile
        ok, message = chaos.admission(api, namespace, body)
        (created.append(name) if ok else rejected.append(message))

    submit()

    def new_log() -> str:
        with operator.log_path.open("rb") as fh:
            fh.seek(offset)
            return fh.read().decode(errors="replace")

    report = chaos.settle_hostile(api, namespace, created, rejected, new_log, operator)
    print(f"\n{report.generated} generated: {report.rejected} refused at admission, "
          f"{report.generated - report.rejected} created: {report.reconciled}")
    assert report.generated >= 500
    assert report.rejected_unnamed == [], report.rejected_unnamed
    assert report.unexplained == [], report.unexplained
    assert report.tracebacks == 0, new_log()[-4000:]
    assert report.operator_restarts == 0
