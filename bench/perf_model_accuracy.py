"""The performance model (kvscale.estimator.performance) against published ``vllm bench serve`` results.

The measurements (bench/data/published_vllm_serving.json, each with its source) are split by source before
anything is fitted: whole sources go to the calibration half or to the held-out half, alternating within each
GPU type in a fixed order (the SHA-256 of the source address), so no run of a held-out source informs the fit.
The efficiency constants are fitted on the calibration half only (least squares on the log ratio of predicted
to measured output tokens/s and TPOT); the table reports the held-out half, by GPU type. ``--check`` exits
non-zero unless the constants in kvscale.estimator.performance are the ones this fit gives.

    python bench/perf_model_accuracy.py [--json out.json] [--check]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import re
import statistics
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict
from rich.console import Console
from rich.table import Table
from scipy.optimize import least_squares

from kvscale.estimator.catalog import resolve_model
from kvscale.estimator.errors import EstimatorError
from kvscale.estimator.gpus import GIB, default_catalog
from kvscale.estimator.memory import (
    DEFAULT_GPU_MEMORY_UTILIZATION,
    MemoryEstimate,
    ServingConfig,
    default_batch_limits,
    estimate,
)
from kvscale.estimator.model_spec import ModelSpec
from kvscale.estimator.params import count_params
from kvscale.estimator.performance import (
    DEFAULT_CONSTANTS,
    DEFAULT_NUM_PROMPTS,
    EngineLimits,
    Load,
    PerfConstants,
    ServingPrediction,
    engine_limits,
    latency_percentiles,
    predict,
    step_cost,
)
from kvscale.estimator.quantization import Quantization, resolved

#: the measurements: vLLM releases of every era, and V1-era runs on more GPU types
DATA = (Path(__file__).parent / "data" / "published_vllm_serving.json",
        Path(__file__).parent / "data" / "published_vllm_serving_v1.json")
#: checkpoints whose config.json equals a catalog entry's in every field the estimator reads (layers, widths,
#: heads, experts, vocabulary): base vs instruct, a re-release with new weights, a quantized upload
MODEL_ALIASES = {
    "Qwen/Qwen2-7B-Instruct": "Qwen/Qwen2.5-7B-Instruct",
    "Qwen/Qwen2-72B": "Qwen/Qwen2.5-72B-Instruct",
    "Qwen/Qwen2.5-32B": "Qwen/Qwen2.5-32B-Instruct",
    "Qwen/Qwen3-235B-A22B-Instruct-2507": "Qwen/Qwen3-235B-A22B",
    "Qwen/Qwen3-8B-AWQ": "Qwen/Qwen3-8B",
    "deepseek-ai/DeepSeek-R1-0528": "deepseek-ai/DeepSeek-R1",
    # AMD's FP8 checkpoints (weights and KV scales in fp8) of Llama-3.1: NVIDIA's FP8 upload has the same layout
    "amd/Llama-3.1-70B-Instruct-FP8-KV": "nvidia/Llama-3.1-70B-Instruct-FP8",
    "amd/Llama-3.1-405B-Instruct-FP8-KV": "meta-llama/Llama-3.1-405B-Instruct",
}
#: offline runs (``benchmark_latency.py``: one batch of ``concurrency`` prompts; ``benchmark_throughput.py``:
#: all ``num_prompts`` at once through the LLM class) report latency or total tokens/s; the output tokens/s
#: compared is derived from them (batch x output length / latency; total x output share)
OFFLINE = ("latency", "offline-throughput")
#: a context the servers were started with when the source does not say: long enough for every prompt here,
#: and the length the estimator's activation profile is taken at (the KV cache size hardly depends on it)
DEFAULT_MAX_MODEL_LEN = 16384
#: how much output lengths vary per benchmark dataset (Load.length_spread): the random dataset asks for fixed
#: lengths; ShareGPT's completions are roughly exponential (coefficient of variation about 1)
LENGTH_SPREAD = {"random": 0.0, "sharegpt": 1.0}
#: the release from which vLLM runs its V1 engine by default (always-on chunked prefill, the scheduler and
#: CUDA-graph capture the model describes); older engines had other per-step costs
V1_ENGINE_RELEASE = (0, 8)
#: the first month in which every vLLM release (0.8.x, March 2025) ran V1 by default
V1_DEFAULT_SINCE = "2025-04-01"
#: runs whose requests generate fewer tokens than this time the API server's per-request work (HTTP,
#: tokenization, detokenization), which the engine model leaves out
MIN_OUTPUT_TOKENS = 16
#: the constants' search box: physical shares in (0, 1], overheads up to what a slow CPU-bound step costs
BOUNDS = {
    "bandwidth_efficiency": (0.2, 1.0), "attention_efficiency": (0.1, 1.0), "compute_efficiency": (0.1, 1.0),
    "step_overhead_s": (0.0, 0.05), "seq_overhead_s": (0.0, 1e-3), "layer_overhead_s": (0.0, 1e-3),
    "moe_layer_overhead_s": (0.0, 1e-3), "allreduce_latency_s": (0.0, 2e-4)}
#: the fit's loss: a few sources run set-ups the model does not describe (client-bound runs, untuned kernels)
#: and sit at several times the prediction; a soft L1 loss past a log ratio of 0.2 (about 20 %) keeps them
#: from dragging every constant
ROBUST_LOSS = "soft_l1"
ROBUST_SCALE = 0.2
#: where the fit starts: datasheet-level guesses (streaming reaches most of the bandwidth, GEMMs half the
#: peak, a few ms of scheduling per step), so that the fit does not depend on the committed constants
START = PerfConstants(bandwidth_efficiency=0.8, attention_efficiency=0.6, compute_efficiency=0.5, step_overhead_s=0.003,
                      seq_overhead_s=2e-5, layer_overhead_s=2e-5, moe_layer_overhead_s=5e-5, allreduce_latency_s=1e-5)
#: how close the committed constants must be to this fit's (relative, or absolute below 1e-7 s)
CHECK_TOLERANCE = 0.02


class Point(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    id: str
    source: str
    model: str
    gpu: str
    tp: int = 1
    pp: int = 1
    quantization: str | None = None
    kv_cache_dtype: str = "auto"
    dataset: str | None = None
    input_tokens: float | None = None
    output_tokens: float | None = None
    concurrency: int | None = None
    request_rate: float | None = None
    num_prompts: int | None = None
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    gpu_memory_utilization: float | None = None
    max_model_len: int | None = None
    dp: int = 1
    kv_cache_tokens: int | None = None  # what vLLM's start-up log said, where the source shows it
    kv_cache_gib: float | None = None  # "Available KV cache memory", per GPU
    vllm_version: str | None = None
    date: str | None = None  # of the source or the run
    output_tok_s: float | None = None
    total_tok_s: float | None = None
    mean_latency_s: float | None = None
    mean_tpot_ms: float | None = None
    median_tpot_ms: float | None = None


@dataclass(frozen=True)
class Case:
    """One measurement, set up for the model: what was served, how, under what load, and what it did."""

    point: Point
    spec: ModelSpec
    est: MemoryEstimate
    quantization: Quantization
    load: Load

    @property
    def tpot_ms(self) -> float | None:
        return self.point.mean_tpot_ms or self.point.median_tpot_ms

    @property
    def output_tok_s(self) -> float | None:
        """Measured output tokens/s: as printed, or derived from an offline run's latency or total rate."""
        p = self.point
        if p.output_tok_s:
            return p.output_tok_s
        if p.dataset == "latency" and p.mean_latency_s and p.concurrency and p.output_tokens:
            return p.concurrency * p.output_tokens / p.mean_latency_s
        if p.dataset == "offline-throughput" and p.total_tok_s and p.input_tokens and p.output_tokens:
            return p.total_tok_s * p.output_tokens / (p.input_tokens + p.output_tokens)
        return None

    def predict(self, constants: PerfConstants) -> ServingPrediction:
        p = self.point
        cost = step_cost(self.spec, count_params(self.spec), default_catalog().get(p.gpu), self.est, p.tp, p.pp,
                         self.quantization, constants=constants)
        return predict(cost, self.load, self.limits)

    @property
    def limits(self) -> EngineLimits:
        """The engine's limits: the KV cache vLLM reported where the source shows it (this checks the
        performance model, not the memory estimate), else the estimate's."""
        p, est = self.point, self.est
        if not (p.kv_cache_tokens or p.kv_cache_gib):
            return engine_limits(est)
        tokens = p.kv_cache_tokens or int((p.kv_cache_gib or 0) * GIB // est.block_bytes) * est.block_size
        return engine_limits(est).model_copy(update={"kv_cache_tokens": max(1, tokens)})


def _v1_engine(p: Point) -> bool:
    """Whether the run used vLLM's V1 engine: a release from 0.8 on, or, with no version stated, a then-current
    image or build from a date after V1 became the default."""
    if p.vllm_version:
        return _release(p.vllm_version) >= V1_ENGINE_RELEASE
    return bool(p.date) and str(p.date) >= V1_DEFAULT_SINCE


def _release(version: str) -> tuple[int, int]:
    major, minor = [*version.split("."), "0"][:2]
    return int(major), int("".join(ch for ch in minor if ch.isdigit()) or 0)


def load_points(paths: tuple[Path, ...] = DATA) -> list[Point]:
    return [Point.model_validate(p) for path in paths if path.is_file()
            for p in json.loads(path.read_text())["points"]]


def build(p: Point) -> Case | str:
    """The case for ``p``, or why it cannot be modelled."""
    if "/experimental/" in p.source:
        return "from a collection its own README calls experimental, with results that may contain errors"
    if not p.input_tokens or not p.output_tokens:
        return "prompt or output length not stated"
    if not _v1_engine(p):
        return (f"vLLM {p.vllm_version or 'version not stated'}"
                f"{', ' + p.date if p.date and not p.vllm_version else ''}: the model describes the V1 engine "
                f"(0.8 and later)")
    if p.dp > 1:
        return f"data parallel {p.dp}: one engine per replica is modelled"
    if p.output_tokens < MIN_OUTPUT_TOKENS:
        return f"{p.output_tokens:g} output tokens per request: measures request handling, not the engine"
    if not (p.output_tok_s or p.mean_tpot_ms or p.median_tpot_ms or p.mean_latency_s or p.total_tok_s):
        return "neither output tokens/s, TPOT, latency nor total tokens/s stated"
    try:
        spec = resolve_model(MODEL_ALIASES.get(p.model, p.model))
        gpu = default_catalog().get(p.gpu)
    except EstimatorError as exc:
        return str(exc)
    q = Quantization(p.quantization) if p.quantization else Quantization.AUTO
    length = p.max_model_len or max(DEFAULT_MAX_MODEL_LEN, math.ceil(p.input_tokens + p.output_tokens))
    offline = p.dataset in OFFLINE
    budget = p.max_num_batched_tokens or (default_batch_limits(gpu.memory_bytes, gpu.name, server=False)[0]
                                          if offline else None)
    cfg = ServingConfig(tensor_parallel_size=p.tp, pipeline_parallel_size=p.pp, quantization=q,
                        kv_cache_dtype=p.kv_cache_dtype, max_model_len=min(length, spec.max_position_embeddings),
                        max_num_seqs=p.max_num_seqs, max_num_batched_tokens=budget,
                        gpu_memory_utilization=p.gpu_memory_utilization or DEFAULT_GPU_MEMORY_UTILIZATION)
    try:
        est = estimate(spec, gpu, cfg)
    except EstimatorError as exc:
        return str(exc)
    if not est.fits:
        return f"does not fit as set up: {est.reason}"
    if offline:  # every prompt of the run submitted at once
        clients, rate = None, math.inf
        prompts = p.concurrency if p.dataset == "latency" else p.num_prompts
    else:
        clients = p.concurrency
        rate = p.request_rate if p.request_rate is not None else (None if p.concurrency else math.inf)
        prompts = p.num_prompts
    load = Load(input_tokens=max(1, round(p.input_tokens)), output_tokens=max(1, round(p.output_tokens)),
                concurrency=clients, request_rate=rate, num_prompts=prompts or DEFAULT_NUM_PROMPTS,
                length_spread=LENGTH_SPREAD.get(p.dataset, 0.0))
    return Case(p, spec, est, resolved(spec, q), load)


def document(source: str) -> str:
    """The document a source address points into: revisions of one file (GitHub blob/<commit>/path) and
    anchors in one page are one source."""
    url = re.sub(r"/(blob|tree|raw)/[0-9a-f]{7,40}/", "/blob/-/", source.split("#")[0].split("?")[0])
    return url.rstrip("/")


def split(cases: list[Case]) -> tuple[list[Case], list[Case]]:
    """(calibration, held out): whole documents, in SHA-256 order, each to the half that has fewer points
    of its main GPU type so far, the held-out half first: a GPU type with one document is only ever
    predicted, never fitted on."""
    by_source: dict[str, list[Case]] = defaultdict(list)
    for c in cases:
        by_source[document(c.point.source)].append(c)
    calibration: list[Case] = []
    held_out: list[Case] = []
    counts: dict[tuple[int, str], int] = defaultdict(int)
    for source in sorted(by_source, key=lambda s: hashlib.sha256(s.encode()).hexdigest()):
        group = by_source[source]
        gpu = statistics.mode(c.point.gpu for c in group)
        side = 1 if counts[(1, gpu)] <= counts[(0, gpu)] else 0  # ties go to the held-out half
        counts[(side, gpu)] += len(group)
        (calibration if side == 0 else held_out).extend(group)
    return calibration, held_out


def errors(case: Case, constants: PerfConstants) -> dict[str, float]:
    """Relative error (predicted / measured - 1) of each metric the source states."""
    pred = case.predict(constants)
    out = {}
    if case.output_tok_s:
        out["output_tok_s"] = pred.output_tok_s / case.output_tok_s - 1
    if case.tpot_ms:
        out["tpot_ms"] = pred.tpot_ms / case.tpot_ms - 1
    return out


def latency_ratios(cases: list[Case], constants: PerfConstants) -> dict[str, list[float]]:
    """Predicted / measured for what the fit does not use but an SLO is judged on: mean TTFT, and the p99
    TTFT and TPOT (latency_percentiles) where a source prints them. Reported, never fitted."""
    out: dict[str, list[float]] = defaultdict(list)
    for c in cases:
        p, pred = c.point, c.predict(constants)
        extra = p.model_extra or {}
        if extra.get("mean_ttft_ms"):
            out["mean TTFT"].append(pred.ttft_ms / float(extra["mean_ttft_ms"]))
        p99_ttft, p99_tpot = latency_percentiles(pred, c.load, 99)
        if extra.get("p99_ttft_ms"):
            out["p99 TTFT"].append(p99_ttft / float(extra["p99_ttft_ms"]))
        if extra.get("p99_tpot_ms"):
            out["p99 TPOT"].append(p99_tpot / float(extra["p99_tpot_ms"]))
    return out


NAMES = tuple(BOUNDS)


def fit(cases: list[Case]) -> PerfConstants:
    """The constants that minimise the squared log ratio of predicted to measured, over ``cases``."""
    lo = np.array([BOUNDS[n][0] for n in NAMES])
    hi = np.array([BOUNDS[n][1] for n in NAMES])
    scale = np.array([0.5, 0.5, 0.5, 1e-2, 1e-4, 1e-4, 1e-4, 1e-5])  # the constants' orders of magnitude

    def constants(x: np.ndarray) -> PerfConstants:
        return PerfConstants(**{n: float(v) for n, v in zip(NAMES, np.clip(x * scale, lo, hi), strict=True)})

    def residuals(x: np.ndarray) -> np.ndarray:
        c = constants(x)
        return np.array([math.log1p(e) for case in cases for e in errors(case, c).values()])

    x0 = np.array([getattr(START, n) for n in NAMES]) / scale
    res = least_squares(residuals, x0, bounds=(lo / scale, hi / scale), x_scale=1.0, diff_step=1e-3,
                        loss=ROBUST_LOSS, f_scale=ROBUST_SCALE)
    return constants(res.x)


def _pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]


