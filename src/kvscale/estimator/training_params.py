"""The weight matrices of one decoder layer, as training frameworks see them (pure).

LoRA adapts matrices by name, Adafactor factors each matrix into a row and a column vector, 8-bit Adam
keeps small tensors in 32 bits: all three need the matrices' shapes, not only a parameter count.
Names follow the Hugging Face implementations (``q_proj``, ``gate_proj``, ...), which PEFT's
``target_modules`` match.
"""

from __future__ import annotations

from dataclasses import dataclass

from .model_spec import FFN, Mixer, ModelSpec

#: what ``--lora-targets all`` means: every linear layer of attention and the MLPs (PEFT's "all-linear"
#: leaves the LM head out, as here). Routed experts are fused parameters in current Transformers, not
#: nn.Linear modules, and PEFT does not adapt them by name.
ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
              "q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj")


@dataclass(frozen=True)
class Matrix:
    name: str
    rows: int  # out features
    cols: int  # in features
    count: int = 1  # e.g. routed experts stored as one fused tensor per layer
    lora_target: bool = True  # nn.Linear that PEFT can adapt

    @property
    def params(self) -> int:
        return self.rows * self.cols * self.count


def _attention(spec: ModelSpec) -> list[Matrix]:
    h, d = spec.hidden_size, spec.head_dim
    if spec.mla is not None:
        m, n = spec.mla, spec.num_attention_heads
        qk = m.qk_nope_head_dim + m.qk_rope_head_dim
        q = [Matrix("q_a_proj", m.q_lora_rank, h), Matrix("q_b_proj", n * qk, m.q_lora_rank)] if m.q_lora_rank \
            else [Matrix("q_proj", n * qk, h)]
        return [*q, Matrix("kv_a_proj_with_mqa", m.kv_lora_rank + m.qk_rope_head_dim, h),
                Matrix("kv_b_proj", n * (m.qk_nope_head_dim + m.v_head_dim), m.kv_lora_rank),
                Matrix("o_proj", h, n * m.v_head_dim)]
    return [Matrix("q_proj", spec.num_attention_heads * d, h), Matrix("k_proj", spec.num_kv_heads * d, h),
            Matrix("v_proj", spec.num_kv_heads * d, h), Matrix("o_proj", h, spec.num_attention_heads * d)]


def _mlp(h: int, inter: int, count: int = 1, lora: bool = True, prefix: str = "") -> list[Matrix]:
    return [Matrix(f"{prefix}gate_proj", inter, h, count, lora), Matrix(f"{prefix}up_proj", inter, h, count, lora),
            Matrix(f"{prefix}down_proj", h, inter, count, lora)]


def layer_matrices(spec: ModelSpec, layer: int) -> list[Matrix]:
    """The weight matrices of decoder layer ``layer`` (attention, then its MLP or experts)."""
    if spec.mixers[layer] not in (Mixer.FULL, Mixer.SLIDING, Mixer.MLA):
        raise ValueError(f"training memory models attention layers only; layer {layer} is {spec.mixers[layer]}")
    out = _attention(spec)
    h = spec.hidden_size
    if spec.ffns[layer] is FFN.MOE:
        moe = spec.moe
        assert moe is not None
        out.append(Matrix("router", moe.num_experts, h, lora_target=False))
        # fused routed experts: gate and up in one tensor, down in another (Transformers 5)
        out += [Matrix("experts.gate_up_proj", 2 * moe.expert_intermediate_size, h, moe.num_experts, False),
                Matrix("experts.down_proj", h, moe.expert_intermediate_size, moe.num_experts, False)]
        if moe.shared_experts:
            out += _mlp(h, moe.shared_expert_intermediate_size * moe.shared_experts, prefix="shared_experts.")
    elif spec.ffns[layer] is FFN.DENSE:
        out += _mlp(h, spec.intermediate_size)
    return out


def lora_shapes(spec: ModelSpec, rank: int, targets: tuple[str, ...]) -> list[tuple[int, int]]:
    """The (rows, cols) of every LoRA matrix: A (rank x in) and B (out x rank) per adapted matrix."""
    out = []
    for layer in range(spec.num_layers):
        for m in layer_matrices(spec, layer):
            if m.lora_target and m.name.rsplit(".", 1)[-1] in targets:
                out += [(rank, m.cols), (m.rows, rank)] * m.count
    return out


def lora_params(spec: ModelSpec, rank: int, targets: tuple[str, ...]) -> tuple[int, int]:
    """(trainable parameters, adapted matrices) of LoRA at ``rank`` on the matrices named in ``targets``
    (a name matches as PEFT matches it: the module's own name, the last part of its path)."""
    params = adapted = 0
    for layer in range(spec.num_layers):
        for m in layer_matrices(spec, layer):
            if m.lora_target and m.name.rsplit(".", 1)[-1] in targets:
                params += rank * (m.rows + m.cols) * m.count
                adapted += m.count
    return params, adapted
