"""Which GPU types a cluster offers, read from node labels and allocatable resources (pure)."""

from __future__ import annotations

from typing import Any

from ..estimator.gpus import GPUCatalog, GPUType
from ..estimator.planner import GPUOption


def _ready(node: dict[str, Any]) -> bool:
    if (node.get("spec") or {}).get("unschedulable"):
        return False
    conds = (node.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conds)


def _quantity(value: Any) -> int:
    try:
        return int(str(value))
    except ValueError:
        return 0


def gpu_options(nodes: list[dict[str, Any]], catalog: GPUCatalog) -> dict[str, GPUOption]:
    """GPU type name -> option (largest per-node GPU count, number of Ready nodes)."""
    per_node: dict[str, int] = {}
    counts: dict[str, int] = {}
    for node in nodes:
        if not _ready(node):
            continue
        labels = (node.get("metadata") or {}).get("labels") or {}
        alloc = (node.get("status") or {}).get("allocatable") or {}
        for gpu in catalog.gpus:
            product = labels.get(gpu.product_label_key)
            if product is None or product not in gpu.product_labels:
                continue
            n = _quantity(alloc.get(gpu.resource_name, 0))
            if n <= 0:
                continue
            per_node[gpu.name] = max(per_node.get(gpu.name, 0), n)
            counts[gpu.name] = counts.get(gpu.name, 0) + 1
    return {name: GPUOption(gpu=catalog.get(name), gpus_per_node=per_node[name], nodes=counts[name])
            for name in sorted(per_node)}


def allowed_options(available: dict[str, GPUOption], allowed: list[str], catalog: GPUCatalog) -> \
        tuple[list[GPUOption], list[str]]:
    """Intersect the cluster's GPU types with spec.placement.gpuTypes; also return unknown names."""
    if not allowed:
        return list(available.values()), []
    unknown, chosen = [], []
    for name in allowed:
        try:
            canonical = catalog.get(name).name
        except ValueError:
            unknown.append(name)
            continue
        if canonical in available:
            chosen.append(available[canonical])
    return chosen, unknown


def free_gpus(nodes: list[dict[str, Any]], pods: list[dict[str, Any]], gpu: GPUType) -> list[int]:
    """Unrequested GPUs of this type on each Ready, schedulable node (what a new pod could get)."""
    used: dict[str, int] = {}
    for p in pods:
        node = (p.get("spec") or {}).get("nodeName")
        if not node or (p.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            continue
        for c in (p.get("spec") or {}).get("containers") or []:
            req = ((c.get("resources") or {}).get("requests") or {}).get(gpu.resource_name)
            used[node] = used.get(node, 0) + _quantity(req or 0)
    free = []
    for node in nodes:
        labels = (node.get("metadata") or {}).get("labels") or {}
        if not _ready(node) or labels.get(gpu.product_label_key) not in gpu.product_labels:
            continue
        name = (node.get("metadata") or {}).get("name", "")
        alloc = _quantity(((node.get("status") or {}).get("allocatable") or {}).get(gpu.resource_name, 0))
        free.append(max(0, alloc - used.get(name, 0)))
    return free
