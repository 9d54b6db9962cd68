"""The command line kvscale renders, parsed by the installed vLLM's own argument parser.

Each rendered argument list goes through the parser ``vllm serve`` builds, vLLM's own pre-flight
check of serve arguments and ``AsyncEngineArgs.from_cli_args``; the tiny model's also becomes a full
engine configuration on the CPU build, which is where vLLM reconciles block size, batch limits and
model length. A flag vLLM renamed or dropped fails here, not in a crash-looping pod.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from kvscale.estimator.gpus import default_catalog
from kvscale.operator.discovery import gpu_options
from kvscale.operator.planning import decide_plan
from kvscale.operator.render import render
from kvscale.operator.resource import LLMDeploymentSpec
from kvscale.testing.fleet import DEFAULT_FLEET, NodePool, fleet_manifests
from kvscale.testing.tiny_deployment import tiny_llmdeployment
from kvscale.testing.vllm_server import VLLMUnavailable, tiny_model_config, vllm_python, write_model_dir

pytestmark = pytest.mark.vllm

CAT = default_catalog()

PARSE = """
import json, sys
from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args
from vllm.utils.argparse_utils import FlexibleArgumentParser
out = []
for case in json.load(sys.stdin):
    try:
        ns = make_arg_parser(FlexibleArgumentParser()).parse_args(case["args"])
        validate_parsed_serve_args(ns)
        ea = AsyncEngineArgs.from_cli_args(ns)
        r = {"ok": True, "tp": ea.tensor_parallel_size, "pp": ea.pipeline_parallel_size, "nnodes": ea.nnodes,
             "node_rank": ea.node_rank, "master": [ea.master_addr, ea.master_port],
             "headless": bool(getattr(ns, "headless", False)), "block": ea.block_size, "seqs": ea.max_num_seqs,
             "batched": ea.max_num_batched_tokens, "prefix": ea.enable_prefix_caching,
             "load_format": str(ea.load_format), "shutdown": ea.shutdown_timeout}
        if case.get("engine_config"):
            cfg = ea.create_engine_config()
            r["engine"] = {"block": cfg.cache_config.block_size, "seqs": cfg.scheduler_config.max_num_seqs,
                           "batched": cfg.scheduler_config.max_num_batched_tokens,
                           "max_len": cfg.model_config.max_model_len}
    except BaseException as exc:
        r = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:800]}
    out.append(r)
