"""Pure operator pieces: GPU discovery, rendering, reconciliation decisions, conditions, CRD schema."""

from __future__ import annotations

import json
from typing import Any

from kvscale.estimator.gpus import default_catalog
from kvscale.operator import conditions as c
from kvscale.operator.crd import crd
from kvscale.operator.discovery import gpu_options
from kvscale.operator.planning import decide_plan
from kvscale.operator.reconcile import reconcile
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


def test_reconcile_writes_nothing_when_unchanged() -> None:
    nodes = gpu_options(ready(fleet_manifests(DEFAULT_FLEET)), CAT)
    raw = spec().model_dump(by_alias=True, mode="json", exclude_none=True)
    first = reconcile("m", "ns", "u", 1, raw, {}, nodes, CAT, "t0")
    assert first.apply and first.status and first.plan_changed
    status = {**first.status, "conditions": c.set_condition([], "Planned", True, "Planned", "x", 1, "t0")}
    again = reconcile("m", "ns", "u", 1, raw, status, nodes, CAT, "t1")
    assert not again.apply and not again.status and not again.events


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
    from kvscale.operator.autoscale import failure_key, pod_failures

    oom = _pod("a", ready=False, restartCount=2, state={"waiting": {"reason": "CrashLoopBackOff"}},
               lastState={"terminated": {"reason": "OOMKilled", "exitCode": 137}})
    pull = _pod("b", ready=False, restartCount=0, state={"waiting": {"reason": "ImagePullBackOff"}})
    starting = _pod("c", ready=False, restartCount=0, state={"running": {}})
    recovered = _pod("d", ready=True, restartCount=1, lastState={"terminated": {"reason": "Error", "exitCode": 137}})
    lines = pod_failures([oom, pull, starting, recovered])
    assert lines == ["pod a container vllm: OOMKilled, exit code 137, CrashLoopBackOff, 2 restarts",
                     "pod b container vllm: ImagePullBackOff, 0 restarts"]
    assert failure_key(lines[0]) == "pod a container vllm: OOMKilled, exit code 137, CrashLoopBackOff"


def test_classify_pods_keeps_a_live_server_that_fails_readiness_apart_from_one_restarting() -> None:
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
    assert view.pending == 2  # restarting and no-ip; the leaving pod is not counted at all
    assert (view.unschedulable, view.unschedulable_reason) == (1, "0/3 nodes: 3 Insufficient")
