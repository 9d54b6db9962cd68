"""Pure operator pieces: GPU discovery, rendering, reconciliation decisions, conditions, CRD schema."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from kvscale.estimator.gpus import default_catalog
from kvscale.operator import conditions as c
from kvscale.operator.crd import crd
from kvscale.operator.discovery import gpu_options
from kvscale.operator.planning import decide_plan
from kvscale.operator.reconcile import REPLAN_GRACE_S, child_key, reconcile
from kvscale.operator.render import render
from kvscale.operator.resource import LLMDeploymentSpec
from kvscale.testing.fleet import DEFAULT_FLEET, fleet_manifests

CAT = default_catalog()


def ready(nodes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for n in nodes:
        n["status"]["conditions"] = [{"type": "Ready", "status": "True"}]
    return nodes


def spec(**serving: Any) -> LLMDeploymentSpec:
    raw = {"model": {"name": "meta-llama/Llama-3.1-8B-Instruct"},
           "serving": {"maxModelLen": 8192, "targetConcurrency": 4, **serving}}
    return LLMDeploymentSpec.model_validate(raw)


def test_discovery_reads_product_labels_and_allocatable() -> None:
    opts = gpu_options(ready(fleet_manifests(DEFAULT_FLEET)), CAT)
    assert {k: (o.gpus_per_node, o.nodes) for k, o in opts.items()} == {
        "H100-80GB": (8, 2), "A100-80GB": (8, 2), "L4": (1, 4)}


def test_discovery_skips_not_ready_and_cordoned_nodes() -> None:
    nodes = ready(fleet_manifests(DEFAULT_FLEET))
    for n in nodes:
        if "h100" in n["metadata"]["name"]:
            n["spec"]["unschedulable"] = True
    nodes[-1]["status"]["conditions"] = [{"type": "Ready", "status": "False"}]
    opts = gpu_options(nodes, CAT)
    assert "H100-80GB" not in opts and opts["L4"].nodes == 3


def test_render_sets_vllm_args_gpus_affinity_and_owner() -> None:
    s = spec(kvCacheDtype="fp8")
    outcome = decide_plan(s, gpu_options(ready(fleet_manifests(DEFAULT_FLEET)), CAT), CAT)
    assert outcome.plan is not None
    dep, svc, _pdb = render("m", "ns", "uid-1", s, outcome.plan, CAT, "h", 2)
    pod = dep["spec"]["template"]["spec"]
    args = pod["containers"][0]["args"]
    assert args[args.index("--kv-cache-dtype") + 1] == "fp8"
    assert args[args.index("--tensor-parallel-size") + 1] == str(outcome.plan.tensor_parallel_size)
    gpu = CAT.get(outcome.plan.gpu)
    assert pod["containers"][0]["resources"]["limits"][gpu.resource_name] == str(outcome.plan.tensor_parallel_size)
    expr = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0]
    assert expr["matchExpressions"][0]["values"] == list(gpu.product_labels)
    assert any(t["key"] == gpu.resource_name for t in pod["tolerations"])
    assert dep["spec"]["replicas"] == 2
    assert dep["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    assert any(v["name"] == "dshm" for v in pod["volumes"])


def applied(rec: Any, status: dict[str, Any] | None = None, gen: int = 1) -> dict[str, Any]:
    """The status after the handler applied ``rec``: children recorded as the apiserver echoes them."""
    children = {child_key(o): f"g{gen}" if o["kind"] != "Service" else "r7" for o in rec.apply}
    conds = c.set_condition([], "Planned", True, "Planned", "x", gen, T0)
    return {**(status or {}), **rec.status, "conditions": conds, "children": children or (status or {})["children"]}


T0 = "2026-12-01T10:00:00+00:00"


def at(seconds: float) -> str:
    return (dt.datetime.fromisoformat(T0) + dt.timedelta(seconds=seconds)).isoformat()


def test_reconcile_writes_nothing_when_unchanged() -> None:
    nodes = gpu_options(ready(fleet_manifests(DEFAULT_FLEET)), CAT)
    raw = spec().model_dump(by_alias=True, mode="json", exclude_none=True)
    first = reconcile("m", "ns", "u", 1, raw, {}, nodes, CAT, T0)
    assert first.apply and first.status and first.plan_changed
    status = applied(first)
    again = reconcile("m", "ns", "u", 1, raw, status, nodes, CAT, at(1), children=dict(status["children"]))
    assert not again.apply and not again.status and not again.events


def test_a_deleted_or_edited_child_is_applied_again_without_a_new_plan() -> None:
    nodes = gpu_options(ready(fleet_manifests(DEFAULT_FLEET)), CAT)
    raw = spec().model_dump(by_alias=True, mode="json", exclude_none=True)
    status = applied(reconcile("m", "ns", "u", 1, raw, {}, nodes, CAT, T0))
    for live in ({k: v for k, v in status["children"].items() if k != "Service/m"},  # deleted
                 {**status["children"], "Deployment/m": "g2"}):  # edited by hand
        rec = reconcile("m", "ns", "u", 1, raw, status, nodes, CAT, at(1), children=live)
        assert sorted(child_key(o) for o in rec.apply) == sorted(status["children"])
        assert not rec.plan_changed and rec.status["planHash"] == status["planHash"]
        assert [e.reason for e in rec.events] == ["ChildRestored"]


def test_a_scale_keeps_the_plan_whatever_nodes_are_ready() -> None:
    fleet = ready(fleet_manifests(DEFAULT_FLEET))
    raw = {**spec().model_dump(by_alias=True, mode="json", exclude_none=True), "replicas": 1}
    first = reconcile("m", "ns", "u", 1, raw, {}, gpu_options(fleet, CAT), CAT, T0)
    status = applied(first)
    gpu = status["plan"]["gpu"]
    for n in fleet:  # every node of the planned type cordoned
        if n["metadata"]["labels"].get("nvidia.com/gpu.product") in CAT.get(gpu).product_labels:
            n["spec"]["unschedulable"] = True
    cordoned = gpu_options(fleet, CAT)
    assert gpu not in cordoned
    scaled = reconcile("m", "ns", "u", 2, {**raw, "replicas": 3}, status, cordoned, CAT, at(10),
                       children=dict(status["children"]))
    dep = next(o for o in scaled.apply if o["kind"] == "Deployment")
    assert dep["spec"]["replicas"] == 3 and scaled.status["desiredReplicas"] == 3
    assert scaled.status["planHash"] == status["planHash"] and not scaled.plan_changed
    # the same pods: no rollout onto other GPUs
    assert next(o for o in first.apply if o["kind"] == "Deployment")["spec"]["template"] == dep["spec"]["template"]
    assert scaled.status["planUnavailableSince"] == at(10)
    assert [e.reason for e in scaled.events] == ["PlanUnavailable"]

    status = applied(scaled, status, gen=2)
    held = reconcile("m", "ns", "u", 2, {**raw, "replicas": 3}, status, cordoned, CAT, at(200),
                     children=dict(status["children"]))
    assert not held.apply and not held.events  # inside the grace: nothing moves
    moved = reconcile("m", "ns", "u", 2, {**raw, "replicas": 3}, status, cordoned, CAT, at(10 + REPLAN_GRACE_S),
                      children=dict(status["children"]))
    assert moved.plan_changed and moved.status["plan"]["gpu"] != gpu
    assert [e.reason for e in moved.events] == ["Replanning", "Planned"]
    assert moved.status["planUnavailableSince"] is None


def test_a_spec_that_cannot_be_planned_keeps_the_fleet_and_still_scales() -> None:
    nodes = gpu_options(ready(fleet_manifests(DEFAULT_FLEET)), CAT)
    raw = {**spec().model_dump(by_alias=True, mode="json", exclude_none=True), "replicas": 2}
    status = applied(reconcile("m", "ns", "u", 1, raw, {}, nodes, CAT, T0))
    impossible = {**raw, "replicas": 4, "model": {"name": "meta-llama/Llama-3.1-405B-Instruct"},
                  "placement": {"gpuTypes": ["L4"]}}
    rec = reconcile("m", "ns", "u", 2, impossible, status, nodes, CAT, at(5), children=dict(status["children"]))
    assert not rec.apply and rec.scale == 4 and rec.status["desiredReplicas"] == 4
    assert rec.conditions[0][:3] == ("Planned", False, "InsufficientGPUMemory")
    assert "plan" not in rec.status  # the running plan is still what status says


def test_reconcile_reports_invalid_and_infeasible_specs() -> None:
    nodes = gpu_options(ready(fleet_manifests(DEFAULT_FLEET)), CAT)
    bad = reconcile("m", "ns", "u", 1, {"model": {"name": "x"}}, {}, nodes, CAT, "t")
    assert bad.conditions[0][:3] == ("Planned", False, "InvalidSpec") and "spec.serving" in bad.conditions[0][3]
    raw = {"model": {"name": "meta-llama/Llama-3.1-405B-Instruct"}, "serving": {"maxModelLen": 8192},
           "placement": {"gpuTypes": ["L4"]}}
    huge = reconcile("m", "ns", "u", 1, raw, {}, nodes, CAT, "t")
    assert not huge.apply and huge.conditions[0][2] == "InsufficientGPUMemory"
    assert "GiB" in huge.conditions[0][3] and huge.events[0].type == "Warning"


def test_condition_transition_time_moves_only_on_flip() -> None:
    conds = c.set_condition([], "Available", True, "A", "m", 1, "t0")
    conds = c.set_condition(conds, "Available", True, "A", "m2", 1, "t1")
    assert conds[0]["lastTransitionTime"] == "t0" and conds[0]["message"] == "m2"
    conds = c.set_condition(conds, "Available", False, "B", "m3", 1, "t2")
    assert conds[0]["lastTransitionTime"] == "t2"


def test_crd_schema_is_structural_with_cel_rules_and_subresources() -> None:
    doc = crd()
    text = json.dumps(doc)
    assert "$ref" not in text and "anyOf" not in text and '"title"' not in text
    version = doc["spec"]["versions"][0]
    schema = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    rules = schema["properties"]["autoscaling"]["x-kubernetes-validations"]
    assert any("minReplicas <= self.maxReplicas" in r["rule"] for r in rules)
    assert version["subresources"]["scale"]["specReplicasPath"] == ".spec.replicas"
    assert schema["properties"]["serving"]["properties"]["maxModelLen"]["description"]
    assert {col["name"] for col in version["additionalPrinterColumns"]} >= {"GPU", "TP", "Quant", "KV-Util"}


def _pod(name: str, **container: object) -> dict[str, object]:
    return {"metadata": {"name": name, "namespace": "ns"},
            "status": {"phase": "Running", "containerStatuses": [{"name": "vllm", **container}]}}


def test_pod_failures_names_pod_reason_exit_code_and_restarts() -> None:
    from kvscale.operator.autoscale import pod_failures

    oom = _pod("a", ready=False, restartCount=2, state={"waiting": {"reason": "CrashLoopBackOff"}},
               lastState={"terminated": {"reason": "OOMKilled", "exitCode": 137}})
    pull = _pod("b", ready=False, restartCount=0, state={"waiting": {"reason": "ImagePullBackOff"}})
    starting = _pod("c", ready=False, restartCount=0, state={"running": {}})
    recovered = _pod("d", ready=True, restartCount=1, lastState={"terminated": {"reason": "Error", "exitCode": 137}})
    found = pod_failures([oom, pull, starting, recovered])
    assert list(found.values()) == ["pod a container vllm: OOMKilled, exit code 137, CrashLoopBackOff, 2 restarts",
                                    "pod b container vllm: ImagePullBackOff, 0 restarts"]
    assert list(found) == ["pod a container vllm: OOMKilled", "pod b container vllm: ImagePullBackOff"]


def test_classify_pods_keeps_a_live_server_that_fails_readiness_apart_from_a_broken_one() -> None:
    from kvscale.operator.autoscale import classify_pods

    def pod(name: str, ready: bool, state: dict[str, object], ip: str | None = "10.0.0.1",
            **meta: object) -> dict[str, object]:
        p = _pod(name, ready=ready, state=state)
        p["metadata"] = {"name": name, "namespace": "ns", **meta}
        st = p["status"]
        assert isinstance(st, dict)
        st["conditions"] = [{"type": "Ready", "status": str(ready)}]
        if ip:
            st["podIP"] = ip
        return p

    serving = pod("serving", True, {"running": {}})
    overloaded = pod("overloaded", False, {"running": {}})
    restarting = pod("restarting", False, {"waiting": {"reason": "CrashLoopBackOff"}})
    no_ip = pod("no-ip", False, {"running": {}}, ip=None)
    leaving = pod("leaving", True, {"running": {}}, deletionTimestamp="2026-01-01T00:00:00Z")
    unplaced = {"metadata": {"name": "unplaced", "namespace": "ns"}, "status": {"phase": "Pending", "conditions": [
        {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
         "message": "0/3 nodes: 3 Insufficient"}]}}
    view = classify_pods([serving, overloaded, restarting, no_ip, leaving, unplaced], 8000)
    assert [t.pod for t in view.ready] == ["serving"]
    assert [t.pod for t in view.unready] == ["overloaded"]
    assert view.pending == 1  # no-ip is starting; the leaving pod is not counted at all
    assert view.failed == 1  # the crash-looping one is broken, not starting: it does not hold scaling
    assert (view.unschedulable, view.unschedulable_reason) == (1, "0/3 nodes: 3 Insufficient")


def test_ready_summarises_planned_available_and_a_stuck_rollout() -> None:
    def conds(*items: tuple[str, bool, str]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for ctype, ok, reason in items:
            out = c.set_condition(out, ctype, ok, reason, f"{reason} says so", 1, T0)
        return out

    assert c.readiness([]) == (False, "NotPlanned", "no plan yet")
    assert c.readiness(conds(("Planned", False, "InsufficientGPUMemory")))[:2] == (False, "InsufficientGPUMemory")
    assert c.readiness(conds(("Planned", True, "Planned"), ("Available", True, "ReplicasNotReady")))[:2] == (
        False, "ReplicasNotReady")
    assert c.readiness(conds(("Planned", True, "Planned"), ("Available", True, "ReplicasReady"))) == (
        True, "Ready", "ReplicasReady says so")
    stuck = conds(("Planned", True, "Planned"), ("Available", True, "ReplicasReady"),
                  ("Progressing", False, "ProgressDeadlineExceeded"))
    assert c.readiness(stuck)[:2] == (False, "ProgressDeadlineExceeded")
