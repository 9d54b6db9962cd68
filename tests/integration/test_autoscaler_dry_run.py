"""Dry-run (advisory) mode: decisions are recorded and announced, replicas stay as they are.

The replica's /metrics is a vLLM-format page served on the pod's IP (the real-vLLM scenarios
live in tests/e2e); here only the operator's handling of a decision is under test.
"""

from __future__ import annotations

import http.server
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kubernetes import client

from kvscale.operator.resource import GROUP, PLURAL, VERSION
from kvscale.testing.metrics_page import serve_page
from kvscale.testing.waiting import wait_for

pytestmark = pytest.mark.cluster

FULL_CACHE = """# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0"} 0.95
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0"} 8
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0"} 0
# TYPE vllm:num_preemptions_total counter
vllm:num_preemptions_total{engine="0"} 0
"""


@pytest.fixture
def page_server() -> Iterator[list[http.server.ThreadingHTTPServer]]:
    servers: list[http.server.ThreadingHTTPServer] = []
    yield servers
    for s in servers:
        s.shutdown()
        s.server_close()


def deploy_with_page(api, namespace: str, name: str, autoscaling: dict[str, Any],  # type: ignore[no-untyped-def]
                     page_server: list[http.server.ThreadingHTTPServer], page: Callable[[], str]) -> None:
    """An advisory LLMDeployment whose one pod answers /metrics with ``page`` on its IP."""
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "LLMDeployment", "metadata": {"name": name},
            "spec": {"model": {"name": "Qwen/Qwen2.5-0.5B-Instruct"},
                     "serving": {"maxModelLen": 4096, "targetConcurrency": 1},
                     "placement": {"gpuTypes": ["L4"]}, "vllm": {"port": 8000},
                     "autoscaling": {"dryRun": True, "minReplicas": 1, "maxReplicas": 3, **autoscaling}}}
    client.CustomObjectsApi(api).create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
    core = client.CoreV1Api(api)

    def pod_with_ip() -> Any:
        pods = core.list_namespaced_pod(namespace, label_selector=f"kvscale.io/llmdeployment={name}").items
        return next((p for p in pods if p.status.pod_ip), None)

    pod = wait_for(pod_with_ip, 60, "the vLLM pod to get an IP")
    page_server.append(serve_page(pod.status.pod_ip, 8000, page))


def test_dry_run_records_but_does_not_scale(api, namespace: str, operator, page_server) -> None:  # type: ignore[no-untyped-def]
    custom, core = client.CustomObjectsApi(api), client.CoreV1Api(api)
    load = [FULL_CACHE]
    deploy_with_page(api, namespace, "advisory", {"targetKVCacheUtilization": 0.5,
                                                  "scaleDownStabilizationSeconds": 0}, page_server, lambda: load[0])

    def decided() -> dict[str, Any] | None:
        o = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "advisory")
        d = (o.get("status") or {}).get("lastDecision")
        return o if d and d["desiredReplicas"] == 2 else None

    deadline = time.monotonic() + 60
    obj = None
    while time.monotonic() < deadline and obj is None:
        obj = decided()
        time.sleep(1)
    assert obj is not None, "no scale-up recommendation recorded"
    decision = obj["status"]["lastDecision"]
    assert decision["applied"] is False and "scale up 1 -> 2" in decision["reason"]
    assert obj["spec"].get("replicas") is None  # the scale subresource was not touched
    assert obj["status"]["recommendedReplicas"] == 2 and obj["status"]["desiredReplicas"] == 1

    # many ticks later, with the load gone: the advice is still judged against the one replica that
    # runs (advice never becomes the fleet's size in the policy's eyes, so no "2 -> 1" appears)
    load[0] = FULL_CACHE.replace(" 0.95", " 0.05").replace("running{engine=\"0\"} 8", "running{engine=\"0\"} 0")
    time.sleep(8 * 3)  # eight autoscale intervals
    obj = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "advisory")
    assert all(h["replicas"] == 1 for h in obj["status"]["history"]), obj["status"]["history"]
    assert obj["status"]["recommendedReplicas"] == 1 and obj["status"]["desiredReplicas"] == 1
    dep = client.AppsV1Api(api).read_namespaced_deployment("advisory", namespace)
    assert dep.spec.replicas == 1
    events = [e for e in core.list_namespaced_event(namespace).items if e.involved_object.name == "advisory"]
    assert any(e.reason == "ScaleRecommended" for e in events)


def queue_page(calls: list[int]) -> str:
    """Idle KV cache, but every scrape 60 more requests finished, a fifth of them after queueing over 1 s."""
    calls.append(1)
    done = 60 * len(calls)
    slow = done // 5
    return (FULL_CACHE.replace(" 0.95", " 0.10")
            + "# TYPE vllm:request_queue_time_seconds histogram\n"
            + f'vllm:request_queue_time_seconds_bucket{{engine="0",le="0.5"}} {done - slow}\n'
            + f'vllm:request_queue_time_seconds_bucket{{engine="0",le="1.0"}} {done - slow}\n'
            + f'vllm:request_queue_time_seconds_bucket{{engine="0",le="+Inf"}} {done}\n'
            + f'vllm:request_queue_time_seconds_count{{engine="0"}} {done}\n'
            + f'vllm:request_queue_time_seconds_sum{{engine="0"}} {done * 0.6}\n')


def test_queue_time_objective_recommends_capacity_for_compute_bound_load(  # type: ignore[no-untyped-def]
        api, namespace: str, operator, page_server) -> None:
    custom = client.CustomObjectsApi(api)
    calls: list[int] = []
    deploy_with_page(api, namespace, "queued", {"maxQueueSeconds": 1, "maxSlowRequestFraction": 0.05}, page_server,
                     lambda: queue_page(calls))
    deadline = time.monotonic() + 90
    decision: dict[str, Any] = {}
    while time.monotonic() < deadline:
        o = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "queued")
        decision = (o.get("status") or {}).get("lastDecision") or {}
        if decision.get("desiredReplicas") == 2:
            break
        time.sleep(1)
    assert decision.get("desiredReplicas") == 2, decision
    assert "queued over 1s" in decision["reason"] and "KV utilization 0.10" in decision["reason"], decision
