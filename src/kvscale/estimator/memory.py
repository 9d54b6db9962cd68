"""vLLM's start-up memory accounting for one replica, per GPU.

    KV budget = ceil(utilization x total) - weights - activation peak - non-torch - CUDA graphs

then whole blocks of the KV layout (see ``kv_cache``). The overhead terms are what vLLM's
profiling run measures; here they are modelled from the architecture and batch limits
and calibrated on published start-up logs (``bench/estimator_accuracy.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .errors import EstimatorError, InvalidParallelism
from .gpus import GIB, GPUType
from .kv_cache import KV_CACHE_DTYPES, KVLayout, LayerPage, cdiv, kv_capacity, kv_layout, layer_pages, model_dtype_bytes
from .model_spec import FFN, Mixer, ModelSpec
from .params import ParamBreakdown, count_params
from .quantization import Quantization, weight_format
from .vllm_profiles import DEFAULT_PROFILE, VLLM_RELEASE, VLLMProfile, profile_for, release_line

DEFAULT_GPU_MEMORY_UTILIZATION = DEFAULT_PROFILE.gpu_memory_utilization  # vLLM 0.32: 0.92 (vllm/config/cache.py)
DEFAULT_BLOCK_SIZE = 16
CPU_BLOCK_SIZE = 128  # vLLM's CPU backend default block size (vllm/platforms/cpu.py)
VOCAB_PADDING = 64


class ServingConfig(BaseModel):
    """The vLLM engine arguments that change memory use."""

    model_config = ConfigDict(frozen=True)

    tensor_parallel_size: int = Field(default=1, ge=1, le=64)
    pipeline_parallel_size: int = Field(default=1, ge=1, le=64)
    quantization: Quantization = Quantization.AUTO
    kv_cache_dtype: str = "auto"
    max_model_len: int | None = Field(default=None, gt=0)
    gpu_memory_utilization: float = Field(default=DEFAULT_GPU_MEMORY_UTILIZATION, gt=0, le=1)
    max_num_batched_tokens: int | None = Field(default=None, gt=0)
    max_num_seqs: int | None = Field(default=None, gt=0)
    block_size: int = Field(default=DEFAULT_BLOCK_SIZE, gt=0)
    enforce_eager: bool = False
    async_scheduling: bool | None = None  # None: the default of vllm_release's line
    kv_cache_memory_bytes: int | None = Field(default=None, gt=0)  # fixed KV space (CPU backend)
    num_gpu_blocks_override: int | None = Field(default=None, gt=0)
    enable_prefix_caching: bool = True  # vLLM's default; hybrid models then pin extra state blocks
    ssm_cache_dtype: str = "auto"  # Mamba/linear-attention state dtype ("float32" on vLLM's CPU backend)
    vllm_release: str = VLLM_RELEASE  # whose start-up overheads apply (vllm_profiles)
    # per GPU, memory the model does not account for, measured (a failed start, a live replica's KV blocks):
    # positive where the estimate was optimistic, negative where vLLM found more KV memory than predicted
    unaccounted_bytes: int = 0

    @model_validator(mode="after")
    def _check(self) -> ServingConfig:
        if self.kv_cache_dtype not in KV_CACHE_DTYPES:
            raise ValueError(f"kv_cache_dtype must be one of {', '.join(KV_CACHE_DTYPES)}, "
                             f"got {self.kv_cache_dtype!r}")
        release_line(self.vllm_release)
        return self


@dataclass(frozen=True)
class KVRead:
    """The cache one sequence's step reads, by layer kind (one stage, one GPU)."""

    per_token: float = 0.0  # full-attention and MLA layers: bytes per token of context
    windowed: tuple[tuple[float, int], ...] = ()  # (bytes per token, window) of sliding-window layers
    per_sequence: float = 0.0  # state-space and linear-attention layers: their state, whatever the context

    def bytes(self, context_tokens: float, seqs: float) -> float:
        """Bytes read for ``seqs`` sequences holding ``context_tokens`` tokens between them."""
        window = sum(b * min(context_tokens, seqs * w) for b, w in self.windowed)
        return context_tokens * self.per_token + window + seqs * self.per_sequence


