"""The operator against the real control plane with kwok GPU nodes."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from kvscale.estimator.catalog import resolve_model
from kvscale.estimator.gpus import default_catalog
from kvscale.estimator.planner import GPUOption, LatencySLO, LoadTarget, PlanRequest, plan
from kvscale.operator.resource import GROUP, PLURAL, VERSION
from kvscale.testing import waiting
from kvscale.testing.cluster import LocalCluster

pytestmark = pytest.mark.cluster


def wait_for(pred: Callable[[], Any], timeout: float = 60, what: str = "condition") -> Any:
    """Poll; a 404 (object not created yet) means "not yet"."""
    return waiting.wait_for(pred, timeout, what,
                            not_yet=lambda e: isinstance(e, ApiException) and e.status == 404)


def llmd(name: str, model: str = "meta-llama/Llama-3.1-70B-Instruct", max_len: int = 32768,
         gpus: list[str] | None = None, concurrency: int = 16, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "LLMDeployment", "metadata": {"name": name},
        "spec": {"model": {"name": model}, "serving": {"maxModelLen": max_len, "targetConcurrency": concurrency},
                 "placement": {"gpuTypes": gpus if gpus is not None else ["H100-80GB", "L4"]},
                 "autoscaling": {"enabled": False}},
    }
    for key, value in spec.items():
        body["spec"][key] = value
    return body


def get(api: Any, ns: str, name: str) -> dict[str, Any]:
    return dict(client.CustomObjectsApi(api).get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name))


def condition(obj: dict[str, Any], ctype: str) -> dict[str, Any] | None:
    return next((c for c in (obj.get("status") or {}).get("conditions", []) if c["type"] == ctype), None)


def create(api: Any, ns: str, body: dict[str, Any]) -> None:
    client.CustomObjectsApi(api).create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, body)


def events_for(api: Any, ns: str, name: str) -> list[Any]:
    return [e for e in client.CoreV1Api(api).list_namespaced_event(ns).items if e.involved_object.name == name]


def expected_plan(model: str, max_len: int, gpus: list[str]) -> Any:
    """What the planner says for the kwok fleet (H100 and A100 nodes have 8 GPUs, L4 nodes 1)."""
    cat = default_catalog()
    per_node = {"H100-80GB": 8, "A100-80GB": 8, "L4": 1}
    nodes = {"H100-80GB": 2, "A100-80GB": 2, "L4": 4}
    opts = tuple(GPUOption(gpu=cat.get(g), gpus_per_node=per_node[g], nodes=nodes[g]) for g in sorted(gpus))
    return plan(resolve_model(model), PlanRequest(max_model_len=max_len, concurrency=16, options=opts)).best


def test_70b_is_planned_on_h100_and_runs(api, namespace: str, operator, cluster: LocalCluster) -> None:  # type: ignore[no-untyped-def]
    create(api, namespace, llmd("llama70b"))
    obj = wait_for(lambda: (o := get(api, namespace, "llama70b")).get("status", {}).get("plan") and o,
                   what="plan in status")
    want = expected_plan("meta-llama/Llama-3.1-70B-Instruct", 32768, ["H100-80GB", "L4"])
    p = obj["status"]["plan"]
    assert (p["gpu"], p["tensorParallelSize"], p["quantization"]) == (
        want.gpu, want.tensor_parallel_size, want.quantization.value)
    assert p["gpu"] == "H100-80GB" and p["tensorParallelSize"] >= 2
    assert condition(obj, "Planned")["status"] == "True"

    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    dep = wait_for(lambda: apps.read_namespaced_deployment("llama70b", namespace), what="Deployment")
    c = dep.spec.template.spec.containers[0]
    assert c.resources.limits["nvidia.com/gpu"] == str(p["tensorParallelSize"])
    args = c.args
    assert args[args.index("--tensor-parallel-size") + 1] == str(p["tensorParallelSize"])
    assert args[args.index("--max-model-len") + 1] == "32768"
    assert dep.metadata.owner_references[0].kind == "LLMDeployment"
    wait_for(lambda: (o := get(api, namespace, "llama70b")) and (cnd := condition(o, "Available"))
             and cnd["status"] == "True", what="Available=True")
    pods = core.list_namespaced_pod(namespace, label_selector="kvscale.io/llmdeployment=llama70b").items
    assert pods and all(core.read_node(pd.spec.node_name).metadata.labels["nvidia.com/gpu.product"]
                        == "NVIDIA-H100-80GB-HBM3" for pd in pods)
    table = cluster.kubectl("get", "llmd", "llama70b", "-n", namespace).stdout
    assert re.search(r"llama70b\s+meta-llama/Llama-3.1-70B-Instruct\s+H100-80GB\s+\d+\s+bf16\s+1\s+1", table), table
    reasons = {e.reason for e in events_for(api, namespace, "llama70b")}
    assert "Planned" in reasons
    assert "kvscale_reconciles_total" in operator.metrics()


def roll_max_model_len(api: Any, ns: str, name: str, max_len: int) -> Any:
    """Change spec.serving.maxModelLen; the vLLM Deployment once its template carries the new value."""
    client.CustomObjectsApi(api).patch_namespaced_custom_object(
        GROUP, VERSION, ns, PLURAL, name, {"spec": {"serving": {"maxModelLen": max_len}}})

    def rolled() -> Any:
        d = client.AppsV1Api(api).read_namespaced_deployment(name, ns)
        a = d.spec.template.spec.containers[0].args
        return a[a.index("--max-model-len") + 1] == str(max_len) and d

    return wait_for(rolled, what="new --max-model-len")


def test_spec_change_replans_and_rolls_out(api, namespace: str, operator) -> None:  # type: ignore[no-untyped-def]
    create(api, namespace, llmd("roll", model="meta-llama/Llama-3.1-8B-Instruct", max_len=8192, gpus=["L4"],
                               concurrency=2))
    apps = client.AppsV1Api(api)
    dep = wait_for(lambda: apps.read_namespaced_deployment("roll", namespace), what="Deployment")
    first_gen = dep.metadata.generation
    dep = roll_max_model_len(api, namespace, "roll", 16384)
    assert dep.metadata.generation > first_gen
    obj = wait_for(lambda: (o := get(api, namespace, "roll"))["status"].get("observedGeneration") == 2 and o,
                   what="observedGeneration 2")
    assert obj["status"]["plan"]["kvCacheTokens"] > 0


def test_a_rollout_on_full_nodes_replaces_instead_of_surging(api, namespace: str, operator) -> None:  # type: ignore[no-untyped-def]
    """Two 8-GPU replicas on the two 8-GPU H100 nodes: a surge pod could never schedule, so the next
    rollout replaces one pod at a time. The operator counts free GPUs from its watch of GPU pods."""
    create(api, namespace, llmd("full", max_len=8192, gpus=["H100-80GB"], replicas=2,
                               placement={"gpuTypes": ["H100-80GB"], "tensorParallelSize": 8}))
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    dep = wait_for(lambda: apps.read_namespaced_deployment("full", namespace), what="Deployment")
    assert dep.spec.replicas == 2
    pods = lambda: core.list_namespaced_pod(namespace, label_selector="kvscale.io/llmdeployment=full").items  # noqa: E731
    wait_for(lambda: len([p for p in pods() if p.spec.node_name]) == 2, what="both pods bound")
    dep = roll_max_model_len(api, namespace, "full", 16384)
    assert (dep.spec.strategy.rolling_update.max_surge, dep.spec.strategy.rolling_update.max_unavailable) == (0, 1)
    assert "no node has 8 free" in dep.metadata.annotations["kvscale.io/rollout"]


def test_delete_garbage_collects_children(api, namespace: str, operator) -> None:  # type: ignore[no-untyped-def]
    create(api, namespace, llmd("gone", model="Qwen/Qwen2.5-7B-Instruct", max_len=8192, gpus=["L4"], concurrency=2))
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    wait_for(lambda: apps.read_namespaced_deployment("gone", namespace), what="Deployment")
    wait_for(lambda: core.read_namespaced_service("gone", namespace), what="Service")
    client.CustomObjectsApi(api).delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "gone")
    wait_for(lambda: not apps.list_namespaced_deployment(namespace).items, what="Deployment collected")
    wait_for(lambda: not [s for s in core.list_namespaced_service(namespace).items if s.metadata.name == "gone"],
             what="Service collected")


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"autoscaling": {"minReplicas": 5, "maxReplicas": 2}},
         "autoscaling.minReplicas must be <= autoscaling.maxReplicas"),
        ({"serving": {"maxModelLen": -1}}, "spec.serving.maxModelLen"),
        ({"serving": {"maxModelLen": 4096, "gpuMemoryUtilization": 1.5}}, "spec.serving.gpuMemoryUtilization"),
        ({"placement": {"quantization": ["int3"]}}, "spec.placement.quantization[0]"),
        ({"autoscaling": {"metrics": {"type": "prometheus"}}}, "prometheusURL is required"),
        ({"autoscaling": {"minReplicas": 0, "metrics": {"type": "prometheus", "prometheusURL": "http://p:9090"}}},
         "autoscaling.minReplicas 0 needs autoscaling.activation"),
        ({"autoscaling": {"activation": {"query": "sum(x)"}}}, "autoscaling.activation is a Prometheus query"),
        ({"model": {"cache": {"create": True, "accessMode": "ReadOnlyMany"}}}, "model.cache: a claim kvscale creates"),
        ({"model": {"cache": {"storageClassName": "nfs"}}}, "model.cache needs claimName or create"),
        ({"model": {"uri": "s3://bucket/m", "cache": {"create": True}}}, "s3:// and gs:// weights are streamed"),
        ({"model": {"cache": {"create": True, "size": "lots"}}}, "spec.model.cache.size"),
        ({"vllm": {"drainSeconds": -5}}, "spec.vllm.drainSeconds"),
        ({"serving": {"maxModelLen": 4096, "slo": {"concurrency": 8, "meanInputTokens": 100, "meanOutputTokens": 50}}},
         "serving.slo needs ttftSeconds, tpotMilliseconds or both"),
        ({"serving": {"maxModelLen": 4096, "slo": {"tpotMilliseconds": 50, "concurrency": 8, "requestsPerSecond": 2,
                                                   "meanInputTokens": 100, "meanOutputTokens": 50}}},
         "serving.slo needs the load as exactly one of requestsPerSecond and concurrency"),
        ({"serving": {"maxModelLen": 4096, "slo": {"tpotMilliseconds": 50, "percentile": 100, "concurrency": 8,
                                                   "meanInputTokens": 100, "meanOutputTokens": 50}}},
         "spec.serving.slo.percentile"),
        ({"serving": {"maxModelLen": 4096, "slo": {"tpotMilliseconds": 50, "concurrency": 8, "meanInputTokens": 4000,
                                                   "meanOutputTokens": 500}}},
         "serving.slo: meanInputTokens + meanOutputTokens must fit maxModelLen"),
    ],
)
def test_invalid_objects_are_rejected_at_admission(api, namespace: str, crd_installed: None,  # type: ignore[no-untyped-def]
                                                    patch: dict[str, Any], message: str) -> None:
    body = llmd("bad")
    for key, value in patch.items():
        body["spec"].setdefault(key, {}).update(value)
    with pytest.raises(ApiException) as err:
        create(api, namespace, body)
    assert err.value.status == 422
    assert message in json.loads(err.value.body)["message"]


def test_impossible_model_gets_planned_false_with_numbers(api, namespace: str, operator) -> None:  # type: ignore[no-untyped-def]
    create(api, namespace, llmd("huge", model="meta-llama/Llama-3.1-405B-Instruct", gpus=["L4"]))
    obj = wait_for(lambda: (o := get(api, namespace, "huge")) and condition(o, "Planned") and o,
                   what="Planned condition")
    cond = condition(obj, "Planned")
    assert cond["status"] == "False" and cond["reason"] == "InsufficientGPUMemory"
    assert re.search(r"\d+(\.\d+)? GiB", cond["message"]) and "L4" in cond["message"]
    assert not client.AppsV1Api(api).list_namespaced_deployment(namespace).items
    wait_for(lambda: any(e.reason == "InsufficientGPUMemory" and e.type == "Warning"
                         for e in events_for(api, namespace, "huge")), what="Warning event")


def test_unknown_model_offline(api, namespace: str, operator) -> None:  # type: ignore[no-untyped-def]
    create(api, namespace, llmd("mystery", model="acme/never-heard-of-it-7b"))
    obj = wait_for(lambda: (o := get(api, namespace, "mystery")) and condition(o, "Planned") and o,
                   what="Planned condition")
    cond = condition(obj, "Planned")
    assert cond["reason"] == "ModelUnknown" and "acme/never-heard-of-it-7b" in cond["message"]


def test_model_from_architecture_override(api, namespace: str, operator) -> None:  # type: ignore[no-untyped-def]
    arch = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 2048,
            "num_hidden_layers": 16, "num_attention_heads": 16, "num_key_value_heads": 4,
            "intermediate_size": 8192, "vocab_size": 32000, "max_position_embeddings": 8192}
    body = llmd("custom", model="acme/private-2b", max_len=8192, gpus=["L4"], concurrency=2)
    body["spec"]["model"]["architecture"] = arch
    create(api, namespace, body)
    obj = wait_for(lambda: (o := get(api, namespace, "custom")).get("status", {}).get("plan") and o,
                   what="plan for a custom architecture")
    assert obj["status"]["plan"]["gpu"] == "L4"


def _writes(cluster: LocalCluster) -> int:
    with cluster.http() as h:
        text = h.get("/metrics").text
    total = 0
    for line in text.splitlines():
        if line.startswith("apiserver_request_total{") and re.search(
                r'resource="(llmdeployments|deployments|services|events)"', line) and re.search(
                r'verb="(PATCH|PUT|POST|APPLY|DELETE)"', line):
            total += int(float(line.rsplit(" ", 1)[1]))
    return total


def test_idle_operator_and_restart_cause_no_writes(api, namespace: str, operator, cluster: LocalCluster) -> None:  # type: ignore[no-untyped-def]
    create(api, namespace, llmd("steady", model="Qwen/Qwen2.5-7B-Instruct", max_len=8192, gpus=["L4"], concurrency=2))
    apps = client.AppsV1Api(api)
    wait_for(lambda: (o := get(api, namespace, "steady")) and (c := condition(o, "Available"))
             and c["status"] == "True", what="Available")
    core = client.CoreV1Api(api)
    # other tests' namespaces are still being deleted (finalizers, GC): let that traffic finish first
    wait_for(lambda: not [n for n in core.list_namespace().items
                          if n.metadata.name.startswith("t-") and n.metadata.name != namespace],
             timeout=120, what="other test namespaces gone")
    time.sleep(3)
    before = _writes(cluster)
    dep = apps.read_namespaced_deployment("steady", namespace)
    status = get(api, namespace, "steady")["status"]
    time.sleep(12)  # spans a re-plan timer tick
    assert _writes(cluster) == before, "idle operator wrote to the API"

    operator.stop()
    operator.start()
    time.sleep(8)
    after = apps.read_namespaced_deployment("steady", namespace)
    assert after.metadata.generation == dep.metadata.generation  # no spurious rollout
    assert len(apps.list_namespaced_deployment(namespace).items) == 1
    new_status = get(api, namespace, "steady")["status"]
    assert new_status["plan"] == status["plan"] and new_status["planHash"] == status["planHash"]
    assert _writes(cluster) - before <= 2  # kopf may refresh its own bookkeeping once


def test_crds_directory_is_current() -> None:
    from pathlib import Path

    from kvscale.operator.crd import crd_yaml

    on_disk = (Path(__file__).resolve().parents[2] / "crds" / "kvscale.io_llmdeployments.yaml").read_text()
    assert on_disk == crd_yaml(), "crds/ is stale: run `kvscale crd -o crds/kvscale.io_llmdeployments.yaml`"


def test_deleted_or_edited_children_are_restored(api, namespace: str, operator, cluster: LocalCluster) -> None:  # type: ignore[no-untyped-def]
    create(api, namespace, llmd("kept", model="Qwen/Qwen2.5-7B-Instruct", max_len=8192, gpus=["L4"], concurrency=2,
                               replicas=1))
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    wait_for(lambda: get(api, namespace, "kept").get("status", {}).get("children"), what="children recorded")
    assert cluster.kubectl("wait", "--for=condition=Ready", "llmd/kept", "-n", namespace, "--timeout=60s",
                           check=False).returncode == 0, "the Ready summary condition"
    svc = core.read_namespaced_service("kept", namespace)
    plan_hash = get(api, namespace, "kept")["status"]["planHash"]

    core.delete_namespaced_service("kept", namespace)
    started = time.monotonic()
    wait_for(lambda: core.read_namespaced_service("kept", namespace).metadata.uid != svc.metadata.uid,
             timeout=30, what="the Service re-created")
    restored_s = time.monotonic() - started

    # a hand edit of what kvscale owns (replicas, the vLLM args) is undone
    apps.patch_namespaced_deployment("kept", namespace, {"spec": {"replicas": 3, "template": {"spec": {
        "containers": [{"name": "vllm", "args": ["--model", "something-else"]}]}}}})
    wait_for(lambda: (d := apps.read_namespaced_deployment("kept", namespace)).spec.replicas == 1
             and "--max-model-len" in d.spec.template.spec.containers[0].args, timeout=30,
             what="the Deployment restored")
    client.PolicyV1Api(api).delete_namespaced_pod_disruption_budget("kept", namespace)
    wait_for(lambda: client.PolicyV1Api(api).read_namespaced_pod_disruption_budget("kept", namespace),
             timeout=30, what="the PodDisruptionBudget re-created")
    assert get(api, namespace, "kept")["status"]["planHash"] == plan_hash
    wait_for(lambda: any(e.reason == "ChildRestored" for e in events_for(api, namespace, "kept")),
             what="a ChildRestored Event")
    print(f"\nService restored {restored_s:.1f} s after its deletion")


def test_a_scale_keeps_the_plan_when_its_nodes_are_cordoned(api, namespace: str, operator) -> None:  # type: ignore[no-untyped-def]
    create(api, namespace, llmd("steadfast", model="meta-llama/Llama-3.1-8B-Instruct", max_len=8192,
                               gpus=["H100-80GB", "A100-80GB"], concurrency=2, replicas=1))
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    obj = wait_for(lambda: (o := get(api, namespace, "steadfast")).get("status", {}).get("children") and o,
                   what="planned and applied")
    gpu = obj["status"]["plan"]["gpu"]
    dep = apps.read_namespaced_deployment("steadfast", namespace)
    template = dep.spec.template.to_dict()
    product = dep.spec.template.spec.affinity.node_affinity.required_during_scheduling_ignored_during_execution \
        .node_selector_terms[0].match_expressions[0].values
    cordoned = [n.metadata.name for n in core.list_node().items
                if (n.metadata.labels or {}).get("nvidia.com/gpu.product") in product]
    assert cordoned
    try:
        for n in cordoned:
            core.patch_node(n, {"spec": {"unschedulable": True}})
        client.CustomObjectsApi(api).patch_namespaced_custom_object_scale(
            GROUP, VERSION, namespace, PLURAL, "steadfast", {"spec": {"replicas": 2}})
        after = wait_for(lambda: (d := apps.read_namespaced_deployment("steadfast", namespace)).spec.replicas == 2
                         and d, what="the scale applied")
        assert after.spec.template.to_dict() == template, "a scale must not roll the pods"
        obj = wait_for(lambda: (o := get(api, namespace, "steadfast"))["status"].get("planUnavailableSince") and o,
                       what="the missing GPU type noted")
        assert obj["status"]["plan"]["gpu"] == gpu and obj["status"]["desiredReplicas"] == 2
        reasons = [e.reason for e in events_for(api, namespace, "steadfast")]
        assert "PlanUnavailable" in reasons and reasons.count("Planned") == 1
    finally:
        for n in cordoned:
            core.patch_node(n, {"spec": {"unschedulable": False}})


def test_an_object_kvscale_did_not_create_is_not_taken_over(api, namespace: str, operator) -> None:  # type: ignore[no-untyped-def]
    apps = client.AppsV1Api(api)
    labels = {"app": "theirs"}
    apps.create_namespaced_deployment(namespace, {
        "metadata": {"name": "theirs", "labels": labels},
        "spec": {"replicas": 1, "selector": {"matchLabels": labels}, "template": {
            "metadata": {"labels": labels}, "spec": {"containers": [{"name": "app", "image": "their/app:1"}]}}}})
    create(api, namespace, llmd("theirs", model="Qwen/Qwen2.5-7B-Instruct", max_len=8192, gpus=["L4"], concurrency=2))
    obj = wait_for(lambda: (o := get(api, namespace, "theirs")) and condition(o, "Planned") and o, what="Planned")
    cond = condition(obj, "Planned")
    assert (cond["status"], cond["reason"]) == ("False", "NotOwned") and "Deployment/theirs" in cond["message"]
    time.sleep(4)
    dep = apps.read_namespaced_deployment("theirs", namespace)
    assert dep.spec.template.spec.containers[0].image == "their/app:1" and not dep.metadata.owner_references
    # once the user's object is gone, kvscale applies its own (the unplanned are retried)
    apps.delete_namespaced_deployment("theirs", namespace)
    wait_for(lambda: (d := apps.read_namespaced_deployment("theirs", namespace)).metadata.owner_references
             and d.metadata.owner_references[0].kind == "LLMDeployment", timeout=90, what="kvscale's Deployment")


def test_prometheus_outside_the_allowlist_or_an_unlabelled_secret_is_refused(  # type: ignore[no-untyped-def]
        api, namespace: str, operator) -> None:
    import http.server
    import threading

    hits: list[str] = []

    class Trap(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append(self.headers.get("Authorization") or "")
            self.send_response(200)
            self.end_headers()

        def log_message(self, *_: object) -> None:
            pass

    trap = http.server.ThreadingHTTPServer(("127.0.0.2", 0), Trap)  # loopback, but not the allowed 127.0.0.1
    threading.Thread(target=trap.serve_forever, daemon=True).start()
    core = client.CoreV1Api(api)
    core.create_namespaced_secret(namespace, {"metadata": {"name": "tok"}, "stringData": {"token": "s3cr3t"}})
    try:
        for name, url, why in (("far", f"http://127.0.0.2:{trap.server_address[1]}", "not among the Prometheus URLs"),
                               ("near", "http://127.0.0.1:9", "lacks the label kvscale.io/prometheus-token=true")):
            body = llmd(name, model="Qwen/Qwen2.5-0.5B-Instruct", max_len=4096, gpus=["L4"], concurrency=1)
            body["spec"]["autoscaling"] = {"metrics": {"type": "prometheus", "prometheusURL": url,
                                                       "bearerTokenSecret": "tok"}}
            create(api, namespace, body)
            obj = wait_for(lambda n=name: (o := get(api, namespace, n)) and condition(o, "MetricsAvailable") and o,
                           what=f"{name}: MetricsAvailable")
            cond = condition(obj, "MetricsAvailable")
            assert (cond["status"], cond["reason"]) == ("False", "PrometheusRefused") and why in cond["message"]
        time.sleep(4)
        assert hits == [], "a request (and a token) went to a Prometheus the operator does not allow"
        log = operator.log_path.read_text()
        assert "s3cr3t" not in log
    finally:
        trap.shutdown()
        trap.server_close()


def test_a_child_the_api_server_refuses_becomes_a_condition_not_a_retry_loop(  # type: ignore[no-untyped-def]
        api, namespace: str, operator) -> None:
    body = llmd("refused", model="Qwen/Qwen2.5-0.5B-Instruct", max_len=4096, gpus=["L4"], concurrency=1,
                placement={"gpuTypes": ["L4"], "nodeSelector": {"x" * 70: "a"}})  # not a valid label key
    create(api, namespace, body)
    obj = wait_for(lambda: (o := get(api, namespace, "refused")) and condition(o, "Planned") and o, what="Planned")
    cond = condition(obj, "Planned")
    assert (cond["status"], cond["reason"]) == ("False", "RenderRejected") and "nodeSelector" in cond["message"]
    time.sleep(6)
    assert [e.reason for e in events_for(api, namespace, "refused")].count("RenderRejected") == 1


def test_an_slo_is_planned_for_and_its_predicted_latencies_are_in_status(api, namespace: str, operator) -> None:  # type: ignore[no-untyped-def]
    """The same model and load: holding 32 sequences in memory alone, then with a TPOT target; the SLO plan is
    the planner's for the kwok fleet and reports latencies within the targets; an unattainable SLO says why."""
    load = {"concurrency": 32, "meanInputTokens": 1000, "meanOutputTokens": 300}
    slo = {"ttftSeconds": 2, "tpotMilliseconds": 30, **load}
    gpus = ["H100-80GB", "A100-80GB", "L4"]
    create(api, namespace, llmd("fast", model="google/gemma-3-27b-it", max_len=8192, gpus=gpus,
                                serving={"maxModelLen": 8192, "slo": slo}))
    obj = wait_for(lambda: (o := get(api, namespace, "fast")).get("status", {}).get("plan") and o,
                   what="plan in status")
    p = obj["status"]["plan"]
    assert p["tpotMs"] <= 30 and p["ttftMs"] <= 2000
    cat = default_catalog()
    per_node, nodes = {"H100-80GB": 8, "A100-80GB": 8, "L4": 1}, {"H100-80GB": 2, "A100-80GB": 2, "L4": 4}
    opts = tuple(GPUOption(gpu=cat.get(g), gpus_per_node=per_node[g], nodes=nodes[g]) for g in sorted(gpus))
    want = plan(resolve_model("google/gemma-3-27b-it"), PlanRequest(
        max_model_len=8192, options=opts, load=LoadTarget(concurrency=32, mean_input_tokens=1000,
                                                          mean_output_tokens=300),
        slo=LatencySLO(ttft_seconds=2, tpot_milliseconds=30))).best
    assert want is not None
    assert (p["gpu"], p["tensorParallelSize"], p["replicasForTarget"]) == (
        want.gpu, want.tensor_parallel_size, want.replicas)
    assert condition(obj, "Planned")["status"] == "True"

    create(api, namespace, llmd("impossible", model="google/gemma-3-27b-it", max_len=8192, gpus=gpus,
                                serving={"maxModelLen": 8192, "slo": {**slo, "tpotMilliseconds": 1}}))
    obj = wait_for(lambda: (o := get(api, namespace, "impossible")) and condition(o, "Planned") and o,
                   what="Planned condition")
    cond = condition(obj, "Planned")
    assert cond["status"] == "False" and cond["reason"] == "SLOUnattainable"
    assert re.search(r"p99 TPOT [\d.]+ ms > 1 ms", cond["message"]), cond["message"]
    assert "serves the load within the latency targets" in cond["message"]
    assert not [d for d in client.AppsV1Api(api).list_namespaced_deployment(namespace).items
                if d.metadata.name == "impossible"]
