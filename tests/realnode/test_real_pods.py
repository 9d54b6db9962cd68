"""The pods kvscale renders, run as real containers by a real kubelet.

Everything here goes through the kubelet: images from the node's local store, the startup and
readiness probes kvscale renders, restarts, OOM kills, Service routing by kube-proxy. Nothing
rewrites the rendered pod; what the CPU build needs comes from the image.
"""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from kvscale.operator.autoscale import DELETION_COST
from kvscale.operator.resource import GROUP, PLURAL, VERSION
from kvscale.testing.cluster import LocalCluster
from kvscale.testing.images import VLLM_IMAGE
from kvscale.testing.load import LoadGenerator, run_load
from kvscale.testing.operator_process import OperatorProcess
from kvscale.testing.tiny_deployment import CPU_REQUEST, KV_TOKENS, SERVED_NAME, tiny_llmdeployment
from kvscale.testing.waiting import wait_for

pytestmark = [pytest.mark.realnode, pytest.mark.vllm, pytest.mark.cluster, pytest.mark.slow]

WINDOW_S = 45
#: a CPU vLLM pod on this machine: image already on the node, model compile + dummy weights
START_TIMEOUT_S = 420


def obj(api: Any, ns: str, name: str) -> dict[str, Any]:
    return dict(client.CustomObjectsApi(api).get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name))


def condition(o: dict[str, Any], ctype: str) -> dict[str, Any] | None:
    return next((c for c in (o.get("status") or {}).get("conditions", []) if c["type"] == ctype), None)


def create(api: Any, ns: str, body: dict[str, Any]) -> None:
    client.CustomObjectsApi(api).create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, body)


def pods(api: Any, ns: str, name: str) -> list[Any]:
    return [p for p in client.CoreV1Api(api).list_namespaced_pod(
        ns, label_selector=f"kvscale.io/llmdeployment={name}").items if not p.metadata.deletion_timestamp]


def ready_pods(api: Any, ns: str, name: str) -> list[Any]:
    return [p for p in pods(api, ns, name)
            if any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])]


def ts(s: str) -> float:
    return datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()


