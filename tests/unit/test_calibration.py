"""Plans that learn from live replicas: what a replica allocated replaces the estimate of its layout."""

from __future__ import annotations

from typing import Any

import pytest

from kvscale.autoscaler.snapshot import ReplicaMetrics
from kvscale.estimator.catalog import resolve_model
from kvscale.estimator.gpus import GIB
from kvscale.estimator.memory import ServingConfig, estimate
from kvscale.estimator.vllm_profiles import profile_for
from kvscale.operator.calibration import calibration_key, measure, measured_bytes, observation, updated
from kvscale.operator.calibration_store import parse
from kvscale.operator.discovery import gpu_options
from kvscale.operator.reconcile import parse_spec, reconcile
from kvscale.operator.render import PLAN_HASH_ANNOTATION
from kvscale.testing.fleet import DEFAULT_FLEET, fleet_manifests

from .test_operator_pure import CAT, T0, applied, at, ready

NODES = gpu_options(ready(fleet_manifests(DEFAULT_FLEET)), CAT)
MODEL = "Qwen/Qwen2.5-7B-Instruct"
#: what the estimate leaves out in the "true" vLLM these tests measure against: a driver's reserve
MISSING_BYTES = int(1.5 * GIB)


def raw(**serving: Any) -> dict[str, Any]:
    return {"model": {"name": MODEL}, "serving": {"maxModelLen": 8192, "targetConcurrency": 16, **serving},
            "placement": {"gpuTypes": ["L4"]}}


def true_blocks(plan: dict[str, Any], block_size: int, extra_bytes: int = MISSING_BYTES) -> int:
    """The blocks a vLLM allocates whose non-torch overhead is ``extra_bytes`` above the shipped profile's:
    the estimator's overhead is wrong by that much."""
    base = profile_for("0.32")
    truth = base.model_copy(update={"non_torch_base_bytes": base.non_torch_base_bytes + extra_bytes})
    cfg = ServingConfig(tensor_parallel_size=plan["tensorParallelSize"], max_model_len=8192, block_size=block_size)
    return estimate(resolve_model(MODEL), CAT.get(plan["gpu"]), cfg, profile=truth).num_blocks


def replica(name: str, plan_hash: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "annotations": {PLAN_HASH_ANNOTATION: plan_hash}}}


def first_plan(spec: dict[str, Any]) -> dict[str, Any]:
    return applied(reconcile("m", "ns", "u", 1, spec, {}, NODES, CAT, T0))


def calibrated(spec: dict[str, Any], status: dict[str, Any], blocks: int, block_size: int = 16) -> dict[str, Any]:
    parsed = parse_spec(spec)
    assert not isinstance(parsed, str)
    record = measure(parsed, status["plan"], CAT, "m-0", blocks, block_size, at(100))
    learned = updated(list(status.get("calibration") or []), record)
    assert learned is not None
    return {**status, "calibration": learned}


@pytest.mark.parametrize("extra_gib", [1.5, -0.75])
def test_a_wrong_overhead_is_corrected_by_the_first_replicas_blocks(extra_gib: float) -> None:
    spec = raw()
    status = first_plan(spec)
    plan = status["plan"]
    got = true_blocks(plan, 16, int(extra_gib * GIB))
    assert abs(got - plan["kvCacheBlocks"]) > 100  # the estimate is off by far more than the tolerance
    status = calibrated(spec, status, got)
    rec = reconcile("m", "ns", "u", 1, spec, status, NODES, CAT, at(101), children=dict(status["children"]))
    assert not rec.plan_changed and not rec.apply  # the fleet stays where it is: nothing is rendered again
    assert rec.scale is None  # autoscaled (the default): the autoscaler owns the count
    # a fixed-size fleet is scaled to what the measured capacity needs, without a new template
    fixed = {**spec, "autoscaling": {"enabled": False}}
    before = first_plan(fixed)
    after_measure = calibrated(fixed, before, got)
    scaled = reconcile("m", "ns", "u", 1, fixed, after_measure, NODES, CAT, at(101),
                       children=dict(before["children"]))
    need = scaled.status["plan"]["replicasForTarget"]
    assert not scaled.apply and scaled.scale == (need if need != before["desiredReplicas"] else None)
    again = rec.status["plan"]
    assert abs(again["kvCacheBlocks"] - got) <= 1 and again["kvCacheMeasured"] is True
    assert (again["gpu"], again["tensorParallelSize"]) == (plan["gpu"], plan["tensorParallelSize"])
    # the replicas the target needs follow the measured capacity, not the estimate
    assert again["replicasForTarget"] >= plan["replicasForTarget"] if extra_gib > 0 else \
        again["replicasForTarget"] <= plan["replicasForTarget"]
    (event,) = [e for e in rec.events if e.reason == "Calibrated"]
    assert f"{again['kvCacheBlocks']:,} blocks" in event.message and f"was {plan['kvCacheBlocks']:,}" in event.message
    # once recorded, the same measurement writes nothing and moves nothing
    after = applied(rec, status)
    quiet = reconcile("m", "ns", "u", 1, spec, after, NODES, CAT, at(102), children=dict(after["children"]))
    assert not quiet.apply and not quiet.status and not quiet.events
    parsed = parse_spec(spec)
    assert not isinstance(parsed, str)
    same = measure(parsed, after["plan"], CAT, "m-1", got, 16, at(103))
    assert updated(after["calibration"], same) is None


