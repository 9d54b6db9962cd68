"""`kvscale estimate --mode ...` and `kvscale plan --mode ...`: the JSON keys, the exit codes, bad input."""

from __future__ import annotations

import json
from typing import Any

import pytest

from kvscale.cli import main

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
KEYS = {"parameters_gib", "gradients_gib", "optimizer_gib", "activations_gib", "frozen_models_gib",
        "rollout_engine_gib", "overhead_gib", "total_gib", "gpu_memory_gib", "fits", "trainable_params",
        "frozen_params", "notes"}


def run(capsys: Any, *argv: str) -> tuple[int, Any, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, json.loads(out.out) if "--output" in argv and out.out.strip() else out.out, out.err


def test_json_breaks_down_the_per_gpu_total_and_says_whether_it_fits(capsys: Any) -> None:
    code, got, _ = run(capsys, "estimate", MODEL, "--mode", "train", "--gpu", "A100-80GB", "--gpus", "8", "--zero",
                       "3", "--activation-checkpointing", "full", "--output", "json")
    assert set(got) == KEYS
    parts = ("parameters_gib", "gradients_gib", "optimizer_gib", "activations_gib", "overhead_gib")
    assert got["total_gib"] == pytest.approx(sum(got[k] for k in parts), abs=0.01)
    assert (code, got["fits"]) == (0, True)
    code, small, _ = run(capsys, "estimate", MODEL, "--mode", "train", "--gpu", "L4", "--output", "json")
    assert (code, small["fits"]) == (1, False) and small["total_gib"] > small["gpu_memory_gib"]


@pytest.mark.parametrize(("argv", "says"), [
    (["--gpus", "6", "--tp", "4"], "not a multiple of tensor_parallel"),
    (["--offload", "params"], "offload params needs sharded weights"),
    (["--mode", "lora", "--lora-targets", "qkv"], "match no linear layer"),
    (["--micro-batch", "0"], "--micro-batch must be positive"),
    (["--zero", "4"], "invalid choice: 4"),
])
def test_bad_input_is_one_line_and_exit_2(capsys: Any, argv: list[str], says: str) -> None:
    args = ["estimate", MODEL, *argv] if "--mode" in argv else ["estimate", MODEL, "--mode", "train", *argv]
    try:  # argparse refuses some values itself, by SystemExit
        code = main(args)
    except SystemExit as exc:
        code = int(exc.code or 0)
    err = capsys.readouterr().err.strip()
    assert code == 2 and says in err and len(err.splitlines()) == 1


def test_plan_ranks_by_cost_and_names_the_closest_miss(capsys: Any) -> None:
    code, got, _ = run(capsys, "plan", MODEL, "--mode", "lora", "--gpus", "L4", "A100-80GB", "H100-80GB",
                       "--activation-checkpointing", "full", "--output", "json")
    assert code == 0 and got and [p["cost_per_hour"] for p in got] == sorted(p["cost_per_hour"] for p in got)
    assert all(p["fits"] for p in got)
    code, out, _ = run(capsys, "plan", "meta-llama/Llama-3.1-70B-Instruct", "--mode", "train", "--gpus", "L4",
                       "--seq-len", "8192")
    assert code == 1 and "the closest:" in out and "GiB per GPU" in out