def test_rendered_pods_scale_on_kv_pressure_through_the_service(real_cluster: LocalCluster, real_api: Any,
                                                                 real_namespace: str,
                                                                 real_operator: OperatorProcess) -> None:
    ns = real_namespace
    create(real_api, ns, tiny_llmdeployment("chat", targetKVCacheUtilization=0.5,
                                            scaleDownStabilizationSeconds=WINDOW_S, maxWaitingPerReplica=4))
    first = wait_for(lambda: ready_pods(real_api, ns, "chat"), START_TIMEOUT_S, "first pod Ready (kubelet probes)",
                     every=2)[0]
    real_names = {n.name for n in real_cluster.real.nodes} if real_cluster.real else set()
    assert first.spec.node_name in real_names
    status = first.status.container_statuses[0]
    assert status.ready and status.image_id and status.container_id.startswith("containerd://")
    assert status.image in (VLLM_IMAGE, VLLM_IMAGE.removeprefix("docker.io/"))
    # the plan sized an L4; this node's CPU vLLM allocated its own 1 GiB cache: its blocks replace the estimate
    measured = wait_for(lambda: (o := obj(real_api, ns, "chat"))["status"]["plan"].get("kvCacheMeasured") and o,
                        60, "the plan made again with the replica's KV blocks", every=2)
    (record,) = measured["status"]["calibration"]
    assert record["pod"] == first.metadata.name and record["predictedBlocks"] > 5 * record["measuredBlocks"]
    assert record["measuredBlocks"] * record["blockSize"] == pytest.approx(KV_TOKENS, rel=0.02)
    assert abs(measured["status"]["plan"]["kvCacheBlocks"] - record["measuredBlocks"]) <= 1
    assert measured["status"]["estimatorCheck"]["observedBlocks"] == record["measuredBlocks"]
    svc = client.CoreV1Api(real_api).read_namespaced_service("chat", ns)
    service_url = f"http://{svc.spec.cluster_ip}:8000"

    # 12 long requests through the ClusterIP keep about one replica's KV cache (16,384 tokens) full
    gen = LoadGenerator(backends=lambda: [service_url], model=SERVED_NAME, concurrency=lambda t: 12,
                        duration_s=400, prompt_tokens=400, output_tokens=800)
    box: dict[str, Any] = {}
    load = threading.Thread(target=lambda: box.setdefault("stats", run_load(gen)), daemon=True)
    t_load = time.monotonic()
    load.start()
    try:
        wait_for(lambda: int(obj(real_api, ns, "chat")["spec"].get("replicas") or 1) >= 2, 240,
                 "scale-up to 2", every=1)
        t_up = time.monotonic()
        wait_for(lambda: len(ready_pods(real_api, ns, "chat")) >= 2, START_TIMEOUT_S, "second pod Ready", every=2)
        t_second = time.monotonic()
        time.sleep(15)  # both replicas serve through the Service for a while
    finally:
        gen.stop.set()
        load.join(timeout=60)
    loaded = box["stats"]
    assert loaded.ok > 0

    # the autoscaler keeps each replica's deletion cost at its KV use, so a scale-down removes the emptiest
    costs = {p.metadata.name: (p.metadata.annotations or {}).get(DELETION_COST) for p in ready_pods(real_api, ns,
                                                                                                   "chat")}
    assert all(c is not None and 0 <= int(c) <= 100 for c in costs.values()), costs

    # quiet, but two requests of a few seconds each stay in flight through the Service during the scale-down:
    # the replica removed finishes the ones it holds (preStop wait, then vLLM drains on SIGTERM)
    trickle = LoadGenerator(backends=lambda: [service_url], model=SERVED_NAME, concurrency=lambda t: 2,
                            duration_s=WINDOW_S + 240, prompt_tokens=64, output_tokens=128)
    tbox: dict[str, Any] = {}
    tl = threading.Thread(target=lambda: tbox.setdefault("stats", run_load(trickle)), daemon=True)
    t_quiet = time.monotonic()
    tl.start()
    try:
        wait_for(lambda: int(obj(real_api, ns, "chat")["spec"].get("replicas") or 1) == 1, WINDOW_S + 180,
                 "scale-down to 1", every=1)
        wait_for(lambda: len(pods(real_api, ns, "chat")) == 1, 120, "second pod gone", every=1)
        t_down = time.monotonic()
        time.sleep(5)
    finally:
        trickle.stop.set()
        tl.join(timeout=60)
    history = obj(real_api, ns, "chat")["status"]["history"]
    applied = [(ts(h["time"]), h["desiredReplicas"] - h["replicas"]) for h in history if h["applied"]]
    ups = [t for t, d in applied if d > 0]
    downs = [t for t, d in applied if d < 0]
    trail = "\n".join(f"{h['time']} {h['replicas']}->{h['desiredReplicas']} {h['reason']}" for h in history)
    assert ups and downs and downs[0] - ups[-1] >= WINDOW_S, trail
    reasons = {e.reason for e in client.CoreV1Api(real_api).list_namespaced_event(ns).items
               if e.involved_object.name == "chat"}
    assert {"ScaledUp", "ScaledDown"} <= reasons
    during = tbox["stats"]
    assert during.ok > 0
    assert during.failed == 0, during.errors  # scale-down under load loses no request
    print(f"\nreal pods: load -> scale-up {t_up - t_load:.0f}s, decision -> 2nd pod Ready {t_second - t_up:.0f}s, "
          f"quiet -> scale-down {t_down - t_quiet:.0f}s; requests under load ok={loaded.ok} failed={loaded.failed}; "
          f"during scale-down ok={during.ok} failed={during.failed}")