print("RESULT " + json.dumps(out))
"""


def rendered_args(raw: dict[str, Any], fleet: tuple[NodePool, ...] = DEFAULT_FLEET) -> list[str]:
    spec = LLMDeploymentSpec.model_validate(raw)
    nodes = fleet_manifests(fleet)
    for n in nodes:
        n["status"]["conditions"] = [{"type": "Ready", "status": "True"}]
    outcome = decide_plan(spec, gpu_options(nodes, CAT), CAT)
    assert outcome.plan is not None, outcome.message
    dep = render("m", "ns", "uid", spec, outcome.plan, CAT, "h", 1)[0]
    container = dep["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["vllm", "serve"]
    return list(container["args"])


def group_args(raw: dict[str, Any]) -> tuple[list[str], list[str]]:
    """The leader's and a worker's command lines of a multi-node plan (4 nodes of 8xH100), with what
    Kubernetes substitutes from the env LeaderWorkerSet injects."""
    spec = LLMDeploymentSpec.model_validate(raw)
    nodes = fleet_manifests((NodePool(gpu="H100-80GB", nodes=4, gpus_per_node=8),))
    for n in nodes:
        n["status"]["conditions"] = [{"type": "Ready", "status": "True"}]
    outcome = decide_plan(spec, gpu_options(nodes, CAT), CAT)
    assert outcome.plan is not None and outcome.plan.multi_node, outcome.message
    lws = render("m", "ns", "uid", spec, outcome.plan, CAT, "h", 1)[0]
    env = {"$(LWS_LEADER_ADDRESS)": "m-lws-0.m-lws.ns", "$(LWS_WORKER_INDEX)": "1"}
    out = []
    for role in ("leaderTemplate", "workerTemplate"):
        (container,) = lws["spec"]["leaderWorkerTemplate"][role]["spec"]["containers"]
        assert container["command"] == ["vllm", "serve"]
        out.append([env.get(a, a) for a in container["args"]])
    return out[0], out[1]


def parse(cases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    try:
        py = vllm_python()
    except VLLMUnavailable as exc:
        pytest.fail(str(exc))
    done = subprocess.run([str(py), "-c", PARSE], input=json.dumps(cases), capture_output=True, text=True,
                          timeout=600)
    line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
    assert line, done.stderr[-3000:]
    result: list[dict[str, Any]] = json.loads(line.removeprefix("RESULT "))
    return result


def test_vllm_parses_every_rendered_command_line(tmp_path: Path) -> None:
    base = {"model": {"name": "meta-llama/Llama-3.1-8B-Instruct"}, "serving": {"maxModelLen": 8192}}
    tiny = tiny_llmdeployment("t")["spec"]
    model_dir = write_model_dir(tiny_model_config("llama_kv_heavy"), tmp_path / "llama_kv_heavy")
    tiny["model"]["uri"] = str(model_dir)
    specs = {
        "8b on L4": base,
        "70b fp8 TP4 on H100, prefix caching off": {
            "model": {"name": "meta-llama/Llama-3.1-70B-Instruct", "revision": "main"},
            "serving": {"maxModelLen": 16384, "kvCacheDtype": "fp8", "enablePrefixCaching": False,
                        "maxNumSeqs": 128, "maxNumBatchedTokens": 8192},
            "placement": {"gpuTypes": ["H100-80GB"], "tensorParallelSize": 4, "quantization": ["fp8"]}},
        "streamed from s3": {**base, "model": {**base["model"], "uri": "s3://bucket/llama-8b"}},
        "on MI300X": {**base, "placement": {"gpuTypes": ["MI300X"]}},
        "tiny model on the CPU build": tiny,
    }
    mi300 = (NodePool(gpu="MI300X", nodes=1, gpus_per_node=8),)
    cases = [{"args": rendered_args(raw, mi300 if "MI300X" in name else DEFAULT_FLEET),
              "engine_config": name.startswith("tiny")} for name, raw in specs.items()]
    results = dict(zip(specs, parse(cases), strict=True))
    for name, r in results.items():
        assert r["ok"], f"{name}: vLLM refused the rendered arguments: {r.get('error')}"
    big = results["70b fp8 TP4 on H100, prefix caching off"]
    assert (big["tp"], big["seqs"], big["batched"], big["prefix"]) == (4, 128, 8192, False)
    assert "runai_streamer" in results["streamed from s3"]["load_format"]
    t = results["tiny model on the CPU build"]
    assert t["shutdown"] == 120
    # what vLLM settles on after reconciling its config is what kvscale planned
    assert t["engine"] == {"block": 128, "seqs": t["seqs"], "batched": t["batched"], "max_len": 2048}


def test_vllm_parses_the_leader_and_worker_command_lines_of_a_group() -> None:
    """DeepSeek-R1 on 8xH100 nodes: TP8 x PP2 over two nodes, vLLM's own multi-node arguments."""
    leader, worker = group_args({"model": {"name": "deepseek-ai/DeepSeek-R1"},
                                 "serving": {"maxModelLen": 16384, "targetConcurrency": 8}})
    got = dict(zip(("leader", "worker"), parse([{"args": leader}, {"args": worker}]), strict=True))
    for role, r in got.items():
        assert r["ok"], f"{role}: vLLM refused the rendered arguments: {r.get('error')}"
        assert (r["tp"], r["pp"], r["nnodes"], r["master"]) == (8, 2, 2, ["m-lws-0.m-lws.ns", 29501])
    assert (got["leader"]["node_rank"], got["leader"]["headless"]) == (0, False)
    assert (got["worker"]["node_rank"], got["worker"]["headless"]) == (1, True)


def test_vllm_refuses_what_kvscale_must_not_render() -> None:
    """The check is real: a flag vLLM does not know fails the same parse."""
    (r,) = parse([{"args": ["--model", "x", "--tensor-parallel-sise", "2"]}])
    assert not r["ok"] and "SystemExit" in r["error"]
