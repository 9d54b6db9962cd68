"""The replica simulator against real vLLM (CPU build, dummy weights): same requests, same KV cache.

One server (32 blocks of 128 tokens, max_num_seqs 16, max_num_batched_tokens 256, no prefix caching),
the simulator calibrated on it (probes, then 20 s of the trace at the replay's load for the pace), then two
replays on both: 40 trace requests released to the scheduler at once, where its rules (admitting whole
prompts, chunked prefill, preempting the newest, recomputing) decide the outcome, and the next 30 s of
the Azure conversation trace, where step times matter too. What the scheduler's rules decide is asserted:
every request completes, the cache fills, preemptions happen as often (bursts) and on both (the slice). How
closely the timing follows (time per output token, completion, the KV curve over time) is measured and
printed by bench/sim_vs_vllm.py, not asserted here: on this 2-core host the engine's own pace drifts within
a session (the same slice decoded at 8 and at 17 ms per token in one hour), which a timed bound in a test
turns into a coin toss. About two minutes.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from kvscale.sim.comparison import Comparison, Replay, plot, table_rows
from kvscale.sim.workloads import Burst, Workload
from kvscale.testing.sim_vs_vllm import run_comparison

pytestmark = [pytest.mark.vllm, pytest.mark.slow]


@pytest.fixture(scope="module")
def comparison(tmp_path_factory: pytest.TempPathFactory) -> Comparison:
    return run_comparison([Burst(n=40), Workload(duration_s=30.0)], workdir=tmp_path_factory.mktemp("simval"),
                          calibration_reps=3)


def replay(c: Comparison, name: str) -> Replay:
    return next(r for r in c.replays if r.workload.name == name)


def test_every_request_completes_on_both(comparison: Comparison) -> None:
    for rp in comparison.replays:
        assert rp.real_extra["errors"] == []
        assert rp.real_extra["wrong_token_counts"] == []
        assert len(rp.real.e2e) == len(rp.sim.e2e) == rp.requests


def test_step_time_model_fits_the_decode_probes(comparison: Comparison) -> None:
    # decode steps are most of every replay; the per-step and per-sequence costs are a line through three
    # of these four points, the per-token read cost the fourth (fits seen within 12%)
    decode = [p for p in comparison.calibration.points if p.name.startswith("decode")]
    assert len(decode) == 4
    for p in decode:
        assert p.model_s == pytest.approx(p.measured_s, rel=0.3), p


def test_burst_preempts_as_often_as_vllm(comparison: Comparison) -> None:
    f = replay(comparison, "burst").figures
    # 40 requests want 3.7x the cache, released to the scheduler together: vLLM preempted 8 times in each of
    # six runs, the simulator 8-9 (by its calibration); before it admitted only whole prompts, 30.
    assert f["preemptions_real"] > 0 and f["preemptions_sim"] > 0
    assert abs(f["preemptions_sim"] - f["preemptions_real"]) <= max(3.0, 0.25 * f["preemptions_real"]), f


def test_burst_fills_the_cache_on_both(comparison: Comparison) -> None:
    f = replay(comparison, "burst").figures
    assert f["kv_peak_real"] >= 0.9 and f["kv_peak_sim"] >= 0.9, f


def test_trace_slice_fills_the_cache_on_both(comparison: Comparison) -> None:
    f = replay(comparison, "trace").figures
    # How closely the KV curves follow each other on a timed slice is reported (bench/sim_vs_vllm.py), not asserted:
    # on this 2-core host vLLM's busy-polling engine starves its own API server, and two real runs of one slice
    # differ by a mean 0.34; fresh-clone runs here gave mean |KV difference| 0.13-0.22 and time-averaged usage
    # 0.60 real vs 0.70 simulated. The scheduler's rules are asserted on the bursts, which do not depend on timing.
    assert f["kv_peak_real"] >= 0.9 and f["kv_peak_sim"] >= 0.9, f


def test_trace_slice_preempts_on_both(comparison: Comparison) -> None:
    f = replay(comparison, "trace").figures
    # seen 5 vs 4, 15 vs 5, 5 vs 5 here; 55 vs 13 on the 90 s bench slice, where the same slice preempted 79
    # times on a second real run: a starved API server hands the engine a clump of requests now and then
    assert (f["preemptions_real"] > 0) == (f["preemptions_sim"] > 0), f
    # the counts themselves are reported, not bounded: a fresh-clone run under the full suite gave 26 real vs 3


def test_comparison_is_reported(comparison: Comparison, tmp_path: Path) -> None:
    plot(comparison, tmp_path / "kv.png")
    assert (tmp_path / "kv.png").stat().st_size > 10_000
    rows = table_rows(replay(comparison, "trace").figures)
    assert rows[0][0].startswith("mean |KV usage real - sim|") and rows[0][1].endswith("%")
