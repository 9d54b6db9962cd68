"""KV geometry against vLLM's own arithmetic (page sizes, grouping, per-request blocks)."""

import pytest

from kvscale.estimator.catalog import resolve_model
from kvscale.estimator.gpus import GIB
from kvscale.estimator.kv_cache import LayerPage, kv_capacity, kv_layout, layer_pages
from kvscale.estimator.model_spec import Mixer


def per_token(model: str, tp: int = 1, dtype: str = "auto") -> int:
    return sum(p.bytes_per_token for p in layer_pages(resolve_model(model), tp, dtype))


def test_llama_8b_gqa_bytes_per_token() -> None:
    # 32 layers x (K+V) x 8 kv heads x 128 dims x 2 bytes
    assert per_token("meta-llama/Llama-3.1-8B-Instruct") == 32 * 2 * 8 * 128 * 2 == 131072


def test_kv_heads_shard_until_tp_exceeds_them() -> None:
    model = "meta-llama/Llama-3.1-70B-Instruct"  # 8 kv heads
    assert per_token(model, 2) == per_token(model) // 2
    assert per_token(model, 8) == per_token(model) // 8
    assert per_token(model, 16) == per_token(model, 8)  # replicated beyond 8


def test_fp8_kv_halves_bytes() -> None:
    assert per_token("Qwen/Qwen2.5-7B-Instruct", dtype="fp8") * 2 == per_token("Qwen/Qwen2.5-7B-Instruct")


def test_mla_latent_is_replicated_across_tp() -> None:
    # 61 layers x (kv_lora_rank 512 + rope 64) x 2 bytes, whatever the TP degree
    assert per_token("deepseek-ai/DeepSeek-V3") == 61 * 576 * 2
    assert per_token("deepseek-ai/DeepSeek-V3", 8) == 61 * 576 * 2


def _alternating(window: int) -> list[LayerPage]:
    bpt = 2 * 4 * 256 * 2  # 4 kv heads, head_dim 256, bf16
    sliding = LayerPage(Mixer.SLIDING, bytes_per_token=bpt, window=window)
    return [sliding, LayerPage(Mixer.FULL, bytes_per_token=bpt)] * 2


@pytest.mark.parametrize(("max_len", "tokens"), [(8192, 65472), (32768, 104816)])
def test_hybrid_allocator_worked_example(max_len: int, tokens: int) -> None:
    """4 layers alternating window-4096 / full, 1 GiB, block 16, 2048 batched tokens, async scheduling:
    two groups of two layers share one pool of 8192 blocks; a request needs 513 (window) + L/16 blocks."""
    layout = kv_layout(_alternating(4096), block_size=16, max_model_len=max_len, max_in_flight_tokens=2 * 2048)
    cap = kv_capacity(layout, GIB, max_len)
    assert cap.num_blocks == 8192
    assert layout.num_groups == 2
    assert cap.tokens == tokens


def test_full_attention_capacity_is_blocks_times_block_size() -> None:
    pages = [LayerPage(Mixer.FULL, bytes_per_token=2 * 2 * 64 * 2)] * 4
    layout = kv_layout(pages, block_size=128, max_model_len=2048, max_in_flight_tokens=2048)
    cap = kv_capacity(layout, GIB, 2048)
    assert cap.tokens == 524288 and cap.max_concurrency == 256.0


def test_mamba_state_does_not_grow_with_context() -> None:
    spec = resolve_model("nvidia/Nemotron-H-8B-Base-8K")
    pages = layer_pages(spec, 1, "auto")
    states = [p for p in pages if p.state_bytes]
    assert states and all(p.kind is Mixer.MAMBA for p in states)
    short = kv_layout(pages, 16, 1024, 4096)
    long = kv_layout(pages, 16, 8192, 4096)
    assert short.bytes_per_block == long.bytes_per_block
    # attention page grows until one block holds a whole SSM state (vLLM's hybrid alignment)
    attn_per_token = max(p.bytes_per_token for p in pages if not p.state_bytes)
    assert long.block_size * attn_per_token >= max(p.state_bytes for p in states)
    # a request's state blocks are fixed; only attention blocks scale with length
    assert long.blocks_per_request > short.blocks_per_request
    only_states = kv_layout(states, 16, 8192, 4096)
    assert only_states.blocks_per_request == kv_layout(states, 16, 1024, 4096).blocks_per_request


def test_sliding_window_costs_less_than_full_attention_at_long_context() -> None:
    gemma = resolve_model("google/gemma-3-1b-it")  # window 512, 5 of 6 layers sliding
    pages = layer_pages(gemma, 1, "auto")
    full = [LayerPage(Mixer.FULL, bytes_per_token=p.bytes_per_token) for p in pages]
    sw = kv_capacity(kv_layout(pages, 16, 32768, 4096), 10 * GIB, 32768).tokens
    naive = kv_capacity(kv_layout(full, 16, 32768, 4096), 10 * GIB, 32768).tokens
    assert sw > 3 * naive


def test_sliding_window_saves_nothing_when_in_flight_tokens_cover_the_context() -> None:
    # Gemma 2 at 8192 tokens: window 4096 - 1 + 4096 in flight >= 8192, so vLLM reserves the full length
    gemma = resolve_model("google/gemma-2-9b-it")
    pages = layer_pages(gemma, 1, "auto")
    full = [LayerPage(Mixer.FULL, bytes_per_token=p.bytes_per_token) for p in pages]
    sw = kv_capacity(kv_layout(pages, 16, 8192, 4096), 10 * GIB, 8192)
    naive = kv_capacity(kv_layout(full, 16, 8192, 4096), 10 * GIB, 8192)
    assert sw.tokens == pytest.approx(naive.tokens, rel=0.01)
