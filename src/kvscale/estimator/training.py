"""Training and fine-tuning memory per GPU (pure): weights, gradients, optimizer states, activations,
frozen models, a rollout engine, framework overhead.

Model states follow the frameworks' own accounting. DeepSpeed's mixed precision keeps 16-bit weights and
gradients and fp32 master weights with the optimizer (2 + 2 + 12 bytes per parameter for Adam, ZeRO paper,
Rajbhandari et al. 2020, §3.1), and ZeRO-1/2/3 shard the optimizer part, then the gradients, then the
weights over the data-parallel GPUs. FSDP keeps fp32 shards of weights and gradients and gathers one wrapped
layer at a time in 16 bits. AMP (``torch.autocast`` over fp32 weights, the Trainer's ``bf16=True`` without
DeepSpeed or FSDP) keeps fp32 weights and gradients plus 16-bit copies of the weights until backward.
Activations are what autograd keeps (``training_activations``). Per-parameter ``step`` counters of
torch's optimizers live on the host and are not GPU memory.
"""

from __future__ import annotations

import math
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .errors import EstimatorError
from .gpus import GIB, GPUType
from .memory import ServingConfig, estimate
from .model_spec import FFN, Mixer, ModelSpec
from .params import count_params
from .training_activations import (
    FP32,
    Regime,
    autocast_weight_copies,
    layer_bytes_per_token,
    layer_input_bytes_per_token,
    model_bytes_per_token,
    rotary_bytes,
)
from .training_params import ALL_LINEAR, layer_matrices, lora_params, lora_shapes
from .vllm_profiles import profile_for


class TrainMode(StrEnum):
    TRAIN = "train"  # full fine-tuning or pre-training
    LORA = "lora"
    QLORA = "qlora"
    DPO = "dpo"
    PPO = "ppo"
    GRPO = "grpo"


class Precision(StrEnum):
    MIXED = "mixed"  # 16-bit compute weights + fp32 master weights (DeepSpeed bf16, FSDP MixedPrecision)
    AMP = "amp"  # fp32 weights under torch.autocast
    BF16 = "bf16"  # everything 16-bit, optimizer states too
    FP8 = "fp8"  # mixed, with fp8 GEMMs (Transformer Engine): the Linears keep fp8 copies of their inputs


class Optimizer(StrEnum):
    ADAMW = "adamw"
    ADAMW_8BIT = "adamw8bit"
    ADAFACTOR = "adafactor"
    SGD = "sgd"  # with momentum


class Sharding(StrEnum):
    DDP = "ddp"
    ZERO1 = "zero1"
    ZERO2 = "zero2"
    ZERO3 = "zero3"
    FSDP = "fsdp"


class Offload(StrEnum):
    NONE = "none"
    OPTIMIZER = "optimizer"
    PARAMS = "params"  # optimizer and weights (ZeRO-3 / FSDP only)


class Checkpointing(StrEnum):
    NONE = "none"
    SELECTIVE = "selective"  # the attention core is recomputed (Korthikanti et al. 2022)
    FULL = "full"  # every layer's input kept, the layer recomputed in backward


class Rollout(StrEnum):
    NONE = "none"
    COLOCATED = "colocated"  # vLLM on the training GPUs, asleep (weights and KV freed) while training
    SEPARATE = "separate"  # vLLM on GPUs of its own


