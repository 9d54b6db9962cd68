"""Bytes autograd keeps for backward in the Hugging Face implementations, per token (pure).

Counted op by op as PyTorch saves them, and checked against real training steps
(``tests/e2e/test_training_memory_live.py``):

* RMSNorm keeps its fp32 input and the per-token rsqrt, and its 16-bit output when its weight is trained.
* A Linear keeps its input only when its weight is trained; the Linears that read one normalized input
  share what they keep of it. A LoRA adapter (PEFT, fp32 adapters) keeps an fp32 copy of its input and
  its rank-r intermediate.
* Flash-style attention (SDPA) keeps q, k, v, its output and a fp32 log-sum-exp per head; eager attention
  keeps q, k and v repeated to every head, the fp32 softmax and its 16-bit copy (seq² per head) and a
  contiguous copy of its output.
* SwiGLU keeps gate, up, the activation and the product; a routed expert also keeps the tokens it
  gathered and its output, per (token, expert) pair.
* The loss keeps fp32 log-probabilities over the vocabulary.
* Under ``torch.autocast`` over fp32 weights the residual stream is fp32 (norms keep fp32 outputs), every
  Linear keeps its own 16-bit copy of its input, and the 16-bit copy of every weight is kept until backward.
"""

from __future__ import annotations

from dataclasses import dataclass

from .model_spec import FFN, ModelSpec
from .training_params import layer_matrices

FP32, BF16, INT64 = 4, 2, 8
#: per routed (token, expert) pair, besides the expert MLP: the token and slot indices (int64) and the
#: routing weight it is scaled by (Transformers' expert loop; 28 bytes on Mixtral and on DeepSeek-V3)
EXPERT_PAIR_BYTES = 28
#: a router's small tensors per token and routed expert: top-k value and index, and their share of the sum
ROUTER_BYTES_PER_K = 12


@dataclass(frozen=True)
class Regime:
    """What decides what autograd keeps."""

    autocast: bool = False  # torch.autocast over fp32 weights (AMP); else the modules compute in 16 bits
    base_trained: bool = True  # False: LoRA / QLoRA, the base weights and norms frozen
    lora_rank: int = 0
    lora_targets: tuple[str, ...] = ()
    eager_attention: bool = False
    tensor_parallel: int = 1
    sequence_parallel: bool = False


def _norm(dim: int, r: Regime) -> int:
    kept_out = (FP32 if r.autocast else BF16) * dim if r.base_trained else 0
    return FP32 * dim + FP32 + kept_out


def _inputs(r: Regime, inputs: dict[str, int], shared: bool = True) -> int:
    """What the Linears named in ``inputs`` (name -> in features) keep of their inputs. ``shared``: they
    read one 16-bit tensor (a norm's output), kept once."""
    if not r.base_trained:
        return sum(FP32 * n + FP32 * r.lora_rank for name, n in inputs.items() if name in r.lora_targets)
    if r.autocast and shared:  # each casts its own copy of the fp32 input
        return sum(BF16 * n for n in inputs.values())
    return BF16 * max(inputs.values())


def _mlp(h: int, inter: int, r: Regime, first: bool = True) -> float:
    """SwiGLU. ``first``: its gate and up are the first Linears to read the block's normalized input."""
    out = 3 * BF16 * inter  # gate output, activation, up
    out += _inputs(r, {"gate_proj": h, "up_proj": h}) if first or not r.base_trained else 0
    out += _inputs(r, {"down_proj": inter}, shared=False)  # the product (its own 16-bit tensor)
    return out


def _attention(spec: ModelSpec, seq: int, r: Regime) -> float:
    h, d, nq, nkv = spec.hidden_size, spec.head_dim, spec.num_attention_heads, spec.num_kv_heads
    out = float(_inputs(r, {"q_proj": h, "k_proj": h, "v_proj": h}))
    if r.eager_attention:
        kv = max(nq, nkv)
        out += BF16 * d * (nq + 2 * kv) + (FP32 + BF16) * nq * seq
        out += _inputs(r, {"o_proj": nq * d}, shared=False)  # the contiguous output copy
    else:
        out += BF16 * d * (2 * nq + 2 * nkv) + FP32 * nq
        if not r.base_trained:  # SDPA's output is o_proj's input: an adapter keeps its own fp32 copy
            out += _inputs(r, {"o_proj": nq * d}, shared=False)
    return out


def _mla(spec: ModelSpec, seq: int, r: Regime) -> float:
    m, h, n = spec.mla, spec.hidden_size, spec.num_attention_heads
    assert m is not None
    qk = m.qk_nope_head_dim + m.qk_rope_head_dim
    first = {"kv_a_proj_with_mqa": h, **({"q_a_proj": h} if m.q_lora_rank else {"q_proj": h})}
    out = float(_inputs(r, first))
    if m.q_lora_rank:
        out += _norm(m.q_lora_rank, r) + _inputs(r, {"q_b_proj": m.q_lora_rank})
    out += _norm(m.kv_lora_rank, r) + _inputs(r, {"kv_b_proj": m.kv_lora_rank})
    out += BF16 * n * (2 * qk + m.v_head_dim)  # q and k (nope and rope joined), v
    if r.eager_attention:
        out += (FP32 + BF16) * n * seq + _inputs(r, {"o_proj": n * m.v_head_dim}, shared=False)
    else:
        out += BF16 * n * m.v_head_dim + FP32 * n
        if not r.base_trained:
            out += _inputs(r, {"o_proj": n * m.v_head_dim}, shared=False)
    return out


