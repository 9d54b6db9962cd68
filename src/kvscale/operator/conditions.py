"""Standard status conditions (metav1.Condition shape), updated without churn (pure)."""

from __future__ import annotations

from typing import Any

PLANNED = "Planned"
AVAILABLE = "Available"
PROGRESSING = "Progressing"
DEGRADED = "Degraded"
SCALING_LIMITED = "ScalingLimited"
METRICS_AVAILABLE = "MetricsAvailable"
VERSION_MATCHED = "VersionMatched"  # the image runs the vLLM release the estimator models
READY = "Ready"  # summary (kstatus): planned, and every requested replica serving

#: Deployment condition reasons that mean a rollout is stuck, not merely under way
STUCK = frozenset({"ProgressDeadlineExceeded", "ReplicaFailure"})


def set_condition(conditions: list[dict[str, Any]], ctype: str, status: bool | str, reason: str, message: str,
                  generation: int | None, now: str) -> list[dict[str, Any]]:
    """Return conditions with ``ctype`` set; lastTransitionTime moves only when the status flips."""
    value = status if isinstance(status, str) else ("True" if status else "False")
    out = []
    found = False
    for c in conditions:
        if c.get("type") != ctype:
            out.append(c)
            continue
        found = True
        moved = c.get("status") != value
        out.append({"type": ctype, "status": value, "reason": reason, "message": message[:1024],
                    "lastTransitionTime": now if moved else c.get("lastTransitionTime", now),
                    "observedGeneration": generation})
    if not found:
        out.append({"type": ctype, "status": value, "reason": reason, "message": message[:1024],
                    "lastTransitionTime": now, "observedGeneration": generation})
    return out


def get_condition(conditions: list[dict[str, Any]] | None, ctype: str) -> dict[str, Any] | None:
    return next((c for c in conditions or [] if c.get("type") == ctype), None)


def same_conditions(a: list[dict[str, Any]] | None, b: list[dict[str, Any]] | None) -> bool:
    def key(cs: list[dict[str, Any]] | None) -> list[tuple[Any, ...]]:
        return sorted((c.get("type"), c.get("status"), c.get("reason"), c.get("message"),
                       c.get("observedGeneration")) for c in cs or [])
    return key(a) == key(b)


def readiness(conditions: list[dict[str, Any]]) -> tuple[bool, str, str]:
    """The Ready summary of the other conditions (pure): what `kubectl wait --for=condition=Ready`,
    Argo CD and Flux health checks read."""
    planned, available = get_condition(conditions, PLANNED), get_condition(conditions, AVAILABLE)
    progressing = get_condition(conditions, PROGRESSING)
    if planned is None or planned.get("status") != "True":
        return False, (planned or {}).get("reason", "NotPlanned"), (planned or {}).get("message", "no plan yet")
    if progressing and progressing.get("status") == "False" and progressing.get("reason") in STUCK:
        return False, str(progressing["reason"]), str(progressing.get("message", ""))
    if available is None or available.get("reason") not in ("ReplicasReady", "ScaledToZero"):
        return False, "ReplicasNotReady", (available or {}).get("message", "waiting for the vLLM Deployment")
    return True, "Ready", str(available.get("message", ""))
