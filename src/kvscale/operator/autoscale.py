"""Autoscaler glue: pods -> targets, spec -> policy settings, decision -> status (pure helpers)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..autoscaler.policy import Decision, PolicySpec
from ..autoscaler.snapshot import ReplicaMetrics
from ..autoscaler.sources import Target
from .render import LWS_GROUP_KEY, ROLE_LABEL, VLLM_CONTAINER, WORKER
from .resource import Autoscaling
from .startup_failures import StartupFailure

HISTORY = 20


def policy_spec(a: Autoscaling) -> PolicySpec:
    return PolicySpec(
        min_replicas=a.min_replicas, max_replicas=a.max_replicas, target_kv=a.target_kv_cache_utilization,
        max_waiting_per_replica=a.max_waiting_per_replica, max_preemptions_per_s=a.max_preemptions_per_second,
        scale_up_window_s=float(a.scale_up_stabilization_seconds),
        scale_down_window_s=float(a.scale_down_stabilization_seconds),
        max_scale_up_step=a.max_scale_up_step,
        max_scale_down_fraction=a.max_scale_down_percent / 100,
        scale_down_period_s=float(a.scale_down_period_seconds),
        max_queue_s=a.max_queue_seconds, max_slow_fraction=a.max_slow_request_fraction,
        burst_memory_s=float(a.burst_memory_seconds),
        panic_window_s=float(min(60, max(a.scale_down_stabilization_seconds, 1))),
    )


@dataclass(frozen=True)
class PodView:
    """The vLLM pods as the autoscaler counts them."""

    ready: list[Target]  # Ready, with a pod IP: scraped
    # Running with its vLLM process alive but failing readiness (an overloaded server answers /health
    # late): scraped when it has served before, since it may hold most of the load
    unready: list[Target]
    pending: int  # not yet serving: scheduled, pulling, loading its model
    unschedulable: int
    unschedulable_reason: str
    # broken rather than starting (CrashLoopBackOff, image errors, not Ready since it was killed): counted
    # apart, so a replica that may never start does not hold scaling as "starting" forever
    failed: int = 0


def _unschedulable(pod: dict[str, Any]) -> bool:
    conds = (pod.get("status") or {}).get("conditions") or []
    sched: dict[str, Any] = next((c for c in conds if c["type"] == "PodScheduled"), {})
    return sched.get("status") == "False" and sched.get("reason") == "Unschedulable"


def replica_groups(pods: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One pod per replica: a single-node replica's pod, or the leader of a multi-node group standing for
    its whole group. The group is as far along as its worst pod: a worker that failed makes the group
    failed, one that cannot be scheduled (a second whole node is the usual shortage) makes it
    unschedulable, whatever its leader reports. The leader alone is scraped (it serves the group)."""
    def role(p: dict[str, Any]) -> str | None:
        return (p["metadata"].get("labels") or {}).get(ROLE_LABEL)

    def group(p: dict[str, Any]) -> str | None:
        return (p["metadata"].get("labels") or {}).get(LWS_GROUP_KEY)

    workers: dict[str | None, list[dict[str, Any]]] = {}
    for p in pods:
        if role(p) == WORKER and not p["metadata"].get("deletionTimestamp"):
            workers.setdefault(group(p), []).append(p)
    out = []
    for p in pods:
        if role(p) == WORKER:
            continue
        members = workers.get(group(p), []) if group(p) is not None else []
        broken = next((w for w in members if failed_containers(w)), None)
        stuck = next((w for w in members if _unschedulable(w)), None)
        if failed_containers(p) or (broken is None and stuck is None):
            out.append(p)
        else:  # the leader with the worker's state: the group counts as that worker does
            worst = broken or stuck
            assert worst is not None
            out.append({"metadata": p["metadata"], "status": worst.get("status") or {}})
    return out


def classify_pods(pods: list[dict[str, Any]], port: int) -> PodView:
    ready: list[Target] = []
    unready: list[Target] = []
    pending, unschedulable, failed, reason = 0, 0, 0, ""
    for p in pods:
        meta, st = p["metadata"], p.get("status") or {}
        if meta.get("deletionTimestamp"):
            continue
        if failed_containers(p):
            failed += 1
            continue
        conds = {c["type"]: c for c in st.get("conditions") or []}
        if _unschedulable(p):
            unschedulable += 1
            reason = reason or conds["PodScheduled"].get("message", "")
            continue
        running = st.get("phase") == "Running" and bool(st.get("podIP"))
        target = Target(meta["namespace"], meta["name"], st.get("podIP") or "", port)
        alive = all("running" in (cs.get("state") or {}) for cs in st.get("containerStatuses") or [{}])
        if running and conds.get("Ready", {}).get("status") == "True":
            ready.append(target)
        elif running and alive:
            unready.append(target)
        else:
            pending += 1
    return PodView(ready, unready, pending, unschedulable, reason, failed)


#: the label the Deployment controller puts on a pod: which revision of the pod template it runs
TEMPLATE_HASH_LABEL = "pod-template-hash"


