"""KV-cache geometry as vLLM's hybrid allocator lays it out.

vLLM gives every layer a page per block, unifies page sizes across layer kinds, groups
layers so all groups share one block pool, and then reports capacity as
``int(num_blocks / blocks_per_request * max_model_len)``: the number of tokens it could
hold if every request were max_model_len long. Sliding-window layers hold only
``window - 1 + in-flight tokens`` per request and Mamba/linear-attention layers one fixed
state, so they cost fewer blocks per request than full attention.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from math import prod

from .model_spec import Mixer, ModelSpec

DTYPE_BYTES = {
    "auto": None, "bfloat16": 2, "bf16": 2, "float16": 2, "fp16": 2, "half": 2, "float32": 4,
    "fp8": 1, "fp8_e4m3": 1, "fp8_e5m2": 1, "fp8_inc": 1,
}


class KVCacheDtype(StrEnum):
    """What vLLM's --kv-cache-dtype takes that the estimator sizes (vLLM 0.32 vllm/config/cache.py
    CacheDType, less the MLA- and quantizer-specific formats)."""

    AUTO = "auto"
    BFLOAT16 = "bfloat16"
    FLOAT16 = "float16"
    FP8 = "fp8"
    FP8_E4M3 = "fp8_e4m3"
    FP8_E5M2 = "fp8_e5m2"


KV_CACHE_DTYPES = tuple(d.value for d in KVCacheDtype)


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def model_dtype_bytes(spec: ModelSpec) -> int:
    return 4 if spec.dtype in ("float32", "fp32") else 2


def kv_dtype_bytes(spec: ModelSpec, kv_cache_dtype: str) -> int:
    b = DTYPE_BYTES.get(kv_cache_dtype)
    return model_dtype_bytes(spec) if b is None else b


@dataclass(frozen=True)
class LayerPage:
    """One layer's cache spec on one GPU: bytes per token (attention) or per state (SSM)."""

    kind: Mixer
    bytes_per_token: int = 0  # attention kinds
    state_bytes: int = 0  # Mamba / linear attention: per sequence, whatever its length
    window: int | None = None
    # blocks a sequence pins with prefix caching on (vLLM's "align" mode keeps the running state,
    # the last block boundary's state and, for Mamba-2 mixers, one prefill checkpoint)
    state_blocks_cached: int = 1

    def page(self, block_size: int) -> int:
        return self.state_bytes if self.state_bytes else self.bytes_per_token * block_size


