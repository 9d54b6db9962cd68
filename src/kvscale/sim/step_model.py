"""The simulator's step time for one vLLM server: constants fitted to measurements, and their level fitted
to the pace the engine keeps while serving a trace slice (pure: the measuring is in kvscale.testing)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..estimator.memory import CPU_BLOCK_SIZE, KVRead
from ..estimator.model_spec import from_hf_config
from ..estimator.params import count_params
from ..estimator.performance import StepCost
from .engine import ReplicaModel
from .series import mean, replay_sim
from .traces import Request


@dataclass(frozen=True)
class ServerConfig:
    """The vLLM engine settings; the simulator gets the same ones."""

    num_blocks: int = 32  # --num-gpu-blocks-override; vLLM keeps one back as the null block
    block_size: int = CPU_BLOCK_SIZE
    max_num_seqs: int = 16
    max_batched_tokens: int = 256  # small, so that long prompts are prefilled in chunks
    max_model_len: int = 2048


@dataclass
class CalPoint:
    """One measured step time and what it consists of, for the fit and the report."""

    name: str
    seqs: int
    tokens: int
    kv_read: float
    measured_s: float
    model_s: float = math.nan


@dataclass
class Calibration:
    """The step-time constants: their shape from one-request probes, their level from a replay under load."""

    points: list[CalPoint]
    step_overhead_s: float
    seq_overhead_s: float
    per_token_s: float  # prefill compute per token
    per_kv_token_s: float  # attention read per cached token per step
    load_scale: float = 1.0  # how much slower every step ran while serving a trace slice than in the probes
    load_tpot_real_s: float = math.nan  # the engine's mean time per output token on that slice
    load_tpot_sim_s: float = math.nan  # the simulator's, once scaled

    def model(self, cfg: ServerConfig, arch: dict[str, Any]) -> ReplicaModel:
        """A ReplicaModel of this server whose step_time reproduces the measurements. The weights read
        cannot be told apart from the fixed per-step cost on this CPU, so it is folded into the overhead.
        ``arch``: the served model's config.json."""
        spec = from_hf_config(arch, str(arch.get("model_type", "model")))
        flops_per_token = 2.0 * count_params(spec).active(spec)
        kv_bytes = kv_bytes_per_token(arch)
        return ReplicaModel(
            kv_blocks=cfg.num_blocks - 1,  # vLLM's usage gauge: 1 - free / (num_gpu_blocks - 1 null block)
            block_size=cfg.block_size, max_num_seqs=cfg.max_num_seqs, max_batched_tokens=cfg.max_batched_tokens,
            cost=StepCost(
                kv_read=KVRead(per_token=kv_bytes),
                bandwidth=kv_bytes / (self.per_kv_token_s * self.load_scale) if self.per_kv_token_s > 0 else 1e18,
                flops=flops_per_token / (self.per_token_s * self.load_scale), flops_per_token=flops_per_token,
                step_overhead_s=self.step_overhead_s * self.load_scale,
                seq_overhead_s=self.seq_overhead_s * self.load_scale))


def kv_bytes_per_token(cfg: dict[str, Any]) -> float:
    """K and V, every layer, bf16 (the server runs --dtype bfloat16)."""
    head_dim = int(cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"])
    return 2.0 * int(cfg["num_hidden_layers"]) * int(cfg["num_key_value_heads"]) * head_dim * 2


FIT_TOLERANCE = 0.01  # the simulated slice's TPOT within 1% of the engine's: far inside the run-to-run spread


SCALE_BOUNDS = (0.1, 10.0)  # beyond these the probes, not the load, are wrong


def fit_load_scale(cal: Calibration, cfg: ServerConfig, arch: dict[str, Any], arrivals: Sequence[Request],
                   tpot_real_s: float, iterations: int = 12) -> Calibration:
    """Scale every step-time constant so that the simulator decodes a trace slice at the engine's pace.

    One-request probes time the engine with the host otherwise quiet; serving a trace, vLLM's API
    server and this client take part of the two cores on every step, so steps run slower (1.0-1.5x here).
    The probes fix the shape of the step time (fixed, per sequence, per token), this fixes its level,
    on a slice of the trace that the comparison does not replay.

    The simulated TPOT rises with the scale but not in proportion (slower steps batch more and preempt
    differently), so a proportional step can overshoot back and forth: once two trials bracket the
    engine's TPOT the search bisects (in log scale), and the trial closest to it is kept, never an
    untried scale."""
    tried: list[tuple[float, float]] = []  # (scale, simulated TPOT)
    scale = 1.0
    for _ in range(iterations):
        sim_tpot = mean(replay_sim(dataclasses.replace(cal, load_scale=scale).model(cfg, arch), arrivals,
                                    sample_every=0.5).tpot)
        if not sim_tpot > 0:
            break
        tried.append((scale, sim_tpot))
        if abs(math.log(tpot_real_s / sim_tpot)) < math.log1p(FIT_TOLERANCE):
            break
        slower = [s for s, t in tried if t > tpot_real_s]
        faster = [s for s, t in tried if t < tpot_real_s]
        if slower and faster and min(slower) > max(faster):
            scale = math.sqrt(min(slower) * max(faster))
        else:
            scale = min(SCALE_BOUNDS[1], max(SCALE_BOUNDS[0], scale * tpot_real_s / sim_tpot))
        if any(math.isclose(scale, s, rel_tol=1e-6) for s, _ in tried):
            break
    if not tried:
        return dataclasses.replace(cal, load_tpot_real_s=tpot_real_s)
    best, best_tpot = min(tried, key=lambda st: abs(math.log(st[1] / tpot_real_s)))
    return dataclasses.replace(cal, load_scale=best, load_tpot_real_s=tpot_real_s, load_tpot_sim_s=best_tpot)
