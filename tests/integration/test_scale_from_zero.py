"""Scale to zero and back: the demand signal at zero is a Prometheus query (real Prometheus)."""

from __future__ import annotations

import time
from typing import Any

import pytest
from kubernetes import client

from kvscale.operator.resource import GROUP, PLURAL, VERSION
from kvscale.testing import waiting
from kvscale.testing.metrics_page import PodPages, serve_page
from kvscale.testing.prometheus import PrometheusServer
from kvscale.testing.vllm_server import free_port

pytestmark = pytest.mark.cluster


def wait_for(pred: Any, timeout: float, what: str) -> Any:
    return waiting.wait_for(pred, timeout, what, not_yet=lambda e: isinstance(e, client.ApiException)
                            and e.status == 404)

IDLE = ('vllm:kv_cache_usage_perc{engine="0"} 0.0\nvllm:num_requests_running{engine="0"} 0\n'
        'vllm:num_requests_waiting{engine="0"} 0\nvllm:num_preemptions_total{engine="0"} 0\n')


def test_one_to_zero_to_one(api, namespace: str, operator) -> None:  # type: ignore[no-untyped-def]
    waiting = [0]
    port = free_port()
    gateway = serve_page("127.0.0.1", port, lambda: f'gateway_requests_waiting{{model="zero"}} {waiting[0]}\n')
    prom = PrometheusServer(scrape_interval_s=1).start()
    prom.set_targets([("gateway", "gateway-0", f"127.0.0.1:{port}")])
    objects = client.CustomObjectsApi(api)
    apps = client.AppsV1Api(api)

    def replicas() -> Any:
        return objects.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "zero")["spec"].get("replicas")

    try:
        with PodPages(api, namespace, "kvscale.io/llmdeployment=zero", 8000, lambda: IDLE):
            objects.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, {
                "apiVersion": f"{GROUP}/{VERSION}", "kind": "LLMDeployment", "metadata": {"name": "zero"},
                "spec": {"model": {"name": "Qwen/Qwen2.5-0.5B-Instruct"},
                         "serving": {"maxModelLen": 4096, "targetConcurrency": 1},
                         "placement": {"gpuTypes": ["L4"]}, "vllm": {"port": 8000},
                         "autoscaling": {"minReplicas": 0, "maxReplicas": 2, "scaleDownStabilizationSeconds": 0,
                                         "metrics": {"type": "pod", "prometheusURL": prom.url},
                                         "activation": {"query": 'sum(gateway_requests_waiting{model="zero"})',
                                                        "threshold": 0}}}})
            wait_for(lambda: (d := apps.read_namespaced_deployment("zero", namespace)).status.ready_replicas == 1
                     and d, 60, "the first replica")
            wait_for(lambda: replicas() == 0, 90, "idle, no demand at the gateway: scale to zero")
            # the scale-down is on record for a restarted operator or a new leader (the scale-down period)
            kept = wait_for(lambda: (objects.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "zero")
                                     ["status"].get("autoscaler") or {}).get("lastScaleDownTime"), 30,
                            "the scale-down time in status.autoscaler")
            assert 0 <= time.time() - kept < 120
            wait_for(lambda: apps.read_namespaced_deployment("zero", namespace).spec.replicas == 0, 30,
                     "the Deployment at zero")

            waiting[0] = 3  # requests wait at the gateway: the only signal there is at zero
            wait_for(lambda: replicas() == 1, 60, "demand at zero: scale to one")
            dep = wait_for(lambda: (d := apps.read_namespaced_deployment("zero", namespace)).status.ready_replicas
                           == 1 and d, 60, "the replica back")
            assert dep.spec.replicas == 1
            status = objects.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "zero")["status"]
            applied = [(h["replicas"], h["desiredReplicas"]) for h in status["history"] if h["applied"]]
            assert applied == [(1, 0), (0, 1)], status["history"]
            assert "activation 3 > 0" in status["history"][-1]["reason"]
            # the replica is idle, but while requests wait at the gateway it stays (idle alone took it to 0)
            time.sleep(4 * 3)  # four autoscale intervals
            assert replicas() == 1
    finally:
        prom.stop()
        gateway.shutdown()
        gateway.server_close()