#: bitsandbytes' 8-bit optimizers keep tensors smaller than this in 32 bits (``min_8bit_size``)
ADAM8BIT_MIN_SIZE = 4096
#: and quantize the rest blockwise, one fp32 absmax per block of this many values (``blocksize``)
ADAM8BIT_BLOCK = 256
#: NF4 with double quantization: 4 bits + 8/64 + 32/(64*256) bits per weight (QLoRA, Dettmers et al. 2023, §3)
NF4_BYTES_PER_PARAM = (4 + 8 / 64 + 32 / (64 * 256)) / 8
#: DeepSpeed's gradient reduce bucket, ``reduce_bucket_size`` default (elements, 16-bit), ZeRO-1/2/3
ZERO_REDUCE_BUCKET = 500_000_000
#: ZeRO-3 prefetches this many parameters ahead (``stage3_prefetch_bucket_size`` default)
ZERO3_PREFETCH = 50_000_000
#: FSDP holds the wrapped layer it computes and the next one it prefetches (BACKWARD_PRE, the default)
FSDP_GATHERED_LAYERS = 2
#: the CUDA context and cuBLAS/cuDNN workspaces of a PyTorch process: outside torch's allocator, which is
#: what ``max_memory_allocated`` reports; about 0.5 GiB on current CUDA with lazy module loading
CUDA_CONTEXT_BYTES = 512 * 1024**2
#: NCCL's buffers when the GPUs communicate (the figure fitted on vLLM start-ups with TP > 1,
#: estimator.vllm_profiles: the same library, the same default channel buffers)
NCCL_BUFFER_BYTES = profile_for("0.32").nccl_bytes
#: TRL's ``GRPOConfig.beta`` default: 0.0 since TRL 0.19, and then no reference model is loaded
GRPO_DEFAULT_KL = 0.0
#: TRL's ``vllm_gpu_memory_utilization`` for a colocated vLLM (GRPOConfig default)
ROLLOUT_GPU_MEMORY_UTILIZATION = 0.3


class TrainingConfig(BaseModel):
    model_config = ConfigDict(frozen=True)

    mode: TrainMode = TrainMode.TRAIN
    gpus: int = Field(default=1, gt=0)
    sharding: Sharding = Sharding.DDP
    precision: Precision = Precision.MIXED
    optimizer: Optimizer = Optimizer.ADAMW
    offload: Offload = Offload.NONE
    micro_batch: int = Field(default=1, gt=0)
    seq_len: int = Field(default=2048, gt=0)
    gradient_accumulation: int = Field(default=1, gt=0)
    checkpointing: Checkpointing = Checkpointing.NONE
    eager_attention: bool = False  # materialized attention scores; default flash-style (SDPA, FlashAttention)
    tensor_parallel: int = Field(default=1, gt=0)
    pipeline_parallel: int = Field(default=1, gt=0)
    sequence_parallel: bool = False
    lora_rank: int = Field(default=16, gt=0)
    lora_targets: tuple[str, ...] = ALL_LINEAR
    kl_coef: float | None = Field(default=None, ge=0)  # GRPO: None is TRL's default (0: no reference)
    rollout: Rollout = Rollout.NONE
    rollout_gpu_memory_utilization: float = Field(default=ROLLOUT_GPU_MEMORY_UTILIZATION, gt=0, lt=1)
    rollout_max_len: int | None = Field(default=None, gt=0)  # prompt + completion; default seq_len
    # vLLM's sleep mode between generations (TRL's vllm_enable_sleep_mode, off by default)
    rollout_sleep: bool = False

    @model_validator(mode="after")
    def _check(self) -> TrainingConfig:
        mp = self.tensor_parallel * self.pipeline_parallel
        if self.gpus % mp:
            raise ValueError(f"gpus {self.gpus} is not a multiple of tensor_parallel x pipeline_parallel = {mp}")
        if self.offload is Offload.PARAMS and self.sharding not in (Sharding.ZERO3, Sharding.FSDP):
            raise ValueError("offload params needs sharded weights: sharding zero3 or fsdp")
        if self.sequence_parallel and self.tensor_parallel == 1:
            raise ValueError("sequence_parallel splits along the tensor-parallel group: needs tensor_parallel > 1")
        if self.offload is Offload.OPTIMIZER and self.sharding not in (Sharding.ZERO1, Sharding.ZERO2, Sharding.ZERO3):
            raise ValueError("offload optimizer is DeepSpeed's ZeRO-Offload: sharding zero1, zero2 or zero3 (FSDP "
                             "offloads weights, gradients and optimizer together: offload params)")
        if self.pipeline_parallel > 1 and self.sharding in (Sharding.ZERO2, Sharding.ZERO3):
            raise ValueError("pipeline_parallel > 1 works with sharding ddp or zero1 only (DeepSpeed refuses "
                             "ZeRO-2/3 with pipeline parallelism)")
        if self.rollout is not Rollout.NONE and self.mode not in (TrainMode.PPO, TrainMode.GRPO):
            raise ValueError(f"rollout {self.rollout.value}: only PPO and GRPO generate during training")
        if self.kl_coef is not None and self.mode is not TrainMode.GRPO:
            raise ValueError(f"kl_coef applies to GRPO only (mode {self.mode.value}); DPO and PPO always keep a "
                             "reference")
        return self

    @property
    def data_parallel(self) -> int:
        return self.gpus // (self.tensor_parallel * self.pipeline_parallel)

    @property
    def adapters(self) -> bool:
        return self.mode in (TrainMode.LORA, TrainMode.QLORA)


