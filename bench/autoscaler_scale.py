"""Operator cost while autoscaling many LLMDeployments at once.

20 LLMDeployments (default) on the local control plane; behind every pod IP a small HTTP
server answers /metrics with vLLM's exposition format, its KV usage following a load ramp
(up, hold, down). Real vLLM servers are measured in tests/e2e/test_autoscaler_live.py; 20+ of
them do not fit this machine, and this script measures the operator, not vLLM. Prints the
operator's CPU seconds and peak RSS, decisions, the time from KV breach to the scale decision,
and any flapping (a direction change inside a stabilization window).

    python bench/autoscaler_scale.py [--count 20]
"""

from __future__ import annotations

import argparse
import contextlib
import http.server
import itertools
import tempfile
import time
from pathlib import Path
from typing import Any

from kubernetes import client, config

from kvscale.operator.crd import crd_yaml
from kvscale.operator.resource import GROUP, PLURAL, VERSION
from kvscale.testing.cluster import LocalCluster
from kvscale.testing.fleet import NodePool
from kvscale.testing.metrics_page import serve_page
from kvscale.testing.operator_process import OperatorProcess

WINDOW_S = 30
PAGE = """# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{{engine="0"}} {kv}
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{{engine="0"}} {running}
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{{engine="0"}} 0
# TYPE vllm:num_preemptions_total counter
vllm:num_preemptions_total{{engine="0"}} 0
"""


class Load:
    """Total KV demand per LLMDeployment (in replicas' worth at 100 %), shared by its pods."""

    def __init__(self, t0: float) -> None:
        self.t0 = t0
        self.pods: dict[str, int] = {}

    def demand(self) -> float:
        t = time.monotonic() - self.t0
        return 0.6 if t < 20 else 1.8 if t < 90 else 0.3

    def page(self, name: str) -> str:
        per_pod = min(1.0, self.demand() / max(1, self.pods.get(name, 1)))
        return PAGE.format(kv=round(per_pod, 3), running=int(per_pod * 10))


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100.0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=20)
    ap.add_argument("--duration", type=float, default=180)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="kvscale-bench-"))
    fleet = (NodePool(gpu="L4", nodes=args.count * 4, gpus_per_node=1),)
    with LocalCluster(fleet=fleet, workdir=work / "cluster") as cluster:
        cluster.kubectl("apply", "-f", "-", input=crd_yaml())
        cluster.kubectl("wait", "--for=condition=Established", "crd/llmdeployments.kvscale.io", "--timeout=60s")
        op = OperatorProcess(kubeconfig=cluster.kubeconfig, log_path=work / "operator.log",
                             extra_env={"KVSCALE_AUTOSCALE_INTERVAL": "3"}).start()
        api = config.new_client_from_config(str(cluster.kubeconfig))  # type: ignore[no-untyped-call]
        core: Any = client.CoreV1Api(api)
        custom: Any = client.CustomObjectsApi(api)
        core.create_namespace({"metadata": {"name": "bench"}})
        loads: dict[str, Load] = {}
        for i in range(args.count):
            name = f"m{i:02d}"
            custom.create_namespaced_custom_object(GROUP, VERSION, "bench", PLURAL, {
                "apiVersion": f"{GROUP}/{VERSION}", "kind": "LLMDeployment", "metadata": {"name": name},
                "spec": {"model": {"name": "Qwen/Qwen2.5-0.5B-Instruct"},
                         "serving": {"maxModelLen": 4096, "targetConcurrency": 1},
                         "placement": {"gpuTypes": ["L4"]}, "vllm": {"port": 8000},
                         "autoscaling": {"minReplicas": 1, "maxReplicas": 4, "targetKVCacheUtilization": 0.7,
                                         "scaleDownStabilizationSeconds": WINDOW_S}}})
        servers: dict[str, http.server.ThreadingHTTPServer] = {}
        t0 = time.monotonic()
        for name in (f"m{i:02d}" for i in range(args.count)):
            loads[name] = Load(t0)
        cpu0, peak = cpu_seconds(op.proc.pid), 0  # type: ignore[union-attr]
        first_up: dict[str, float] = {}
        while time.monotonic() - t0 < args.duration:
            pods = core.list_namespaced_pod("bench").items
            for load in loads.values():
                load.pods.clear()
            for p in pods:
                llmd = p.metadata.labels.get("kvscale.io/llmdeployment")
                if p.status.pod_ip and llmd:
                    loads[llmd].pods[llmd] = loads[llmd].pods.get(llmd, 0) + 1
                    if p.metadata.name not in servers:
                        with contextlib.suppress(OSError):
                            servers[p.metadata.name] = serve_page(
                                p.status.pod_ip, 8000, lambda load=loads[llmd], name=llmd: load.page(name))
            for o in custom.list_namespaced_custom_object(GROUP, VERSION, "bench", PLURAL)["items"]:
                if (o["spec"].get("replicas") or 1) > 1 and o["metadata"]["name"] not in first_up:
                    first_up[o["metadata"]["name"]] = time.monotonic() - t0
            peak = max(peak, op.rss_bytes())
            time.sleep(1)
        cpu = cpu_seconds(op.proc.pid) - cpu0  # type: ignore[union-attr]
        items = custom.list_namespaced_custom_object(GROUP, VERSION, "bench", PLURAL)["items"]
        op.stop()
        for srv in servers.values():
            srv.shutdown()
    flaps = 0
    for o in items:
        hist = [h for h in (o.get("status") or {}).get("history", []) if h["applied"]]
        for a, b in itertools.pairwise(hist):
            da, db = a["desiredReplicas"] - a["replicas"], b["desiredReplicas"] - b["replicas"]
            ta = time.mktime(time.strptime(a["time"], "%Y-%m-%dT%H:%M:%SZ"))
            tb = time.mktime(time.strptime(b["time"], "%Y-%m-%dT%H:%M:%SZ"))
            if da * db < 0 and tb - ta < WINDOW_S:
                flaps += 1
    decisions = sum(len([h for h in (o.get("status") or {}).get("history", []) if h["applied"]]) for o in items)
    breach = [t - 20 for t in first_up.values()]
    print(f"LLMDeployments: {args.count}, run {args.duration:.0f} s, autoscale interval 3 s")
    print(f"operator CPU: {cpu:.1f} s ({cpu / args.duration * 100:.1f} % of one core); peak RSS {peak / 2**20:.0f} MiB")
    print(f"scaling decisions applied: {decisions}; flaps (reversal inside {WINDOW_S} s): {flaps}")
    if breach:
        print(f"KV breach -> scale-up decision: median {sorted(breach)[len(breach) // 2]:.1f} s, "
              f"max {max(breach):.1f} s (over {len(breach)} LLMDeployments)")
    final = [(o.get('spec') or {}).get('replicas') for o in items]
    print(f"final replicas: {final}")


if __name__ == "__main__":
    main()
