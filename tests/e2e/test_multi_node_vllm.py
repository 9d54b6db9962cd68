"""A replica across two "nodes" on the vLLM CPU build: two processes on loopback, started with the
multi-node arguments kvscale renders for a LeaderWorkerSet group (pipeline parallel 2, ``--nnodes 2``,
the worker ``--headless``), serve a request together; each stage's KV cache is what the estimator
predicts for its half of the layers."""

from __future__ import annotations

import json
import os
import re
import subprocess
from importlib import resources
from pathlib import Path

import httpx
import pytest

from kvscale.estimator.gpus import GIB, custom_gpu
from kvscale.estimator.memory import CPU_BLOCK_SIZE, ServingConfig, estimate
from kvscale.estimator.model_spec import from_hf_config
from kvscale.estimator.planner import GPUOption, PlanRequest, plan
from kvscale.operator.engine_args import LEADER_ADDRESS_ENV, MULTI_NODE_PORT, WORKER_INDEX_ENV, multi_node_args
from kvscale.testing.processes import stop_group, wait_healthy
from kvscale.testing.vllm_server import free_port, tiny_model_config, vllm_python, write_model_dir

pytestmark = pytest.mark.vllm

MAX_LEN = 512
BLOCKS = re.compile(r'num_gpu_blocks="(\d+)"')


def test_two_processes_serve_one_replica_with_the_rendered_multi_node_arguments(tmp_path: Path) -> None:
    config = tiny_model_config("llama_gqa")
    model_dir = write_model_dir(config, tmp_path / "llama_gqa")
    spec = from_hf_config(config, "llama_gqa")
    one = plan(spec, PlanRequest(max_model_len=MAX_LEN, options=(GPUOption(gpu=custom_gpu(16), gpus_per_node=1),)))
    assert one.best is not None
    group = one.best.model_copy(update={"pipeline_parallel_size": 2, "nodes_per_replica": 2, "gpus_per_replica": 2})
    port, master = free_port(), free_port()
    given = {f"$({LEADER_ADDRESS_ENV})": "127.0.0.1", f"$({WORKER_INDEX_ENV})": "1",
             str(MULTI_NODE_PORT): str(master)}  # what Kubernetes substitutes from LWS's env; a free port
    cli = str(resources.files("kvscale.testing").joinpath("vllm_cli.py"))
    base = [str(vllm_python()), cli, "serve", str(model_dir), "--load-format", "dummy", "--skip-tokenizer-init",
            "--max-model-len", str(MAX_LEN), "--dtype", "bfloat16"]
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_TARGET_DEVICE": "cpu", "HF_HUB_OFFLINE": "1",
           "VLLM_NO_USAGE_STATS": "1", "OMP_NUM_THREADS": "1"}
    procs, logs = [], []
    try:
        for rank, leader in ((1, False), (0, True)):  # the worker first: the leader waits for it
            args = [given.get(a, a) for a in multi_node_args(group, leader)]
            cmd = [*base, *args, *(["--port", str(port)] if leader else [])]
            logs.append((tmp_path / f"rank{rank}.log").open("wb"))
            procs.append(subprocess.Popen(cmd, stdout=logs[-1], stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                          env={**env, "VLLM_CPU_OMP_THREADS_BIND": str(rank)},
                                          start_new_session=True))
        why = wait_healthy(procs[1], f"http://127.0.0.1:{port}/health", 420, interval=1.0)
        tails = "\n".join((tmp_path / f"rank{r}.log").read_text()[-3000:] for r in (0, 1))
        assert not why, f"{why}:\n{tails}"
        done = httpx.post(f"http://127.0.0.1:{port}/v1/completions", timeout=120, json={
            "model": str(model_dir), "prompt": [1, 2, 3, 4], "max_tokens": 8, "ignore_eos": True})
        assert done.status_code == 200, done.text
        assert json.loads(done.text)["usage"]["completion_tokens"] == 8
        page = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        blocks = BLOCKS.search(page)
        assert blocks, "no vllm:cache_config_info with num_gpu_blocks"
        assert "headless multiproc executor" in (tmp_path / "rank1.log").read_text()
    finally:
        for p in procs:
            stop_group(p, 20)
        for f in logs:
            f.close()
    want = estimate(spec, custom_gpu(16), ServingConfig(
        pipeline_parallel_size=2, max_model_len=MAX_LEN, kv_cache_memory_bytes=GIB, block_size=CPU_BLOCK_SIZE,
        async_scheduling=False))
    assert int(blocks.group(1)) == want.num_blocks, f"vLLM allocated {blocks.group(1)} blocks per stage, " \
        f"kvscale predicts {want.num_blocks}"