def kv_read(pages: list[LayerPage]) -> KVRead:
    windows: dict[int, float] = {}
    full = state = 0.0
    for p in pages:
        if p.state_bytes:
            state += p.state_bytes
        elif p.window:
            windows[p.window] = windows.get(p.window, 0.0) + p.bytes_per_token
        else:
            full += p.bytes_per_token
    return KVRead(per_token=full, windowed=tuple(sorted((b, w) for w, b in windows.items())), per_sequence=state)


class MemoryEstimate(BaseModel):
    """What vLLM reports at start-up, per GPU, plus whether the target fits."""

    model_config = ConfigDict(frozen=True)

    gpu_memory_bytes: int
    requested_bytes: int
    weights_bytes: int
    activation_bytes: int
    non_torch_bytes: int
    cuda_graph_bytes: int
    kv_cache_bytes: int  # "Available KV cache memory" (negative: does not fit)
    num_blocks: int
    block_size: int
    block_bytes: int  # one block of every KV cache group on this GPU: KV memory per block
    kv_cache_tokens: int
    max_concurrency: float
    max_model_len: int
    # what one decode step reads per sequence on the busiest stage's GPU (attention reads its whole context,
    # a sliding-window layer at most its window, a state-space layer its state): for the performance model
    kv_read: KVRead = Field(default_factory=KVRead)
    kv_groups: int  # KV cache groups of the hybrid allocator (1 for uniform models)
    max_num_batched_tokens: int
    max_num_seqs: int
    total_params: int
    fits: bool
    reason: str

    @property
    def weights_gib(self) -> float:
        return self.weights_bytes / GIB

    @property
    def kv_cache_gib(self) -> float:
        return self.kv_cache_bytes / GIB


def default_batch_limits(gpu_memory_bytes: int, gpu_name: str, server: bool = True) -> tuple[int, int]:
    """vLLM's defaults for (max_num_batched_tokens, max_num_seqs) by device memory."""
    gib = gpu_memory_bytes / GIB
    if gib >= 160:
        return 16384, 1024
    if gib >= 70 and not gpu_name.upper().startswith("A100"):
        return (8192 if server else 16384), 1024
    return (2048 if server else 8192), 256


def check_parallelism(spec: ModelSpec, tp: int, pp: int) -> None:
    """vLLM shards attention heads (and SSM heads) evenly; layers split across stages."""
    if spec.num_attention_heads % tp:
        raise InvalidParallelism(
            f"tensor_parallel_size {tp} does not divide num_attention_heads {spec.num_attention_heads} "
            f"of {spec.name}")
    if spec.num_kv_heads >= tp and spec.num_kv_heads % tp:
        raise InvalidParallelism(
            f"tensor_parallel_size {tp} does not divide num_key_value_heads {spec.num_kv_heads} of {spec.name}")
    if spec.num_kv_heads < tp and tp % spec.num_kv_heads:
        raise InvalidParallelism(
            f"tensor_parallel_size {tp} is not a multiple of num_key_value_heads {spec.num_kv_heads} "
            f"of {spec.name}")
    if spec.mamba is not None and spec.mamba.head_dim > 1 and spec.mamba.num_heads % tp:
        raise InvalidParallelism(f"tensor_parallel_size {tp} does not divide mamba_num_heads {spec.mamba.num_heads}")
    if spec.linear is not None and spec.linear.num_value_heads % tp:
        raise InvalidParallelism(
            f"tensor_parallel_size {tp} does not divide linear_num_value_heads {spec.linear.num_value_heads}")
    if pp > spec.num_layers:
        raise InvalidParallelism(f"pipeline_parallel_size {pp} exceeds num_hidden_layers {spec.num_layers}")