class TrainingEstimate(BaseModel):
    """Per GPU, bytes; ``total`` is the peak of the busiest GPU."""

    model_config = ConfigDict(frozen=True)

    trainable_params: int
    frozen_params: int
    parameters: int  # trained and frozen weights held on the GPU (shards, plus the layers gathered)
    gradients: int
    optimizer: int  # optimizer states, with the fp32 master weights of mixed precision
    activations: int  # the peak autograd keeps (per micro-batch, times pipeline micro-batches in flight)
    frozen_models: int  # reference, reward and critic weights of RL set-ups
    rollout_engine: int  # a colocated vLLM while it generates
    overhead: int  # CUDA context, communication buffers
    total: int
    gpu_memory: int
    notes: tuple[str, ...] = ()

    @property
    def fits(self) -> bool:
        return self.total <= self.gpu_memory

    def gib(self) -> dict[str, float | bool]:
        fields = ("parameters", "gradients", "optimizer", "activations", "frozen_models", "rollout_engine",
                  "overhead", "total")
        return {**{f"{f}_gib": round(getattr(self, f) / GIB, 3) for f in fields},
                "gpu_memory_gib": round(self.gpu_memory / GIB, 3), "fits": self.fits}


def _check_architecture(spec: ModelSpec) -> None:
    bad = sorted({str(m) for m in spec.mixers if m not in (Mixer.FULL, Mixer.SLIDING, Mixer.MLA)})
    if bad:
        raise EstimatorError(f"{spec.name}: training memory is modelled for attention layers; it has {bad}")


def _optimizer_bytes(spec: ModelSpec, cfg: TrainingConfig, trainable: int, state_bytes: int) -> float:
    """Optimizer state bytes for ``trainable`` parameters (states in ``state_bytes``-byte floats)."""
    if cfg.optimizer is Optimizer.ADAMW:
        return 2 * state_bytes * trainable
    if cfg.optimizer is Optimizer.SGD:
        return state_bytes * trainable
    if cfg.adapters:
        shapes = lora_shapes(spec, cfg.lora_rank, cfg.lora_targets)
    else:
        shapes = [(m.rows, m.cols) for layer in range(spec.num_layers) for m in layer_matrices(spec, layer)
                  for _ in range(m.count)]
        shapes.append((spec.vocab_size, spec.hidden_size))
        if not spec.tie_word_embeddings:
            shapes.append((spec.vocab_size, spec.hidden_size))
    in_matrices = sum(r * c for r, c in shapes)
    vectors = max(0, trainable - in_matrices)  # norms, biases: kept unfactored / unquantized
    if cfg.optimizer is Optimizer.ADAFACTOR:  # factored second moment, no first moment (beta1 None)
        return FP32 * (sum(r + c for r, c in shapes) + vectors)
    # 8-bit Adam: two 1-byte states plus an fp32 absmax per block; small tensors stay 32-bit
    big = sum(r * c for r, c in shapes if r * c >= ADAM8BIT_MIN_SIZE)
    small = trainable - big
    return 2 * (big * (1 + FP32 / ADAM8BIT_BLOCK)) + 2 * FP32 * small


def _layers_per_stage(spec: ModelSpec, pp: int) -> list[list[int]]:
    base, extra = divmod(spec.num_layers, pp)
    out, start = [], 0
    for i in range(pp):
        n = base + (1 if i < extra else 0)
        out.append(list(range(start, start + n)))
        start += n
    return out


