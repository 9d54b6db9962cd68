"""The replica simulator against real vLLM (CPU build, dummy weights): same requests, same KV cache.

The autoscaler's policy evaluation trusts ``sim.engine`` to say when a replica's KV cache fills
and when vLLM preempts. This module checks that on a tiny configuration that a CPU can serve:
it starts a real vLLM server with a small KV cache (prefix caching off, so the usage depends
only on the requests), calibrates the simulator's step time on that server, replays requests
from a real trace (token counts scaled down) on both, all at once (a burst: the scheduler's rules
decide) and at their trace arrival times (a slice: step times matter too), and compares what the
autoscaler reads (``vllm:kv_cache_usage_perc``, running, waiting, preemptions) and the latencies.
The simulator gets the arrival times the server actually saw, so the client's own lateness on a
busy host does not count against it.

Used by ``bench/sim_vs_vllm.py`` and ``tests/e2e/test_sim_vs_vllm.py``.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import dataclasses
import itertools
import json
import math
import os
import random
import statistics
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from ..estimator.model_spec import from_hf_config
from ..estimator.params import count_params
from ..testing.vllm_server import CPU_BLOCK_SIZE, VLLMServer, cleanup_dir, tiny_model_config, write_model_dir
from .engine import Replica, ReplicaModel, Seq
from .traces import Request, load_trace

MODEL_NAME = "tiny-llama"
TINY = "llama_gqa"
KEEPALIVE_S = 2.0  # below uvicorn's 5 s, so that a pooled connection is never one the server just closed
GAUGES = ("vllm:kv_cache_usage_perc", "vllm:num_requests_running", "vllm:num_requests_waiting",
          "vllm:num_preemptions_total")


@dataclass(frozen=True)
class ServerConfig:
    """The vLLM engine settings; the simulator gets the same ones."""

    num_blocks: int = 32  # --num-gpu-blocks-override; vLLM keeps one back as the null block
    block_size: int = CPU_BLOCK_SIZE
    max_num_seqs: int = 16
    max_batched_tokens: int = 256  # small, so that long prompts are prefilled in chunks
    max_model_len: int = 2048


# rows of the Azure conversation trace around the slices used here, with the trace's own time origin
TRACE = str(Path(__file__).resolve().parent / "data" / "azure_conv_1800-1980s.csv")


@dataclass(frozen=True)
class _TraceCut:
    """Requests from ``start_s`` on in a real trace, token counts scaled down so that the tiny cache fills
    but a CPU keeps up."""

    trace: str = TRACE
    start_s: float = 1860.0  # a busy stretch of the trace (~8 requests/s)
    input_div: int = 8
    max_input: int = 1024
    max_output: int = 256

    def _scaled(self, r: Request, t: float) -> Request:
        return Request(t, max(1, min(self.max_input, r.input_tokens // self.input_div)),
                       max(1, min(self.max_output, r.output_tokens)))


@dataclass(frozen=True)
class Workload(_TraceCut):
    """A slice of the trace at its own pace, or ``rate_scale`` times as fast."""

    name: str = "trace"
    duration_s: float = 90.0
    rate_scale: float = 1.0

    def requests(self) -> list[Request]:
        """Arrivals relative to the slice start; deterministic for a given trace file."""
        out = []
        for r in load_trace(self.trace):
            t = (r.arrival_s - self.start_s) / self.rate_scale
            if 0.0 <= t < self.duration_s:
                out.append(self._scaled(r, t))
        return out


@dataclass(frozen=True)
class Burst(_TraceCut):
    """The next ``n`` requests of the trace, all at once: far more KV than the cache holds. What happens
    then (admissions, growth, preemptions, recomputation) is decided by the scheduler's rules far more than
    by step times, so this isolates the engine logic from the CPU's timing noise. ``hold``: released to the
    scheduler together (see ``replay_real``)."""

    name: str = "burst"
    hold: bool = True
    n: int = 40

    def requests(self) -> list[Request]:
        reqs = [r for r in load_trace(self.trace) if r.arrival_s >= self.start_s][: self.n]
        return [self._scaled(r, 0.0) for r in reqs]


# ---------------------------------------------------------------- talking to the server

async def scrape(http: httpx.AsyncClient, url: str, only: Sequence[str] | None = None) -> dict[str, float]:
    """vllm:* samples (buckets left out), summed over label sets: one engine, one model. ``only`` keeps the
    named families and parses just their lines (a full page is ~600 lines; the sampler runs 4 times a second
    on a 2-core host that vLLM already saturates)."""
    r = await http.get(f"{url}/metrics")
    r.raise_for_status()
    text = r.text
    if only:
        keep = set(only)
        text = "\n".join(line for line in text.splitlines() if line.split("{", 1)[0].split(" ", 1)[0] in keep)
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name.startswith("vllm:") and not s.name.endswith(("_bucket", "_created")):
                out[s.name] = out.get(s.name, 0.0) + float(s.value)
    return out


@dataclass
class RequestResult:
    rid: int
    arrival: float  # as planned, seconds after the replay start
    prompt: int
    output: int
    sent: float = math.nan
    first_token: float = math.nan
    finished: float = math.nan
    completion_tokens: int = 0
    error: str | None = None


async def stream_completion(http: httpx.AsyncClient, url: str, req: RequestResult, t0: float,
                            stream_interval: int = 1) -> None:
    """One streamed completion; times are seconds after ``t0``. ``stream_interval`` > 1 makes vLLM send
    the first token at once and then every N tokens, which spares the 2-core host thousands of events
    per second without changing how the engine schedules."""
    rng = random.Random(req.rid)
    body: dict[str, Any] = {
        "model": MODEL_NAME, "prompt": [rng.randrange(10, 32000) for _ in range(req.prompt)],
        "max_tokens": req.output, "min_tokens": req.output, "ignore_eos": True, "temperature": 0.0,
        "stream": True, "stream_options": {"include_usage": True}}
    if stream_interval > 1:
        body["stream_interval"] = stream_interval
    req.sent = time.monotonic() - t0
    last = b""
    try:
        async with http.stream("POST", f"{url}/v1/completions", json=body) as r:
            r.raise_for_status()
            buf = b""
            async for chunk in r.aiter_bytes():
                if math.isnan(req.first_token) and b"data:" in chunk:
                    req.first_token = time.monotonic() - t0
                buf = (buf + chunk)[-4096:]
            req.finished = time.monotonic() - t0
            events = [e for e in buf.split(b"\n\n") if e.startswith(b"data:") and b"[DONE]" not in e]
            last = events[-1][5:] if events else b""
        usage = json.loads(last).get("usage") or {}
        req.completion_tokens = int(usage.get("completion_tokens", 0))
    except (httpx.HTTPError, ValueError) as exc:
        req.error = f"{type(exc).__name__}: {str(exc)[:200]}"


# ---------------------------------------------------------------- calibration

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

    def model(self, cfg: ServerConfig) -> ReplicaModel:
        """A ReplicaModel of this server whose step_time reproduces the measurements. The weights read
        cannot be told apart from the fixed per-step cost on this CPU, so it is folded into the overhead."""
        spec = from_hf_config(tiny_model_config(TINY), TINY)
        flops_per_token = 2.0 * count_params(spec).active(spec)
        kv_bytes = kv_bytes_per_token(tiny_model_config(TINY))
        return ReplicaModel(
            kv_blocks=cfg.num_blocks - 1,  # vLLM's usage gauge: 1 - free / (num_gpu_blocks - 1 null block)
            block_size=cfg.block_size, max_num_seqs=cfg.max_num_seqs, max_batched_tokens=cfg.max_batched_tokens,
            weights_bytes=0.0, kv_bytes_per_token=kv_bytes,
            bandwidth=kv_bytes / (self.per_kv_token_s * self.load_scale) if self.per_kv_token_s > 0 else 1e18,
            flops=flops_per_token / (self.per_token_s * self.load_scale), flops_per_token=flops_per_token,
            step_overhead_s=self.step_overhead_s * self.load_scale,
            seq_overhead_s=self.seq_overhead_s * self.load_scale)


def kv_bytes_per_token(cfg: dict[str, Any]) -> float:
    """K and V, every layer, bf16 (the server runs --dtype bfloat16)."""
    head_dim = int(cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"])
    return 2.0 * int(cfg["num_hidden_layers"]) * int(cfg["num_key_value_heads"]) * head_dim * 2


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


async def calibrate(http: httpx.AsyncClient, url: str, cfg: ServerConfig, reps: int = 3, decode_tokens: int = 128,
                    stream_interval: int = 16) -> Calibration:
    """Median step times of a few request shapes, then the four constants of the step-time model.

    Prefills of 16 and of ``max_batched_tokens`` tokens (one step each) give the cost per computed token;
    lone decodes at short and at long context the cost per cached token read; decodes of 1, half and all
    ``max_num_seqs`` sequences together the fixed cost per step and per sequence (a line through the three,
    the regime that dominates the replay). Requests stream as in the replay and /metrics is sampled as in
    the replay, so the API server takes roughly the share of the two cores that it takes there."""
    stop = asyncio.Event()
    sampler = asyncio.create_task(_sample_until(http, url, stop))
    try:
        return await _calibrate(http, url, cfg, reps, decode_tokens, stream_interval)
    finally:
        stop.set()
        await sampler


async def _sample_until(http: httpx.AsyncClient, url: str, stop: asyncio.Event, every: float = 0.25) -> None:
    while not stop.is_set():
        with contextlib.suppress(httpx.HTTPError):
            await scrape(http, url, GAUGES)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every)


async def _calibrate(http: httpx.AsyncClient, url: str, cfg: ServerConfig, reps: int, decode_tokens: int,
                     stream_interval: int) -> Calibration:
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
    model = cal.model(cfg)
    for p in points:
        p.model_s = model.step_time(p.kv_read, p.tokens, p.seqs)
    return cal


FIT_TOLERANCE = 0.01  # the simulated slice's TPOT within 1% of the engine's: far inside the run-to-run spread
SCALE_BOUNDS = (0.1, 10.0)  # beyond these the probes, not the load, are wrong


def fit_load_scale(cal: Calibration, cfg: ServerConfig, arrivals: Sequence[Request], tpot_real_s: float,
                   iterations: int = 12) -> Calibration:
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
        sim_tpot = _mean(replay_sim(dataclasses.replace(cal, load_scale=scale).model(cfg), arrivals,
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


# ---------------------------------------------------------------- the two replays

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


async def replay_real(url: str, reqs: Sequence[Request], sample_every: float = 0.25, timeout_s: float | None = None,
                      stream_interval: int = 16, hold: bool = False,
                      ) -> tuple[Series, list[RequestResult], dict[str, Any]]:
    """Send each request at its arrival time and sample /metrics until the last one has finished.

    Latencies count from the moment a request was actually sent: on this saturated 2-core host the
    client is sometimes descheduled for a second or more (the heartbeat below measures it), and the
    simulator is given the same, actual, arrival times. ``hold`` pauses the engine (``/pause?mode=keep``,
    a dev endpoint: VLLM_SERVER_DEV_MODE=1) while the requests go in and releases them together, so that
    a burst reaches the scheduler as one however slowly the API server takes it in; times then count
    from the release."""
    results = [RequestResult(i, r.arrival_s, r.input_tokens, r.output_tokens) for i, r in enumerate(reqs)]
    series = Series()
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=64, keepalive_expiry=KEEPALIVE_S)
    deadline = timeout_s or (4 * (reqs[-1].arrival_s if reqs else 0.0) + 180.0)
    stalls: list[float] = []
    held = 0.0  # seconds between the first send and the release, when holding
    async with httpx.AsyncClient(timeout=httpx.Timeout(deadline, connect=10.0), limits=limits) as http:
        base = await scrape(http, url)
        if hold:
            resp = await http.post(f"{url}/pause", params={"mode": "keep", "clear_cache": "false"})
            if resp.status_code != 200:
                raise RuntimeError(f"cannot pause vLLM (HTTP {resp.status_code}): start it with VLLM_SERVER_DEV_MODE=1")
        t0 = time.monotonic()

        async def send(res: RequestResult) -> None:
            await asyncio.sleep(max(0.0, res.arrival - (time.monotonic() - t0)))
            await stream_completion(http, url, res, t0, stream_interval)

        async def heartbeat(every: float = 0.05) -> None:
            last = time.monotonic()
            while True:
                await asyncio.sleep(every)
                now = time.monotonic()
                if now - last - every > 0.2:
                    stalls.append(now - last - every)
                last = now

        beat = asyncio.create_task(heartbeat())
        tasks = [asyncio.create_task(send(r)) for r in results]
        pending = set(tasks)
        if hold:
            while any(math.isnan(r.sent) for r in results):
                await asyncio.sleep(0.05)
            await asyncio.sleep(1.0)  # the API server hands them on to the paused engine
            (await http.post(f"{url}/resume")).raise_for_status()
            held = time.monotonic() - t0
            t0 += held
        try:
            while pending:
                ts = time.monotonic() - t0
                if ts > deadline:
                    raise TimeoutError(f"replay still running after {deadline:.0f}s: {len(pending)} requests left")
                m = await scrape(http, url, GAUGES)
                te = time.monotonic() - t0
                series.add((ts + te) / 2, m["vllm:kv_cache_usage_perc"], m["vllm:num_requests_running"],
                           m["vllm:num_requests_waiting"],
                           m["vllm:num_preemptions_total"] - base["vllm:num_preemptions_total"])
                _, pending = await asyncio.wait(pending,
                                                timeout=max(0.0, sample_every - (time.monotonic() - t0 - ts)))
        finally:
            beat.cancel()
            for task in pending:
                task.cancel()
        await asyncio.gather(*tasks)
        await asyncio.sleep(0.3)
        m = await scrape(http, url)
        te = time.monotonic() - t0
        series.add(te, m["vllm:kv_cache_usage_perc"], m["vllm:num_requests_running"],
                   m["vllm:num_requests_waiting"], m["vllm:num_preemptions_total"] - base["vllm:num_preemptions_total"])

    def delta(name: str) -> float:
        return m[name] - base[name]

    def delta_mean(name: str) -> float:
        n = delta(f"{name}_count")
        return delta(f"{name}_sum") / n if n else math.nan

    for res in results:  # held requests count from the release
        res.sent, res.first_token, res.finished = max(0.0, res.sent - held), res.first_token - held, res.finished - held
    ok = [r for r in results if not r.error]
    series.ttft = [r.first_token - r.sent for r in ok]
    series.e2e = [r.finished - r.sent for r in ok]
    series.tpot = [(r.finished - r.first_token) / (r.output - 1) for r in ok if r.output > 1]
    series.makespan = max((r.finished for r in ok), default=0.0)
    lag = [r.sent - r.arrival for r in results]
    gaps = [b - a for a, b in itertools.pairwise(series.t)]
    extra = {"errors": [r.error for r in results if r.error],
             "wrong_token_counts": [r.rid for r in ok if r.completion_tokens != r.output],
             "send_lag_p50_s": _pct(lag, 0.5), "send_lag_p90_s": _pct(lag, 0.9), "send_lag_max_s": max(lag),
             "client_stalls": len(stalls), "client_stalled_s": sum(stalls),
             "client_stall_max_s": max(stalls, default=0.0),
             "sample_gap_max_s": max(gaps, default=0.0),
             "server_ttft_mean_s": delta_mean("vllm:time_to_first_token_seconds"),
             "server_e2e_mean_s": delta_mean("vllm:e2e_request_latency_seconds"),
             "server_queue_mean_s": delta_mean("vllm:request_queue_time_seconds"),
             "server_tpot_mean_s": delta("vllm:request_time_per_output_token_seconds_sum")
             / max(1, sum(1 for r in ok if r.output > 1)),
             "engine_steps": delta("vllm:iteration_tokens_total_count"),
             "prompt_tokens": delta("vllm:prompt_tokens_total"),
             "generation_tokens": delta("vllm:generation_tokens_total")}
    return series, results, extra


def sent_as_arrivals(results: Sequence[RequestResult]) -> list[Request]:
    """The requests as the server got them: actual send times, in order."""
    return sorted((Request(r.sent, r.prompt, r.output) for r in results), key=lambda r: r.arrival_s)


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


# ---------------------------------------------------------------- comparison

def _pct(xs: Sequence[float], q: float) -> float:
    if not xs:
        return math.nan
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def _mean(xs: Sequence[float]) -> float:
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
        "kv_abs_diff_mean": _mean(busy), "kv_abs_diff_max": max(busy, default=math.nan),
        "kv_abs_diff_mean_time_normalised": _mean(norm),
        "kv_mean_real": _mean([x[0] for x in r]), "kv_mean_sim": _mean([x[0] for x in o]),
        "kv_peak_real": max(real.kv), "kv_peak_sim": max(other.kv),
        "kv_time_ge_90pct_real": _mean([float(x[0] >= 0.9) for x in r]),
        "kv_time_ge_90pct_sim": _mean([float(x[0] >= 0.9) for x in o]),
        "running_mean_real": _mean([x[1] for x in r]), "running_mean_sim": _mean([x[1] for x in o]),
        "waiting_mean_real": _mean([x[2] for x in r]), "waiting_mean_sim": _mean([x[2] for x in o]),
        "preemptions_real": real.preemptions[-1], "preemptions_sim": other.preemptions[-1],
        "ttft_p50_real": _pct(real.ttft, 0.5), "ttft_p50_sim": _pct(other.ttft, 0.5),
        "ttft_p90_real": _pct(real.ttft, 0.9), "ttft_p90_sim": _pct(other.ttft, 0.9),
        "e2e_mean_real": _mean(real.e2e), "e2e_mean_sim": _mean(other.e2e),
        "tpot_mean_real": _mean(real.tpot), "tpot_mean_sim": _mean(other.tpot),
        "makespan_real": real.makespan, "makespan_sim": other.makespan,
    }


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
    real_vs_real: dict[str, float] | None = None  # the same workload twice on the server: the noise floor

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


def deprioritise_engine(server_pid: int, niceness: int = 10) -> list[str]:
    """Lower the CPU priority of vLLM's engine core and worker, every thread.

    The engine core and the worker busy-poll each other, so while vLLM serves they keep both cores of
    this host busy, and its API server (which takes requests in and keeps the gauges) and the load
    generator then get the CPU a second or more late: requests reach the engine in clumps and the
    samples have holes, an artefact of a 2-core host that a GPU server with its own CPUs does not have.
    Both use little CPU, so the engine loses next to nothing. Raising nice needs no privileges; the
    client's own priority is raised too where that is allowed (root), for the run only."""
    done = []
    for pid in os.listdir("/proc"):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            comm, fields = stat[stat.index("(") + 1: stat.rindex(")")], stat[stat.rindex(")") + 2:].split()
            if int(fields[2]) != server_pid or not comm.startswith("VLLM::"):
                continue
            for tid in os.listdir(f"/proc/{pid}/task"):
                os.setpriority(os.PRIO_PROCESS, int(tid), niceness)
            done.append(f"{comm} +{niceness}")
        except (OSError, ValueError, IndexError):
            continue
    return done


