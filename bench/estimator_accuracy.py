"""Estimator vs published vLLM start-up logs (bench/data/published_vllm_startups.json), held out.

Each record carries its split, fixed in the data file: all records of one source (a repository, one
vLLM issue, one site) sit on the same side, so that a log and its near-copy never straddle the split.
The overhead constants (non-torch memory, NCCL buffers, CUDA-graph pool) are fitted by least squares
on the calibration side only, and printed beside the constants kvscale ships; the accuracy figures are
those of the held-out side, with the constants kvscale ships: weights per GPU (signed, since an
optimistic estimate is what runs out of memory), KV memory and KV tokens end to end, and KV tokens
from vLLM's own reported KV memory (which isolates the KV layout from the overhead model).

    python bench/estimator_accuracy.py [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from kvscale.estimator.catalog import resolve_model
from kvscale.estimator.errors import EstimatorError
from kvscale.estimator.gpus import GIB, GPUType, custom_gpu, default_catalog
from kvscale.estimator.memory import ServingConfig, estimate, pp_stages
from kvscale.estimator.model_spec import ModelSpec
from kvscale.estimator.quantization import Quantization
from kvscale.estimator.vllm_profiles import VLLM_RELEASE, profile_for

DATA = Path(__file__).parent / "data" / "published_vllm_startups.json"

# Same architecture as a catalog entry (differences only in max_position_embeddings or the checkpoint format).
MODEL_ALIASES = {
    "Qwen/Qwen2-7B-Instruct": ("Qwen/Qwen2.5-7B-Instruct", None),
    "Qwen/Qwen3-Coder-30B-A3B-Instruct": ("Qwen/Qwen3-30B-A3B", {"max_position_embeddings": 262144}),
    "Qwen/Qwen3-4B-Instruct-2507": ("Qwen/Qwen3-4B", {"max_position_embeddings": 262144}),
    "Qwen/Qwen3-4B-Instruct-2507-FP8": ("Qwen/Qwen3-4B", {"max_position_embeddings": 262144,
                                                            "quantization_config": {"quant_method": "fp8"}}),
    "Qwen/Qwen2.5-7B-Instruct-AWQ": ("Qwen/Qwen2.5-7B-Instruct",
                                     {"quantization_config": {"quant_method": "awq", "bits": 4, "group_size": 128}}),
    "Qwen/Qwen3-235B-A22B-FP8": ("Qwen/Qwen3-235B-A22B", {"quantization_config": {"quant_method": "fp8"}}),
    "meta-llama/Meta-Llama-3.1-405B-Instruct-FP8": (
        "meta-llama/Llama-3.1-405B-Instruct", {"quantization_config": {"quant_method": "fbgemm_fp8"}}),
    "neuralmagic/Meta-Llama-3.1-70B-Instruct-quantized.w8a8": (
        "meta-llama/Llama-3.1-70B-Instruct", {"quantization_config": {"quant_method": "int8"}}),
}
# Runtime-reported totals for cards outside the catalog (GiB).
EXTRA_GPUS = {"RTX 4080 16GB": 15.57, "RTX 5090": 31.36, "A10 24GB": 22.06, "RTX A5000 24GB": 23.55,
              "RTX 3090": 23.57, "H100": 79.11, "A100": 79.15}
# Records whose KV figure is not vLLM's own accounting: an external KV connector (LMCache) was attached,
# or the engine spanned two nodes (NCCL over the network). Shown, but left out of the summary.
EXCLUDED_FROM_SUMMARY = {
    "vllm21348-qwen3-235b-a22b-fp8-4xh100": "KV connector attached",
    "lmcache3430-qwen3-8b-rtx-a5000": "LMCache connector attached",
    "dennislee-qwen2-7b-a100-40g-tp2-2nodes-gmu0.5": "two nodes: NCCL over the network",
}
# Before 0.12, vLLM printed hybrid models' capacity as num_blocks // groups * block_size.
LEGACY_HYBRID_REPORT_BEFORE = (0, 12)
# The V0 engine (records named -v0, before 0.10) had neither async scheduling nor chunked prefill.
V0_ENGINE_RELEASE = "0.6"
V0_ENGINE_RECORD = re.compile(r"-v0(?:-|$)")  # an id naming the engine, not a release such as -v0.14.1
SPLITS = ("calibration", "held_out")
# the fitted constants, in the order of the columns of the design matrix
FITTED = ("non_torch_base_bytes", "nccl_bytes", "cuda_graph_base_bytes", "cuda_graph_per_layer_bytes")


def _version(v: str | None) -> tuple[int, ...] | None:
    if not v:
        return None
    try:
        return tuple(int(x) for x in v.split(".")[:2])
    except ValueError:
        return None


def _gpu(name: str | None) -> GPUType | None:
    if name is None:
        return None
    cat = default_catalog()
    try:
        return cat.get(name)
    except EstimatorError:
        pass
    if name in EXTRA_GPUS:
        g = custom_gpu(EXTRA_GPUS[name])
        return g.model_copy(update={"name": name})
    return None


def _release(record: dict[str, Any]) -> str:
    if V0_ENGINE_RECORD.search(record["id"]):
        return V0_ENGINE_RELEASE
    return record.get("vllm_version") or VLLM_RELEASE


def _setup(record: dict[str, Any]) -> tuple[ModelSpec, GPUType, ServingConfig] | None:
    """The model, GPU and engine arguments of one record, or None where the record lacks them."""
    rep = record["reported"]
    gpu = _gpu(record.get("gpu"))
    model_id, overrides = MODEL_ALIASES.get(record["model"], (record["model"], None))
    try:
        spec = resolve_model(model_id, overrides)
    except EstimatorError:
        return None
    if gpu is None and rep.get("available_kv_gib") is None:
        return None
    gpu = gpu or custom_gpu(80.0)
    release = _release(record)
    profile = profile_for(release)
    v0_engine = release == V0_ENGINE_RELEASE
    max_len = record.get("max_model_len") or None
    mbt = record.get("max_num_batched_tokens")
    if v0_engine and max_len:  # no chunked prefill: the profile run is one max_model_len prompt
        mbt = max(mbt or 0, max_len)
    cfg = ServingConfig(
        tensor_parallel_size=record.get("tensor_parallel_size") or 1,
        pipeline_parallel_size=record.get("pipeline_parallel_size") or 1,
        quantization=Quantization.AUTO, kv_cache_dtype=record.get("kv_cache_dtype") or "auto",
        max_model_len=max_len,
        gpu_memory_utilization=record.get("gpu_memory_utilization") or profile.gpu_memory_utilization,
        max_num_batched_tokens=mbt, max_num_seqs=record.get("max_num_seqs"),
        enforce_eager=bool(record.get("enforce_eager")),
        vllm_release=release,
    )
    return spec, gpu, cfg


def fit(records: list[dict[str, Any]]) -> tuple[dict[str, float], int]:
    """Least-squares overhead constants over the records' reported KV memory, each constant >= 0.

    With the overheads at zero the estimate leaves requested - weights - activation peak for the KV cache;
    what vLLM reported less than that is the overhead, a sum of the four terms: non-torch memory always,
    NCCL buffers when a replica spans GPUs, the CUDA-graph pool (base + per layer) where vLLM takes it from
    the KV budget. A constant the fit drives below zero is held at zero and the rest refitted."""
    rows, ys = [], []
    for rec in records:
        kv = rec["reported"].get("available_kv_gib")
        setup = _setup(rec)
        if setup is None or kv is None or kv <= 0 or rec["id"] in EXCLUDED_FROM_SUMMARY or _gpu(rec.get("gpu")) is None:
            continue
        spec, gpu, cfg = setup
        zero = profile_for(cfg.vllm_release).model_copy(update=dict.fromkeys(FITTED, 0))
        try:
            e = estimate(spec, gpu, cfg, profile=zero)
        except EstimatorError:
            continue
        graphs = float(zero.graphs_in_kv_budget and not cfg.enforce_eager)
        layers = max(len(s) for s in pp_stages(spec.num_layers, cfg.pipeline_parallel_size))
        multi = float(cfg.tensor_parallel_size * cfg.pipeline_parallel_size > 1)
        rows.append([1.0, multi, graphs, graphs * layers])
        ys.append(e.kv_cache_bytes - kv * GIB)
    a, y = np.array(rows), np.array(ys)
    free = list(range(len(FITTED)))
    coef = np.zeros(len(FITTED))
    while free:
        sol, *_ = np.linalg.lstsq(a[:, free], y, rcond=None)
        if (sol >= 0).all():
            coef[free] = sol
            break
        free.pop(int(np.argmin(sol)))
    return dict(zip(FITTED, (float(c) for c in coef), strict=True)), len(ys)


def evaluate(record: dict[str, Any]) -> dict[str, Any] | None:
    rep = record["reported"]
    setup = _setup(record)
    if setup is None:
        return None
    spec, gpu, cfg = setup
    version = _version(record.get("vllm_version"))
    legacy_report = version is not None and version < LEGACY_HYBRID_REPORT_BEFORE
    try:
        est = estimate(spec, gpu, cfg)
        tokens = est.kv_cache_tokens
        if legacy_report and est.kv_groups > 1:
            tokens = est.num_blocks // est.kv_groups * est.block_size
        own_kv = None
        if rep.get("available_kv_gib") is not None and rep["available_kv_gib"] > 0:
            fixed = cfg.model_copy(update={"kv_cache_memory_bytes": int(rep["available_kv_gib"] * GIB)})
            own = estimate(spec, gpu, fixed)
            own_kv = own.num_blocks // own.kv_groups * own.block_size if legacy_report and own.kv_groups > 1 \
                else own.kv_cache_tokens
    except EstimatorError as exc:
        return {"id": record["id"], "split": record["split"], "error": str(exc)}
    return {
        "id": record["id"], "split": record["split"], "model": record["model"], "gpu": record.get("gpu"),
        "tp": cfg.tensor_parallel_size, "max_model_len": est.max_model_len,
        "weights_reported": rep.get("weights_gib"), "weights_est": est.weights_bytes / GIB,
        "kv_gib_reported": rep.get("available_kv_gib"), "kv_gib_est": est.kv_cache_bytes / GIB,
        "tokens_reported": rep.get("kv_cache_tokens"),
        "tokens_est": tokens if record.get("gpu") else None,
        "excluded": EXCLUDED_FROM_SUMMARY.get(record["id"]),
        "tokens_from_reported_kv": own_kv,
    }


def _err(est: float | None, ref: float | None) -> float | None:
    if est is None or ref is None or ref <= 0:
        return None
    return (est - ref) / ref * 100


def fmt(e: float | None) -> str:
    return "" if e is None else f"{e:+.1f}"


def _summary(label: str, errs: list[float], target: float) -> str:
    if not errs:
        return f"{label}: no held-out record reports it"
    mags = [abs(e) for e in errs]
    return (f"{label}: n={len(errs)} median |error| {statistics.median(mags):.2f}% mean {statistics.mean(mags):.2f}% "
            f"max {max(mags):.2f}%; signed mean {statistics.mean(errs):+.2f}%, {sum(e < 0 for e in errs)} under "
            f"{sum(e > 0 for e in errs)} over (target median <= {target}%)")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", help="write per-record results here")
    args = ap.parse_args()
    records = json.loads(DATA.read_text())
    if any(r.get("split") not in SPLITS for r in records):
        raise SystemExit(f"every record needs a split in {SPLITS}")
    console = Console(width=200)

    fitted, n_fit = fit([r for r in records if r["split"] == "calibration"])
    shipped = profile_for(VLLM_RELEASE)
    f = Table(title=f"overhead constants fitted on the calibration split ({n_fit} records with reported KV memory)")
    for c in ("constant", "fitted MiB", "shipped MiB"):
        f.add_column(c)
    for name in FITTED:
        f.add_row(name, f"{fitted[name] / (1 << 20):.0f}", f"{getattr(shipped, name) / (1 << 20):.0f}")
    console.print(f)

    held = [r for r in records if r["split"] == "held_out"]
    rows = [r for r in (evaluate(rec) for rec in held) if r is not None]
    t = Table(title=f"held out: kvscale estimate vs {len(held)} published vLLM start-ups ({len(rows)} usable; "
                    f"{len(records) - len(held)} more calibrate the constants)")
    for c in ("record", "TP", "weights GiB vllm/kvscale", "err %", "KV GiB vllm/kvscale", "err %",
              "KV tokens vllm/kvscale", "err %", "tokens from vLLM's KV GiB", "err %"):
        t.add_column(c)
    w_err, g_err, t_err, l_err = [], [], [], []
    for r in rows:
        if "error" in r:
            t.add_row(r["id"], "", "", "", "", "", "", "", r["error"][:60], "")
            continue
        we = _err(r["weights_est"], r["weights_reported"])
        ge = _err(r["kv_gib_est"], r["kv_gib_reported"])
        te = _err(r["tokens_est"], r["tokens_reported"])
        le = _err(r["tokens_from_reported_kv"], r["tokens_reported"])
        for lst, e in ((w_err, we), (g_err, ge), (t_err, te), (l_err, le)):
            if e is not None and not r["excluded"]:
                lst.append(e)
        t.add_row(r["id"][:44] + (" *" if r["excluded"] else ""), str(r["tp"]),
                  f"{r['weights_reported'] or '-'} / {r['weights_est']:.2f}", fmt(we),
                  f"{r['kv_gib_reported'] or '-'} / {r['kv_gib_est']:.2f}", fmt(ge),
                  f"{r['tokens_reported'] or '-'} / {r['tokens_est'] or '-'}", fmt(te),
                  f"{r['tokens_from_reported_kv'] or '-'}", fmt(le))
    console.print(t)
    left_out = {k: v for k, v in EXCLUDED_FROM_SUMMARY.items() if any(r["id"] == k for r in held)}
    if left_out:
        console.print("* left out of the summary: " + "; ".join(f"{k}: {v}" for k, v in left_out.items()))
    for label, errs, target in (("weights", w_err, 3.0), ("KV memory (end to end)", g_err, 5.0),
                                ("KV tokens (end to end)", t_err, 5.0),
                                ("KV tokens (given vLLM's KV memory)", l_err, 5.0)):
        console.print(_summary(f"held out, {label}", errs, target))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