def test_blocks_of_another_size_than_the_plans_are_converted() -> None:
    """vLLM may choose its own block size (MLA backends, the CPU backend): 128-token blocks count 8 of 16."""
    spec = raw()
    status = first_plan(spec)
    got16 = true_blocks(status["plan"], 16)
    status = calibrated(spec, status, got16 // 8, block_size=128)
    rec = reconcile("m", "ns", "u", 1, spec, status, NODES, CAT, at(101), children=dict(status["children"]))
    assert abs(rec.status["plan"]["kvCacheBlocks"] - (got16 // 8) * 8) <= 1


def test_another_llmdeployment_of_the_model_plans_with_the_shared_measurement_and_others_do_not() -> None:
    spec = raw()
    status = first_plan(spec)
    got = true_blocks(status["plan"], 16)
    shared = calibrated(spec, status, got)["calibration"]
    other = reconcile("n", "ns", "v", 1, spec, {}, NODES, CAT, T0, shared=shared)
    assert abs(other.status["plan"]["kvCacheBlocks"] - got) <= 1 and other.status["plan"]["kvCacheMeasured"]
    assert any("as a live replica of this layout allocated it" in e.message for e in other.events)
    # another KV dtype, model, vLLM line or engine arguments: the measurement says nothing about them
    for changed in (raw(kvCacheDtype="fp8"), {**raw(), "model": {"name": "Qwen/Qwen2.5-3B-Instruct"}},
                    {**raw(), "vllm": {"image": "vllm/vllm-openai:v0.10.2"}},
                    {**raw(), "vllm": {"extraArgs": ["--enforce-eager"]}}):
        parsed = parse_spec(changed)
        assert not isinstance(parsed, str)
        assert measured_bytes(shared, parsed) == {}
        assert reconcile("n", "ns", "v", 1, changed, {}, NODES, CAT, T0, shared=shared).status["plan"][
            "kvCacheMeasured"] is False


def test_the_objects_own_measurement_wins_over_a_shared_one() -> None:
    spec = raw()
    status = first_plan(spec)
    own = calibrated(spec, status, true_blocks(status["plan"], 16))
    theirs = calibrated(spec, status, true_blocks(status["plan"], 16, 3 * GIB))["calibration"]
    parsed = parse_spec(spec)
    assert not isinstance(parsed, str)
    (value,) = measured_bytes([*own["calibration"], *theirs], parsed).values()
    assert value == own["calibration"][0]["unaccountedBytes"]


def test_only_replicas_of_the_current_plan_are_read() -> None:
    metrics = {"old": ReplicaMetrics(0.1, 1, 0, 0, num_gpu_blocks=900, block_size=16),
               "new": ReplicaMetrics(0.1, 1, 0, 0, num_gpu_blocks=800, block_size=16),
               "quiet": ReplicaMetrics(0.1, 1, 0, 0)}
    pods = [replica("old", "a"), replica("new", "b"), replica("quiet", "b")]
    assert observation(metrics, pods, "b") == ("new", 800, 16)
    assert observation(metrics, pods, "c") is None
    assert observation(metrics, pods, None) is None


def test_the_shared_configmap_keeps_one_entry_per_layout_and_skips_what_is_not_a_record() -> None:
    spec = raw()
    status = first_plan(spec)
    record = calibrated(spec, status, 1000)["calibration"][0]
    key = calibration_key(record)
    assert key.startswith("Qwen_Qwen2.5-7B-Instruct.L4.tp1.") and "/" not in key
    import json

    partial = json.dumps({"model": record["model"], "gpu": "L4"})  # by hand, or another version's
    assert parse({key: json.dumps(record), "junk": "{not json", "list": "[1]", "partial": partial}) == [record]
    newer = {**record, "measuredBlocks": 1100, "time": at(200)}
    assert updated([record], newer) == [newer]
    # another replica a few blocks off is the same measurement: nothing to write, nothing to re-plan
    assert updated([record], {**record, "measuredBlocks": 1004, "pod": "m-7"}) is None
