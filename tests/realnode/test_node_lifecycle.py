"""A real node's own lifecycle: a pod from the local store, probes, Service routing, a confined network,
and a teardown that leaves nothing running, mounted or routed."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from kvscale.testing.cluster import LocalCluster
from kvscale.testing.images import PAUSE_IMAGE
from kvscale.testing.realnode import _cgroup_pids

pytestmark = [pytest.mark.realnode, pytest.mark.cluster]


def test_pod_serves_through_a_cluster_ip_and_teardown_leaves_nothing(tmp_path: Path) -> None:
    cluster = LocalCluster(fleet=(), real_nodes=1, real_node_images=("pause",), workdir=tmp_path / "c")
    cluster.start(timeout=300)
    assert cluster.real is not None and cluster.real.network is not None
    net, top = cluster.real.network, cluster.real.cgroup_top
    try:
        node = json.loads(cluster.kubectl("get", "node", "real-l4-0", "-o", "json").stdout)
        assert node["status"]["allocatable"]["nvidia.com/gpu"] == "2"  # from the device plugin, via the kubelet
        assert node["metadata"]["labels"]["nvidia.com/gpu.product"] == "NVIDIA-L4"
        assert {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"} in node["spec"]["taints"]
        # the base image has Python: a web server as the container, with a kubelet-run readiness probe
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web", "labels": {"app": "web"}},
               "spec": {"tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}], "containers": [{
                   "name": "web", "image": PAUSE_IMAGE, "command": ["python3", "-m", "http.server", "8080"],
                   "resources": {"limits": {"nvidia.com/gpu": "3"}},
                   "readinessProbe": {"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 1}}]}}
        cluster.kubectl("apply", "-f", "-", input=json.dumps(pod))
        time.sleep(5)
        status = json.loads(cluster.kubectl("get", "pod", "web", "-o", "json").stdout)["status"]
        assert status["phase"] == "Pending" and "nvidia.com/gpu" in json.dumps(status)  # 3 > 2 devices
        cluster.kubectl("delete", "pod", "web", "--wait=true")
        pod["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] = "1"
        cluster.kubectl("apply", "-f", "-", input=json.dumps(pod))
        cluster.kubectl("apply", "-f", "-", input=json.dumps({
            "apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]}}))
        cluster.kubectl("wait", "--for=condition=Ready", "pod/web", "--timeout=120s")
        ip = cluster.kubectl("get", "svc", "web", "-o", "jsonpath={.spec.clusterIP}").stdout
        deadline = time.monotonic() + 30
        while True:  # kube-proxy writes the rule within its sync period
            try:
                assert httpx.get(f"http://{ip}/", timeout=2).status_code == 200
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        routes = subprocess.run(["ip", "netns", "exec", net.netns, "ip", "route"], capture_output=True,
                                text=True).stdout
        assert "default" not in routes  # nothing a pod or node sends can leave this machine
        assert _cgroup_pids(top)  # containers, shims and node daemons all live in the cluster's cgroups
    finally:
        cluster.stop()
    assert not _cgroup_pids(top)
    assert not list(Path("/sys/fs/cgroup/pids").glob(f"{top}*"))
    assert net.netns not in subprocess.run(["ip", "netns"], capture_output=True, text=True).stdout
    assert str(tmp_path) not in Path("/proc/mounts").read_text()
    assert not Path("/run", top).exists()
    assert net.pod_cidr not in subprocess.run(["ip", "route"], capture_output=True, text=True).stdout
    leftover = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, text=True).stdout.split()
    assert not leftover
