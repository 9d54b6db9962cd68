"""A simulator-against-vLLM comparison as data: its figures, its JSON, its table rows and its plot."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .engine import ReplicaModel
from .series import Series
from .step_model import Calibration, ServerConfig
from .workloads import Burst, Workload


@dataclass
class Replay:
    """One workload on the server and in the simulator."""

    workload: Workload | Burst
    requests: int
    real: Series
    sim: Series
    figures: dict[str, float]
    real_extra: dict[str, Any]


@dataclass
class Comparison:
    server: ServerConfig
    calibration: Calibration
    model: ReplicaModel
    replays: list[Replay]
    timings_s: dict[str, float]
    # workload name -> figures of its two runs on the server (run 1 as "real", run 2 as "sim"): the noise floor
    real_vs_real: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"server": asdict(self.server), "calibration": asdict(self.calibration), "model": asdict(self.model),
                "timings_s": self.timings_s, "real_vs_real": self.real_vs_real,
                "replays": [{"workload": asdict(r.workload), "requests": r.requests, "figures": r.figures,
                             "real_extra": r.real_extra,
                             "series": {"real": _series_json(r.real), "sim": _series_json(r.sim)}}
                            for r in self.replays]}


def _series_json(s: Series) -> dict[str, Any]:
    return {"t": [round(x, 3) for x in s.t], "kv": [round(x, 4) for x in s.kv], "running": s.running,
            "waiting": s.waiting, "preemptions": s.preemptions}


ROWS: list[tuple[str, str, str]] = [  # label, figure stem (real / sim), format
    ("KV usage, time-averaged", "kv_mean", "{:.1%}"),
    ("KV usage, peak", "kv_peak", "{:.1%}"),
    ("time with KV usage >= 90%", "kv_time_ge_90pct", "{:.1%}"),
    ("running requests, time-averaged", "running_mean", "{:.2f}"),
    ("waiting requests, time-averaged", "waiting_mean", "{:.2f}"),
    ("preemptions", "preemptions", "{:.0f}"),
    ("TTFT p50 (s)", "ttft_p50", "{:.3f}"),
    ("TTFT p90 (s)", "ttft_p90", "{:.3f}"),
    ("end-to-end latency, mean (s)", "e2e_mean", "{:.2f}"),
    ("time per output token, mean (ms)", "tpot_mean_ms", "{:.2f}"),
    ("completion of the whole sequence (s)", "makespan", "{:.1f}"),
]


def table_rows(figures: dict[str, float]) -> list[tuple[str, str, str]]:
    """(label, real, sim) rows; the two KV-difference rows carry their value in the real column."""
    rows = [("mean |KV usage real - sim| (busy samples)", f"{figures['kv_abs_diff_mean']:.1%}", ""),
            ("max |KV usage real - sim|", f"{figures['kv_abs_diff_max']:.1%}", ""),
            ("mean |KV diff| at equal fractions of each run", f"{figures['kv_abs_diff_mean_time_normalised']:.1%}", "")]
    for label, stem, fmt in ROWS:
        scale = 1e3 if stem.endswith("_ms") else 1.0
        key = stem.removesuffix("_ms")
        rows.append((label, fmt.format(scale * figures[f"{key}_real"]), fmt.format(scale * figures[f"{key}_sim"])))
    return rows


def plot(c: Comparison, path: Path) -> None:
    """Per replay: KV usage (top) and running / waiting requests (bottom) over time, vLLM against the simulator."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(c.replays)
    ratios = [3, 2] * n
    fig, axes = plt.subplots(2 * n, 1, figsize=(11, 5.5 * n), height_ratios=ratios, squeeze=False)
    for i, rp in enumerate(c.replays):
        ax1, ax2 = axes[2 * i][0], axes[2 * i + 1][0]
        ax1.step(rp.real.t, [100 * x for x in rp.real.kv], where="post", lw=1.2,
                 label="vLLM (CPU) kv_cache_usage_perc, sampled")
        ax1.step(rp.sim.t, [100 * x for x in rp.sim.kv], where="post", lw=1.0, alpha=0.85, label="simulator kv_usage")
        ax1.set_ylabel("KV cache usage (%)")
        ax1.set_ylim(0, 105)
        f = rp.figures
        ax1.set_title(f"{rp.workload.name}: {rp.requests} requests from {Path(rp.workload.trace).name} "
                      f"(+{rp.workload.start_s:.0f}s), {c.server.num_blocks} blocks x {c.server.block_size} tokens; "
                      f"mean |diff| {f['kv_abs_diff_mean']:.1%}, preemptions {f['preemptions_real']:.0f} (vLLM) vs "
                      f"{f['preemptions_sim']:.0f} (sim)", fontsize=9)
        ax1.legend(loc="lower right", fontsize=8)
        ax2.step(rp.real.t, rp.real.running, where="post", label="running (vLLM)", color="C0")
        ax2.step(rp.sim.t, rp.sim.running, where="post", label="running (sim)", color="C1")
        ax2.step(rp.real.t, rp.real.waiting, where="post", label="waiting (vLLM)", color="C0", ls="--")
        ax2.step(rp.sim.t, rp.sim.waiting, where="post", label="waiting (sim)", color="C1", ls="--")
        ax2.set_xlabel("seconds since the first request")
        ax2.set_ylabel("requests")
        ax2.legend(loc="upper right", fontsize=8, ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)

