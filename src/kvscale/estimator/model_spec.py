"""A transformer's architecture, read from a Hugging Face ``config.json``.

Everything the memory model needs is derived here once, per layer, so the memory
and parameter maths never look at raw config keys again.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from .errors import InvalidConfig


class Mixer(StrEnum):
    """What a layer keeps per sequence."""

    FULL = "full_attention"
    SLIDING = "sliding_attention"
    MLA = "mla"
    MAMBA = "mamba"  # Mamba-2 SSM (Nemotron-H, Jamba uses Mamba-1: same state shape family)
    LINEAR = "linear_attention"  # gated delta-net (Qwen3-Next)
    NONE = "none"  # MLP-only layer of a hybrid pattern


class FFN(StrEnum):
    DENSE = "dense"
    MOE = "moe"
    NONE = "none"


class MoESpec(BaseModel):
    model_config = ConfigDict(frozen=True)
    num_experts: int = Field(gt=0)
    experts_per_token: int = Field(gt=0)
    expert_intermediate_size: int = Field(gt=0)
    shared_experts: int = Field(default=0, ge=0)
    shared_expert_intermediate_size: int = Field(default=0, ge=0)
    shared_expert_gate: bool = False
    expert_bias: bool = False  # gpt-oss experts carry biases


class MLASpec(BaseModel):
    model_config = ConfigDict(frozen=True)
    kv_lora_rank: int = Field(gt=0)
    qk_rope_head_dim: int = Field(gt=0)
    qk_nope_head_dim: int = Field(gt=0)
    v_head_dim: int = Field(gt=0)
    q_lora_rank: int | None = None


class MambaSpec(BaseModel):
    """Mamba-2 mixer geometry (state per sequence is fixed, whatever its length)."""

    model_config = ConfigDict(frozen=True)
    num_heads: int = Field(gt=0)
    head_dim: int = Field(gt=0)
    state_size: int = Field(gt=0)
    n_groups: int = Field(default=1, gt=0)
    conv_kernel: int = Field(default=4, gt=1)

    @property
    def inner(self) -> int:
        return self.num_heads * self.head_dim


class LinearAttentionSpec(BaseModel):
    """Gated delta-net geometry (Qwen3-Next)."""

    model_config = ConfigDict(frozen=True)
    num_key_heads: int = Field(gt=0)
    num_value_heads: int = Field(gt=0)
    key_head_dim: int = Field(gt=0)
    value_head_dim: int = Field(gt=0)
    conv_kernel: int = Field(default=4, gt=1)


class CheckpointQuantization(BaseModel):
    """The checkpoint's own ``quantization_config``, reduced to what sizes its weights."""

    model_config = ConfigDict(frozen=True)
    method: str
    bits: int | None = None
    group_size: int | None = None
    raw: dict[str, Any] = Field(default_factory=dict)


