"""Simulated GPU node pools: Node objects as NVIDIA GPU feature discovery would label them."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ..estimator.gpus import GPUCatalog, default_catalog

KWOK_ANNOTATION = "kwok.x-k8s.io/node"
GPU_TAINT_KEY = "nvidia.com/gpu"


class NodePool(BaseModel):
    model_config = ConfigDict(frozen=True)

    gpu: str  # GPU catalog name
    nodes: int = Field(ge=0)
    gpus_per_node: int = Field(ge=1)
    cpu: int = Field(default=96, ge=1)
    memory_gib: int = Field(default=1024, ge=1)
    taint: bool = True  # GPU pools are tainted so only pods that tolerate it land there


DEFAULT_FLEET: tuple[NodePool, ...] = (
    NodePool(gpu="H100-80GB", nodes=2, gpus_per_node=8, cpu=208, memory_gib=1800),
    NodePool(gpu="A100-80GB", nodes=2, gpus_per_node=8, cpu=96, memory_gib=1300),
    NodePool(gpu="L4", nodes=4, gpus_per_node=1, cpu=16, memory_gib=64),
)


def node_name(pool: NodePool, index: int) -> str:
    return f"kwok-{pool.gpu.lower()}-{index}"


def node_manifest(pool: NodePool, index: int, catalog: GPUCatalog | None = None) -> dict[str, Any]:
    gpu = (catalog or default_catalog()).get(pool.gpu)
    name = node_name(pool, index)
    product = gpu.product_labels[0] if gpu.product_labels else gpu.name
    labels = {
        "kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
        "type": "kwok", "node.kubernetes.io/instance-type": f"{pool.gpus_per_node}x{gpu.name}",
        gpu.product_label_key: product,
    }
    if gpu.vendor == "nvidia":
        labels.update({
            "nvidia.com/gpu.present": "true",
            "nvidia.com/gpu.count": str(pool.gpus_per_node),
            "nvidia.com/gpu.memory": str(int(gpu.memory_gib * 1024)),
            "nvidia.com/gpu.family": gpu.name.split("-")[0].lower(),
        })
    capacity = {"cpu": str(pool.cpu), "memory": f"{pool.memory_gib}Gi", "pods": "110",
                gpu.resource_name: str(pool.gpus_per_node), "ephemeral-storage": "1Ti"}
    spec: dict[str, Any] = {}
    if pool.taint:
        spec["taints"] = [{"key": gpu.resource_name, "value": "present", "effect": "NoSchedule"}]
    return {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": labels,
                     "annotations": {KWOK_ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"}},
        "spec": spec,
        "status": {"capacity": capacity, "allocatable": capacity,
                   "nodeInfo": {"kubeletVersion": "fake", "architecture": "amd64", "operatingSystem": "linux"}},
    }


def fleet_manifests(fleet: tuple[NodePool, ...] = DEFAULT_FLEET,
                    catalog: GPUCatalog | None = None) -> list[dict[str, Any]]:
    return [node_manifest(p, i, catalog) for p in fleet for i in range(p.nodes)]


def parse_fleet(text: str) -> tuple[NodePool, ...]:
    """``H100-80GB:2x8,L4:4x1`` -> pools (GPU:NODESxGPUS_PER_NODE)."""
    pools = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        gpu, sep, shape = item.partition(":")
        nodes, x, per = shape.partition("x")
        if not sep or not x or not nodes.isdigit() or not per.isdigit():
            raise ValueError(f"fleet entry {item!r} must look like GPU:NODESxGPUS_PER_NODE (e.g. H100-80GB:2x8)")
        default_catalog().get(gpu)
        pools.append(NodePool(gpu=gpu, nodes=int(nodes), gpus_per_node=int(per)))
    return tuple(pools)