def layer_pages(spec: ModelSpec, tp: int, kv_cache_dtype: str, layers: range | None = None,
                ssm_cache_dtype: str = "auto") -> list[LayerPage]:
    """Per-GPU cache spec of each layer (of one pipeline stage when ``layers`` is given)."""
    kvb = kv_dtype_bytes(spec, kv_cache_dtype)
    sb = model_dtype_bytes(spec)
    ssm_state_bytes = DTYPE_BYTES.get(ssm_cache_dtype) or sb
    kv_heads = max(1, spec.num_kv_heads // tp)  # replicated once kv_heads < tp
    attn = 2 * kv_heads * spec.head_dim * kvb
    out: list[LayerPage] = []
    for i in layers if layers is not None else range(spec.num_layers):
        kind = spec.mixers[i]
        if kind is Mixer.FULL:
            out.append(LayerPage(kind, bytes_per_token=attn))
        elif kind is Mixer.SLIDING:
            out.append(LayerPage(kind, bytes_per_token=attn, window=spec.sliding_window))
        elif kind is Mixer.MLA:
            assert spec.mla is not None  # latent + rope key, one "head", replicated over TP
            out.append(LayerPage(kind, bytes_per_token=(spec.mla.kv_lora_rank + spec.mla.qk_rope_head_dim) * kvb))
        elif kind is Mixer.MAMBA:
            assert spec.mamba is not None
            m = spec.mamba
            if m.head_dim == 1:  # Mamba-1
                conv = cdiv(m.inner, tp) * (m.conv_kernel - 1)
                ssm = cdiv(m.inner, tp) * m.state_size
            else:
                groups = m.n_groups + (0 if m.n_groups % tp == 0 else tp - m.n_groups)
                conv = (m.inner + 2 * groups * m.state_size) // tp * (m.conv_kernel - 1)
                ssm = prod((m.num_heads // tp, m.head_dim, m.state_size))
            # vLLM keeps NemotronH SSM state in fp32 unless told otherwise
            ssm_bytes = ssm_state_bytes if ssm_cache_dtype != "auto" else (
                4 if spec.model_type.startswith("nemotron") else sb)
            out.append(LayerPage(kind, state_bytes=conv * sb + ssm * ssm_bytes,
                                 state_blocks_cached=2 if m.head_dim == 1 else 3))
        elif kind is Mixer.LINEAR:
            assert spec.linear is not None
            la = spec.linear
            conv_dim = 2 * la.num_key_heads * la.key_head_dim + la.num_value_heads * la.value_head_dim
            conv = conv_dim // tp * (la.conv_kernel - 1)
            state = (la.num_value_heads // tp) * la.value_head_dim * la.key_head_dim
            state_b = ssm_state_bytes if ssm_cache_dtype != "auto" else sb
            out.append(LayerPage(kind, state_bytes=conv * sb + state * state_b, state_blocks_cached=2))
    return out


@dataclass(frozen=True)
class KVLayout:
    block_size: int  # attention block size after hybrid alignment
    bytes_per_block: int  # one block id across all groups
    blocks_per_request: int  # at max_model_len, summed over groups
    num_groups: int
    full_bytes_per_token: int  # naive: every attention layer at every token


def _group_size(counts: list[int]) -> int:
    lo, hi = min(counts), max(counts)
    return hi if hi < 1.5 * lo else lo


def kv_layout(pages: list[LayerPage], block_size: int, max_model_len: int, max_in_flight_tokens: int,
              kernel_alignment: int = 16, prefix_caching: bool = True) -> KVLayout:
    """Mirror vLLM's grouping (one pool, equal page sizes) for one worker's layers."""
    attn = [p for p in pages if not p.state_bytes]
    states = [p for p in pages if p.state_bytes]
    naive = sum(p.bytes_per_token for p in attn)
    if states and attn:
        # attention block grows until its page holds the largest state; states pad up to it
        per_tok = max(p.bytes_per_token for p in attn)
        align = max(kernel_alignment, block_size)
        block_size = max(block_size, align * cdiv(max(p.state_bytes for p in states), align * per_tok))
    state_blocks = {p.kind: (p.state_blocks_cached if prefix_caching else 1) for p in states}
    if not attn:
        page = max(p.state_bytes for p in states)
        per_req = sum(state_blocks[p.kind] for p in states)
        return KVLayout(block_size, page * len(states), per_req, len(states), 0)

    # bucket identical specs; block size per bucket after page unification
    buckets: dict[tuple[Mixer, int, int | None], int] = {}
    for p in pages:
        key = (p.kind, p.bytes_per_token or p.state_bytes, p.window)
        buckets[key] = buckets.get(key, 0) + 1
    max_page = max(p.page(block_size) for p in pages)
    bucket_block: dict[tuple[Mixer, int, int | None], int] = {}
    for key in buckets:
        kind, size, _ = key
        if kind in state_blocks:
            bucket_block[key] = block_size
            continue
        page = size * block_size
        bucket_block[key] = block_size * (max_page // page) if max_page % page == 0 else block_size

    if len(buckets) == 1:
        (key,) = buckets
        kind, size, window = key
        per_req = _blocks_per_request(kind, window, bucket_block[key], max_model_len, max_in_flight_tokens)
        return KVLayout(bucket_block[key], size * bucket_block[key] * buckets[key], per_req, 1, naive)
    if all(k[0] in (Mixer.FULL, Mixer.MLA) for k in buckets):
        # one uniform-type group: page is the sum over layers
        bpb = sum(size * block_size * n for (_, size, _), n in buckets.items())
        return KVLayout(block_size, bpb, cdiv(max_model_len, block_size), 1, naive)

    gsize = _group_size(list(buckets.values()))
    per_req = 0
    groups = 0
    for key, n in buckets.items():
        kind, _, window = key
        k = cdiv(n, gsize)
        groups += k
        if kind in state_blocks:
            per_req += k * state_blocks[kind]
        else:
            per_req += k * _blocks_per_request(kind, window, bucket_block[key], max_model_len, max_in_flight_tokens)
    return KVLayout(block_size, gsize * max_page, per_req, groups, naive)


def _blocks_per_request(kind: Mixer, window: int | None, block_size: int, max_model_len: int,
                        in_flight: int) -> int:
    if kind is Mixer.SLIDING and window:
        return cdiv(min(window - 1 + in_flight, max_model_len), block_size) + 1
    return cdiv(max_model_len, block_size)


@dataclass(frozen=True)
class KVCapacity:
    num_blocks: int
    tokens: int  # what vLLM prints as "KV cache size: N tokens"
    max_concurrency: float  # "Maximum concurrency for max_model_len tokens per request"


def kv_capacity(layout: KVLayout, kv_bytes: int, max_model_len: int,
                num_blocks_override: int | None = None) -> KVCapacity:
    num_blocks = num_blocks_override if num_blocks_override is not None else max(0, kv_bytes // layout.bytes_per_block)
    conc = num_blocks / layout.blocks_per_request if layout.blocks_per_request else 0.0
    return KVCapacity(num_blocks=num_blocks, tokens=int(conc * max_model_len), max_concurrency=conc)


def bytes_per_token_at(layout: KVLayout, max_model_len: int) -> float:
    """Average cache bytes one token of a max_model_len request occupies (for planning)."""
    return layout.bytes_per_block * layout.blocks_per_request / max(1, max_model_len)