def summary(cases: list[Case], constants: PerfConstants) -> dict[str, dict[str, Any]]:
    """Per GPU type and overall: points, and the median and p90 absolute error of each metric."""
    rows: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for c in cases:
        for metric, e in errors(c, constants).items():
            rows[c.point.gpu][metric].append(abs(e))
            rows["all"][metric].append(abs(e))
    return {gpu: {m: {"n": len(v), "median": statistics.median(v), "p90": _pct(v, 0.9)} for m, v in metrics.items()}
            for gpu, metrics in rows.items()}


def constants_match(a: PerfConstants, b: PerfConstants) -> list[str]:
    """The constants on which ``a`` and ``b`` differ by more than CHECK_TOLERANCE."""
    bad = []
    for n in NAMES:
        x, y = getattr(a, n), getattr(b, n)
        if abs(x - y) > max(1e-7, CHECK_TOLERANCE * max(abs(x), abs(y))):
            bad.append(f"{n}: committed {x:.6g}, fit {y:.6g}")
    return bad


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path)
    ap.add_argument("--check", action="store_true", help="fail unless the committed constants equal the fit")
    args = ap.parse_args()
    console = Console()
    cases, skipped = [], []
    for p in load_points():
        built = build(p)
        (skipped.append((p.id, built)) if isinstance(built, str) else cases.append(built))
    calibration, held_out = split(cases)
    fitted = fit(calibration)
    def docs(group: list[Case]) -> int:
        return len({document(c.point.source) for c in group})

    console.print(f"{len(cases)} measurements from {docs(cases)} documents ({len(skipped)} skipped); "
                  f"calibration {len(calibration)} ({docs(calibration)} documents), held out {len(held_out)} "
                  f"({docs(held_out)} documents)")
    console.print("fitted on the calibration half: " + ", ".join(f"{n}={getattr(fitted, n):.4g}" for n in NAMES))
    report = {"held_out": summary(held_out, fitted), "calibration": summary(calibration, fitted)}
    table = Table(title="held-out error of the performance model (|predicted / measured - 1|)")
    for col in ("GPU", "points", "output tok/s median", "output tok/s p90", "TPOT median", "TPOT p90"):
        table.add_column(col, justify="left" if col == "GPU" else "right")
    for gpu, m in sorted(report["held_out"].items(), key=lambda kv: (kv[0] == "all", kv[0])):
        o, t = m.get("output_tok_s"), m.get("tpot_ms")
        n = max(o["n"] if o else 0, t["n"] if t else 0)
        table.add_row(gpu, str(n), *(f"{x[k] * 100:.1f}%" if x else "-" for x in (o, t) for k in ("median", "p90")))
    console.print(table)
    ratios = latency_ratios(held_out, fitted)
    report["latency_ratios_held_out"] = {k: {"n": len(v), "median": statistics.median(v), "p10": _pct(v, 0.1),
                                             "p90": _pct(v, 0.9)} for k, v in ratios.items()}
    for k, v in ratios.items():
        console.print(f"held out, not fitted: {k} predicted / measured: median {statistics.median(v):.2f}, "
                      f"p10 {_pct(v, 0.1):.2f}, p90 {_pct(v, 0.9):.2f} (n={len(v)})")
    worst = sorted(((max(abs(e) for e in errors(c, fitted).values()), c) for c in held_out),
                   key=lambda t: -t[0])[:8]
    for e, c in worst:
        pred = c.predict(fitted)
        console.print(f"  worst held out: {c.point.id} ({c.point.gpu}, {e * 100:.0f}%): predicted "
                      f"{pred.output_tok_s:.0f} tok/s TPOT {pred.tpot_ms:.1f} ms; measured "
                      f"{c.output_tok_s or 0:.0f} tok/s TPOT {c.tpot_ms} ms")
    for pid, why in skipped:
        console.print(f"  skipped {pid}: {why}")
    if args.json:
        args.json.write_text(json.dumps({"constants": fitted.model_dump(), **report,
                                         "skipped": dict(skipped)}, indent=1) + "\n")
    if args.check:
        bad = constants_match(DEFAULT_CONSTANTS, fitted)
        if bad:
            console.print("the committed constants are not this fit's: " + "; ".join(bad))
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
