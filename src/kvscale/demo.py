"""``kvscale demo``: the whole loop on this machine, watched live.

Local control plane with simulated GPU nodes -> CRD + operator -> an LLMDeployment ->
real vLLM (CPU) servers behind its pods -> a load ramp -> KV pressure -> scale up -> quiet ->
scale down. Everything is torn down at the end (or on Ctrl-C).
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
from .testing.load import LoadGenerator, run_load
from .testing.operator_process import OperatorProcess
from .testing.pod_runner import PodVLLMRunner
from .testing.vllm_server import tiny_model_config, write_model_dir

NAMESPACE = "demo"
NAME = "chat"


def demo_resource(window_s: int) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "LLMDeployment", "metadata": {"name": NAME},
        "spec": {
            "model": {"name": "tiny-llama", "architecture": tiny_model_config("llama_gqa")},
            "serving": {"maxModelLen": 2048, "targetConcurrency": 1},
            "placement": {"gpuTypes": ["L4", "H100-80GB"]},
            "autoscaling": {"minReplicas": 1, "maxReplicas": 3, "targetKVCacheUtilization": 0.5,
                            "scaleDownStabilizationSeconds": window_s, "maxWaitingPerReplica": 4,
                            "maxPreemptionsPerSecond": 5},
            "vllm": {"port": 8000},
        },
    }


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


def _view(obj: dict[str, Any], runner: PodVLLMRunner, load_now: int, elapsed: float, events: list[str]) -> Group:
    spec, status = obj.get("spec", {}), obj.get("status", {}) or {}
    plan = status.get("plan") or {}
    head = Table.grid(padding=(0, 2))
    head.add_row("plan", f"{plan.get('gpu', '-')} x{plan.get('tensorParallelSize', '-')} "
                         f"{plan.get('quantization', '-')}, {plan.get('kvCacheTokens', 0):,} KV tokens/replica "
                         f"(on a real GPU)")
    head.add_row("replicas", f"spec {spec.get('replicas', 1)} / ready {status.get('readyReplicas', 0)} / "
                             f"desired {status.get('desiredReplicas', '-')}")
    head.add_row("KV cache", str(status.get("kvCacheUtilization", "-")) + " (target 50%)")
    head.add_row("load", f"{load_now} requests in flight, t={elapsed:.0f}s")
    last = status.get("lastDecision") or {}
    head.add_row("last decision", str(last.get("reason", "-"))[:160])
    pods = Table(title="vLLM replicas (real servers on CPU)")
    for col in ("pod", "address", "KV usage", "running", "waiting", "preemptions"):
        pods.add_column(col)
    for name, server in sorted(runner.servers.items()):
        try:
            m = parse_vllm_metrics(httpx.get(f"{server.url}/metrics", timeout=1).text)
            pods.add_row(name, server.url, f"{m.kv_cache_usage:.0%}", f"{m.running:.0f}", f"{m.waiting:.0f}",
                         f"{m.preemptions_total:.0f}")
        except (httpx.HTTPError, ValueError):
            pods.add_row(name, server.url, "starting", "", "", "")
    return Group(Panel(head, title=f"LLMDeployment {NAMESPACE}/{NAME}"), pods,
                 Panel("\n".join(events[-6:]) or "-", title="Events"))


def run_demo(console: Console, duration_s: float = 300.0, window_s: int = 40, peak: int = 12) -> int:
    from kubernetes import client, config

    work = Path(tempfile.mkdtemp(prefix="kvscale-demo-"))
    console.print("[bold]starting a local Kubernetes control plane with simulated GPU nodes...")
    cluster = LocalCluster(workdir=work / "cluster")
    operator = runner = None
    stop_load = threading.Event()
    try:
        cluster.start()
        cluster.kubectl("apply", "-f", "-", input=crd_yaml())
        cluster.kubectl("wait", "--for=condition=Established", "crd/llmdeployments.kvscale.io", "--timeout=60s")
        console.print(f"control plane up in {cluster.started_s:.1f}s; KUBECONFIG={cluster.kubeconfig}")
        operator = OperatorProcess(kubeconfig=cluster.kubeconfig, log_path=work / "operator.log",
                                   extra_env={"KVSCALE_AUTOSCALE_INTERVAL": "3"}).start()
        api = config.new_client_from_config(str(cluster.kubeconfig))  # type: ignore[no-untyped-call]
        core: Any = client.CoreV1Api(api)
        core.create_namespace({"metadata": {"name": NAMESPACE}})
        custom: Any = client.CustomObjectsApi(api)
        custom.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, demo_resource(window_s))
        runner = PodVLLMRunner(api=api, namespace=NAMESPACE, selector=f"kvscale.io/llmdeployment={NAME}",
                               model_dir=write_model_dir(tiny_model_config("llama_gqa"), work / "model"),
                               served_model_name="tiny-llama", num_blocks=40, log_dir=work).start()
        console.print("operator running; waiting for the first vLLM replica (about a minute on CPU)...")
        while not runner.healthy_urls():
            time.sleep(1)
        conc = ramp(peak, up_s=30, hold_s=max(30.0, duration_s * 0.4), down_s=20)
        gen = LoadGenerator(backends=runner.healthy_urls, model="tiny-llama", concurrency=conc,
                            duration_s=duration_s)
        threading.Thread(target=lambda: run_load(gen), daemon=True).start()
        start = time.monotonic()
        with Live(console=console, refresh_per_second=2) as live:
            while (elapsed := time.monotonic() - start) < duration_s + window_s + 30 and not stop_load.is_set():
                obj = custom.get_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, NAME)
                events = [f"{e.last_timestamp:%H:%M:%S} {e.reason}: {e.message}"[:200] for e in sorted(
                    (e for e in core.list_namespaced_event(NAMESPACE).items
                     if e.involved_object.name == NAME and e.last_timestamp),
                    key=lambda e: e.last_timestamp)]
                live.update(_view(obj, runner, conc(elapsed) if elapsed < duration_s else 0, elapsed, events))
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
        if runner is not None:
            runner.stop()
        if operator is not None:
            operator.stop()
        cluster.stop()
        with contextlib.suppress(OSError):
            import shutil

            shutil.rmtree(work, ignore_errors=True)
