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
