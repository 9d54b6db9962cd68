"""Gauges over time (vLLM's /metrics or the simulator's equivalent) and how two such runs compare."""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from .engine import Replica, ReplicaModel, Seq
from .traces import Request


@dataclass
class Series:
    """What /metrics says over time (or the simulator's equivalent), plus per-request latencies."""

    t: list[float] = field(default_factory=list)
    kv: list[float] = field(default_factory=list)
    running: list[float] = field(default_factory=list)
    waiting: list[float] = field(default_factory=list)
    preemptions: list[float] = field(default_factory=list)  # cumulative, from the replay start
    ttft: list[float] = field(default_factory=list)
    e2e: list[float] = field(default_factory=list)
    tpot: list[float] = field(default_factory=list)  # (last token - first token) / (output - 1)
    makespan: float = 0.0

    def add(self, t: float, kv: float, running: float, waiting: float, preemptions: float) -> None:
        self.t.append(t)
        self.kv.append(kv)
        self.running.append(running)
        self.waiting.append(waiting)
        self.preemptions.append(preemptions)

    def at(self, t: float) -> tuple[float, float, float]:
        """(kv, running, waiting) of the last sample at or before ``t``; idle after the end."""
        i = bisect.bisect_right(self.t, t) - 1
        if i < 0 or t > self.t[-1] + 1.0:
            return 0.0, 0.0, 0.0
        return self.kv[i], self.running[i], self.waiting[i]


def replay_sim(model: ReplicaModel, reqs: Sequence[Request], sample_every: float = 0.05,
               max_time_s: float = 3600.0) -> Series:
    """The same arrivals through the simulator, sampled on a fine grid until it is idle."""
    seqs = [Seq(i, r.arrival_s, r.input_tokens, r.output_tokens) for i, r in enumerate(reqs)]
    rep = Replica(model)
    series = Series()
    j, k = 0, 0
    while (j < len(seqs) or not rep.idle) and k * sample_every < max_time_s:
        ts = k * sample_every
        while j < len(seqs) and seqs[j].arrival <= ts:
            rep.advance(seqs[j].arrival)  # arrivals land between steps, as on the server
            rep.submit(seqs[j])
            j += 1
        rep.advance(ts)
        series.add(ts, rep.kv_usage, len(rep.running), len(rep.waiting), rep.preemptions)
        k += 1
    series.add(k * sample_every, rep.kv_usage, len(rep.running), len(rep.waiting), rep.preemptions)
    done = [s for s in rep.finished if s.first_token_at is not None and s.finished_at is not None]
    if len(done) != len(seqs):
        raise RuntimeError(f"simulator finished {len(done)} of {len(seqs)} requests by t={max_time_s:.0f}s")
    series.ttft = [s.first_token_at - s.arrival for s in done if s.first_token_at is not None]
    series.e2e = [s.finished_at - s.arrival for s in done if s.finished_at is not None]
    series.tpot = [(s.finished_at - s.first_token_at) / (s.output - 1) for s in done
                   if s.finished_at is not None and s.first_token_at is not None and s.output > 1]
    series.makespan = max((s.finished_at for s in done if s.finished_at is not None), default=0.0)
    return series


def percentile(xs: Sequence[float], q: float) -> float:
    if not xs:
        return math.nan
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs) if xs else math.nan


def compare(real: Series, other: Series, tail_step: float = 0.25) -> dict[str, float]:
    """Figures side by side. The time series are read at the real run's sample instants (the other one,
    usually the simulator, as its last sample before each), then on a grid while only the other is busy;
    samples where both are idle are left out of the KV difference."""
    times = list(real.t)
    while times[-1] < other.t[-1]:
        times.append(times[-1] + tail_step)
    r = [real.at(t) for t in times]
    o = [other.at(t) for t in times]
    busy = [abs(a[0] - b[0]) for a, b in zip(r, o, strict=True) if a[0] > 0 or b[0] > 0]
    # the same at the same fraction of each run's length: what is left once the two speeds are factored out
    fractions = [i / 200 for i in range(200)]
    norm = [abs(real.at(u * real.makespan)[0] - other.at(u * other.makespan)[0]) for u in fractions]
    return {
        "kv_abs_diff_mean": mean(busy), "kv_abs_diff_max": max(busy, default=math.nan),
        "kv_abs_diff_mean_time_normalised": mean(norm),
        "kv_mean_real": mean([x[0] for x in r]), "kv_mean_sim": mean([x[0] for x in o]),
        "kv_peak_real": max(real.kv), "kv_peak_sim": max(other.kv),
        "kv_time_ge_90pct_real": mean([float(x[0] >= 0.9) for x in r]),
        "kv_time_ge_90pct_sim": mean([float(x[0] >= 0.9) for x in o]),
        "running_mean_real": mean([x[1] for x in r]), "running_mean_sim": mean([x[1] for x in o]),
        "waiting_mean_real": mean([x[2] for x in r]), "waiting_mean_sim": mean([x[2] for x in o]),
        "preemptions_real": real.preemptions[-1], "preemptions_sim": other.preemptions[-1],
        "ttft_p50_real": percentile(real.ttft, 0.5), "ttft_p50_sim": percentile(other.ttft, 0.5),
        "ttft_p90_real": percentile(real.ttft, 0.9), "ttft_p90_sim": percentile(other.ttft, 0.9),
        "e2e_mean_real": mean(real.e2e), "e2e_mean_sim": mean(other.e2e),
        "tpot_mean_real": mean(real.tpot), "tpot_mean_sim": mean(other.tpot),
        "makespan_real": real.makespan, "makespan_sim": other.makespan,
    }