@pytest.mark.chaos
def test_killed_vllm_and_operator_recover_with_no_scale_and_no_rollout(real_cluster: LocalCluster, real_api: Any,
                                                                   real_namespace: str,
                                                                   real_operator: OperatorProcess) -> None:
    ns = real_namespace
    create(real_api, ns, tiny_llmdeployment("fragile", scaleDownStabilizationSeconds=5))
    pod = wait_for(lambda: ready_pods(real_api, ns, "fragile"), START_TIMEOUT_S, "pod Ready", every=2)[0]
    wait_for(lambda: (c := condition(obj(real_api, ns, "fragile"), "MetricsAvailable")) and c["status"] == "True",
             60, "metrics read")
    assert real_cluster.real is not None
    node = real_cluster.real.node(pod.spec.node_name)
    pid = node.task_pid(pod.status.container_statuses[0].container_id)
    dep = client.AppsV1Api(real_api).read_namespaced_deployment("fragile", ns)
    os.kill(pid, signal.SIGKILL)  # the vLLM API server, PID 1 of the container, as seen from the host
    # and the operator with it, mid-flight: the restarted one must find the fleet as it was, not re-make it
    assert real_operator.proc is not None
    os.killpg(real_operator.proc.pid, signal.SIGKILL)
    real_operator.proc.wait(timeout=10)
    real_operator.start()
    name = pod.metadata.name

    def restarted() -> Any:
        p = client.CoreV1Api(real_api).read_namespaced_pod(name, ns)
        cs = p.status.container_statuses[0]
        return cs.restart_count >= 1 and cs
    cs = wait_for(restarted, 90, "kubelet restarts the container", every=1)
    assert cs.last_state.terminated is not None and cs.last_state.terminated.exit_code == 137
    # while it reloads: no scale to zero or anywhere else, and kvscale says which pod failed
    seen: list[int] = []
    degraded = None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        o = obj(real_api, ns, "fragile")
        seen.append(int(o["spec"].get("replicas") or 1))
        degraded = degraded or ((c := condition(o, "Degraded")) and c["status"] == "True" and c)
        time.sleep(1)
    assert set(seen) == {1}
    assert degraded and name in degraded["message"] and "exit code 137" in degraded["message"]
    wait_for(lambda: ready_pods(real_api, ns, "fragile"), START_TIMEOUT_S, "pod Ready again", every=2)
    wait_for(lambda: (c := condition(obj(real_api, ns, "fragile"), "Degraded")) and c["status"] == "False", 60,
             "Degraded clears once the replica serves again")
    assert int(obj(real_api, ns, "fragile")["spec"].get("replicas") or 1) == 1
    after = client.AppsV1Api(real_api).read_namespaced_deployment("fragile", ns)
    assert after.metadata.generation == dep.metadata.generation, "the restarted operator rolled the fleet"
    assert [p.metadata.name for p in ready_pods(real_api, ns, "fragile")] == [name], "the replica was replaced"
    events = client.CoreV1Api(real_api).list_namespaced_event(ns).items
    assert not any(e.reason in ("ScaledDown", "ScaledUp") for e in events if e.involved_object.name == "fragile")


def test_oom_killed_replica_is_reported_by_pod_and_reason(real_api: Any, real_namespace: str,
                                                          real_operator: OperatorProcess) -> None:
    ns = real_namespace
    limits = {"resources": {"limits": {"memory": "200Mi"}, "requests": {"cpu": CPU_REQUEST, "memory": "200Mi"}}}
    create(real_api, ns, tiny_llmdeployment("tight", vllm=limits))
    o = wait_for(lambda: (o := obj(real_api, ns, "tight")) and (c := condition(o, "Degraded"))
                 and c["status"] == "True" and "OOMKilled" in c["message"] and o, 240,
                 "Degraded=True naming OOMKilled", every=2)
    msg = condition(o, "Degraded")["message"]
    pod = pods(real_api, ns, "tight")[0]
    assert pod.metadata.name in msg
    assert pod.status.container_statuses[0].last_state.terminated.reason == "OOMKilled"
    events = wait_for(lambda: [e for e in client.CoreV1Api(real_api).list_namespaced_event(ns).items
                               if e.reason == "ReplicaFailed" and e.type == "Warning"], 30, "ReplicaFailed Event")
    assert pod.metadata.name in events[0].message and "OOMKilled" in events[0].message


def test_a_replica_whose_kv_cache_cannot_hold_max_model_len_is_read_and_replanned(
        real_api: Any, real_namespace: str, real_operator: OperatorProcess) -> None:
    """The L4 plan fits 32,768 tokens; the CPU image's 1 GiB KV cache holds 16,384 of this model (65,536 bytes a
    token): real vLLM refuses to start on the real node, the operator reads why from the previous container's
    log, reserves what vLLM did not have on L4 and plans again: H100 (the kwok node), where the next replica
    starts."""
    ns = real_namespace
    body = tiny_llmdeployment("long", vllm={"extraArgs": [
        "--load-format", "dummy", "--skip-tokenizer-init", "--dtype", "bfloat16",
        "--hf-overrides", '{"max_position_embeddings": 65536}']})
    body["spec"]["model"]["architecture"]["max_position_embeddings"] = 65536
    body["spec"]["serving"]["maxModelLen"] = 32768
    body["spec"]["placement"]["gpuTypes"] = ["L4", "H100-80GB"]
    create(real_api, ns, body)
    first = wait_for(lambda: (o := obj(real_api, ns, "long")).get("status", {}).get("plan") and o, 60, "a plan")
    assert first["status"]["plan"]["gpu"] == "L4"  # the cheapest: on the real nodes
    o = wait_for(lambda: (o := obj(real_api, ns, "long")) and o.get("status", {}).get("startupFailures") and o,
                 START_TIMEOUT_S, "the failed start on record", every=3)
    (record,) = o["status"]["startupFailures"]
    assert record["cause"] == "KVCacheTooSmall" and record["gpu"] == "L4", record
    # 32,768 tokens x 65,536 bytes = 2 GiB; what the 1 GiB cache leaves, vLLM prints to two decimals
    had = re.search(r"one 32,768-token request needs 2 GiB of KV cache, vLLM had ([\d.]+) GiB", record["message"])
    assert had is not None and 0.9 <= float(had.group(1)) <= 1.0, record
    assert record["missingGiB"] == pytest.approx(first["status"]["plan"]["kvCacheGiB"] - float(had.group(1)),
                                                 abs=0.011)
    replanned = wait_for(lambda: (o := obj(real_api, ns, "long"))["status"]["plan"]["gpu"] == "H100-80GB" and o,
                         60, "a plan on H100")
    assert any("failed to start" in r for r in replanned["status"]["rejected"])
    wait_for(lambda: [p for p in ready_pods(real_api, ns, "long") if p.spec.node_name.startswith("kwok")], 180,
             "the next replica Ready on the H100 node", every=3)
    reasons = {e.reason: e.message for e in client.CoreV1Api(real_api).list_namespaced_event(ns).items}
    assert "KVCacheTooSmall" in reasons.get("ReplicaFailed", ""), reasons
    assert "planning again (1 of 3)" in reasons.get("Replanning", ""), reasons


