"""Two operator replicas: exactly one acts; the standby takes over when the leader dies or leaves."""

from __future__ import annotations

import os
import re
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from kvscale.operator.leadership import LEASE_DURATION_S, RETRY_PERIOD_S
from kvscale.operator.resource import GROUP, PLURAL, VERSION
from kvscale.testing.cluster import LocalCluster
from kvscale.testing.metrics_page import PodPages
from kvscale.testing.operator_process import OperatorProcess
from kvscale.testing.waiting import wait_for

pytestmark = pytest.mark.cluster


def page(kv: float) -> str:
    return (f"vllm:kv_cache_usage_perc{{engine=\"0\"}} {kv}\nvllm:num_requests_running{{engine=\"0\"}} 4\n"
            "vllm:num_requests_waiting{engine=\"0\"} 0\nvllm:num_preemptions_total{engine=\"0\"} 0\n")


def llmd(name: str, **autoscaling: Any) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "LLMDeployment", "metadata": {"name": name},
            "spec": {"model": {"name": "Qwen/Qwen2.5-0.5B-Instruct"},
                     "serving": {"maxModelLen": 4096, "targetConcurrency": 1},
                     "placement": {"gpuTypes": ["L4"]}, "vllm": {"port": 8000},
                     "autoscaling": {"minReplicas": 1, "maxReplicas": 2, **autoscaling}}}


def metric(op: OperatorProcess, name: str, labels: str = "") -> float:
    total = 0.0
    for line in op.metrics().splitlines():
        if line.startswith(name) and not line.startswith(name + "_created") and labels in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def scale_writes(cluster: LocalCluster) -> int:
    with cluster.http() as h:
        text = h.get("/metrics").text
    return sum(int(float(line.rsplit(" ", 1)[1])) for line in text.splitlines()
               if line.startswith("apiserver_request_total{") and 'resource="llmdeployments"' in line
               and 'subresource="scale"' in line and re.search(r'verb="(PATCH|PUT|APPLY)"', line))


def holder(api: Any, ns: str, lease: str) -> str:
    try:
        return client.CoordinationV1Api(api).read_namespaced_lease(lease, ns).spec.holder_identity or ""
    except client.ApiException:
        return ""


@pytest.fixture
def replicas(cluster: LocalCluster, operator: OperatorProcess, namespace: str,
             tmp_path: Path) -> Iterator[tuple[str, list[OperatorProcess]]]:
    """The session's single operator steps aside; two replicas campaign for one Lease."""
    operator.stop()
    lease = f"kvscale-{uuid.uuid4().hex[:6]}"
    env = {"KVSCALE_AUTOSCALE_INTERVAL": "2", "KVSCALE_LEADER_ELECTION": lease, "KVSCALE_LEASE_NAMESPACE": namespace}
    ops = [OperatorProcess(kubeconfig=cluster.kubeconfig, extra_env=env, log_path=tmp_path / f"op{i}.log")
           for i in range(3)]
    try:
        yield lease, ops
    finally:
        for op in ops:
            op.stop()
        operator.start()


def test_one_replica_acts_and_the_standby_takes_over(api, namespace: str, cluster: LocalCluster,  # type: ignore[no-untyped-def]
                                                      replicas: tuple[str, list[OperatorProcess]]) -> None:
    lease, (a, b, c) = replicas
    a.start()
    wait_for(lambda: f"/{a.proc.pid}" in holder(api, namespace, lease), 30, "the first replica to lead")
    b.start()
    objects = client.CustomObjectsApi(api)
    kv = [0.95]
    with PodPages(api, namespace, "kvscale.io/llmdeployment=busy", 8000, lambda: page(kv[0])):
        objects.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL,
                                                llmd("busy", scaleDownStabilizationSeconds=4))
        writes0 = scale_writes(cluster)
        wait_for(lambda: objects.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "busy")
                 ["spec"].get("replicas") == 2, 90, "the leader to scale 1 -> 2")
        time.sleep(6)  # several standby ticks: it must neither reconcile nor scale
        assert metric(b, "kvscale_reconciles_total") == 0 and metric(b, "kvscale_leader") == 0
        assert metric(b, "kvscale_scale_decisions_total") == 0
        assert httpx_ok(b), "a standby is alive for its liveness probe"

        kv[0] = 0.05  # load leaves as the leader dies: only the standby can scale back down
        os.kill(a.proc.pid, signal.SIGKILL)
        killed = time.monotonic()
        objects.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, llmd("after"))
        wait_for(lambda: (objects.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "after")
                          .get("status") or {}).get("plan"), 60, "the standby to plan a new object")
        takeover = time.monotonic() - killed
        assert f"/{b.proc.pid}" in holder(api, namespace, lease)
        assert takeover <= LEASE_DURATION_S + 3 * RETRY_PERIOD_S + 5, takeover
        wait_for(lambda: objects.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "busy")
                 ["spec"].get("replicas") == 1, 90, "the new leader to scale 2 -> 1")
        def applied_history() -> list[dict[str, Any]]:  # the record follows the scale write
            got = objects.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "busy")["status"]
            return [h for h in got.get("history") or [] if h["applied"]]

        history = wait_for(lambda: len(applied_history()) >= 2 and applied_history(), 30, "the 2 -> 1 record")
        applied = [(h["replicas"], h["desiredReplicas"]) for h in history]
        assert applied == [(1, 2), (2, 1)], history
        assert scale_writes(cluster) - writes0 == 2, "one scale write per decision, none doubled"
        print(f"\nfailover after SIGKILL: {takeover:.1f} s to the first reconcile by the standby")

        # a clean shutdown hands the Lease over at the next retry, not after a lease duration
        c.start()
        time.sleep(2 * RETRY_PERIOD_S)
        assert metric(c, "kvscale_leader") == 0
        b.proc.send_signal(signal.SIGTERM)
        left = time.monotonic()
        wait_for(lambda: f"/{c.proc.pid}" in holder(api, namespace, lease), 30, "the third replica to lead")
        handover = time.monotonic() - left
        assert handover < LEASE_DURATION_S, handover
        assert b.proc.wait(timeout=20) == 0
        print(f"handover after SIGTERM: {handover:.1f} s")


def httpx_ok(op: OperatorProcess) -> bool:
    import httpx

    return httpx.get(f"http://127.0.0.1:{op.health_port}/healthz", timeout=5).status_code == 200
