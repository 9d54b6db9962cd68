"""Time windows over observations (pure): max and min over the last N seconds."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Sample:
    t: float
    value: float


def trim(samples: tuple[Sample, ...], now: float, keep_s: float) -> tuple[Sample, ...]:
    """Drop samples older than ``keep_s`` (the newest one is always kept)."""
    kept = tuple(s for s in samples if now - s.t <= keep_s)
    return kept or samples[-1:]


def within(samples: tuple[Sample, ...], now: float, window_s: float) -> tuple[Sample, ...]:
    return tuple(s for s in samples if now - s.t <= window_s)


def maximum(samples: tuple[Sample, ...], now: float, window_s: float) -> float | None:
    vals = [s.value for s in within(samples, now, window_s)]
    return max(vals) if vals else None


def minimum(samples: tuple[Sample, ...], now: float, window_s: float) -> float | None:
    vals = [s.value for s in within(samples, now, window_s)]
    return min(vals) if vals else None


def append(samples: tuple[Sample, ...], now: float, value: float, keep_s: float) -> tuple[Sample, ...]:
    return trim((*samples, Sample(now, value)), now, keep_s)
