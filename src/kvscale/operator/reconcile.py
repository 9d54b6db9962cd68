"""One reconciliation as a value: what to apply, the status to write, the Events to post (pure)."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from ..estimator.gpus import GPUCatalog
from ..estimator.planner import GPUOption, Plan, layout_name
from . import conditions as c
from .calibration import measured_bytes
from .engine_args import conflicting_args
from .image_version import release_check
from .model_source import model_source, uri_error
from .planning import alternatives, decide_plan, keep_plan, plan_hash, plan_status, rejected
from .render import WORKLOAD_KINDS, desired_replicas, render, selector_string, vllm_image
from .resource import LLMDeploymentSpec
from .startup_replan import MAX_STARTUP_REPLANS, for_spec, lessons


@dataclass(frozen=True)
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass
class Reconciliation:
    apply: list[dict[str, Any]] = field(default_factory=list)
    status: dict[str, Any] = field(default_factory=dict)  # merge patch for .status ({} = nothing to write)
    conditions: list[tuple[str, bool | str, str, str]] = field(default_factory=list)  # (type, status, reason, msg)
    events: list[Event] = field(default_factory=list)
    planned: bool = False
    plan_changed: bool = False
    scale: int | None = None  # replicas to set on the existing Deployment without re-rendering it
    delete: list[str] = field(default_factory=list)  # children (Kind/name) to delete: a workload of the other kind


def parse_spec(spec: dict[str, Any]) -> LLMDeploymentSpec | str:
    try:
        return LLMDeploymentSpec.model_validate(spec)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(x) for x in err.get("loc", ()))
        return f"spec.{loc}: {err.get('msg', 'invalid')}"


def spec_error(name: str, spec: LLMDeploymentSpec) -> tuple[str, str] | None:
    """(reason, message) for a spec the schema admits but kvscale cannot run as asked."""
    bad_uri = uri_error(spec.model.uri)
    if bad_uri:
        return "InvalidModelURI", bad_uri
    conflicts = conflicting_args(spec.vllm.extra_args, model_source(name, spec))
    if conflicts:
        return "ConflictingExtraArgs", "spec.vllm.extraArgs: " + "; ".join(conflicts)
    return None


#: how long the planned GPU type may be missing from every Ready node (a drained node pool, a zone
#: outage, nodes cordoned for maintenance) before kvscale re-plans onto another type: long enough that
#: a node restart or an upgrade's cordon-and-drain does not roll the whole fleet to other GPUs
REPLAN_GRACE_S = 300.0


def spec_hash(raw_spec: dict[str, Any]) -> str:
    """The spec as the planner sees it: ``replicas`` is the scaler's, and changing it never re-plans."""
    key = json.dumps({k: v for k, v in raw_spec.items() if k != "replicas"}, sort_keys=True, default=str)
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def child_key(obj: dict[str, Any]) -> str:
    return f"{obj['kind']}/{obj['metadata']['name']}"


def _elapsed_s(since: str, now: str) -> float:
    try:
        return (dt.datetime.fromisoformat(now) - dt.datetime.fromisoformat(since)).total_seconds()
    except ValueError:
        return 0.0


