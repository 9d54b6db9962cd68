"""Bytes per parameter of each weight format vLLM serves, per parameter group.

Group-quantized formats store per-group scales (and zeros) beside the packed integers;
those are counted, as are the 16-bit parts every method leaves alone.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict

from .errors import UnsupportedQuantization
from .model_spec import ModelSpec
from .params import ParamBreakdown


class Quantization(StrEnum):
    AUTO = "auto"  # the checkpoint's own format (bf16 when it has none)
    BF16 = "bf16"
    FP16 = "fp16"
    FP8 = "fp8"
    INT8 = "int8"  # w8a8
    AWQ = "awq"
    GPTQ = "gptq"
    BNB_NF4 = "bitsandbytes"
    MXFP4 = "mxfp4"


class WeightFormat(BaseModel):
    """How one format stores a linear weight; everything else stays at ``other_bytes``."""

    model_config = ConfigDict(frozen=True)
    name: Quantization
    linear_bytes: float  # per parameter, packing and group metadata included
    experts_only: bool = False  # MXFP4 in gpt-oss compresses only the MoE experts
    other_bytes: float = 2.0
    vllm_flag: str | None = None  # value for --quantization; None when vLLM infers it
    needs_fp8_hardware: bool = False
    checkpoint_only: bool = False  # needs a pre-quantized checkpoint (cannot be applied online)

    expert_padding: float = 1.0  # layout padding of expert weights (MXFP4 kernels pad to 256)
    attention_16bit: bool = False  # e.g. Meta's fbgemm FP8 checkpoints quantize only the MLPs

    def weight_bytes(self, p: ParamBreakdown) -> float:
        compressed = p.expert_linear if self.experts_only else p.linear
        if self.attention_16bit:
            compressed -= p.attention_linear
        padded = compressed + p.expert_linear * (self.expert_padding - 1.0)
        return padded * self.linear_bytes + (p.total - compressed) * self.other_bytes


def _int4(group: int, zeros: bool) -> float:
    # 4-bit packed weights + one fp16 scale per group (+ a packed 4-bit zero per group)
    return 0.5 + (2.0 + (0.5 if zeros else 0.0)) / group


FORMATS: dict[Quantization, WeightFormat] = {
    Quantization.BF16: WeightFormat(name=Quantization.BF16, linear_bytes=2.0),
    Quantization.FP16: WeightFormat(name=Quantization.FP16, linear_bytes=2.0),
    # per-channel fp32 scales are negligible at this precision
    Quantization.FP8: WeightFormat(name=Quantization.FP8, linear_bytes=1.0, vllm_flag="fp8",
                                   needs_fp8_hardware=True),
    Quantization.INT8: WeightFormat(name=Quantization.INT8, linear_bytes=1.0, checkpoint_only=True),
    Quantization.AWQ: WeightFormat(name=Quantization.AWQ, linear_bytes=_int4(128, True), vllm_flag="awq",
                                   checkpoint_only=True),
    Quantization.GPTQ: WeightFormat(name=Quantization.GPTQ, linear_bytes=_int4(128, True), vllm_flag="gptq",
                                    checkpoint_only=True),
    # NF4 with a fp32 absmax per 64 weights (vLLM quantizes in place when loading)
    Quantization.BNB_NF4: WeightFormat(name=Quantization.BNB_NF4, linear_bytes=0.5 + 4.0 / 64,
                                       vllm_flag="bitsandbytes"),
    # 4-bit E2M1 + one E8M0 byte per 32 weights, experts only
    Quantization.MXFP4: WeightFormat(name=Quantization.MXFP4, linear_bytes=0.5 + 1.0 / 32,
                                     experts_only=True, vllm_flag="mxfp4", checkpoint_only=True),
}

_CHECKPOINT_METHODS = {
    "awq": Quantization.AWQ, "awq_marlin": Quantization.AWQ, "gptq": Quantization.GPTQ,
    "gptq_marlin": Quantization.GPTQ, "compressed-int4": Quantization.GPTQ, "fp8": Quantization.FP8,
    "fbgemm_fp8": Quantization.FP8, "int8": Quantization.INT8, "mxfp4": Quantization.MXFP4,
    "bitsandbytes": Quantization.BNB_NF4,
}


def checkpoint_format(spec: ModelSpec) -> Quantization:
    """The format the checkpoint ships in (bf16/fp16 when it has no quantization_config)."""
    if spec.quantization is None:
        return Quantization.FP16 if spec.dtype in ("float16", "half") else Quantization.BF16
    fmt = _CHECKPOINT_METHODS.get(spec.quantization.method)
    if fmt is None:
        raise UnsupportedQuantization(
            f"checkpoint quantization_config.quant_method {spec.quantization.method!r} is not modelled "
            f"(modelled: {', '.join(sorted(_CHECKPOINT_METHODS))})")
    return fmt


def resolved(spec: ModelSpec, quant: Quantization) -> Quantization:
    """The format ``quant`` names for ``spec``: its checkpoint's own for AUTO."""
    return checkpoint_format(spec) if quant is Quantization.AUTO else quant


def weight_format(spec: ModelSpec, quant: Quantization) -> WeightFormat:
    """The format vLLM would load ``spec`` in when asked for ``quant``."""
    own = checkpoint_format(spec)
    target = resolved(spec, quant)
    fmt = FORMATS[target]
    if spec.quantization is not None and spec.quantization.method == "fbgemm_fp8" and target is own:
        fmt = fmt.model_copy(update={"attention_16bit": True})
    if target is Quantization.MXFP4 and spec.moe is not None:
        inter = spec.moe.expert_intermediate_size
        fmt = fmt.model_copy(update={"expert_padding": (-(-inter // 256) * 256) / inter})
    if target in (Quantization.AWQ, Quantization.GPTQ) and spec.quantization is not None:
        group = spec.quantization.group_size or 128
        if group <= 0:  # -1 means one group per row in GPTQ: scales are negligible
            group = 1 << 30
        bits = spec.quantization.bits or 4
        fmt = fmt.model_copy(update={"linear_bytes": bits / 8 + (2.0 + bits / 8) / group})
    return fmt


def applicable(spec: ModelSpec, quant: Quantization) -> str | None:
    """Why ``quant`` cannot be used with this checkpoint, or None when it can."""
    own = checkpoint_format(spec)
    if quant is Quantization.AUTO or quant is own:
        return None
    if own not in (Quantization.BF16, Quantization.FP16):
        return f"checkpoint is already quantized as {own.value}; only 'auto' ({own.value}) applies"
    if FORMATS[quant].checkpoint_only:
        return f"{quant.value} needs a pre-quantized checkpoint (vLLM cannot quantize to it at load time)"
    if quant is Quantization.MXFP4 and spec.moe is None:
        return "mxfp4 applies to MoE expert weights only"
    return None
