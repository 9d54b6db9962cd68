"""Which GPU types a cluster offers, read from node labels and allocatable resources (pure)."""

from __future__ import annotations

from typing import Any

from ..estimator.gpus import GPUCatalog
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
