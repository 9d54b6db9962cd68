"""End to end: real control plane, kwok GPU nodes, the operator, real vLLM servers behind the pods.

Load fills the KV cache of one replica -> kvscale scales to 2; load stops -> back to 1 after the
(shortened) stabilization window, with no reversal inside it. Faults: a dead vLLM holds
replicas; a replica that cannot schedule stops further scale-up.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from kvscale.operator.resource import GROUP, PLURAL, VERSION
from kvscale.testing.load import LoadGenerator, run_load
from kvscale.testing.operator_process import OperatorProcess
from kvscale.testing.pod_runner import PodVLLMRunner
from kvscale.testing.vllm_server import tiny_model_config, write_model_dir
from kvscale.testing.waiting import wait_for

pytestmark = [pytest.mark.vllm, pytest.mark.cluster, pytest.mark.slow]

TINY = tiny_model_config("llama_gqa")
WINDOW_S = 45


def llmd_body(name: str, **autoscaling: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "LLMDeployment", "metadata": {"name": name},
        "spec": {
            "model": {"name": "tiny-llama", "architecture": TINY},
            "serving": {"maxModelLen": 2048, "targetConcurrency": 1},
            "placement": {"gpuTypes": ["L4"]},
            "autoscaling": {"minReplicas": 1, "maxReplicas": 3, "targetKVCacheUtilization": 0.5,
                            "scaleDownStabilizationSeconds": WINDOW_S, "maxWaitingPerReplica": 4,
                            "maxPreemptionsPerSecond": 5, **autoscaling},
            "vllm": {"port": 8000},
        },
    }


def obj(api: Any, ns: str, name: str) -> dict[str, Any]:
    return dict(client.CustomObjectsApi(api).get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name))


def replicas(api: Any, ns: str, name: str) -> int:
    return int(obj(api, ns, name)["spec"].get("replicas") or 1)


def condition(o: dict[str, Any], ctype: str) -> dict[str, Any] | None:
    return next((c for c in (o.get("status") or {}).get("conditions", []) if c["type"] == ctype), None)


def start_runner(api: Any, ns: str, name: str, tmp: Path) -> PodVLLMRunner:
    model_dir = write_model_dir(TINY, tmp / "model")
    return PodVLLMRunner(api=api, namespace=ns, selector=f"kvscale.io/llmdeployment={name}", model_dir=model_dir,
                         served_model_name="tiny-llama", num_blocks=40, log_dir=tmp).start()


def test_scales_up_on_kv_pressure_and_back_down(api, namespace: str, operator: OperatorProcess,  # type: ignore[no-untyped-def]
                                                tmp_path: Path) -> None:
    custom = client.CustomObjectsApi(api)
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, llmd_body("chat", maxReplicas=2))
    runner = start_runner(api, namespace, "chat", tmp_path)
    try:
        wait_for(lambda: runner.healthy_urls(), 300, "first vLLM replica healthy")
        # rising load: 12 long requests keep ~1 replica's KV cache full
        gen = LoadGenerator(backends=runner.healthy_urls, model="tiny-llama", concurrency=lambda t: 12,
                            duration_s=240, prompt_tokens=400, output_tokens=800)
        stats_box: dict[str, Any] = {}
        load = threading.Thread(target=lambda: stats_box.setdefault("stats", run_load(gen)), daemon=True)
        t_load = time.monotonic()
        load.start()
        wait_for(lambda: replicas(api, namespace, "chat") >= 2, 200, "scale-up to 2 replicas", every=0.5)
        t_decision = time.monotonic()
        up = wait_for(lambda: (d := (obj(api, namespace, "chat")["status"].get("lastDecision") or {}))
                      .get("desiredReplicas", 0) >= 2 and d, 10, "decision recorded in status")
        assert up["desiredReplicas"] >= 2 and up["applied"] and "scale up" in up["reason"]
        assert "KV utilization" in up["reason"] or "waiting" in up["reason"]
        dep = wait_for(lambda: (d := client.AppsV1Api(api).read_namespaced_deployment("chat", namespace))
                       .status.ready_replicas and d.status.ready_replicas >= 2 and d, 60, "second pod Running")
        t_pod = time.monotonic()
        assert dep.spec.replicas >= 2
        time.sleep(20)  # load goes on a while at 2 replicas, then stops
        gen.stop.set()
        load.join(timeout=60)
        t_quiet = time.monotonic()
        wait_for(lambda: replicas(api, namespace, "chat") == 1, WINDOW_S + 120, "scale-down to 1", every=1)
        t_down = time.monotonic()
    finally:
        runner.stop()

    final = obj(api, namespace, "chat")
    history = final["status"]["history"]
    directions = [(h["time"], h["desiredReplicas"] - h["replicas"]) for h in history if h["applied"]]
    ups = [t for t, d in directions if d > 0]
    downs = [t for t, d in directions if d < 0]
    assert ups and downs
    # no reversal inside a window: the first scale-down comes at least one window after the last scale-up
    from datetime import datetime

    def ts(s: str) -> float:
        return datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()

    assert ts(downs[0]) - ts(ups[-1]) >= WINDOW_S
    assert t_down - t_quiet >= WINDOW_S * 0.5
    events = [e for e in client.CoreV1Api(api).list_namespaced_event(namespace).items
              if e.involved_object.name == "chat"]
    reasons = {e.reason for e in events}
    assert {"ScaledUp", "ScaledDown"} <= reasons
    assert "kvscale_scale_decisions_total" in operator.metrics()
    print(f"\nload start -> scale decision {t_decision - t_load:.1f}s; decision -> 2nd pod Ready "
          f"{t_pod - t_decision:.1f}s; load stop -> scale-down {t_down - t_quiet:.1f}s; "
          f"requests ok={stats_box.get('stats').ok if stats_box else '?'}")


def test_dead_vllm_holds_replicas_and_says_so(api, namespace: str, operator: OperatorProcess,  # type: ignore[no-untyped-def]
                                              tmp_path: Path) -> None:
    custom = client.CustomObjectsApi(api)
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL,
                                           llmd_body("fragile", scaleDownStabilizationSeconds=5))
    runner = start_runner(api, namespace, "fragile", tmp_path)
    try:
        wait_for(lambda: runner.healthy_urls(), 300, "vLLM healthy")
        wait_for(lambda: (c := condition(obj(api, namespace, "fragile"), "MetricsAvailable")) and
                 c["status"] == "True", 60, "metrics read")
        pod = next(iter(runner.servers))
        runner._stop.set()  # keep the runner from restarting it
        runner.kill(pod)
        o = wait_for(lambda: (o := obj(api, namespace, "fragile")) and (c := condition(o, "MetricsAvailable"))
                     and c["status"] == "False" and o, 60, "MetricsAvailable=False")
        time.sleep(15)  # several autoscaler ticks with no data, well past the 5 s window
        o = obj(api, namespace, "fragile")
        assert int(o["spec"].get("replicas") or 1) == 1
        assert not o["status"]["lastDecision"]["valid"] and "holding" in o["status"]["lastDecision"]["reason"]
        assert pod in condition(o, "MetricsAvailable")["message"]
        events = client.CoreV1Api(api).list_namespaced_event(namespace).items
        assert any(e.reason == "MetricsUnavailable" and e.type == "Warning" for e in events)
    finally:
        runner.stop()


def test_unschedulable_replica_stops_scale_up(api, namespace: str, operator: OperatorProcess,  # type: ignore[no-untyped-def]
                                              tmp_path: Path) -> None:
    body = llmd_body("pinned", maxReplicas=4, maxScaleUpStep=1)
    body["spec"]["placement"]["nodeSelector"] = {"kubernetes.io/hostname": "kwok-l4-0"}  # room for one replica
    client.CustomObjectsApi(api).create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
    runner = start_runner(api, namespace, "pinned", tmp_path)
    try:
        wait_for(lambda: runner.healthy_urls(), 300, "vLLM healthy")
        gen = LoadGenerator(backends=runner.healthy_urls, model="tiny-llama", concurrency=lambda t: 14,
                            duration_s=75, prompt_tokens=400, output_tokens=800)
        load = threading.Thread(target=lambda: run_load(gen), daemon=True)
        load.start()
        wait_for(lambda: replicas(api, namespace, "pinned") >= 2, 120, "first scale-up")
        o = wait_for(lambda: (o := obj(api, namespace, "pinned")) and (c := condition(o, "ScalingLimited"))
                     and c["status"] == "True" and "cannot be scheduled" in c["message"] and o, 90,
                     "ScalingLimited=True naming the unschedulable replica")
        msg = condition(o, "ScalingLimited")["message"]
        assert "cannot be scheduled" in msg
        seen = set()
        while load.is_alive():
            seen.add(replicas(api, namespace, "pinned"))
            time.sleep(2)
        assert max(seen) == 2, f"kept adding replicas that cannot schedule: {sorted(seen)}"
    finally:
        runner.stop()


def test_prometheus_source_scales_like_the_pod_source(api, namespace: str, operator: OperatorProcess,  # type: ignore[no-untyped-def]
                                                      tmp_path: Path) -> None:
    from kvscale.testing.prometheus import PrometheusServer

    prom = PrometheusServer(scrape_interval_s=2).start()
    body = llmd_body("promchat", scaleDownStabilizationSeconds=20,
                     metrics={"type": "prometheus", "prometheusURL": prom.url})
    client.CustomObjectsApi(api).create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
    runner = start_runner(api, namespace, "promchat", tmp_path)
    runner.on_change = prom.set_targets
    try:
        wait_for(lambda: runner.healthy_urls(), 300, "vLLM healthy")
        wait_for(lambda: (c := condition(obj(api, namespace, "promchat"), "MetricsAvailable"))
                 and c["status"] == "True", 60, "metrics read through Prometheus")
        # 6 long requests hold ~1.5 replicas' worth of KV without thrashing the CPU server (a stalled
        # server misses scrapes, and stale series read as missing, which rightly holds replicas)
        gen = LoadGenerator(backends=runner.healthy_urls, model="tiny-llama", concurrency=lambda t: 6,
                            duration_s=240, prompt_tokens=400, output_tokens=800)
        load = threading.Thread(target=lambda: run_load(gen), daemon=True)
        load.start()
        wait_for(lambda: replicas(api, namespace, "promchat") >= 2, 240, "scale-up via Prometheus")
        gen.stop.set()
        up = wait_for(lambda: (d := (obj(api, namespace, "promchat")["status"].get("lastDecision") or {}))
                      .get("desiredReplicas", 0) >= 2 and d, 10, "decision recorded in status")
        assert "scale up" in up["reason"]
        load.join(timeout=60)
        wait_for(lambda: replicas(api, namespace, "promchat") == 1, 200, "scale-down via Prometheus")
    finally:
        runner.stop()
        prom.stop()
