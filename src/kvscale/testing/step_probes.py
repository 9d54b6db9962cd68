"""Step-time probes against a live vLLM server: one-request shapes, timed, fitted to the simulator's constants."""

from __future__ import annotations

import asyncio
import contextlib
import math
import statistics
import time
from collections.abc import Sequence
from typing import Any

import httpx

from ..sim.step_model import Calibration, CalPoint, ServerConfig
from .vllm_load import GAUGES, RequestResult, scrape, stream_completion


async def _timed(http: httpx.AsyncClient, url: str, shapes: Sequence[tuple[int, int]],
                 stream_interval: int) -> tuple[float, float]:
    """Run requests together; the server's own mean prefill time and mean decode time per token.

    These histograms are stamped in the engine core (scheduled, first token, last token), so the
    API server's and this client's lag on a busy host do not enter."""
    for attempt in range(3):  # a dropped connection spoils the histogram deltas: measure again
        before = await scrape(http, url)
        reqs = [RequestResult(10_000 + i, 0.0, p, o) for i, (p, o) in enumerate(shapes)]
        t0 = time.monotonic()
        await asyncio.gather(*[stream_completion(http, url, r, t0, stream_interval) for r in reqs])
        bad = [r.error for r in reqs if r.error]
        if not bad:
            break
        if attempt == 2:
            raise RuntimeError(f"calibration request failed: {bad[0]}")
        await asyncio.sleep(1.0)
    after, n = before, 0.0
    for _ in range(100):  # the request histograms are observed when the frontend finishes the request
        after = await scrape(http, url)
        n = after["vllm:request_prefill_time_seconds_count"] - before["vllm:request_prefill_time_seconds_count"]
        if n >= len(reqs):
            break
        await asyncio.sleep(0.05)
    prefill = (after["vllm:request_prefill_time_seconds_sum"] - before["vllm:request_prefill_time_seconds_sum"]) / n
    decode = after["vllm:request_decode_time_seconds_sum"] - before["vllm:request_decode_time_seconds_sum"]
    decode_tokens = sum(max(0, o - 1) for _, o in shapes)
    return prefill, decode / decode_tokens if decode_tokens else math.nan


def _line(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """Least-squares intercept and slope."""
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    return my - slope * mx, slope


async def calibrate(http: httpx.AsyncClient, url: str, cfg: ServerConfig, arch: dict[str, Any], reps: int = 3,
                    decode_tokens: int = 128, stream_interval: int = 16) -> Calibration:
    """Median step times of a few request shapes, then the four constants of the step-time model.

    Prefills of 16 and of ``max_batched_tokens`` tokens (one step each) give the cost per computed token;
    lone decodes at short and at long context the cost per cached token read; decodes of 1, half and all
    ``max_num_seqs`` sequences together the fixed cost per step and per sequence (a line through the three,
    the regime that dominates the replay). Requests stream as in the replay and /metrics is sampled as in
    the replay, so the API server takes roughly the share of the two cores that it takes there. ``arch``: the
    served model's config.json."""
    stop = asyncio.Event()
    sampler = asyncio.create_task(_sample_until(http, url, stop))
    try:
        return await _calibrate(http, url, cfg, arch, reps, decode_tokens, stream_interval)
    finally:
        stop.set()
        await sampler


async def _sample_until(http: httpx.AsyncClient, url: str, stop: asyncio.Event, every: float = 0.25) -> None:
    while not stop.is_set():
        with contextlib.suppress(httpx.HTTPError):
            await scrape(http, url, GAUGES)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every)


async def _calibrate(http: httpx.AsyncClient, url: str, cfg: ServerConfig, arch: dict[str, Any], reps: int,
                     decode_tokens: int, stream_interval: int) -> Calibration:
    n, budget = cfg.max_num_seqs, cfg.max_batched_tokens
    long_ctx = min(cfg.max_model_len - decode_tokens, (cfg.num_blocks - 2) * cfg.block_size - decode_tokens, 1536)
    batches = sorted({1, max(2, n // 2), n})

    async def timed(shapes: Sequence[tuple[int, int]]) -> tuple[float, float]:
        return await _timed(http, url, shapes, stream_interval)

    await timed([(budget, 8), (16, 32)] + [(16, 16)] * n)  # warm-up
    m: dict[str, list[float]] = {"p_short": [], "p_full": [], "d_long": []}
    m.update({f"d_{b}": [] for b in batches})
    for _ in range(reps):
        m["p_short"].append((await timed([(16, 1)]))[0])
        m["p_full"].append((await timed([(budget, 1)]))[0])
        m["d_long"].append((await timed([(long_ctx, decode_tokens)]))[1])
        for b in batches:
            m[f"d_{b}"].append((await timed([(16, decode_tokens)] * b))[1])
    med = {k: statistics.median(v) for k, v in m.items()}
    ctx, ctx_long = 16 + decode_tokens / 2, long_ctx + decode_tokens / 2
    c = max(1e-7, (med["p_full"] - med["p_short"]) / (budget - 16))
    k = max(0.0, (med["d_long"] - med["d_1"]) / (ctx_long - ctx))
    # what is left of each batch's step once the read / compute term is taken off: overhead + seqs x per-seq cost
    rest = [med[f"d_{b}"] - max(k * ctx * b, c * b) for b in batches]
    a, s = _line([float(b) for b in batches], rest)
    s = max(0.0, s)
    a = max(1e-4, statistics.fmean([r - s * b for r, b in zip(rest, batches, strict=True)]))
    points = [CalPoint("prefill 16 tokens", 1, 16, 0.0, med["p_short"]),
              CalPoint(f"prefill {budget} tokens", 1, budget, 0.0, med["p_full"]),
              CalPoint(f"decode x1, context {ctx_long:.0f}", 1, 1, ctx_long, med["d_long"])]
    points += [CalPoint(f"decode x{b}, context {ctx:.0f}", b, b, ctx * b, med[f"d_{b}"]) for b in batches]
    cal = Calibration(points, a, s, c, k)
    model = cal.model(cfg, arch)
    for p in points:
        p.model_s = model.step_time(p.kv_read, p.tokens, p.seqs)
    return cal
