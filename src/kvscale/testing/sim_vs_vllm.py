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

Used by ``bench/sim_vs_vllm.py`` and ``tests/e2e/test_sim_vs_vllm.py``; what it compares and
fits is pure and lives in ``kvscale.sim`` (workloads, series, step_model, comparison).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx

from ..sim.comparison import Comparison, Replay
from ..sim.series import Series, compare, replay_sim
from ..sim.step_model import Calibration, ServerConfig, fit_load_scale
from ..sim.workloads import CALIBRATION_SLICE, Burst, Workload
from .processes import deprioritise_engine
from .step_probes import calibrate
from .vllm_load import KEEPALIVE_S, MODEL_NAME, RequestResult, replay_real, sent_as_arrivals
from .vllm_server import VLLMServer, cleanup_dir, tiny_model_config, write_model_dir

TINY = "llama_gqa"


@contextlib.contextmanager
def environment(**values: str) -> Iterator[None]:
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


def run_comparison(workloads: Sequence[Workload | Burst], server: ServerConfig | None = None,
                   workdir: Path | None = None, calibration_reps: int = 3,
                   calibration_slice: Workload = CALIBRATION_SLICE, repeat: Sequence[str] = (),
                   ready_timeout_s: float = 420.0) -> Comparison:
    """Start vLLM, calibrate once (probes, then ``calibration_slice`` for the level under load), replay each
    workload on the server and in the simulator, stop vLLM. ``repeat`` names workloads to replay a second
    time on the server: the run-to-run noise of the real system, the floor for any agreement. Raises
    VLLMUnavailable when there is no vLLM to start."""
    cfg = server or ServerConfig()
    plans = [(w, w.requests()) for w in workloads]
    cal_reqs = calibration_slice.requests()
    if any(not reqs for _, reqs in plans):
        raise ValueError("a workload holds no requests")
    work = workdir or Path(tempfile.mkdtemp(prefix="kvscale-simval-"))  # removed on success if ours
    arch = tiny_model_config(TINY)
    model_dir = write_model_dir(arch, work / "model")
    srv = VLLMServer(model_dir=model_dir, num_blocks=cfg.num_blocks, max_model_len=cfg.max_model_len,
                     max_num_seqs=cfg.max_num_seqs, max_num_batched_tokens=cfg.max_batched_tokens,
                     served_model_name=MODEL_NAME, extra_args=["--no-enable-prefix-caching"],
                     log_path=work / "vllm.log")
    timings: dict[str, float] = {}
    runs: list[tuple[Series, list[RequestResult], dict[str, Any]]] = []
    own_nice = os.getpriority(os.PRIO_PROCESS, 0)
    t = time.monotonic()
    try:
        with environment(VLLM_SERVER_DEV_MODE="1"):  # /pause and /resume, to release a burst at once
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
                cal = await calibrate(http, srv.url, cfg, arch, reps=calibration_reps)
            timings["calibration probes"] = time.monotonic() - t
            t = time.monotonic()
            _, results, extra = await replay_real(srv.url, cal_reqs)
            if extra["errors"]:
                raise RuntimeError(f"calibration slice: {extra['errors'][0]}")
            cal = fit_load_scale(cal, cfg, arch, sent_as_arrivals(results), extra["server_tpot_mean_s"])
            timings["calibration slice"] = time.monotonic() - t
            extra_runs = [pw for pw in plans if pw[0].name in repeat]
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
    model = cal.model(cfg, arch)
    replays = []
    for (w, reqs), (real, results, extra) in zip(plans, runs, strict=False):
        sim = replay_sim(model, sent_as_arrivals(results))
        replays.append(Replay(w, len(reqs), real, sim, compare(real, sim), extra))
    again = [i for i, (w, _) in enumerate(plans) if w.name in repeat]  # replayed again in this order, after all
    noise = {plans[i][0].name: compare(runs[i][0], runs[len(plans) + k][0]) for k, i in enumerate(again)}
    if workdir is None:
        cleanup_dir(work)
    return Comparison(cfg, cal, model, replays, timings, noise)