def _activations(spec: ModelSpec, cfg: TrainingConfig, sequences: int) -> tuple[int, list[str]]:
    """Peak bytes autograd keeps on the busiest pipeline stage, and notes."""
    r = Regime(autocast=cfg.precision is Precision.AMP, base_trained=not cfg.adapters,
               lora_rank=cfg.lora_rank if cfg.adapters else 0, lora_targets=cfg.lora_targets,
               eager_attention=cfg.eager_attention and cfg.checkpointing is not Checkpointing.SELECTIVE,
               tensor_parallel=cfg.tensor_parallel, sequence_parallel=cfg.sequence_parallel)
    notes: list[str] = []
    tokens, s = sequences * cfg.seq_len, cfg.seq_len
    stages = _layers_per_stage(spec, cfg.pipeline_parallel)
    # 1F1B: stage i holds (pp - i) micro-batches in flight, at most the accumulation steps there are
    worst = 0.0
    for i, layers in enumerate(stages):
        in_flight = min(cfg.pipeline_parallel - i, cfg.gradient_accumulation) if cfg.pipeline_parallel > 1 else 1
        per_layer = [layer_bytes_per_token(spec, layer, s, r) for layer in layers]
        if not r.base_trained and layers and layers[0] == 0 and cfg.checkpointing is Checkpointing.NONE:
            # the first norm reads embeddings no gradient flows to (frozen): nothing of it is kept
            per_layer[0] -= (FP32 * spec.hidden_size + FP32) / (cfg.tensor_parallel if cfg.sequence_parallel else 1)
        last = i == len(stages) - 1
        outside = (model_bytes_per_token(spec, r) if last else 0.0) + (8 if i == 0 else 0)
        rope = rotary_bytes(spec, s, r)  # per position, shared by the sequences of the batch
        if cfg.checkpointing is Checkpointing.FULL:
            kept = layer_input_bytes_per_token(spec, r) * len(layers)
            forward_end = (kept + outside) * tokens + rope
            # backward: the last layer recomputed while the inputs of all layers are still kept
            recompute = (kept + (max(per_layer) if per_layer else 0.0)) * tokens + rope
            stage = max(forward_end, recompute) + (in_flight - 1) * kept * tokens
        else:
            stage = (sum(per_layer) + outside) * tokens + rope
            stage += (in_flight - 1) * sum(per_layer) * tokens
        worst = max(worst, stage)
    worst += autocast_weight_copies(spec, r) / cfg.pipeline_parallel
    if cfg.precision is Precision.FP8:
        notes.append("fp8: activations counted as bf16 (Transformer Engine's fp8 input copies are not modelled)")
    return int(worst), notes


def _model_params(spec: ModelSpec) -> int:
    params = count_params(spec)
    total = params.total - params.vision
    if spec.moe is not None and spec.model_type.startswith("deepseek"):
        # DeepSeek's expert-score correction bias is a buffer in Transformers, not a trained parameter
        total -= spec.moe.num_experts * sum(1 for f in spec.ffns if f is FFN.MOE)
    return total


def _busiest_stage_share(spec: ModelSpec, pp: int) -> float:
    """The share of the parameters on the busiest pipeline stage: its layers, the embedding on the first,
    the LM head on the last (a tied head is a second copy there)."""
    if pp == 1:
        return 1.0
    params = count_params(spec)
    total = params.total - params.vision
    head = params.lm_head or params.embedding  # tied: the last stage holds its own copy
    per_layer = (total - params.embedding - params.lm_head) / spec.num_layers
    stages = _layers_per_stage(spec, pp)
    worst = max(per_layer * len(st) + (params.embedding if i == 0 else 0) + (head if i == pp - 1 else 0)
                for i, st in enumerate(stages))
    return worst / total


