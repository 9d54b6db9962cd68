"""Operator at scale: create N LLMDeployments at once on M kwok GPU nodes of the local control plane.

Prints the time until every one is Planned and its vLLM Deployment exists, the operator's
peak RSS, the API server requests per object (from apiserver_request_total) and, with every
replica's /metrics answered by a synthetic vLLM page on its pod IP, how long one autoscale pass
over all of them takes (the operator's kvscale_periodic_pass_seconds) against the interval.

    python bench/operator_scale.py [--count 1000] [--nodes 500] [--interval 15]
"""

from __future__ import annotations

import argparse
import re
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from kubernetes import client, config

from kvscale.operator.crd import crd_yaml
from kvscale.operator.resource import GROUP, PLURAL, VERSION
from kvscale.testing.cluster import LocalCluster
from kvscale.testing.fleet import NodePool
from kvscale.testing.metrics_page import PodPages
from kvscale.testing.operator_process import OperatorProcess

MODELS = ["Qwen/Qwen2.5-0.5B-Instruct", "meta-llama/Llama-3.1-8B-Instruct", "Qwen/Qwen3-8B",
          "mistralai/Mistral-7B-Instruct-v0.3", "Qwen/Qwen2.5-7B-Instruct"]


def request_counts(cluster: LocalCluster) -> Counter[str]:
    """apiserver_request_total by verb, resource and subresource (all clients)."""
    with cluster.http() as h:
        text = h.get("/metrics").text
    out: Counter[str] = Counter()
    for line in text.splitlines():
        if line.startswith("apiserver_request_total{"):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}", 1)[0]))
            what = " ".join(x for x in (labels.get("verb"), labels.get("resource"), labels.get("subresource")) if x)
            out[what] += int(float(line.rsplit(" ", 1)[1]))
    return out


def body(i: int) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "LLMDeployment", "metadata": {"name": f"m{i:04d}"},
            "spec": {"model": {"name": MODELS[i % len(MODELS)]},
                     "serving": {"maxModelLen": 4096 * (1 + i % 4), "targetConcurrency": 1 + i % 8},
                     "placement": {"gpuTypes": ["L4", "A100-80GB", "H100-80GB"]}, "vllm": {"port": 8000},
                     "autoscaling": {"minReplicas": 1, "maxReplicas": 2}}}


PAGE = ('vllm:kv_cache_usage_perc{engine="0"} 0.3\nvllm:num_requests_running{engine="0"} 2\n'
        'vllm:num_requests_waiting{engine="0"} 0\nvllm:num_preemptions_total{engine="0"} 0\n')


#: the last pass's duration is read this many times, one interval apart, once every replica has a page
PASSES_READ = 5


def gauge(text: str, name: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=1000)
    ap.add_argument("--nodes", type=int, default=500)
    ap.add_argument("--interval", type=float, default=15.0, help="autoscale interval (the operator's default)")
    args = ap.parse_args()
    big = max(1, args.nodes // 5)
    fleet = (NodePool(gpu="H100-80GB", nodes=big, gpus_per_node=8),
             NodePool(gpu="A100-80GB", nodes=big, gpus_per_node=8),
             NodePool(gpu="L4", nodes=max(1, args.nodes - 2 * big), gpus_per_node=4))
    work = Path(tempfile.mkdtemp(prefix="kvscale-bench-"))
    with LocalCluster(fleet=fleet, workdir=work / "cluster") as cluster:
        cluster.kubectl("apply", "-f", "-", input=crd_yaml())
        cluster.kubectl("wait", "--for=condition=Established", "crd/llmdeployments.kvscale.io", "--timeout=60s")
        op = OperatorProcess(kubeconfig=cluster.kubeconfig, log_path=work / "operator.log",
                             extra_env={"KVSCALE_AUTOSCALE_INTERVAL": str(args.interval)}).start()
        api = config.new_client_from_config(str(cluster.kubeconfig))  # type: ignore[no-untyped-call]
        custom: Any = client.CustomObjectsApi(api)
        apps: Any = client.AppsV1Api(api)
        client.CoreV1Api(api).create_namespace({"metadata": {"name": "bench"}})  # type: ignore[arg-type]
        peak = [op.rss_bytes()]
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                peak.append(op.rss_bytes())
                time.sleep(0.5)

        threading.Thread(target=sample, daemon=True).start()
        before = request_counts(cluster)
        t0 = time.monotonic()
        for i in range(args.count):
            custom.create_namespaced_custom_object(GROUP, VERSION, "bench", PLURAL, body(i))
        created = time.monotonic() - t0
        while True:
            items = custom.list_namespaced_custom_object(GROUP, VERSION, "bench", PLURAL)["items"]
            planned = sum(1 for o in items if any(c["type"] == "Planned" and c["status"] == "True"
                                                  for c in (o.get("status") or {}).get("conditions", [])))
            deps = len(apps.list_namespaced_deployment("bench").items)
            if planned == args.count and deps == args.count:
                break
            if time.monotonic() - t0 > 600:
                print(f"gave up: {planned} planned, {deps} deployments after 600 s")
                break
            time.sleep(1)
        elapsed = time.monotonic() - t0
        planning_peak = max(peak)
        time.sleep(5)
        after = request_counts(cluster)
        core: Any = client.CoreV1Api(api)
        pending = sum(1 for p in core.list_namespaced_pod("bench").items if not p.spec.node_name)
        with PodPages(api, "bench", "kvscale.io/llmdeployment", 8000, lambda: PAGE) as pages:
            def with_ip() -> int:  # pods that do not fit the fleet stay Pending: they have no page to serve
                return sum(1 for p in core.list_namespaced_pod("bench").items if p.status.pod_ip)

            deadline = time.monotonic() + 600
            while len(pages.servers) < with_ip() and time.monotonic() < deadline:
                time.sleep(2)
            served = len(pages.servers)
            passes = []  # the first passes after the pages came up also write what they first read
            for _ in range(PASSES_READ):
                time.sleep(args.interval)
                passes.append(gauge(op.metrics(), "kvscale_periodic_pass_seconds"))
        running = sum(1 for p in core.list_namespaced_pod("bench").items if p.status.pod_ip)
        op_rss_end = op.rss_bytes()
        done.set()
        op.stop()
    errors = len(re.findall(r"Traceback", (work / "operator.log").read_text()))
    print(f"LLMDeployments:                 {args.count} (created in {created:.1f} s)")
    print(f"all Planned + Deployments:      {elapsed:.1f} s   (target <= 60 s)")
    print(f"operator peak RSS:              {max(peak) / 2**20:.0f} MiB   (target <= 300 MB; "
          f"{planning_peak / 2**20:.0f} MiB until all were Planned, {op_rss_end / 2**20:.0f} MiB at the end)")
    spent = after - before
    print(f"API requests per LLMDeployment: {spent.total() / args.count:.1f} "
          f"(all clients: operator, controllers, kwok, this script)")
    print("  of which: " + ", ".join(f"{what} {n / args.count:.1f}" for what, n in spent.most_common(8)))
    print(f"replicas with a metrics page:   {served} of {running} pods with an IP ({pending} pods unschedulable: "
          "the fleet is smaller than the plans)")
    print(f"one autoscale pass over all:    {' / '.join('-' if p is None else f'{p:.1f}' for p in passes)} s, "
          f"one interval apart (interval {args.interval:g} s, target: within it)")
    print(f"operator tracebacks in log:     {errors}")


if __name__ == "__main__":
    main()