def pp_stages(num_layers: int, pp: int) -> list[range]:
    """vLLM's layer partition: even split, extra layers to the stages before the last."""
    sizes = [num_layers // pp] * pp
    for i in range(2, num_layers % pp + 2):
        sizes[-i] += 1
    out, start = [], 0
    for s in sizes:
        out.append(range(start, start + s))
        start += s
    return out


def weights_per_gpu(spec: ModelSpec, params: ParamBreakdown, quant: Quantization, tp: int, pp: int) -> int:
    """Bytes of weights on the busiest GPU of the replica."""
    fmt = weight_format(spec, quant)
    other = fmt.other_bytes
    vocab_pad = cdiv(spec.vocab_size, VOCAB_PADDING * tp) * VOCAB_PADDING * tp
    emb = vocab_pad * spec.hidden_size * other / tp
    head = 0.0 if spec.tie_word_embeddings else emb
    layer_bytes = fmt.weight_bytes(params) - (params.embedding + params.lm_head) * other
    # k/v projections replicate once there are fewer kv heads than ranks
    repl = 0.0
    if spec.num_kv_heads < tp:
        factor = tp / spec.num_kv_heads
        kv_params = 2 * spec.hidden_size * spec.num_kv_heads * spec.head_dim * spec.attention_layers
        repl = kv_params * (factor - 1) * (fmt.linear_bytes if not fmt.experts_only else other)
    per_layer = (layer_bytes + repl) / tp / max(1, len(spec.mixers))
    stages = pp_stages(spec.num_layers, pp)
    worst = 0.0
    for i, stage in enumerate(stages):
        b = per_layer * len(stage)
        if i == 0:
            b += emb
        if i == len(stages) - 1:
            b += head if pp > 1 or not spec.tie_word_embeddings else 0.0
        worst = max(worst, b)
    return int(worst)


def activation_peak(spec: ModelSpec, tp: int, tokens: int, seqs: int) -> int:
    """Torch peak above the weights during vLLM's profiling forward pass."""
    act = model_dtype_bytes(spec)
    h = spec.hidden_size
    if spec.moe is not None and FFN.MOE in spec.ffns:
        inter = spec.moe.expert_intermediate_size * spec.moe.experts_per_token
    else:
        inter = spec.intermediate_size
    inter_gpu = cdiv(inter, tp)
    per_token = (4 * h + 3 * inter_gpu) * act
    if spec.mla is None:
        qkv = (spec.num_attention_heads + 2 * max(1, spec.num_kv_heads)) * spec.head_dim // tp
        per_token = max(per_token, (4 * h + 2 * qkv) * act)
    logits = seqs * spec.vocab_size * 4  # fp32 logits, gathered to the full vocabulary on every rank
    return int(tokens * per_token + logits)


def estimate(spec: ModelSpec, gpu: GPUType, cfg: ServingConfig, params: ParamBreakdown | None = None,
             profile: VLLMProfile | None = None) -> MemoryEstimate:
    """``profile``: overheads other than those of ``cfg.vllm_release``'s line (fitting them)."""
    tp, pp = cfg.tensor_parallel_size, cfg.pipeline_parallel_size
    check_parallelism(spec, tp, pp)
    max_len = cfg.max_model_len or spec.max_position_embeddings
    if max_len > spec.max_position_embeddings:
        raise EstimatorError(
            f"max_model_len {max_len} exceeds the model's max_position_embeddings {spec.max_position_embeddings}")
    d_tokens, d_seqs = default_batch_limits(gpu.memory_bytes, gpu.name)
    seqs = cfg.max_num_seqs or d_seqs
    tokens = cfg.max_num_batched_tokens or d_tokens
    tokens = min(tokens, seqs * max_len)
    params = params or count_params(spec)
    weights = weights_per_gpu(spec, params, cfg.quantization, tp, pp)
    activation = activation_peak(spec, tp, tokens, min(tokens, seqs))
    profile = profile or profile_for(cfg.vllm_release)
    non_torch = profile.non_torch_base_bytes + (profile.nccl_bytes if tp * pp > 1 else 0)
    layers_per_stage = max(len(s) for s in pp_stages(spec.num_layers, pp))
    graphs = 0 if cfg.enforce_eager or not profile.graphs_in_kv_budget else \
        profile.cuda_graph_base_bytes + profile.cuda_graph_per_layer_bytes * layers_per_stage
    requested = math.ceil(gpu.memory_bytes * cfg.gpu_memory_utilization)
    if cfg.kv_cache_memory_bytes is not None:
        kv_bytes = cfg.kv_cache_memory_bytes
    else:
        kv_bytes = requested - weights - activation - non_torch - graphs - cfg.unaccounted_bytes

    # the busiest stage decides: vLLM takes the minimum block count over workers
    async_scheduling = profile.async_scheduling if cfg.async_scheduling is None else cfg.async_scheduling
    in_flight = (2 if async_scheduling and pp == 1 else pp) * tokens
    layout: KVLayout | None = None
    cap = None
    read = KVRead()
    for stage in pp_stages(spec.num_layers, pp):
        pages = layer_pages(spec, tp, cfg.kv_cache_dtype, stage, cfg.ssm_cache_dtype)
        if not pages or all(p.kind is Mixer.NONE for p in pages):
            continue
        lay = kv_layout(pages, cfg.block_size, max_len, in_flight, prefix_caching=cfg.enable_prefix_caching)
        c = kv_capacity(lay, kv_bytes, max_len, cfg.num_gpu_blocks_override)
        if cap is None or c.num_blocks < cap.num_blocks:
            cap, layout, read = c, lay, kv_read(pages)
    if cap is None or layout is None:
        raise EstimatorError(f"{spec.name} has no layer that keeps a KV cache or state")

    per_req_bytes = layout.bytes_per_block * layout.blocks_per_request
    fits = cap.num_blocks >= layout.blocks_per_request and kv_bytes > 0
    if kv_bytes <= 0:
        overheads = activation + non_torch + graphs + cfg.unaccounted_bytes
        need = weights + overheads + per_req_bytes
        measured = f" (of which {cfg.unaccounted_bytes / GIB:.2f} GiB measured, not modelled)" \
            if cfg.unaccounted_bytes else ""
        reason = (f"weights {weights / GIB:.2f} GiB + overheads {overheads / GIB:.2f} GiB{measured} "
                  f"per GPU exceed {cfg.gpu_memory_utilization:g} x {gpu.memory_gib:g} GiB = "
                  f"{requested / GIB:.2f} GiB; needs at least {need / GIB:.2f} GiB for one {max_len}-token request")
    elif not fits:
        reason = (f"KV cache {kv_bytes / GIB:.2f} GiB holds {cap.tokens:,} tokens, less than one "
                  f"{max_len:,}-token request ({per_req_bytes / GIB:.2f} GiB)")
    else:
        reason = f"fits: {cap.tokens:,} KV tokens, {cap.max_concurrency:.2f}x concurrency at {max_len:,} tokens"
    return MemoryEstimate(
        gpu_memory_bytes=gpu.memory_bytes, requested_bytes=requested, weights_bytes=weights,
        activation_bytes=activation, non_torch_bytes=non_torch, cuda_graph_bytes=graphs,
        kv_cache_bytes=kv_bytes, num_blocks=cap.num_blocks, block_size=layout.block_size,
        block_bytes=layout.bytes_per_block,
        kv_cache_tokens=cap.tokens, max_concurrency=cap.max_concurrency, max_model_len=max_len,
        kv_read=read, kv_groups=layout.num_groups,
        max_num_batched_tokens=tokens, max_num_seqs=seqs,
        total_params=params.total, fits=fits, reason=reason,
    )