@contextlib.contextmanager
def _env(**values: str) -> Iterator[None]:
    """Set environment variables for a child started inside the block (VLLMServer copies os.environ)."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


#: The level is fitted at the load the comparison replays: the default slice (1860 s on) asks ~9 requests
#: and ~1,000 output tokens per second, more than this engine delivers, so it runs with a queue; the 20 s
#: before it at their own pace ask 833, where the engine keeps up and its API server has less to do. The
#: 24 s before it, played 1.2x as fast, ask 9.3 requests and 988 output tokens per second, on other requests.
CALIBRATION_SLICE = Workload(name="calibration", start_s=1836.0, duration_s=20.0, rate_scale=1.2)


def run_comparison(workloads: Sequence[Workload | Burst], server: ServerConfig | None = None,
                   workdir: Path | None = None, calibration_reps: int = 3,
                   calibration_slice: Workload = CALIBRATION_SLICE, repeat: str | None = None,
                   ready_timeout_s: float = 420.0) -> Comparison:
    """Start vLLM, calibrate once (probes, then ``calibration_slice`` for the level under load), replay each
    workload on the server and in the simulator, stop vLLM. ``repeat`` names a workload to replay a second
    time on the server: the run-to-run noise of the real system, the floor for any agreement. Raises
    VLLMUnavailable when there is no vLLM to start."""
    cfg = server or ServerConfig()
    plans = [(w, w.requests()) for w in workloads]
    cal_reqs = calibration_slice.requests()
    if any(not reqs for _, reqs in plans):
        raise ValueError("a workload holds no requests")
    work = workdir or Path(tempfile.mkdtemp(prefix="kvscale-simval-"))  # removed on success if ours
    model_dir = write_model_dir(tiny_model_config(TINY), work / "model")
    srv = VLLMServer(model_dir=model_dir, num_blocks=cfg.num_blocks, max_model_len=cfg.max_model_len,
                     max_num_seqs=cfg.max_num_seqs, max_num_batched_tokens=cfg.max_batched_tokens,
                     served_model_name=MODEL_NAME, extra_args=["--no-enable-prefix-caching"],
                     log_path=work / "vllm.log")
    timings: dict[str, float] = {}
    runs: list[tuple[Series, list[RequestResult], dict[str, Any]]] = []
    own_nice = os.getpriority(os.PRIO_PROCESS, 0)
    t = time.monotonic()
    try:
        with _env(VLLM_SERVER_DEV_MODE="1"):  # /pause and /resume, to release a burst at once
            srv.start()
        srv.wait_ready(ready_timeout_s)
        timings["server_start"] = time.monotonic() - t
        assert srv.proc is not None
        priorities = deprioritise_engine(srv.proc.pid)
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, 0, own_nice - 10)
            priorities.append("client -10")

        async def measure() -> Calibration:
            t = time.monotonic()
            limits = httpx.Limits(keepalive_expiry=KEEPALIVE_S)
            async with httpx.AsyncClient(timeout=httpx.Timeout(300.0, connect=10.0), limits=limits) as http:
                cal = await calibrate(http, srv.url, cfg, reps=calibration_reps)
            timings["calibration probes"] = time.monotonic() - t
            t = time.monotonic()
            _, results, extra = await replay_real(srv.url, cal_reqs)
            if extra["errors"]:
                raise RuntimeError(f"calibration slice: {extra['errors'][0]}")
            cal = fit_load_scale(cal, cfg, sent_as_arrivals(results), extra["server_tpot_mean_s"])
            timings["calibration slice"] = time.monotonic() - t
            extra_runs = [pw for pw in plans if pw[0].name == repeat]
            for i, (w, reqs) in enumerate(plans + extra_runs):
                t = time.monotonic()
                runs.append(await replay_real(srv.url, reqs, hold=isinstance(w, Burst) and w.hold))
                runs[-1][2]["priorities"] = priorities
                timings[f"replay {w.name}" + (" (again)" if i >= len(plans) else "")] = time.monotonic() - t
            return cal

        cal = asyncio.run(measure())
    finally:
        srv.stop()
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, 0, own_nice)
    model = cal.model(cfg)
    replays = []
    for (w, reqs), (real, results, extra) in zip(plans, runs, strict=False):
        sim = replay_sim(model, sent_as_arrivals(results))
        replays.append(Replay(w, len(reqs), real, sim, compare(real, sim), extra))
    again = [i for i, (w, _) in enumerate(plans) if w.name == repeat]
    noise = compare(runs[again[0]][0], runs[-1][0]) if again else None
    if workdir is None:
        cleanup_dir(work)
    return Comparison(cfg, cal, model, replays, timings, noise)


# ---------------------------------------------------------------- output

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