def reconcile(name: str, namespace: str, uid: str, generation: int, raw_spec: dict[str, Any],
              status: dict[str, Any], available: dict[str, GPUOption], catalog: GPUCatalog, now: str,
              children: dict[str, str] | None = None, free_gpus: dict[str, list[int]] | None = None,
              shared: list[dict[str, Any]] | None = None, multi_node: bool = False) -> Reconciliation:
    """Decide what this LLMDeployment needs. Writes nothing when nothing changed.

    The plan is made once per spec: a scale, a node going away or a restart keeps it (the same GPU
    type, TP degree and quantization, whatever nodes are Ready at that moment). It changes when the
    spec does, or when no Ready node has offered its GPU type for ``REPLAN_GRACE_S``.
    ``children``: what exists now of what kvscale applied (``Kind/name`` -> generation or resourceVersion);
    anything that differs from ``status.children`` was deleted or edited and is applied again.
    ``free_gpus``: unrequested GPUs per node by GPU type, to choose how a change rolls out.
    ``shared``: calibration records of the cluster (the operator's ConfigMap); this object's own come first.
    ``multi_node``: the cluster serves the LeaderWorkerSet API, so a replica may span nodes.
    A measured layout is planned with what its replicas allocated, so a measurement updates the plan's
    KV figures (and the replicas the target needs) without moving the fleet.
    """
    out = Reconciliation()
    conds = list(status.get("conditions") or [])
    parsed = parse_spec(raw_spec)
    invalid = ("InvalidSpec", parsed) if isinstance(parsed, str) else spec_error(name, parsed)
    if invalid is not None:
        reason, message = invalid
        new = c.set_condition(conds, c.PLANNED, False, reason, message, generation, now)
        if not c.same_conditions(new, conds) or status.get("observedGeneration") != generation:
            out.status = {"observedGeneration": generation}
            out.conditions = [(c.PLANNED, False, reason, message)]
            out.events.append(Event("Warning", reason, message))
        return out
    assert not isinstance(parsed, str)
    spec = parsed

    current: dict[str, Any] = status.get("plan") or {}
    key = spec_hash(raw_spec)
    failures = for_spec(status.get("startupFailures"), key)
    reserved, excluded = lessons(failures)
    measured = measured_bytes([*(status.get("calibration") or []), *(shared or [])], spec)
    failed = bool(current) and any(r.get("planHash") == status.get("planHash") for r in failures)
    replan_failed = failed and len(failures) <= MAX_STARTUP_REPLANS
    keep = current and status.get("specHash") == key and not replan_failed
    # a plan that runs is made again as it was planned, reserve included; one whose starts failed past the
    # last re-plan is kept as it is (the reserve would rule it out, and the next plan would roll the fleet)
    outcome = keep_plan(spec, current, catalog, None if failed else reserved, measured) if keep else None
    was_planned = (c.get_condition(conds, c.PLANNED) or {}).get("status") == "True"
    if replan_failed and was_planned:  # once: a re-plan that found nothing leaves Planned False, and says why
        last = failures[-1]
        layout = layout_name(last["tensorParallelSize"], last.get("pipelineParallelSize") or 1)
        out.events.append(Event("Warning", "Replanning", f"{last['gpu']} {layout} "
                                f"({last['quantization']}) failed to start: {last['message']}; planning again "
                                f"({len(failures)} of {MAX_STARTUP_REPLANS})"))
    since = status.get("planUnavailableSince")
    gone = outcome is not None and outcome.ok and current.get("gpu") not in available
    if gone and since and _elapsed_s(since, now) >= REPLAN_GRACE_S:
        out.events.append(Event("Warning", "Replanning", f"no Ready node has offered {current.get('gpu')} for "
                                f"{_elapsed_s(since, now):.0f} s (grace {REPLAN_GRACE_S:.0f} s): planning again"))
        outcome = None
    if outcome is None or not outcome.ok:
        outcome = decide_plan(spec, available, catalog, reserved, excluded, measured, multi_node)
    if not outcome.ok:
        new = c.set_condition(conds, c.PLANNED, False, outcome.reason, outcome.message, generation, now)
        # the running fleet stays as it is: a spec it cannot meet now must not take down what serves
        replicas = spec.replicas
        if current and replicas is not None and replicas != status.get("desiredReplicas"):
            out.scale = replicas
            out.status["desiredReplicas"] = replicas
        if not c.same_conditions(new, conds) or status.get("observedGeneration") != generation:
            out.status |= {"observedGeneration": generation, "rejected": rejected(outcome.result)}
            out.conditions = [(c.PLANNED, False, outcome.reason, outcome.message)]
            if not any(e.reason == outcome.reason for e in out.events):
                out.events.append(Event("Warning", outcome.reason, outcome.message))
        return out

    assert outcome.plan is not None and outcome.result is not None
    p = outcome.plan
    h = plan_hash(p)
    out.planned = True
    out.plan_changed = status.get("planHash") != h
    gone = p.gpu not in available and not out.plan_changed
    since_now = (since or now) if gone else None
    if since_now != since:
        out.status["planUnavailableSince"] = since_now
        if gone:
            out.events.append(Event("Warning", "PlanUnavailable", f"no Ready node offers {p.gpu}: the plan is "
                                    f"kept, and re-made after {REPLAN_GRACE_S:.0f} s unless one returns"))
    recorded = dict(status.get("children") or {})
    drifted = not recorded or (children is not None and any(children.get(k) != v for k, v in recorded.items()))
    recorded_plan = plan_status(p, catalog).model_dump(by_alias=True)
    # a measurement arrived (a plan kept past its failed starts is left as recorded)
    # (only a measured plan, or one that was: any other difference, such as an operator upgrade's new
    # estimate, waits for the next spec change instead of re-applying every fleet)
    calibrated = not out.plan_changed and bool(current) and not failed and _set(recorded_plan) != _set(current) and \
        (p.measured or bool(current.get("kvCacheMeasured")))
    unchanged = not out.plan_changed and status.get("observedGeneration") == generation and not drifted
    replicas = desired_replicas(spec, p)
    if unchanged and calibrated:
        # the plan's figures follow the measurement, and a fixed-size fleet's count with them; nothing is
        # rendered again (a render would also re-choose the rollout strategy from today's free GPUs)
        out.status = {"plan": recorded_plan, "rejected": rejected(outcome.result),
                      "alternatives": [a.model_dump(by_alias=True) for a in alternatives(outcome.result)]}
        if replicas != status.get("desiredReplicas"):
            out.scale = replicas
            out.status["desiredReplicas"] = replicas
        if current.get("kvCacheBlocks") != p.memory.num_blocks:
            out.events.append(_calibrated_event(p, current))
        return out
    if unchanged:
        return out
    out.apply = render(name, namespace, uid, spec, p, catalog, h, replicas,
                       free_per_node=None if free_gpus is None else free_gpus.get(p.gpu, []))
    rendered = {f"{o['kind']}/{o['metadata']['name']}" for o in out.apply}
    # a plan that moved between one node and several runs as the other kind: the old workload goes
    out.delete = sorted(k for k in recorded if k.split("/", 1)[0] in WORKLOAD_KINDS and k not in rendered)
    version, why, message = release_check(vllm_image(spec, catalog.get(p.gpu), catalog))
    out.conditions = [(c.PLANNED, True, "Planned", outcome.message), (c.VERSION_MATCHED, version, why, message)]
    if out.plan_changed:
        out.conditions.append((c.PROGRESSING, True, "Rollout", f"rolling out {p.summary()}"))
    out.status |= {
        "observedGeneration": generation,
        "plan": recorded_plan,
        "planHash": h, "specHash": key,
        "alternatives": [a.model_dump(by_alias=True) for a in alternatives(outcome.result)],
        "rejected": rejected(outcome.result), "selector": selector_string(name),
        "desiredReplicas": replicas,
    }
    if out.plan_changed:
        measured_note = " (KV cache as a live replica of this layout allocated it)" if p.measured else ""
        out.events.append(Event("Normal", "Planned", outcome.message + measured_note))
    elif calibrated and current.get("kvCacheBlocks") != p.memory.num_blocks:
        out.events.append(_calibrated_event(p, current))
    elif drifted and recorded and children is not None:
        lost = sorted(k for k, v in recorded.items() if children.get(k) != v)
        out.events.append(Event("Warning", "ChildRestored", f"{', '.join(lost)} deleted or changed by another "
                                "client: applied again"))
    return out


