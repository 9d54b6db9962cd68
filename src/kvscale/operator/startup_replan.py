"""What a failed vLLM start teaches the planner, and how often one spec may be re-planned for it (pure).

A replica of the current plan that vLLM refused to start for memory (KV cache too small for maxModelLen,
no KV memory left, out of GPU memory) shows the estimate was optimistic on that GPU type by at least the
KV memory vLLM did not find; one that failed on an unsupported format shows the layout cannot run there.
The next plan reserves that memory on the GPU type and never tries the failed layout again, within what
the spec allows (a fixed tensorParallelSize stays fixed). After ``MAX_STARTUP_REPLANS`` the plan is kept
and the failures are reported, so a spec no layout can serve does not roll the fleet forever.
"""

from __future__ import annotations

from typing import Any

from ..estimator.gpus import GIB
from ..estimator.planner import SUGGEST_MAX_NODES, TP_DEGREES, layout_key
from ..estimator.quantization import Quantization
from .render import LWS_GROUP_KEY, PLAN_HASH_ANNOTATION, ROLE_LABEL, WORKER
from .startup_failures import StartupCause, StartupFailure

MAX_STARTUP_REPLANS = 3
#: how a rejection for a failed start begins (planning lists those first)
FAILED_START = "failed to start"
#: records kept in status: enough for the re-plans of one spec and the story of the last one
MAX_RECORDS = 10
MEMORY_CAUSES = frozenset({StartupCause.KV_TOO_SMALL, StartupCause.NO_KV_MEMORY, StartupCause.GPU_OUT_OF_MEMORY})


def failure_record(f: StartupFailure, plan: dict[str, Any], plan_hash: str, spec_hash: str,
                   now: str) -> dict[str, Any] | None:
    """The status.startupFailures entry for a failed start of ``plan``; None when planning again cannot
    help (the host's memory limit: the pod's resources, not the GPU layout)."""
    if f.cause not in MEMORY_CAUSES and f.cause is not StartupCause.UNSUPPORTED:
        return None
    predicted = plan.get("kvCacheGiB")
    missing = None
    if f.cause is StartupCause.KV_TOO_SMALL and f.available_kv_gib is not None and predicted is not None:
        missing = round(max(0.0, float(predicted) - f.available_kv_gib), 2)
    elif f.cause in MEMORY_CAUSES and predicted is not None:
        missing = float(predicted)  # none of the KV cache the estimate counted on was there
    return {"time": now, "specHash": spec_hash, "planHash": plan_hash, "gpu": plan.get("gpu"),
            "tensorParallelSize": plan.get("tensorParallelSize"), "quantization": plan.get("quantization"),
            **({"pipelineParallelSize": plan["pipelineParallelSize"]} if plan.get("pipelineParallelSize") else {}),
            "cause": str(f.cause), "message": f.summary()[:400], "missingGiB": missing}


def for_spec(records: list[dict[str, Any]] | None, spec_hash: str) -> list[dict[str, Any]]:
    return [r for r in records or [] if r.get("specHash") == spec_hash]


def _ready(pod: dict[str, Any]) -> bool:
    conds = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conds)


def lessons(records: list[dict[str, Any]]) -> tuple[dict[str, int], dict[str, str]]:
    """(memory to reserve per GPU, by GPU type; layouts not to try again -> why) from one spec's failures;
    an entry that cannot be read (edited by hand) teaches nothing."""
    reserved: dict[str, int] = {}
    excluded: dict[str, str] = {}
    for r in records:
        try:
            _learn(r, reserved, excluded)
        except (KeyError, ValueError, TypeError):
            continue
    return reserved, excluded


def _learn(r: dict[str, Any], reserved: dict[str, int], excluded: dict[str, str]) -> None:
    why = f"{FAILED_START} at {r['time']}: {r['message']}"
    quant = Quantization(r["quantization"])
    if r["cause"] == StartupCause.UNSUPPORTED:
        excluded.update({layout_key(r["gpu"], tp, quant, pp): why
                         for tp in TP_DEGREES for pp in range(1, SUGGEST_MAX_NODES + 1)})
        return
    excluded[layout_key(r["gpu"], int(r["tensorParallelSize"]), quant, int(r.get("pipelineParallelSize") or 1))] = why
    if r.get("missingGiB"):
        # the plan that failed was made with the reserve already known: what it missed comes on top
        total = int(float(r["missingGiB"]) * GIB) + int(r.get("reservedBytes") or 0)
        reserved[r["gpu"]] = max(reserved.get(r["gpu"], 0), total)


def new_failure(pods: list[dict[str, Any]], causes: dict[str, StartupFailure], status: dict[str, Any],
                spec_hash: str, now: str, served: set[str] | frozenset[str] = frozenset()) -> dict[str, Any] | None:
    """The first failed start of a replica of the current plan that is not on record yet, as a record.

    ``pods``: those of the current pod template. A pod that has served (``served``) failed at run time, not at
    start; and while any replica of the plan is Ready the layout runs, so one failing replica (a bad node,
    a runtime OOM) is that replica's trouble, not the plan's. A multi-node group is a replica through its
    leader: its workers have no readiness of their own (Ready once running), and a worker of a group whose
    leader has served failed at run time too."""
    plan, plan_hash = status.get("plan"), status.get("planHash")
    if not plan or not plan_hash or any(r.get("planHash") == plan_hash
                                         for r in for_spec(status.get("startupFailures"), spec_hash)):
        return None

    def labels(p: dict[str, Any]) -> dict[str, str]:
        return p["metadata"].get("labels") or {}

    replicas = [p for p in pods if labels(p).get(ROLE_LABEL) != WORKER]
    if any(_ready(p) for p in replicas):
        return None
    served_groups = {labels(p).get(LWS_GROUP_KEY) for p in replicas if p["metadata"]["name"] in served}
    for pod in pods:
        worker = labels(pod).get(ROLE_LABEL) == WORKER
        if pod["metadata"]["name"] in served or (worker and labels(pod).get(LWS_GROUP_KEY) in served_groups):
            continue
        meta = pod["metadata"]
        cause = causes.get(meta["name"])
        if cause is not None and (meta.get("annotations") or {}).get(PLAN_HASH_ANNOTATION) == plan_hash:
            record = failure_record(cause, plan, plan_hash, spec_hash, now)
            if record is not None:
                known, _ = lessons(for_spec(status.get("startupFailures"), spec_hash))
                return {**record, "reservedBytes": known.get(str(plan.get("gpu")), 0)}
    return None
