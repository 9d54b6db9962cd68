"""The local control plane is a real Kubernetes: scheduler, garbage collector, CRD validation."""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from kvscale.testing.cluster import POD_CIDR, LocalCluster
from kvscale.testing.fleet import NodePool
from kvscale.testing.waiting import wait_for

pytestmark = pytest.mark.cluster


def gpu_deployment(name: str, gpus: int, product: str = "NVIDIA-H100-80GB-HBM3") -> dict[str, Any]:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
        "spec": {
            "replicas": 1, "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "nodeSelector": {"nvidia.com/gpu.product": product},
                    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                    "containers": [{"name": "vllm", "image": "vllm/vllm-openai:v0.32.0",
                                    "resources": {"limits": {"nvidia.com/gpu": str(gpus)}}}],
                },
            },
        },
    }


def test_gpu_pod_is_scheduled_on_h100_and_becomes_ready(api, namespace: str) -> None:  # type: ignore[no-untyped-def]
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    apps.create_namespaced_deployment(namespace, gpu_deployment("four-gpus", 4))
    dep = wait_for(lambda: (d := apps.read_namespaced_deployment("four-gpus", namespace)).status.ready_replicas == 1
                   and d, what="deployment ready")
    assert dep.status.ready_replicas == 1
    pod = core.list_namespaced_pod(namespace, label_selector="app=four-gpus").items[0]
    node = core.read_node(pod.spec.node_name)
    assert node.metadata.labels["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3"
    assert pod.status.phase == "Running"
    assert ipaddress.ip_address(pod.status.pod_ip) in ipaddress.ip_network(POD_CIDR)


def test_sixteen_gpus_stay_pending_with_scheduler_reason(api, namespace: str) -> None:  # type: ignore[no-untyped-def]
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    apps.create_namespaced_deployment(namespace, gpu_deployment("sixteen-gpus", 16))

    def unschedulable() -> Any:
        pods = core.list_namespaced_pod(namespace, label_selector="app=sixteen-gpus").items
        for p in pods:
            for c in p.status.conditions or []:
                if c.type == "PodScheduled" and c.reason == "Unschedulable":
                    return p, c
        return None

    pod, cond = wait_for(unschedulable, what="Unschedulable condition")
    assert pod.status.phase == "Pending"
    assert "Insufficient nvidia.com/gpu" in cond.message


def test_pod_without_toleration_avoids_tainted_gpu_nodes(api, namespace: str) -> None:  # type: ignore[no-untyped-def]
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    body = gpu_deployment("no-toleration", 1, "NVIDIA-L4")
    del body["spec"]["template"]["spec"]["tolerations"]
    apps.create_namespaced_deployment(namespace, body)
    _, cond = wait_for(lambda: next(((p, c) for p in core.list_namespaced_pod(
        namespace, label_selector="app=no-toleration").items for c in p.status.conditions or []
        if c.reason == "Unschedulable"), None), what="taint rejection")
    assert "untolerated taint" in cond.message


def test_deleting_the_owner_garbage_collects_the_deployment(api, namespace: str) -> None:  # type: ignore[no-untyped-def]
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    owner = core.create_namespaced_config_map(namespace, {"metadata": {"name": "owner"}})
    body = gpu_deployment("owned", 1, "NVIDIA-L4")
    body["metadata"]["ownerReferences"] = [{"apiVersion": "v1", "kind": "ConfigMap", "name": "owner",
                                            "uid": owner.metadata.uid, "blockOwnerDeletion": True}]
    apps.create_namespaced_deployment(namespace, body)
    wait_for(lambda: core.list_namespaced_pod(namespace, label_selector="app=owned").items, what="pod created")
    core.delete_namespaced_config_map("owner", namespace, propagation_policy="Foreground")

    def gone() -> bool:
        try:
            apps.read_namespaced_deployment("owned", namespace)
            return False
        except ApiException as e:
            return e.status == 404

    wait_for(gone, timeout=60, what="garbage collection of the owned Deployment")
    wait_for(lambda: not core.list_namespaced_pod(namespace, label_selector="app=owned").items,
             what="pods garbage-collected")


CRD = {
    "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.test.kvscale.io"},
    "spec": {
        "group": "test.kvscale.io", "scope": "Namespaced",
        "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
        "versions": [{"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": {
            "type": "object", "properties": {"spec": {
                "type": "object", "required": ["size"],
                "properties": {"size": {"type": "integer", "minimum": 1, "maximum": 8}},
            }},
        }}}],
    },
}


def test_structural_crd_is_served_and_validates(api, namespace: str) -> None:  # type: ignore[no-untyped-def]
    ext = client.ApiextensionsV1Api(api)
    ext.create_custom_resource_definition(CRD)
    try:
        wait_for(lambda: any(c.type == "Established" and c.status == "True" for c in (
            ext.read_custom_resource_definition("widgets.test.kvscale.io").status.conditions or [])),
            what="CRD established")
        custom = client.CustomObjectsApi(api)
        ok = {"apiVersion": "test.kvscale.io/v1", "kind": "Widget", "metadata": {"name": "ok"}, "spec": {"size": 2}}
        wait_for(lambda: _try_create(custom, namespace, ok), what="CRD served")
        bad = {"apiVersion": "test.kvscale.io/v1", "kind": "Widget", "metadata": {"name": "bad"},
               "spec": {"size": 99}}
        with pytest.raises(ApiException) as err:
            custom.create_namespaced_custom_object("test.kvscale.io", "v1", namespace, "widgets", bad)
        assert err.value.status == 422
        assert "spec.size" in err.value.body and "less than or equal to 8" in err.value.body
    finally:
        ext.delete_custom_resource_definition("widgets.test.kvscale.io")


def _try_create(custom: client.CustomObjectsApi, ns: str, body: dict[str, Any]) -> bool:
    try:
        custom.create_namespaced_custom_object("test.kvscale.io", "v1", ns, "widgets", body)
        return True
    except ApiException as e:
        if e.status == 404:
            return False
        raise


def test_rbac_is_enforced(cluster: LocalCluster) -> None:
    # an identity without bindings is refused: RBAC is on, not allow-all
    out = cluster.kubectl("auth", "can-i", "list", "pods", "--as", "nobody", check=False)
    assert out.stdout.strip() == "no"


def test_teardown_leaves_no_process_behind(tmp_path: Path) -> None:
    small = LocalCluster(fleet=(NodePool(gpu="L4", nodes=1, gpus_per_node=1),), workdir=tmp_path / "c")
    small.start()
    pids = [c.proc.pid for c in small.components]
    assert all(Path(f"/proc/{p}").exists() for p in pids)
    small.stop()
    assert not any(Path(f"/proc/{p}").exists() and "zombie" not in _state(p) for p in pids)
    assert not (tmp_path / "c").exists()


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().lower()
    except OSError:
        return "zombie"


def test_pod_ip_is_bindable_on_this_machine(api, namespace: str) -> None:  # type: ignore[no-untyped-def]
    """Real processes serve 'as' pods: the pod IP kwok assigns must be bindable here."""
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    apps.create_namespaced_deployment(namespace, gpu_deployment("bindable", 1, "NVIDIA-L4"))
    pod = wait_for(lambda: next((p for p in core.list_namespaced_pod(namespace, label_selector="app=bindable").items
                                 if p.status.pod_ip), None), what="pod IP")
    with socket.socket() as s:
        s.bind((pod.status.pod_ip, 0))
        s.listen(1)
        assert s.getsockname()[0] == pod.status.pod_ip