def _calibrated_event(p: Plan, current: dict[str, Any]) -> Event:
    return Event("Normal", "Calibrated", f"{p.gpu} {p.layout}: KV cache {p.memory.num_blocks:,} "
                 f"blocks ({p.memory.kv_cache_tokens:,} tokens) as "
                 f"{'measured on a live replica' if p.measured else 'estimated'}, was "
                 f"{int(current.get('kvCacheBlocks') or 0):,}; {p.replicas} replica(s) for the target")


def deployment_progress(body: Mapping[str, Any]) -> tuple[dict[str, Any], list[tuple[str, bool | str, str, str]]]:
    """The status fields and conditions a vLLM Deployment's own status gives its LLMDeployment."""
    st = body.get("status", {}) or {}
    desired = int(body.get("spec", {}).get("replicas") or 0)
    ready, updated = int(st.get("readyReplicas") or 0), int(st.get("updatedReplicas") or 0)
    seen = int(st.get("observedGeneration") or 0) >= int(body["metadata"].get("generation") or 0)
    ok, reason, message = availability(ready, desired, updated, seen)
    rolling = not (ready >= desired and updated >= desired and seen)
    progress: tuple[str, bool, str, str] = (c.PROGRESSING, rolling, "Rollout" if rolling else "Complete", message)
    for cond in st.get("conditions") or []:  # a stuck rollout, as the Deployment controller reports it
        stuck = cond.get("reason") if cond.get("reason") in c.STUCK else (
            "ReplicaFailure" if cond.get("type") == "ReplicaFailure" and cond.get("status") == "True" else None)
        if stuck:
            progress = (c.PROGRESSING, False, stuck, f"{cond.get('message', '')} ({message})")
    fields = {"replicas": int(st.get("replicas") or 0), "readyReplicas": ready}
    return fields, [(c.AVAILABLE, ok, reason, message), progress]


def availability(ready: int, desired: int, updated: int, generation_seen: bool) -> tuple[bool, str, str]:
    """Available / Progressing summary of the vLLM Deployment (pure)."""
    if desired == 0:
        return True, "ScaledToZero", "no replicas requested"
    if ready >= desired and updated >= desired and generation_seen:
        return True, "ReplicasReady", f"{ready}/{desired} vLLM replicas ready"
    return ready > 0, "ReplicasNotReady", f"{ready}/{desired} vLLM replicas ready, {updated} updated"


def _set(fields: Mapping[str, Any]) -> dict[str, Any]:
    """The fields a merge patch leaves in place: a null written deletes its field, so it compares as absent."""
    return {k: v for k, v in fields.items() if v is not None}
