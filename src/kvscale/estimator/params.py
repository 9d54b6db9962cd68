"""Parameter counts computed from the architecture, split by how quantization treats them.

Quantization methods compress the large linear layers but keep embeddings, the LM head,
norms, biases and routers in 16 bits; MXFP4 (gpt-oss) compresses only expert weights.
Keeping the groups apart is what makes a 4-bit model land near a third of bf16, not a quarter.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from .model_spec import FFN, Mixer, ModelSpec


class ParamBreakdown(BaseModel):
    model_config = ConfigDict(frozen=True)

    embedding: int
    lm_head: int
    attention_linear: int  # q/k/v/o (or MLA / linear-attention / Mamba projections)
    dense_mlp_linear: int
    expert_linear: int  # routed experts (all of them: vLLM loads every expert)
    shared_expert_linear: int
    small: int  # norms, biases, routers, SSM vectors, convolutions: stay 16-bit
    vision: int = 0  # multimodal encoder: stays 16-bit

    @property
    def total(self) -> int:
        return (self.embedding + self.lm_head + self.attention_linear + self.dense_mlp_linear
                + self.expert_linear + self.shared_expert_linear + self.small + self.vision)

    @property
    def linear(self) -> int:
        return self.attention_linear + self.dense_mlp_linear + self.expert_linear + self.shared_expert_linear

    def active(self, spec: ModelSpec) -> int:
        """Parameters touched per token (MoE reads only the routed experts)."""
        if spec.moe is None or self.expert_linear == 0:
            return self.total
        routed = self.expert_linear * spec.moe.experts_per_token // spec.moe.num_experts
        return self.total - self.expert_linear + routed


def _attention(spec: ModelSpec) -> tuple[int, int]:
    h, d = spec.hidden_size, spec.head_dim
    q_out = spec.num_attention_heads * d * (2 if spec.gated_attention else 1)
    kv_out = spec.num_kv_heads * d
    linear = h * q_out + 2 * h * kv_out + spec.num_attention_heads * d * h
    small = 0
    if spec.attention_bias:
        small += q_out + 2 * kv_out
        if spec.model_type == "gpt_oss":
            small += h + spec.num_attention_heads  # o_proj bias and attention sinks
    if spec.qk_norm:
        small += 2 * d
    return linear, small


def _mla(spec: ModelSpec) -> tuple[int, int]:
    assert spec.mla is not None
    m, h, n = spec.mla, spec.hidden_size, spec.num_attention_heads
    qk = m.qk_nope_head_dim + m.qk_rope_head_dim
    if m.q_lora_rank:
        q = h * m.q_lora_rank + m.q_lora_rank * n * qk
        small = m.q_lora_rank
    else:
        q, small = h * n * qk, 0
    kv = h * (m.kv_lora_rank + m.qk_rope_head_dim) + m.kv_lora_rank * n * (m.qk_nope_head_dim + m.v_head_dim)
    o = n * m.v_head_dim * h
    return q + kv + o, small + m.kv_lora_rank


def _mamba(spec: ModelSpec) -> tuple[int, int]:
    assert spec.mamba is not None
    m, h = spec.mamba, spec.hidden_size
    conv_dim = m.inner + 2 * m.n_groups * m.state_size
    if m.head_dim == 1:  # Mamba-1 (Jamba): in_proj 2*inner, x_proj, dt_proj, A (inner x state), D
        dt_rank = -(-h // 16)
        linear = h * 2 * m.inner + m.inner * (dt_rank + 2 * m.state_size) + dt_rank * m.inner + m.inner * h
        small = m.inner * m.conv_kernel + m.inner + m.inner * m.state_size + 2 * m.inner + 3 * m.state_size
        return linear, small
    in_proj = h * (2 * m.inner + 2 * m.n_groups * m.state_size + m.num_heads)
    linear = in_proj + m.inner * h
    small = conv_dim * (m.conv_kernel + 1) + 3 * m.num_heads + m.inner
    return linear, small


def _linear_attention(spec: ModelSpec) -> tuple[int, int]:
    assert spec.linear is not None
    la, h = spec.linear, spec.hidden_size
    key_dim = la.num_key_heads * la.key_head_dim
    value_dim = la.num_value_heads * la.value_head_dim
    linear = h * (2 * key_dim + 2 * value_dim) + h * 2 * la.num_value_heads + value_dim * h
    small = (2 * key_dim + value_dim) * la.conv_kernel + 2 * la.num_value_heads + la.value_head_dim
    return linear, small


def count_params(spec: ModelSpec) -> ParamBreakdown:
    h = spec.hidden_size
    embedding = spec.vocab_size * h
    lm_head = 0 if spec.tie_word_embeddings else spec.vocab_size * h
    attn = dense = experts = shared = 0
    small = h  # final norm
    mixer_cost = {
        Mixer.FULL: _attention, Mixer.SLIDING: _attention, Mixer.MLA: _mla,
        Mixer.MAMBA: _mamba, Mixer.LINEAR: _linear_attention,
    }
    norms_per_layer = 4 if spec.model_type.startswith("gemma") else 2
    for mixer, ffn in zip(spec.mixers, spec.ffns, strict=True):
        if mixer in mixer_cost:
            lin, sm = mixer_cost[mixer](spec)
            attn += lin
            small += sm
        hybrid_single_norm = spec.is_hybrid and spec.model_type.startswith("nemotron")
        small += h * (1 if hybrid_single_norm else norms_per_layer)
        if ffn is FFN.DENSE:
            inter = spec.intermediate_size
            # Nemotron-H MLP layers are ungated (up/down with squared ReLU)
            dense += (2 if spec.model_type.startswith("nemotron") else 3) * h * inter
        elif ffn is FFN.MOE:
            moe = spec.moe
            assert moe is not None
            experts += moe.num_experts * 3 * h * moe.expert_intermediate_size
            shared += moe.shared_experts * 3 * h * moe.shared_expert_intermediate_size
            small += h * moe.num_experts + (h if moe.shared_expert_gate else 0)
            if moe.expert_bias:
                small += moe.num_experts * (2 * moe.expert_intermediate_size + h) + moe.num_experts
            if spec.model_type.startswith("deepseek"):
                small += moe.num_experts  # e_score_correction_bias
    return ParamBreakdown(embedding=embedding, lm_head=lm_head, attention_linear=attn,
                          dense_mlp_linear=dense, expert_linear=experts, shared_expert_linear=shared,
                          small=small, vision=spec.vision_params)
