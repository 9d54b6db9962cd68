"""How a plan or spec change rolls out, from the pod's size and the room the cluster has (pure).

A surge rollout starts each new replica before stopping an old one: no capacity is lost, but it needs
a node with a replica's worth of free GPUs. Where none has (an 8-GPU replica on full 8-GPU nodes),
it would wait forever, so the rollout replaces instead: one old replica stops, its successor takes
its GPUs. The choice is made when the change is applied, from the GPUs free at that moment.
"""

from __future__ import annotations

from typing import Any

from .resource import RolloutStrategy

SURGE = {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
REPLACE = {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}}


def rollout_strategy(mode: RolloutStrategy, gpus_per_pod: int, free_per_node: list[int] | None
                     ) -> tuple[dict[str, Any], str]:
    """(Deployment strategy, why). ``free_per_node`` None: unknown (no node list), surge is assumed."""
    if mode is RolloutStrategy.SURGE:
        return SURGE, "surge (spec.vllm.rollout)"
    if mode is RolloutStrategy.REPLACE:
        return REPLACE, "replace (spec.vllm.rollout)"
    if free_per_node is None:
        return SURGE, "surge (free GPUs unknown)"
    room = sum(f // gpus_per_pod for f in free_per_node)
    if room:
        return SURGE, f"surge: room for {room} more replica(s) of {gpus_per_pod} GPU(s)"
    best = max(free_per_node, default=0)
    return REPLACE, f"replace: no node has {gpus_per_pod} free GPU(s) (most free on one node: {best})"