def test_helm_installed_operator_runs_as_a_real_pod_and_reconciles(real_cluster: LocalCluster, real_api: Any,
                                                                  real_namespace: str, tmp_path: Path) -> None:
    from kvscale.testing.binaries import ensure_binaries
    from kvscale.testing.images import chart_app_version

    ns = real_namespace
    helm = ensure_binaries().path("helm")
    assert real_cluster.real is not None
    values = {"watchNamespaces": [ns], "autoscaleIntervalSeconds": 5, "logFormat": "plain",
              "crds": {"install": False},  # the cluster has it already, applied apart from any release
              # a real node: on a kwok node the operator pod would only be simulated, and nothing would run
              "nodeSelector": {"kubernetes.io/hostname": real_cluster.real.node_names()[0]},
              # the real nodes are GPU nodes (tainted); a CPU node pool would need no toleration
              "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]}
    (tmp_path / "values.json").write_text(json.dumps(values))
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "KUBECONFIG": str(real_cluster.kubeconfig), "HELM_CACHE_HOME": str(tmp_path / "hc"),
           "HELM_CONFIG_HOME": str(tmp_path / "hcfg"), "HELM_DATA_HOME": str(tmp_path / "hd")}
    import subprocess

    release = f"kvscale-{ns[-5:]}"
    out = subprocess.run([helm, "install", release, str(repo / "charts" / "kvscale"), "-n", ns,
                          "-f", str(tmp_path / "values.json"), "--wait", "--timeout", "180s"],
                         env=env, capture_output=True, text=True)
    try:
        assert out.returncode == 0, out.stderr
        op = next(p for p in client.CoreV1Api(real_api).list_namespaced_pod(ns).items
                  if p.metadata.labels.get("app.kubernetes.io/name") == "kvscale")
        cs = op.status.container_statuses[0]
        assert cs.ready and cs.image.endswith(f"kvscale:{chart_app_version()}")
        assert op.spec.node_name in {n.name for n in real_cluster.real.nodes}
        assert op.spec.security_context.run_as_non_root and op.spec.security_context.run_as_user == 65532
        assert op.spec.containers[0].security_context.read_only_root_filesystem
        create(real_api, ns, tiny_llmdeployment("via-helm"))
        vllm = wait_for(lambda: ready_pods(real_api, ns, "via-helm"), START_TIMEOUT_S,
                        "vLLM pod of the helm-run operator Ready", every=2)[0]
        assert real_cluster.real is not None
        assert vllm.spec.node_name in {n.name for n in real_cluster.real.nodes}
        o = wait_for(lambda: (o := obj(real_api, ns, "via-helm")) and (c := condition(o, "MetricsAvailable"))
                     and c["status"] == "True" and o, 120, "the operator pod reads the vLLM pod's metrics")
        assert condition(o, "Planned")["status"] == "True"
    finally:
        logs = subprocess.run([real_cluster.binaries.path("kubectl") if real_cluster.binaries else "kubectl",
                               f"--kubeconfig={real_cluster.kubeconfig}", "-n", ns, "logs", "-l",
                               "app.kubernetes.io/name=kvscale", "--tail=30"], capture_output=True, text=True)
        print(logs.stdout[-3000:], logs.stderr[-500:])
        subprocess.run([helm, "uninstall", release, "-n", ns, "--wait"], env=env, capture_output=True)