class ModelSpec(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    architecture: str
    model_type: str
    hidden_size: int = Field(gt=0)
    num_layers: int = Field(gt=0)
    num_attention_heads: int = Field(gt=0)
    num_kv_heads: int = Field(gt=0)
    head_dim: int = Field(gt=0)
    vocab_size: int = Field(gt=0)
    intermediate_size: int = Field(ge=0)
    tie_word_embeddings: bool = False
    max_position_embeddings: int = Field(gt=0)
    dtype: str = "bfloat16"
    attention_bias: bool = False
    qk_norm: bool = False
    gated_attention: bool = False  # Qwen3-Next full-attention layers emit a gate beside q
    sliding_window: int | None = None
    mixers: tuple[Mixer, ...]
    ffns: tuple[FFN, ...]
    moe: MoESpec | None = None
    mla: MLASpec | None = None
    mamba: MambaSpec | None = None
    linear: LinearAttentionSpec | None = None
    quantization: CheckpointQuantization | None = None
    mtp_layers: int = 0  # multi-token-prediction layers vLLM does not load by default
    vision_params: int = 0  # image encoder + projector of multimodal checkpoints (loaded, kept 16-bit)

    @property
    def attention_layers(self) -> int:
        return sum(m in (Mixer.FULL, Mixer.SLIDING, Mixer.MLA) for m in self.mixers)

    @property
    def is_hybrid(self) -> bool:
        return any(m in (Mixer.MAMBA, Mixer.LINEAR) for m in self.mixers)


def _text_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """Multimodal wrappers (Gemma 3, Mistral 3, Llama 4) nest the language model."""
    text = cfg.get("text_config")
    if isinstance(text, dict) and "num_hidden_layers" in text:
        merged = {k: v for k, v in cfg.items() if k != "text_config"}
        merged.update(text)
        merged.setdefault("quantization_config", cfg.get("quantization_config"))
        return merged
    return cfg


#: the deepest published decoder LLMs have under 200 layers (Llama-3.1-405B: 126, per its config.json);
#: a config far beyond that is a mistake, and the estimator's per-layer lists must stay small
MAX_LAYERS = 1024


def _req(cfg: dict[str, Any], *keys: str) -> int:
    for key in keys:
        value = cfg.get(key)
        if value is not None:
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise InvalidConfig(f"config field {key!r} must be a positive integer, got {value!r}")
            return value
    raise InvalidConfig(f"config.json lacks {' / '.join(repr(k) for k in keys)}")


def _int(cfg: dict[str, Any], key: str, default: int, minimum: int) -> int:
    """An optional integer field (a layer period, interval or offset): what it divides or compares with."""
    value = cfg.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise InvalidConfig(f"config field {key!r} must be an integer >= {minimum}, got {value!r}")
    return value


# Defaults transformers applies when a config omits a field (taken from the model classes).
_GEMMA3_TEXT_DEFAULTS = {"sliding_window_pattern": 6, "sliding_window": 4096, "head_dim": 256,
                         "num_attention_heads": 8, "num_key_value_heads": 4, "vocab_size": 262208,
                         "max_position_embeddings": 131072, "tie_word_embeddings": True}


def _layer_mixers(cfg: dict[str, Any], n: int, model_type: str) -> tuple[list[Mixer], int | None]:
    window = cfg.get("sliding_window")
    layer_types = cfg.get("layer_types")
    if isinstance(layer_types, list) and len(layer_types) == n:
        mapping = {"full_attention": Mixer.FULL, "sliding_attention": Mixer.SLIDING,
                   "linear_attention": Mixer.LINEAR, "mamba": Mixer.MAMBA, "attention": Mixer.FULL}
        try:
            mixers = [mapping[t] for t in layer_types]
        except KeyError as exc:
            raise InvalidConfig(f"config field 'layer_types' has unknown layer type {exc.args[0]!r}") from None
        return mixers, window if Mixer.SLIDING in mixers else None
    if "hybrid_override_pattern" in cfg:  # Nemotron-H: M = mamba, * = attention, - = MLP, E = MoE
        pattern = cfg["hybrid_override_pattern"]
        if len(pattern) != n:
            raise InvalidConfig(f"hybrid_override_pattern has {len(pattern)} entries for {n} layers")
        return [Mixer.MAMBA if c == "M" else Mixer.FULL if c == "*" else Mixer.NONE for c in pattern], None
    if "attn_layer_period" in cfg:  # Jamba
        period, offset = _int(cfg, "attn_layer_period", 1, 1), _int(cfg, "attn_layer_offset", 0, 0)
        return [Mixer.FULL if i % period == offset else Mixer.MAMBA for i in range(n)], None
    if "full_attention_interval" in cfg:  # Qwen3-Next without explicit layer_types
        k = _int(cfg, "full_attention_interval", 1, 1)
        return [Mixer.FULL if (i + 1) % k == 0 else Mixer.LINEAR for i in range(n)], None
    if model_type == "gemma2":
        return [Mixer.SLIDING if i % 2 == 0 else Mixer.FULL for i in range(n)], window
    if model_type in ("gemma3", "gemma3_text"):
        pattern = _int(cfg, "sliding_window_pattern", 6, 1) if cfg.get("sliding_window_pattern") is not None else 6
        return [Mixer.FULL if (i + 1) % pattern == 0 else Mixer.SLIDING for i in range(n)], window
    if model_type in ("qwen2", "qwen3", "qwen2_moe", "qwen3_moe"):
        if cfg.get("use_sliding_window") and window:
            first = cfg.get("max_window_layers", n)
            return [Mixer.SLIDING if i >= first else Mixer.FULL for i in range(n)], window
        return [Mixer.FULL] * n, None
    if window and model_type in ("mistral", "mixtral", "phi3", "starcoder2"):
        return [Mixer.SLIDING] * n, window
    return [Mixer.FULL] * n, None


def _moe(cfg: dict[str, Any], model_type: str) -> MoESpec | None:
    experts = cfg.get("num_local_experts") or cfg.get("n_routed_experts") or cfg.get("num_experts")
    if not experts:
        return None
    per_tok = cfg.get("num_experts_per_tok") or cfg.get("experts_per_token") or cfg.get("moe_topk") or 2
    inter = cfg.get("moe_intermediate_size") or cfg.get("intermediate_size")
    if not inter:
        raise InvalidConfig("MoE config lacks 'moe_intermediate_size' / 'intermediate_size'")
    shared = cfg.get("n_shared_experts") or 0
    shared_inter = cfg.get("shared_expert_intermediate_size") or 0
    return MoESpec(
        num_experts=experts, experts_per_token=per_tok, expert_intermediate_size=inter,
        shared_experts=shared if shared else (1 if shared_inter else 0),
        shared_expert_intermediate_size=shared_inter or (inter if shared else 0),
        shared_expert_gate=bool(shared_inter),
        expert_bias=model_type == "gpt_oss",
    )


def _ffns(cfg: dict[str, Any], n: int, moe: MoESpec | None, mixers: list[Mixer]) -> list[FFN]:
    if "hybrid_override_pattern" in cfg:
        return [FFN.DENSE if c == "-" else FFN.MOE if c == "E" else FFN.NONE
                for c in cfg["hybrid_override_pattern"]]
    if moe is None:
        return [FFN.DENSE] * n
    if "first_k_dense_replace" in cfg:  # DeepSeek
        k, freq = _int(cfg, "first_k_dense_replace", 0, 0), _int(cfg, "moe_layer_freq", 1, 1)
        return [FFN.MOE if i >= k and i % freq == 0 else FFN.DENSE for i in range(n)]
    if "expert_layer_period" in cfg:  # Jamba
        period, offset = _int(cfg, "expert_layer_period", 1, 1), _int(cfg, "expert_layer_offset", 0, 0)
        return [FFN.MOE if i % period == offset else FFN.DENSE for i in range(n)]
    mlp_only = set(cfg.get("mlp_only_layers") or [])
    step = _int(cfg, "decoder_sparse_step", 1, 0) or 1
    return [FFN.DENSE if i in mlp_only or (i + 1) % step != 0 else FFN.MOE for i in range(n)]


def _quantization(cfg: dict[str, Any]) -> CheckpointQuantization | None:
    q = cfg.get("quantization_config")
    if not isinstance(q, dict):
        return None
    method = str(q.get("quant_method", "")).lower()
    if not method:
        return None
    bits = q.get("bits") or q.get("w_bit")
    group = q.get("group_size") or q.get("q_group_size")
    if method == "compressed-tensors":
        groups: dict[str, Any] = q.get("config_groups") or {}
        first: dict[str, Any] = next(iter(groups.values()), {}) if groups else {}
        weights: dict[str, Any] = first.get("weights") or {}
        bits = weights.get("num_bits", bits)
        group = weights.get("group_size", group)
        wtype = weights.get("type", "int")
        method = "fp8" if wtype == "float" and bits == 8 else ("int8" if bits == 8 else "compressed-int4")
    if method == "modelopt":  # NVIDIA ModelOpt checkpoints (hf_quant_config.json)
        algo = str(q.get("quant_algo", "")).upper()
        method = "fp8" if "FP8" in algo else algo.lower() or method
        bits = 8 if method == "fp8" else bits
    if method == "bitsandbytes":
        bits = 4 if q.get("load_in_4bit") else 8
    return CheckpointQuantization(method=method, bits=bits, group_size=group, raw=q)


_SIGLIP_DEFAULTS = {"hidden_size": 1152, "intermediate_size": 4304, "num_hidden_layers": 27,
                    "patch_size": 14, "image_size": 896, "num_channels": 3}


def _vision_params(cfg: dict[str, Any], text_hidden: int) -> int:
    """ViT-style encoder size (Gemma 3 ships SigLIP-so400m; its config may omit the defaults)."""
    vision = cfg.get("vision_config")
    if not isinstance(vision, dict):
        if cfg.get("model_type") == "gemma3" and "text_config" in cfg:
            vision = {}
        else:
            return 0
    v = {**_SIGLIP_DEFAULTS, **{k: val for k, val in vision.items() if val is not None}}
    h, inter, n = v["hidden_size"], v["intermediate_size"], v["num_hidden_layers"]
    per_layer = 4 * h * h + 4 * h + 2 * h * inter + h + inter + 4 * h
    patches = (v["image_size"] // v["patch_size"]) ** 2
    embed = v["num_channels"] * v["patch_size"] ** 2 * h + h + patches * h
    projector = h * text_hidden + h
    return int(n * per_layer + embed + 2 * h + projector)


def from_hf_config(cfg: dict[str, Any], name: str = "custom") -> ModelSpec:
    """Build a ModelSpec from a parsed config.json (top level or nested text_config)."""
    if not isinstance(cfg, dict):
        raise InvalidConfig("config.json must hold a JSON object")
    raw = _text_config(cfg)
    model_type = str(raw.get("model_type", "")).lower()
    if model_type in ("gemma3", "gemma3_text"):
        raw = {**_GEMMA3_TEXT_DEFAULTS, **{k: v for k, v in raw.items() if v is not None}}
    archs = cfg.get("architectures") or raw.get("architectures") or [model_type or "unknown"]
    n = _req(raw, "num_hidden_layers", "n_layer", "num_layers")
    if n > MAX_LAYERS:  # per-layer lists are built below: a billion layers would exhaust memory first
        raise InvalidConfig(f"config field 'num_hidden_layers' is {n}; kvscale plans models of at most "
                            f"{MAX_LAYERS} layers")
    hidden = _req(raw, "hidden_size", "d_model", "n_embd")
    heads = _req(raw, "num_attention_heads", "n_head")
    kv_heads = raw.get("num_key_value_heads") or heads
    head_dim = raw.get("head_dim") or hidden // heads
    if hidden % heads and not raw.get("head_dim"):
        raise InvalidConfig(f"hidden_size {hidden} is not divisible by num_attention_heads {heads}")
    if heads % kv_heads:
        raise InvalidConfig(f"num_attention_heads {heads} is not a multiple of num_key_value_heads {kv_heads}")
    mixers, window = _layer_mixers(raw, n, model_type)
    mla = None
    if raw.get("kv_lora_rank"):
        mla = MLASpec(kv_lora_rank=raw["kv_lora_rank"], qk_rope_head_dim=raw["qk_rope_head_dim"],
                      qk_nope_head_dim=raw["qk_nope_head_dim"], v_head_dim=raw["v_head_dim"],
                      q_lora_rank=raw.get("q_lora_rank"))
        mixers = [Mixer.MLA if m == Mixer.FULL else m for m in mixers]
    mamba = None
    if Mixer.MAMBA in mixers:
        m_heads = raw.get("mamba_num_heads")
        if m_heads:
            mamba = MambaSpec(num_heads=m_heads, head_dim=raw["mamba_head_dim"],
                              state_size=raw.get("ssm_state_size", 128), n_groups=raw.get("n_groups", 1),
                              conv_kernel=raw.get("conv_kernel", 4))
        else:  # Jamba (Mamba-1): d_inner = expand * hidden, one "head" per channel, state mamba_d_state
            inner = raw.get("mamba_expand", 2) * hidden
            mamba = MambaSpec(num_heads=inner, head_dim=1, state_size=raw.get("mamba_d_state", 16),
                              n_groups=1, conv_kernel=raw.get("mamba_d_conv", 4))
    linear = None
    if Mixer.LINEAR in mixers:
        linear = LinearAttentionSpec(
            num_key_heads=raw["linear_num_key_heads"], num_value_heads=raw["linear_num_value_heads"],
            key_head_dim=raw["linear_key_head_dim"], value_head_dim=raw["linear_value_head_dim"],
            conv_kernel=raw.get("linear_conv_kernel_dim", 4))
    moe = _moe(raw, model_type)
    ffns = _ffns(raw, n, moe, mixers)
    if moe is None and FFN.MOE in ffns:
        raise InvalidConfig("hybrid_override_pattern has MoE layers but the config has no expert count")
    dtype = str(raw.get("torch_dtype") or raw.get("dtype") or "bfloat16").replace("torch.", "")
    max_pos = raw.get("max_position_embeddings") or raw.get("n_positions") or 4096
    rope = raw.get("rope_scaling") or {}
    original = rope.get("original_max_position_embeddings") if isinstance(rope, dict) else None
    if original and rope.get("factor") and rope.get("rope_type", rope.get("type")) == "yarn" and max_pos <= original:
        max_pos = int(original * rope["factor"])
    return ModelSpec(
        name=name, architecture=str(archs[0]), model_type=model_type, hidden_size=hidden, num_layers=n,
        num_attention_heads=heads, num_kv_heads=kv_heads, head_dim=head_dim,
        vocab_size=_req(raw, "vocab_size"), intermediate_size=raw.get("intermediate_size") or 0,
        tie_word_embeddings=bool(raw.get("tie_word_embeddings", model_type.startswith("gemma"))),
        max_position_embeddings=max_pos,
        dtype=dtype,
        attention_bias=bool(raw.get("attention_bias", model_type in ("qwen2", "qwen2_moe"))),
        qk_norm=model_type in ("qwen3", "qwen3_moe", "qwen3_next", "gemma3", "gemma3_text"),
        gated_attention=model_type == "qwen3_next",
        sliding_window=window, mixers=tuple(mixers), ffns=tuple(ffns), moe=moe, mla=mla,
        mamba=mamba, linear=linear, quantization=_quantization(raw),
        mtp_layers=int(raw.get("num_nextn_predict_layers") or 0),
        vision_params=_vision_params(cfg, hidden),
    )