def _states(spec: ModelSpec, cfg: TrainingConfig, adapters: bool) -> tuple[int, float, float, float]:
    """(trained parameters, weights, gradients, optimizer bytes) per GPU of one trained model, before
    gathered buffers: adapters on a frozen base, or the whole model."""
    total = _model_params(spec)
    share = _busiest_stage_share(spec, cfg.pipeline_parallel) / cfg.tensor_parallel
    dp = cfg.data_parallel
    if adapters:
        trainable, _ = lora_params(spec, cfg.lora_rank, cfg.lora_targets)
        if trainable == 0:
            raise EstimatorError(f"lora_targets {list(cfg.lora_targets)} match no linear layer of {spec.name}")
        w_b, g_b, master_b, state_b = FP32, FP32, 0, FP32  # PEFT keeps adapters in fp32 (autocast_adapter_dtype)
        if cfg.mode is TrainMode.QLORA:  # linear weights in NF4; embeddings, LM head and norms stay 16-bit
            quantized = count_params(spec).linear
            frozen = quantized * NF4_BYTES_PER_PARAM + (total - quantized) * 2
        else:
            frozen = total * (FP32 if cfg.precision is Precision.AMP else 2)
    else:
        trainable, frozen = total, 0.0
        if cfg.precision is Precision.BF16:
            w_b, g_b, master_b, state_b = 2, 2, 0, 2
        elif cfg.precision is Precision.AMP or cfg.sharding is Sharding.FSDP:
            w_b, g_b, master_b, state_b = FP32, FP32, 0, FP32
        else:  # mixed / fp8 under DeepSpeed or DDP
            w_b, g_b, master_b, state_b = 2, 2, FP32, FP32
    shard_opt = dp if cfg.sharding is not Sharding.DDP else 1
    shard_grad = dp if cfg.sharding in (Sharding.ZERO2, Sharding.ZERO3, Sharding.FSDP) else 1
    shard_w = dp if cfg.sharding in (Sharding.ZERO3, Sharding.FSDP) else 1
    weights = (trainable * w_b + frozen) * share / shard_w
    grads = trainable * share * g_b / shard_grad
    opt = (trainable * master_b + _optimizer_bytes(spec, cfg, trainable, state_b)) * share / shard_opt
    if cfg.offload is not Offload.NONE:
        opt = 0.0
        if cfg.sharding is not Sharding.ZERO1:
            # the optimizer steps on the host, so partitioned gradients go there too: ZeRO-Offload moves each
            # reduced gradient partition to host memory, and FSDP's CPUOffload(offload_params=True) keeps
            # parameters and gradients on the CPU (the reduce buckets in flight are counted with the
            # overheads); ZeRO-1 does not partition gradients, so the whole set is on the GPU during backward
            grads = 0.0
    if cfg.offload is Offload.PARAMS:
        weights = 0.0
    return trainable, weights, grads, opt


