"""Re-planning after failed starts: what the failure teaches, bounded, never changing what the user fixed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kvscale.operator.discovery import gpu_options
from kvscale.operator.reconcile import reconcile, spec_hash
from kvscale.operator.startup_failures import StartupCause, StartupFailure, classify_log
from kvscale.operator.startup_replan import MAX_STARTUP_REPLANS, failure_record, lessons, new_failure
from kvscale.testing.fleet import DEFAULT_FLEET, fleet_manifests

from .test_operator_pure import CAT, T0, applied, at, ready

DATA = Path(__file__).parent / "data"
NODES = gpu_options(ready(fleet_manifests(DEFAULT_FLEET)), CAT)


def raw(**placement: Any) -> dict[str, Any]:
    return {"model": {"name": "meta-llama/Llama-3.1-8B-Instruct"},
            "serving": {"maxModelLen": 8192, "targetConcurrency": 4},
            "placement": {"gpuTypes": ["L4", "H100-80GB"], **placement}}


def failed_once(spec: dict[str, Any], cause: StartupFailure) -> tuple[dict[str, Any], dict[str, Any]]:
    """The status after the first plan was applied and one of its replicas failed with ``cause``."""
    status = applied(reconcile("m", "ns", "u", 1, spec, {}, NODES, CAT, T0))
    record = failure_record(cause, status["plan"], status["planHash"], spec_hash(spec), at(200))
    assert record is not None
    return status, {**status, "startupFailures": [record]}


def kv_too_small(available_gib: float) -> StartupFailure:
    return StartupFailure(StartupCause.KV_TOO_SMALL, "ValueError: To serve at least one request ...", 8192, 1.0,
                          available_gib, 1000)


def test_kv_too_small_reserves_what_vllm_did_not_have_and_moves_to_the_next_layout() -> None:
    spec = raw()
    before, status = failed_once(spec, kv_too_small(0.5))
    first = before["plan"]
    assert (first["gpu"], first["tensorParallelSize"]) == ("L4", 1)  # the cheapest, at first
    record = status["startupFailures"][0]
    assert record["missingGiB"] == round(first["kvCacheGiB"] - 0.5, 2)
    rec = reconcile("m", "ns", "u", 1, spec, status, NODES, CAT, at(201), children=dict(status["children"]))
    assert rec.plan_changed and rec.apply
    again = rec.status["plan"]
    assert (again["gpu"], again["tensorParallelSize"]) != ("L4", 1)
    # the planner saw the reserve: the same GPU type now predicts at most what vLLM had, plus nothing
    if again["gpu"] == "L4":
        assert again["kvCacheGiB"] <= first["kvCacheGiB"] - record["missingGiB"] + 0.01
    assert any("failed to start" in r for r in rec.status["rejected"])
    assert [e.reason for e in rec.events][:1] == ["Replanning"]
    assert rec.events[0].message.startswith(f"{record['gpu']} TP{record['tensorParallelSize']} (")  # the layout


def test_a_fixed_tensor_parallel_size_stays_fixed_and_the_spec_is_reported_unplannable() -> None:
    spec = raw(gpuTypes=["L4"], tensorParallelSize=1)
    _, status = failed_once(spec, kv_too_small(0.5))
    rec = reconcile("m", "ns", "u", 1, spec, status, NODES, CAT, at(201), children=dict(status["children"]))
    assert not rec.apply  # the running Deployment stays
    planned = rec.conditions[0]
    assert planned[:3] == ("Planned", False, "InsufficientGPUMemory")
    assert "failed to start" in " ".join(rec.status["rejected"])


def test_after_the_last_allowed_replan_the_plan_is_kept() -> None:
    spec = raw()
    status = applied(reconcile("m", "ns", "u", 1, spec, {}, NODES, CAT, T0))
    for i in range(MAX_STARTUP_REPLANS + 1):
        record = failure_record(kv_too_small(0.5), status["plan"], status["planHash"], spec_hash(spec), at(i))
        assert record is not None
        status = {**status, "startupFailures": [*status.get("startupFailures", []), record]}
        rec = reconcile("m", "ns", "u", 1, spec, status, NODES, CAT, at(i + 1), children=dict(status["children"]))
        if i < MAX_STARTUP_REPLANS:
            assert rec.plan_changed, i
            status = applied(rec, status)
    assert not rec.plan_changed and not rec.apply  # the fourth failure: no more churn


def test_a_changed_spec_forgets_the_failures_and_host_memory_is_no_reason_to_replan() -> None:
    spec = raw()
    _, status = failed_once(spec, kv_too_small(0.5))
    changed = {**spec, "serving": {"maxModelLen": 4096, "targetConcurrency": 4}}
    reserved, excluded = lessons([r for r in status["startupFailures"] if r["specHash"] == spec_hash(changed)])
    assert reserved == {} and excluded == {}
    oom = StartupFailure(StartupCause.HOST_OUT_OF_MEMORY, "OOMKilled (exit code 137)")
    assert failure_record(oom, status["plan"], status["planHash"], spec_hash(spec), at(1)) is None


def test_only_a_replica_of_the_current_plan_not_yet_on_record_is_a_new_failure() -> None:
    spec = raw()
    status = applied(reconcile("m", "ns", "u", 1, spec, {}, NODES, CAT, T0))
    cause = classify_log((DATA / "vllm_0.32_kv_too_small.log").read_text())
    assert cause is not None

    def pod(name: str, plan_hash: str) -> dict[str, Any]:
        return {"metadata": {"name": name, "annotations": {"kvscale.io/plan-hash": plan_hash}}}

    old = [pod("old-0", "stale")]
    assert new_failure(old, {"old-0": cause}, status, spec_hash(spec), at(1)) is None
    current = [pod("new-0", status["planHash"])]
    record = new_failure(current, {"new-0": cause}, status, spec_hash(spec), at(1))
    assert record is not None and record["cause"] == "KVCacheTooSmall" and record["missingGiB"] > 0
    assert new_failure(current, {"new-0": cause}, {**status, "startupFailures": [record]}, spec_hash(spec),
                       at(2)) is None


def _pod(name: str, plan_hash: str, ready: bool = False, created: str = "2026-12-01T10:00:00Z",
         revision: str = "r1", deleting: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": "ns", "creationTimestamp": created,
                            "labels": {"pod-template-hash": revision},
                            "annotations": {"kvscale.io/plan-hash": plan_hash}}
    if deleting:
        meta["deletionTimestamp"] = "2026-12-01T10:05:00Z"
    return {"metadata": meta, "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}


def test_a_failed_start_counts_only_for_pods_of_the_current_template_that_never_served() -> None:
    from kvscale.operator.autoscale import current_revision

    spec = raw()
    status = applied(reconcile("m", "ns", "u", 1, spec, {}, NODES, CAT, T0))
    h, key = status["planHash"], spec_hash(spec)
    cause = {"old": kv_too_small(0.5), "new": kv_too_small(0.5)}
    # an old-template pod (a spec change kept the layout) still crash-looping, beside the new template's first pod
    pods = [_pod("old", h, revision="r1"), _pod("new", h, created="2026-12-01T10:01:00Z", revision="r2"),
            _pod("gone", h, created="2026-12-01T10:02:00Z", revision="r3", deleting=True)]
    assert [p["metadata"]["name"] for p in current_revision(pods)] == ["new"]
    only_old = {"old": cause["old"]}
    assert new_failure(current_revision(pods), only_old, status, key, at(300)) is None
    assert new_failure(current_revision(pods), cause, status, key, at(300)) is not None
    # it served before (a runtime OOM), or another replica of the plan is Ready: not the plan's failure
    assert new_failure(current_revision(pods), cause, status, key, at(300), served={"new"}) is None
    ready = [*pods, _pod("fine", h, ready=True, created="2026-12-01T10:00:30Z", revision="r2")]
    assert new_failure(current_revision(ready), cause, status, key, at(300)) is None


def test_a_second_failure_reserves_what_the_first_reserved_plus_what_it_missed() -> None:
    spec = raw()
    _, status = failed_once(spec, kv_too_small(0.5))
    first = status["startupFailures"][0]
    reserved, _ = lessons([first])
    second = {**first, "planHash": "other", "tensorParallelSize": 2, "missingGiB": 1.0,
              "reservedBytes": reserved["L4"]}
    both, _ = lessons([first, second])
    assert both["L4"] == reserved["L4"] + 2**30
    # an entry edited by hand teaches nothing, and breaks nothing
    assert lessons([{"cause": "KVCacheTooSmall"}, {**first, "quantization": "nonsense"}]) == ({}, {})
