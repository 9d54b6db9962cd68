"""Request traces: Azure LLM inference 2023 (code, conv) and Mooncake conversation (FAST'25)."""

from __future__ import annotations

import csv
import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Request:
    arrival_s: float
    input_tokens: int
    output_tokens: int


def _azure(path: Path) -> list[Request]:
    out: list[Request] = []
    t0: dt.datetime | None = None
    with path.open(newline="") as fh:
        for row in csv.DictReader(fh):
            stamp = row["TIMESTAMP"]
            base, _, frac = stamp.partition(".")
            t = dt.datetime.strptime(base, "%Y-%m-%d %H:%M:%S") + dt.timedelta(seconds=float(f"0.{frac or 0}"))
            t0 = t0 or t
            out.append(Request((t - t0).total_seconds(), max(1, int(row["ContextTokens"])),
                               max(1, int(row["GeneratedTokens"]))))
    return out


def _mooncake(path: Path) -> list[Request]:
    out = []
    with path.open() as fh:
        for line in fh:
            if line.strip():
                r = json.loads(line)
                out.append(Request(r["timestamp"] / 1000.0, max(1, int(r["input_length"])),
                                   max(1, int(r["output_length"]))))
    return out


def load_trace(path: str | Path, rate_scale: float = 1.0, max_duration_s: float | None = None,
               max_input_tokens: int | None = None) -> list[Request]:
    """Requests in arrival order; ``rate_scale`` N compresses time N-fold (N x the request rate)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"trace {path} not found")
    reqs = _mooncake(p) if p.suffix == ".jsonl" else _azure(p)
    reqs.sort(key=lambda r: r.arrival_s)
    scaled = [Request(r.arrival_s / rate_scale,
                      min(r.input_tokens, max_input_tokens) if max_input_tokens else r.input_tokens,
                      r.output_tokens) for r in reqs]
    if max_duration_s is not None:
        scaled = [r for r in scaled if r.arrival_s <= max_duration_s]
    return scaled