def estimate_training(spec: ModelSpec, gpu: GPUType, cfg: TrainingConfig) -> TrainingEstimate:
    """Peak memory per GPU of one training step of ``spec`` under ``cfg`` (the busiest GPU)."""
    _check_architecture(spec)
    total_params = _model_params(spec)
    dp = cfg.data_parallel
    notes: list[str] = []
    trainable, weights, grads, opt = _states(spec, cfg, cfg.adapters)
    if cfg.offload is not Offload.NONE:
        notes.append("optimizer states and master weights offloaded to host memory"
                     + ("" if cfg.sharding is Sharding.ZERO1 else ", gradients too"))
    # gathered weights of sharded set-ups, in 16 bits (fp32 under AMP)
    gather_b = FP32 if cfg.precision is Precision.AMP else 2
    layer_params = max(sum(m.params for m in layer_matrices(spec, i)) for i in range(spec.num_layers)) / \
        cfg.tensor_parallel
    gathered = 0.0
    if cfg.sharding is Sharding.FSDP and dp > 1:
        grads_unsharded = 0 if cfg.adapters else layer_params * gather_b  # one layer's gradients before reduce
        gathered = FSDP_GATHERED_LAYERS * layer_params * gather_b + grads_unsharded
    elif cfg.sharding is Sharding.ZERO3 and dp > 1:
        gathered = (layer_params + ZERO3_PREFETCH) * gather_b
    weights += gathered
    overhead = float(CUDA_CONTEXT_BYTES)
    if cfg.sharding in (Sharding.ZERO1, Sharding.ZERO2, Sharding.ZERO3) and dp > 1:
        overhead += 2 * min(ZERO_REDUCE_BUCKET, trainable / cfg.tensor_parallel)
    if cfg.gpus > 1:
        overhead += NCCL_BUFFER_BYTES

    sequences = cfg.micro_batch * (2 if cfg.mode is TrainMode.DPO else 1)  # DPO: chosen and rejected
    activations, act_notes = _activations(spec, cfg, sequences)
    notes += act_notes

    frozen_models = 0.0
    shard_w = dp if cfg.sharding in (Sharding.ZERO3, Sharding.FSDP) else 1
    share = _busiest_stage_share(spec, cfg.pipeline_parallel) / cfg.tensor_parallel
    model_w = total_params * 2 * share / shard_w  # a frozen 16-bit copy, sharded like the policy
    reference = cfg.mode in (TrainMode.DPO, TrainMode.PPO) or (
        cfg.mode is TrainMode.GRPO and (GRPO_DEFAULT_KL if cfg.kl_coef is None else cfg.kl_coef) > 0)
    if reference and not cfg.adapters:
        frozen_models += model_w
        notes.append("reference model: a frozen 16-bit copy of the policy")
    elif reference:
        notes.append("reference model: the base weights with the adapters disabled (no second copy)")
    elif cfg.mode is TrainMode.GRPO:
        notes.append("GRPO with kl_coef 0 (TRL's default): no reference model")
    if cfg.mode is TrainMode.PPO:
        frozen_models += model_w  # reward model (same architecture, frozen)
        # the critic (value model) is trained in full, adapters or not (TRL applies PEFT to the policy only)
        _, cw, cg, co = _states(spec, cfg.model_copy(update={"mode": TrainMode.TRAIN}), adapters=False)
        weights, grads, opt = weights + cw, grads + cg, opt + co
        notes.append("PPO: a critic of the same architecture trained in full beside the actor, reward model frozen")

    rollout = 0.0
    if cfg.rollout is Rollout.COLOCATED:
        rollout = _colocated_rollout(spec, gpu, cfg, notes)
    elif cfg.rollout is Rollout.SEPARATE:
        notes.append("rollout engine on GPUs of its own: not on these")
    states = weights + grads + opt + frozen_models
    # training: vLLM's share stays allocated unless it sleeps (weights and KV freed) between generations
    train_phase = states + activations + (0.0 if cfg.rollout_sleep else rollout)
    # generation: gradients are released between steps, activations not yet made
    rollout_phase = states - grads + rollout
    total = max(train_phase, rollout_phase) + overhead
    return TrainingEstimate(
        trainable_params=trainable, frozen_params=total_params if cfg.adapters else 0, parameters=int(weights),
        gradients=int(grads), optimizer=int(opt), activations=activations, frozen_models=int(frozen_models),
        rollout_engine=int(rollout), overhead=int(overhead), total=int(total), gpu_memory=gpu.memory_bytes,
        notes=tuple(notes))


def _colocated_rollout(spec: ModelSpec, gpu: GPUType, cfg: TrainingConfig, notes: list[str]) -> float:
    """A colocated vLLM takes its gpu-memory-utilization share of the GPU; the serving estimator checks
    that its weights and one sequence's KV cache fit in that share."""
    share = cfg.rollout_gpu_memory_utilization
    serving = ServingConfig(tensor_parallel_size=cfg.tensor_parallel, max_model_len=cfg.rollout_max_len or cfg.seq_len,
                            gpu_memory_utilization=share, enforce_eager=True)
    est = estimate(spec, gpu, serving)
    if not est.fits:
        raise EstimatorError(f"colocated rollout: {est.reason}; raise rollout_gpu_memory_utilization above {share:g}")
    notes.append(f"colocated vLLM at {share:g} of the GPU: {est.kv_cache_tokens:,} KV tokens; asleep while training")
    return math.ceil(gpu.memory_bytes * share)

