"""The memory figures of vLLM start-up logs: every published log whose figures were read by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kvscale.operator.startup_report import startup_report

RECORDS = json.loads((Path(__file__).parents[2] / "bench" / "data" / "published_vllm_startups.json").read_text())


@pytest.mark.parametrize("record", [r for r in RECORDS if "Model loading took" in r["log"]], ids=lambda r: r["id"])
def test_the_figures_are_the_ones_read_by_hand(record: dict) -> None:  # type: ignore[type-arg]
    got = startup_report(record["log"])
    reported = record["reported"]
    assert got["weightsGiB"] == pytest.approx(reported["weights_gib"], abs=1e-4)
    if reported.get("available_kv_gib") is not None and "Available KV cache memory" in record["log"]:
        assert got["availableKVCacheGiB"] == pytest.approx(reported["available_kv_gib"], abs=1e-4)


def test_graph_pool_and_a_negative_kv_memory_are_read_and_a_cpu_log_states_nothing() -> None:
    log = ("Model loading took 65.9651 GiB and 12.8 seconds\n[gpu_worker.py:276] Available KV cache memory: -2.14 GiB\n"
           "Graph capturing finished in 5 secs, took 0.50 GiB")
    assert startup_report(log) == {"weightsGiB": 65.9651, "availableKVCacheGiB": -2.14, "cudaGraphGiB": 0.5}
    cpu = (Path(__file__).parent / "data" / "vllm_0.32_kv_too_small.log").read_text()
    assert startup_report(cpu) == {}
