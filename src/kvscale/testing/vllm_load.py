"""A load client for a live vLLM server: streams completions, samples its gauges, times every token."""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from ..sim.series import Series, percentile
from ..sim.traces import Request

MODEL_NAME = "tiny-llama"


KEEPALIVE_S = 2.0  # below uvicorn's 5 s, so that a pooled connection is never one the server just closed


GAUGES = ("vllm:kv_cache_usage_perc", "vllm:num_requests_running", "vllm:num_requests_waiting",
          "vllm:num_preemptions_total")


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
    for _ in range(1 + TRANSPORT_RETRIES):
        req.sent = time.monotonic() - t0
        req.error = None
        await _stream(http, url, body, req, t0)
        # a connection the pool reused that the server had just dropped: nothing reached the engine yet
        if not (req.error and req.error.startswith(TRANSPORT_ERRORS) and math.isnan(req.first_token)):
            break


#: connection-level failures before any token came back, which the load client sends again once
TRANSPORT_ERRORS = ("ReadError", "RemoteProtocolError", "ConnectError", "WriteError")
TRANSPORT_RETRIES = 1


async def _stream(http: httpx.AsyncClient, url: str, body: dict[str, Any], req: RequestResult, t0: float) -> None:
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
        when = "before the first token" if math.isnan(req.first_token) else "while streaming"
        req.error = f"{type(exc).__name__}: {str(exc)[:200]} ({when}, request {req.rid})"


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
             "send_lag_p50_s": percentile(lag, 0.5), "send_lag_p90_s": percentile(lag, 0.9), "send_lag_max_s": max(lag),
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
