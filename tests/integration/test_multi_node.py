"""A model larger than a node on the real control plane: the LeaderWorkerSet controller (built from
its module, webhooks served with the harness PKI), kwok 8xH100 nodes, the operator.

DeepSeek-R1 (fp8, 671 B parameters) fits no 8xH100-80GB node: it is planned as TP8 x PP2 over two
nodes and runs as a LeaderWorkerSet of groups of two pods."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from kvscale.operator.resource import GROUP, PLURAL, VERSION
from kvscale.testing.cluster import LocalCluster
from kvscale.testing.fleet import NodePool, node_manifest
from kvscale.testing.lws import LWSController

from .test_operator import condition, create, get, wait_for

pytestmark = pytest.mark.cluster

POOL_LABEL = "kvscale.io/test-pool"  # the nodes of this module, which its pods select
BLOCK_LABEL = "kvscale.io/test-block"  # two network blocks of two nodes: a group each, exclusively
NODES = {f"kwok-mn-h100-{i}": "block-a" if i < 2 else "block-b" for i in range(4)}
LWS = ("leaderworkerset.x-k8s.io", "v1", "leaderworkersets")


@pytest.fixture(scope="module")
def lws(cluster: LocalCluster) -> Iterator[LWSController]:
    controller = LWSController().start(cluster)
    with cluster.http() as c:
        for name, block in NODES.items():
            node = node_manifest(NodePool(gpu="H100-80GB", nodes=1, gpus_per_node=8, cpu=208, memory_gib=1800), 0)
            node["metadata"]["name"] = name
            node["metadata"]["labels"] |= {"kubernetes.io/hostname": name, POOL_LABEL: "multi-node",
                                           BLOCK_LABEL: block}
            assert c.post("/api/v1/nodes", json=node).status_code in (200, 201, 409)
    cluster.wait_nodes_ready(list(NODES))
    try:
        yield controller
    finally:
        with cluster.http() as c:
            for name in NODES:
                c.delete(f"/api/v1/nodes/{name}")
        controller.stop(cluster)
        # the API goes too: later tests see a cluster that cannot run replicas across nodes, as before
        cluster.kubectl("delete", "crd", "leaderworkersets.leaderworkerset.x-k8s.io", "--ignore-not-found",
                        "--wait=false", check=False)


def r1(name: str, replicas: int = 1) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "LLMDeployment", "metadata": {"name": name},
            "spec": {"model": {"name": "deepseek-ai/DeepSeek-R1"},
                     "serving": {"maxModelLen": 16384, "targetConcurrency": 8},
                     "placement": {"gpuTypes": ["H100-80GB"], "nodeSelector": {POOL_LABEL: "multi-node"},
                                   "groupTopologyKey": BLOCK_LABEL},
                     "replicas": replicas, "autoscaling": {"enabled": False}}}


def pods(api: Any, ns: str, name: str) -> list[Any]:
    listed = client.CoreV1Api(api).list_namespaced_pod(ns, label_selector=f"kvscale.io/llmdeployment={name}")
    return [p for p in listed.items if p.metadata.deletion_timestamp is None]


def ready(pod: Any) -> bool:
    return pod.status.phase == "Running" and any(
        c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])


def groups_ready(api: Any, ns: str, name: str, n: int) -> dict[str, list[Any]] | None:
    """The group key -> its pods, once exactly ``n`` groups of two Ready pods exist."""
    found: dict[str, list[Any]] = {}
    for p in pods(api, ns, name):
        found.setdefault(p.metadata.labels.get("leaderworkerset.sigs.k8s.io/group-key", ""), []).append(p)
    if len(found) == n and all(len(g) == 2 and all(map(ready, g)) for g in found.values()):
        return found
    return None


def test_deepseek_r1_runs_as_groups_of_two_nodes_scales_by_group_and_restarts_a_group(  # type: ignore[no-untyped-def]
        api, namespace: str, operator, lws: LWSController) -> None:
    create(api, namespace, r1("r1"))
    obj = wait_for(lambda: (o := get(api, namespace, "r1")).get("status", {}).get("plan") and o, 90, "a plan")
    plan = obj["status"]["plan"]
    assert (plan["gpu"], plan["tensorParallelSize"], plan["pipelineParallelSize"], plan["nodesPerReplica"]) == (
        "H100-80GB", 8, 2, 2), plan
    assert condition(obj, "Planned")["status"] == "True"

    custom = client.CustomObjectsApi(api)
    found = custom.get_namespaced_custom_object(*LWS[:2], namespace, LWS[2], "r1-lws")
    assert found["spec"]["leaderWorkerTemplate"]["size"] == 2
    one = wait_for(lambda: groups_ready(api, namespace, "r1", 1), 120, "one group of two Ready pods")
    (group,) = one.values()
    nodes = {p.spec.node_name for p in group}
    assert len(nodes) == 2 and nodes <= set(NODES), nodes  # two different H100 nodes of this pool
    assert len({NODES[n] for n in nodes}) == 1  # one block holds the whole group
    roles = sorted(p.metadata.labels["kvscale.io/role"] for p in group)
    assert roles == ["leader", "worker"]
    worker = next(p for p in group if p.metadata.labels["kvscale.io/role"] == "worker")
    env = {e.name for e in worker.spec.containers[0].env or []}
    assert {"LWS_LEADER_ADDRESS", "LWS_WORKER_INDEX"} <= env  # injected by the LWS webhook
    svc = client.CoreV1Api(api).read_namespaced_service("r1", namespace)
    assert svc.spec.selector == {"kvscale.io/llmdeployment": "r1", "kvscale.io/role": "leader"}
    wait_for(lambda: get(api, namespace, "r1").get("status", {}).get("readyReplicas") == 1, 60,
             "readyReplicas mirrored from the LeaderWorkerSet")

    # scale 1 -> 2 groups: the second lands in the other block (exclusive topology), and back
    custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "r1", {"spec": {"replicas": 2}})
    two = wait_for(lambda: groups_ready(api, namespace, "r1", 2), 120, "two groups Ready")
    blocks = [{NODES[p.spec.node_name] for p in g} for g in two.values()]
    assert all(len(b) == 1 for b in blocks) and blocks[0] != blocks[1], blocks
    lws_obj = custom.get_namespaced_custom_object(*LWS[:2], namespace, LWS[2], "r1-lws")
    assert lws_obj["spec"]["replicas"] == 2
    assert get(api, namespace, "r1")["status"]["planHash"] == obj["status"]["planHash"]  # a scale never re-plans
    custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "r1", {"spec": {"replicas": 1}})
    one = wait_for(lambda: groups_ready(api, namespace, "r1", 1), 120, "back to one group")

    # a worker deleted: its whole group is recreated (vLLM's process group cannot take a member back)
    (group,) = one.values()
    leader = next(p for p in group if p.metadata.labels["kvscale.io/role"] == "leader")
    worker = next(p for p in group if p.metadata.labels["kvscale.io/role"] == "worker")
    # an ordinary delete: the pod is marked, and LWS reads the mark. A forced one (grace 0) is gone before
    # LWS's reconcile reads it, and the worker StatefulSet's replacement hides it (no group restart)
    client.CoreV1Api(api).delete_namespaced_pod(worker.metadata.name, namespace)

    def leader_replaced() -> bool:
        now = {p.metadata.name: p.metadata.uid for p in pods(api, namespace, "r1")}
        return now.get(leader.metadata.name) not in (None, leader.metadata.uid)

    wait_for(leader_replaced, 120, "the leader recreated with its group")
    wait_for(lambda: groups_ready(api, namespace, "r1", 1), 120, "the group Ready again")

    # the LeaderWorkerSet deleted by someone else: applied again
    uid = custom.get_namespaced_custom_object(*LWS[:2], namespace, LWS[2], "r1-lws")["metadata"]["uid"]
    custom.delete_namespaced_custom_object(*LWS[:2], namespace, LWS[2], "r1-lws")
    wait_for(lambda: custom.get_namespaced_custom_object(*LWS[:2], namespace, LWS[2], "r1-lws")["metadata"]["uid"]
             != uid, 60, "the LeaderWorkerSet restored")
    wait_for(lambda: groups_ready(api, namespace, "r1", 1), 120, "its group Ready again")

    # the spec moves to a model one node holds: a Deployment replaces the LeaderWorkerSet
    custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "r1", {"spec": {
        "model": {"name": "meta-llama/Llama-3.1-8B-Instruct"}, "serving": {"maxModelLen": 8192}}})
    wait_for(lambda: client.AppsV1Api(api).read_namespaced_deployment("r1", namespace), 90, "a Deployment")
    wait_for(lambda: not any(o["metadata"]["name"] == "r1-lws" for o in custom.list_namespaced_custom_object(
        *LWS[:2], namespace, LWS[2])["items"]), 90, "the LeaderWorkerSet deleted")
    after = wait_for(lambda: (st := get(api, namespace, "r1")["status"])["plan"]["gpu"] and
                     "Deployment/r1" in st["children"] and st, 60, "the single-node plan recorded")
    assert after["plan"].get("nodesPerReplica") is None and "LeaderWorkerSet/r1-lws" not in after["children"]
    # and the Service selects every replica pod again
    wait_for(lambda: client.CoreV1Api(api).read_namespaced_service("r1", namespace).spec.selector
             == {"kvscale.io/llmdeployment": "r1"}, 30, "the Service back to all pods")


def test_deleting_a_multi_node_llmdeployment_collects_its_groups(  # type: ignore[no-untyped-def]
        api, namespace: str, operator, lws: LWSController) -> None:
    create(api, namespace, r1("gone"))
    wait_for(lambda: groups_ready(api, namespace, "gone", 1), 120, "one group Ready")
    client.CustomObjectsApi(api).delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "gone")
    custom = client.CustomObjectsApi(api)
    started = time.monotonic()
    wait_for(lambda: not custom.list_namespaced_custom_object(*LWS[:2], namespace, LWS[2])["items"]
             and not pods(api, namespace, "gone")
             and not client.AppsV1Api(api).list_namespaced_stateful_set(namespace).items, 120,
             "the LeaderWorkerSet, its StatefulSets and pods collected")
    assert time.monotonic() - started < 120
