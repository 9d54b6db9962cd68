"""Start-up of a real vLLM pod by phase, on a real kubelet node of the local cluster.

Creates the tiny LLMDeployment (kvscale.testing.tiny_deployment), lets the operator render its
Deployment, and watches the one pod at 0.2 s resolution:

    created -> scheduled (nodeName set) -> container created (kubelet's Created event)
    -> process started (containerStatuses[].state.running.startedAt) -> vLLM healthy (GET /health
    on the pod IP answers 200) -> Ready (the kubelet's startup + readiness probes passed)

It also prints how long the cluster took to start and to import the images into the node's
store (the first run imports the 6 GB vLLM CPU image; later runs reuse the store).

    python bench/realnode_startup.py [--runs 2]
"""

from __future__ import annotations

import argparse
import statistics
import time
from datetime import datetime
from typing import Any

import httpx
from kubernetes import client, config

from kvscale.operator.crd import crd_yaml
from kvscale.operator.resource import GROUP, PLURAL, VERSION
from kvscale.testing.cluster import LocalCluster
from kvscale.testing.operator_process import OperatorProcess
from kvscale.testing.tiny_deployment import tiny_llmdeployment

PHASES = ("scheduled", "container created", "process started", "vLLM healthy", "Ready")


def _ts(value: Any) -> float:
    if isinstance(value, datetime):
        return value.timestamp()
    return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()


def one_run(api: Any, ns: str, name: str, timeout: float = 600.0) -> dict[str, float]:
    core: Any = client.CoreV1Api(api)
    custom: Any = client.CustomObjectsApi(api)
    t0 = time.time()
    custom.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, tiny_llmdeployment(name, compile_cache=False))
    seen: dict[str, float] = {}
    while len(seen) < len(PHASES) and time.time() - t0 < timeout:
        items = core.list_namespaced_pod(ns, label_selector=f"kvscale.io/llmdeployment={name}").items
        for p in items:
            if p.spec.node_name and "scheduled" not in seen:
                seen["scheduled"] = time.time()
            cs = (p.status.container_statuses or [None])[0]
            if cs is not None and cs.state.running and "process started" not in seen:
                seen["process started"] = _ts(cs.state.running.started_at)
            if p.status.pod_ip and "process started" in seen and "vLLM healthy" not in seen:
                try:
                    if httpx.get(f"http://{p.status.pod_ip}:8000/health", timeout=1).status_code == 200:
                        seen["vLLM healthy"] = time.time()
                except httpx.HTTPError:
                    pass
            if any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or []) \
                    and "Ready" not in seen:
                seen["Ready"] = time.time()
            if "container created" not in seen:
                for e in core.list_namespaced_event(ns, field_selector=f"involvedObject.name={p.metadata.name}").items:
                    if e.reason == "Created":
                        seen["container created"] = _ts(e.event_time or e.last_timestamp or e.first_timestamp)
        time.sleep(0.2)
    custom.delete_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name)
    return {k: v - t0 for k, v in seen.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    t = time.monotonic()
    cluster = LocalCluster(fleet=(), real_nodes=1)
    cluster.start(timeout=300)
    up = time.monotonic() - t
    op = None
    try:
        cluster.kubectl("apply", "-f", "-", input=crd_yaml())
        cluster.kubectl("wait", "--for=condition=Established", "crd/llmdeployments.kvscale.io", "--timeout=60s")
        op = OperatorProcess(kubeconfig=cluster.kubeconfig, extra_env={"KVSCALE_AUTOSCALE_INTERVAL": "3"}).start()
        api = config.new_client_from_config(str(cluster.kubeconfig))  # type: ignore[no-untyped-call]
        client.CoreV1Api(api).create_namespace({"metadata": {"name": "bench"}})
        runs = []
        for i in range(args.runs):
            runs.append(one_run(api, "bench", f"startup-{i}"))
            time.sleep(10)  # the previous pod goes away first
        print(f"cluster with 1 real node up in {up:.0f}s (includes importing images the node store lacked)")
        print(f"{'phase':<20}" + "".join(f"{'run ' + str(i + 1):>10}" for i in range(len(runs))) + f"{'median':>10}")
        for phase in PHASES:
            vals = [r.get(phase) for r in runs]
            cells = "".join(f"{v:>9.1f}s" if v is not None else f"{'-':>10}" for v in vals)
            present = [v for v in vals if v is not None]
            med = f"{statistics.median(present):>9.1f}s" if present else f"{'-':>10}"
            print(f"{phase:<20}{cells}{med}")
        print("(seconds from creating the LLMDeployment; 'container created' has the Event's 1 s resolution)")
    finally:
        if op is not None:
            op.stop()
        cluster.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
