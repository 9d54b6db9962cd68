"""``kvscale demo``: the whole loop on this machine, watched live.

Local control plane with kwok GPU nodes plus two real kubelet nodes (containerd, runc, CNI, fake
L4 GPUs) -> CRD + operator -> an LLMDeployment -> the pods kvscale renders, run by the kubelet from
the local vLLM CPU image -> a load ramp through the ClusterIP Service -> KV pressure -> scale up ->
a second real pod -> quiet -> scale down. Everything is torn down at the end (or on Ctrl-C).
"""

from __future__ import annotations

import contextlib
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table

from .autoscaler.vllm_metrics import parse_vllm_metrics
from .operator.crd import crd_yaml
from .operator.resource import GROUP, PLURAL, VERSION
from .testing.cluster import LocalCluster
from .testing.fleet import DEFAULT_FLEET
from .testing.load import LoadGenerator, run_load
from .testing.operator_process import OperatorProcess
from .testing.tiny_deployment import SERVED_NAME, tiny_llmdeployment

NAMESPACE = "demo"
NAME = "chat"
REAL_NODES = 2
#: the kwok pools beside the real nodes; the real nodes are the cluster's only L4 nodes
KWOK_FLEET = tuple(p for p in DEFAULT_FLEET if p.gpu != "L4")


def demo_resource(window_s: int) -> dict[str, Any]:
    return tiny_llmdeployment(NAME, targetKVCacheUtilization=0.5, scaleDownStabilizationSeconds=window_s,
                              maxWaitingPerReplica=4, maxPreemptionsPerSecond=5)


def ramp(peak: int, up_s: float, hold_s: float, down_s: float) -> Any:
    def concurrency(t: float) -> int:
        if t < up_s:
            return max(1, round(peak * t / up_s))
        if t < up_s + hold_s:
            return peak
        if t < up_s + hold_s + down_s:
            return max(0, round(peak * (1 - (t - up_s - hold_s) / down_s)))
        return 0
    return concurrency


def _view(obj: dict[str, Any], pods: list[Any], load_now: int, elapsed: float, events: list[str]) -> Group:
    spec, status = obj.get("spec", {}), obj.get("status", {}) or {}
    plan = status.get("plan") or {}
    head = Table.grid(padding=(0, 2))
    head.add_row("plan", f"{plan.get('gpu', '-')} x{plan.get('tensorParallelSize', '-')} "
                         f"{plan.get('quantization', '-')}, {plan.get('kvCacheTokens', 0):,} KV tokens/replica "
                         f"(on a real GPU)")
    head.add_row("replicas", f"spec {spec.get('replicas', 1)} / ready {status.get('readyReplicas', 0)} / "
                             f"desired {status.get('desiredReplicas', '-')}")
    head.add_row("KV cache", str(status.get("kvCacheUtilization", "-")) + " (target 50%)")
    head.add_row("load", f"{load_now} requests in flight through the Service, t={elapsed:.0f}s")
    last = status.get("lastDecision") or {}
    head.add_row("last decision", str(last.get("reason", "-"))[:160])
    table = Table(title="vLLM pods (real containers under a real kubelet, CPU build)")
    for col in ("pod", "node", "phase", "ready", "restarts", "KV usage", "running", "waiting"):
        table.add_column(col)
    for p in pods:
        statuses = p.status.container_statuses or []
        ready = bool(statuses and statuses[0].ready)
        row = [p.metadata.name, p.spec.node_name or "-", p.status.phase, "yes" if ready else "no",
               str(statuses[0].restart_count if statuses else 0)]
        try:
            m = parse_vllm_metrics(httpx.get(f"http://{p.status.pod_ip}:8000/metrics", timeout=1).text)
            row += [f"{m.kv_cache_usage:.0%}", f"{m.running:.0f}", f"{m.waiting:.0f}"]
        except (httpx.HTTPError, ValueError):
            row += ["starting", "", ""]
        table.add_row(*row)
    return Group(Panel(head, title=f"LLMDeployment {NAMESPACE}/{NAME}"), table,
                 Panel("\n".join(events[-6:]) or "-", title="Events"))


def run_demo(console: Console, duration_s: float = 300.0, window_s: int = 40, peak: int = 12) -> int:
    from kubernetes import client, config

    work = Path(tempfile.mkdtemp(prefix="kvscale-demo-"))
    console.print("[bold]starting a local Kubernetes control plane, kwok GPU nodes and "
                  f"{REAL_NODES} real kubelet nodes...")
    cluster = LocalCluster(workdir=work / "cluster", fleet=KWOK_FLEET, real_nodes=REAL_NODES)
    operator = None
    stop_load = threading.Event()
    try:
        cluster.start(timeout=300)
        cluster.install_crd(crd_yaml())
        console.print(f"cluster up in {cluster.started_s:.1f}s; KUBECONFIG={cluster.kubeconfig}")
        operator = OperatorProcess(kubeconfig=cluster.kubeconfig, log_path=work / "operator.log",
                                   extra_env={"KVSCALE_AUTOSCALE_INTERVAL": "3"}).start()
        api = config.new_client_from_config(str(cluster.kubeconfig))  # type: ignore[no-untyped-call]
        core: Any = client.CoreV1Api(api)
        core.create_namespace({"metadata": {"name": NAMESPACE}})
        custom: Any = client.CustomObjectsApi(api)
        custom.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, demo_resource(window_s))
        selector = f"kvscale.io/llmdeployment={NAME}"

        def pods() -> list[Any]:
            return sorted(core.list_namespaced_pod(NAMESPACE, label_selector=selector).items,
                          key=lambda p: p.metadata.name)
        console.print("operator running; the kubelet is starting the first vLLM pod (1-2 minutes on CPU)...")
        while not any(cs.ready for p in pods() for cs in p.status.container_statuses or []):
            time.sleep(2)
        service = f"http://{core.read_namespaced_service(NAME, NAMESPACE).spec.cluster_ip}:8000"
        conc = ramp(peak, up_s=30, hold_s=max(30.0, duration_s * 0.5), down_s=20)
        gen = LoadGenerator(backends=lambda: [service], model=SERVED_NAME, concurrency=conc,
                            duration_s=duration_s, prompt_tokens=400, output_tokens=800)
        threading.Thread(target=lambda: run_load(gen), daemon=True).start()
        start = time.monotonic()
        with Live(console=console, refresh_per_second=2) as live:
            while (elapsed := time.monotonic() - start) < duration_s + window_s + 60 and not stop_load.is_set():
                obj = custom.get_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, NAME)
                events = [f"{e.last_timestamp:%H:%M:%S} {e.reason}: {e.message}"[:200] for e in sorted(
                    (e for e in core.list_namespaced_event(NAMESPACE).items
                     if e.involved_object.name == NAME and e.last_timestamp),
                    key=lambda e: e.last_timestamp)]
                live.update(_view(obj, pods(), conc(elapsed) if elapsed < duration_s else 0, elapsed, events))
                time.sleep(1)
        final: dict[str, Any] = custom.get_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, NAME)
        history = (final.get("status") or {}).get("history") or []
        console.print(f"[bold]done: {len(history)} scaling decision(s); load sent {gen.stats.sent}, "
                      f"ok {gen.stats.ok}, failed {gen.stats.failed}")
        return 0
    except KeyboardInterrupt:
        return 130
    finally:
        stop_load.set()
        console.print("cleaning up...")
        if operator is not None:
            operator.stop()
        cluster.stop()
        with contextlib.suppress(OSError):
            import shutil

            shutil.rmtree(work, ignore_errors=True)