def current_revision(pods: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The pods of the newest pod template, not being deleted. During a rollout only the newest
    ReplicaSet creates pods, so the newest pod names it; a pod of an earlier template (an earlier spec,
    the same layout) must not speak for the current one."""
    live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
    if not live:
        return []
    newest = max(live, key=lambda p: (str(p["metadata"].get("creationTimestamp") or ""), p["metadata"]["name"]))
    revision = (newest["metadata"].get("labels") or {}).get(TEMPLATE_HASH_LABEL)
    return [p for p in live if (p["metadata"].get("labels") or {}).get(TEMPLATE_HASH_LABEL) == revision]


def decision_record(d: Decision, now: str, applied: bool) -> dict[str, Any]:
    return {"time": now, "replicas": d.current, "desiredReplicas": d.desired, "valid": d.valid,
            "reason": d.reason[:512], "applied": applied}


def with_history(history: list[dict[str, Any]] | None, record: dict[str, Any]) -> list[dict[str, Any]]:
    return [*(history or []), record][-HISTORY:]


def mean_kv(metrics: dict[str, ReplicaMetrics]) -> float | None:
    if not metrics:
        return None
    return sum(m.kv_cache_usage for m in metrics.values()) / len(metrics)


def estimator_check(predicted_blocks: int | None, metrics: dict[str, ReplicaMetrics]) -> dict[str, Any] | None:
    """``predicted_blocks``: the estimate's, not a plan made from a measurement (that would compare the
    measurement with itself)."""
    observed = next((m.num_gpu_blocks for m in metrics.values() if m.num_gpu_blocks), None)
    if not predicted_blocks or not observed:
        return None
    return {"predictedBlocks": predicted_blocks, "observedBlocks": observed,
            "errorPercent": round((observed - predicted_blocks) / predicted_blocks * 100, 2)}


#: container states the kubelet reports for a replica that is broken rather than starting
FAILED_WAITING = frozenset({"CrashLoopBackOff", "ImagePullBackOff", "ErrImagePull", "CreateContainerError",
                            "CreateContainerConfigError", "RunContainerError", "InvalidImageName"})


def pod_failures(pods: list[dict[str, Any]], causes: dict[str, StartupFailure] | None = None) -> dict[str, str]:
    """Failure key -> one line per vLLM container that is not Ready because it failed: pod, reason, exit code,
    the cause where it is known (``causes``: pod -> what stopped its last start), restarts.

    A container counts as failed while it waits in a failure state (CrashLoopBackOff, image errors) or
    is not Ready after a termination (OOMKilled, a non-zero exit); a Ready container has recovered. The key
    (pod, container, reason, cause) stays the same from one restart to the next, whatever numbers the
    line carries: one Event per new failure, not per restart.
    """
    out: dict[str, str] = {}
    for p in pods:
        if not p["metadata"].get("deletionTimestamp"):
            out.update(_container_failures(p, (causes or {}).get(p["metadata"]["name"])))
    return dict(sorted(out.items(), key=lambda kv: kv[1]))


def failed_containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    """The statuses of the pod's containers that are not Ready because they failed."""
    out = []
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        waiting = ((cs.get("state") or {}).get("waiting") or {}).get("reason")
        if not cs.get("ready") and (waiting in FAILED_WAITING or (cs.get("lastState") or {}).get("terminated")):
            out.append(cs)
    return out


def _container_failures(pod: dict[str, Any], cause: StartupFailure | None) -> dict[str, str]:
    out = {}
    for cs in failed_containers(pod):
        waiting = ((cs.get("state") or {}).get("waiting") or {}).get("reason")
        last = (cs.get("lastState") or {}).get("terminated") or {}
        restarts = int(cs.get("restartCount") or 0)
        why = last.get("reason") or waiting or "Terminated"
        head = f"pod {pod['metadata']['name']} container {cs.get('name')}: {why}"
        parts = [head]
        if last.get("exitCode") is not None:
            parts.append(f"exit code {last['exitCode']}")
        if waiting and waiting != why:
            parts.append(waiting)
        known = cause if cause is not None and cs.get("name") == VLLM_CONTAINER else None
        if known is not None:
            parts.append(known.summary()[:CAUSE_CHARS])
        parts.append(f"{restarts} restart{'s' if restarts != 1 else ''}")
        out[f"{head} ({known.cause})" if known else head] = ", ".join(parts)
    return out


#: of a failure's cause in its line: the Degraded condition holds every failed replica in 900 characters
CAUSE_CHARS = 160


#: the ReplicaSet removes the pod with the lowest cost first (among Ready pods on equal footing)
DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"


def deletion_costs(pods: list[dict[str, Any]], metrics: dict[str, ReplicaMetrics]) -> dict[str, str]:
    """Pod -> new deletion cost, for the pods whose cost changed: KV in use, in percent.

    A scale-down then removes the replica holding the least KV cache (the fewest and shortest requests
    to drain, the least prefix cache lost). Whole percents keep the annotation from changing on every read.
    """
    out = {}
    for p in pods:
        meta = p["metadata"]
        m = metrics.get(meta["name"])
        if m is None or meta.get("deletionTimestamp"):
            continue
        cost = str(round(m.kv_cache_usage * 100))
        if (meta.get("annotations") or {}).get(DELETION_COST) != cost:
            out[meta["name"]] = cost
    return out
