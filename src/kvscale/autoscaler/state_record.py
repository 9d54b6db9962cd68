"""What the policy remembers across operator restarts and leader changes (pure).

A new operator process starts with empty windows, which is safe: it waits one window before any scale-down.
What is not safe to forget is what spans more than a window: when the fleet last shrank (the scale-down
period counts from it), a panic in progress, and the burst memory (recurring queue bursts keep the fleet
they grew to; the last time queues drove growth tells a burst in progress from a new one). Those go into
``status.autoscaler`` after every decision and come back from it when the operator meets an object it holds
no state for.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from .policy import PolicyState
from .window import Sample

#: status times to a tenth of a second: finer changes the record every pass for nothing
TIME_DIGITS = 1
#: entries per list in status (the CRD's bound): bursts need a minute between them, so 64 cover an hour
MAX_ENTRIES = 64


def _t(t: float | None) -> float | None:
    return None if t is None else round(t, TIME_DIGITS)


def _dominant(samples: tuple[Sample, ...]) -> tuple[Sample, ...]:
    """The samples a later window maximum can still return: each one larger than every later one (a later,
    larger sample outlives it in every window)."""
    kept: list[Sample] = []
    for s in reversed(samples):
        if not kept or s.value > kept[-1].value:
            kept.append(s)
    return tuple(reversed(kept))


def remembered(state: PolicyState) -> dict[str, Any]:
    """The part of ``state`` worth keeping in status, in its status form."""
    out: dict[str, Any] = {}
    if state.last_down_t is not None:
        out["lastScaleDownTime"] = _t(state.last_down_t)
    if state.panic_until is not None:
        out["panicUntil"] = _t(state.panic_until)
    if state.pressure_t is not None:
        out["lastQueuePressureTime"] = _t(state.pressure_t)
    if state.bursts:
        out["burstTimes"] = [_t(b) for b in state.bursts[-MAX_ENTRIES:]]
    if state.burst_sizes:
        out["burstReplicas"] = [{"time": _t(s.t), "replicas": int(s.value)}
                                for s in _dominant(state.burst_sizes)[-MAX_ENTRIES:]]
    if state.too_small is not None:
        out["tooSmall"] = {"replicas": state.too_small[0], "time": _t(state.too_small[1])}
    return out


def recalled(record: dict[str, Any] | None, state: PolicyState) -> PolicyState:
    """``state`` with what ``record`` (status.autoscaler) kept; a record that cannot be read adds nothing."""
    if not isinstance(record, dict):
        return state
    try:
        too_small = record.get("tooSmall")
        return replace(
            state,
            last_down_t=_float(record.get("lastScaleDownTime")),
            panic_until=_float(record.get("panicUntil")),
            pressure_t=_float(record.get("lastQueuePressureTime")),
            bursts=tuple(float(b) for b in record.get("burstTimes") or []),
            burst_sizes=tuple(Sample(float(s["time"]), float(s["replicas"]))
                              for s in record.get("burstReplicas") or []),
            too_small=(int(too_small["replicas"]), float(too_small["time"])) if too_small else None)
    except (KeyError, TypeError, ValueError):
        return state


def _float(v: Any) -> float | None:
    return None if v is None else float(v)