def _moe(spec: ModelSpec, r: Regime) -> float:
    moe, h = spec.moe, spec.hidden_size
    assert moe is not None
    k, i_e = moe.experts_per_token, moe.expert_intermediate_size
    out = float(FP32 * moe.num_experts + ROUTER_BYTES_PER_K * k)
    # DeepSeek routes an fp32 copy of the input; Mixtral-style routers are the block's first Linear
    if r.base_trained:
        out += FP32 * h if spec.model_type.startswith("deepseek") else _inputs(r, {"router": h})
    # each pair: gate+up (one tensor), the activation, the expert's output; with trained experts also the
    # gathered tokens and the product (the inputs of their Linears)
    pair = BF16 * h + 3 * BF16 * i_e + EXPERT_PAIR_BYTES
    if r.base_trained:
        pair += BF16 * h + BF16 * i_e
    out += k * pair
    if moe.shared_experts:
        router_first = not spec.model_type.startswith("deepseek")
        out += _mlp(h, moe.shared_expert_intermediate_size * moe.shared_experts, r, first=not router_first)
    return out


def _replicated_inputs(spec: ModelSpec, layer: int, r: Regime) -> float:
    """What the column-parallel Linears keep of their inputs (part of the totals above): the whole
    normalized input on every tensor-parallel rank, split only with sequence parallelism."""
    h = spec.hidden_size
    if spec.mla is not None:
        m = spec.mla
        assert m is not None
        out = float(_inputs(r, {"kv_a_proj_with_mqa": h, **({"q_a_proj": h} if m.q_lora_rank else {"q_proj": h})}))
    else:
        out = float(_inputs(r, {"q_proj": h, "k_proj": h, "v_proj": h}))
    if spec.ffns[layer] is FFN.DENSE:
        out += _inputs(r, {"gate_proj": h, "up_proj": h})
    elif spec.ffns[layer] is FFN.MOE and r.base_trained:
        out += FP32 * h if spec.model_type.startswith("deepseek") else _inputs(r, {"router": h})
    return out


def layer_bytes_per_token(spec: ModelSpec, layer: int, seq: int, r: Regime) -> float:
    """What decoder layer ``layer`` keeps per token of a ``seq``-token sequence, on one GPU. Tensor
    parallelism splits heads and the MLP's inner dimension; norms, the residual stream and the
    column-parallel Linears' inputs are split only with sequence parallelism (Korthikanti et al. 2022)."""
    h, t = spec.hidden_size, r.tensor_parallel
    sp = t if r.sequence_parallel else 1
    blocks = _mla(spec, seq, r) if spec.mla is not None else _attention(spec, seq, r)
    if spec.ffns[layer] is FFN.MOE:
        blocks += _moe(spec, r)
    elif spec.ffns[layer] is FFN.DENSE:
        blocks += _mlp(h, spec.intermediate_size, r)
    replicated = _replicated_inputs(spec, layer, r)
    return 2 * _norm(h, r) / sp + replicated / sp + (blocks - replicated) / t


def layer_input_bytes_per_token(spec: ModelSpec, r: Regime) -> float:
    """A layer's input, what full activation checkpointing keeps of each layer (fp32 under autocast)."""
    sp = r.tensor_parallel if r.sequence_parallel else 1
    return (FP32 if r.autocast else BF16) * spec.hidden_size / sp


def model_bytes_per_token(spec: ModelSpec, r: Regime) -> float:
    """Outside the layers: token ids, the final norm, the LM head's input, the loss's fp32 log-probs
    (vocabulary-parallel under TP) and its targets."""
    head_in = BF16 * spec.hidden_size if r.base_trained else 0
    sp = r.tensor_parallel if r.sequence_parallel else 1
    return INT64 + (_norm(spec.hidden_size, r) + head_in) / sp + FP32 * spec.vocab_size / r.tensor_parallel + INT64


def rotary_bytes(spec: ModelSpec, seq: int, r: Regime) -> int:
    """cos and sin, one per position, shared by every layer and sequence of the batch."""
    rot = spec.mla.qk_rope_head_dim // 2 if spec.mla is not None else spec.head_dim
    return 2 * seq * rot * (FP32 if r.autocast else BF16)


def autocast_weight_copies(spec: ModelSpec, r: Regime) -> int:
    """Under autocast, the 16-bit copy of every Linear weight (LM head included), kept until backward."""
    if not r.autocast:
        return 0
    linear = sum(m.params for layer in range(spec.num_layers) for m in layer_matrices(spec, layer))
    head = spec.vocab_size * spec.hidden_size
    return BF16 * (linear + head) // r.tensor_parallel
