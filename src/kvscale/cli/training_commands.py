"""``kvscale estimate --mode train|lora|qlora|dpo|ppo|grpo`` and ``kvscale plan --mode ...``: training memory
per GPU, and the cheapest GPU type and count where it fits."""

from __future__ import annotations

import argparse
import json
from typing import Any

from rich.console import Console
from rich.table import Table

from ..estimator.catalog import resolve_model
from ..estimator.errors import EstimatorError
from ..estimator.gpus import GIB, GPUType, load_catalog
from ..estimator.training import (
    Checkpointing,
    Offload,
    Optimizer,
    Precision,
    Rollout,
    Sharding,
    TrainingConfig,
    TrainingEstimate,
    TrainMode,
    estimate_training,
)
from ..estimator.training_params import ALL_LINEAR
from .args import fraction, positive_int
from .errors import UsageError

SERVE = "serve"
MODES = [SERVE, *(m.value for m in TrainMode)]
#: GPU counts ``plan --mode`` tries: one node's worth, then whole nodes of 8
PLAN_GPU_COUNTS = (1, 2, 4, 8, 16, 32, 64)
#: without --zero/--fsdp, ``plan`` takes the least sharding that fits (less communication first)
PLAN_SHARDINGS = (Sharding.DDP, Sharding.ZERO1, Sharding.ZERO2, Sharding.ZERO3)


def add_training_args(p: argparse.ArgumentParser, with_gpus: bool) -> None:
    """Training flags shared by ``estimate`` and ``plan`` (``--mode serve`` ignores them)."""
    p.add_argument("--mode", choices=MODES, default=SERVE, help="serve (vLLM), or a training set-up")
    if with_gpus:
        p.add_argument("--gpus", type=positive_int("--gpus"), default=1, dest="train_gpus",
                       help="GPUs the training job runs on (--mode other than serve)")
    shard = p.add_mutually_exclusive_group()
    shard.add_argument("--zero", type=int, choices=[0, 1, 2, 3], help="DeepSpeed ZeRO stage (0: plain DDP)")
    shard.add_argument("--fsdp", action="store_true", help="PyTorch FSDP / FSDP2 full sharding")
    p.add_argument("--precision", choices=[x.value for x in Precision], default=Precision.MIXED.value)
    p.add_argument("--optimizer", choices=[x.value for x in Optimizer], default=Optimizer.ADAMW.value)
    p.add_argument("--offload", choices=[x.value for x in Offload], default=Offload.NONE.value)
    p.add_argument("--micro-batch", type=positive_int("--micro-batch"), default=1)
    p.add_argument("--seq-len", type=positive_int("--seq-len"), default=2048)
    p.add_argument("--gradient-accumulation", type=positive_int("--gradient-accumulation"), default=1)
    p.add_argument("--activation-checkpointing", choices=[x.value for x in Checkpointing],
                   default=Checkpointing.NONE.value)
    p.add_argument("--attention", choices=["flash", "eager"], default="flash",
                   help="flash-style (SDPA, FlashAttention: no seq² scores kept) or eager")
    p.add_argument("--sequence-parallel", action="store_true")
    p.add_argument("--lora-rank", type=positive_int("--lora-rank"), default=16)
    p.add_argument("--lora-targets", nargs="+", default=list(ALL_LINEAR), help="module names PEFT adapts")
    p.add_argument("--kl-coef", type=float, default=None, help="GRPO: 0 (TRL's default) loads no reference model")
    p.add_argument("--rollout", choices=[x.value for x in Rollout], default=Rollout.NONE.value)
    p.add_argument("--rollout-gpu-memory-utilization", type=fraction("--rollout-gpu-memory-utilization"),
                   default=None)
    p.add_argument("--rollout-sleep", action="store_true",
                   help="vLLM sleeps between generations (TRL's vllm_enable_sleep_mode): its share is freed "
                        "while the policy trains; --max-model-len sets its prompt + completion length")


def _sharding(args: argparse.Namespace) -> Sharding | None:
    if args.fsdp:
        return Sharding.FSDP
    if args.zero is not None:
        return Sharding.DDP if args.zero == 0 else Sharding(f"zero{args.zero}")
    return None


def training_config(args: argparse.Namespace, gpus: int, sharding: Sharding | None) -> TrainingConfig:
    extra: dict[str, Any] = {}
    if args.rollout_gpu_memory_utilization is not None:
        if args.rollout_gpu_memory_utilization >= 1:
            raise UsageError("--rollout-gpu-memory-utilization must be below 1: training shares the GPU")
        extra["rollout_gpu_memory_utilization"] = args.rollout_gpu_memory_utilization
    if args.kl_coef is not None and args.kl_coef < 0:
        raise UsageError(f"--kl-coef must be 0 or more, got {args.kl_coef}")
    return TrainingConfig(
        mode=TrainMode(args.mode), gpus=gpus, sharding=sharding or Sharding.DDP, precision=Precision(args.precision),
        optimizer=Optimizer(args.optimizer), offload=Offload(args.offload), micro_batch=args.micro_batch,
        seq_len=args.seq_len, gradient_accumulation=args.gradient_accumulation,
        checkpointing=Checkpointing(args.activation_checkpointing), eager_attention=args.attention == "eager",
        tensor_parallel=args.tp or 1, pipeline_parallel=getattr(args, "pp", None) or 1,
        sequence_parallel=args.sequence_parallel,
        lora_rank=args.lora_rank, lora_targets=tuple(args.lora_targets), kl_coef=args.kl_coef,
        rollout=Rollout(args.rollout), rollout_sleep=args.rollout_sleep,
        rollout_max_len=getattr(args, "max_model_len", None), **extra)


def _rows(est: TrainingEstimate) -> list[tuple[str, int]]:
    return [("parameters", est.parameters), ("gradients", est.gradients),
            ("optimizer states (+ fp32 master weights)", est.optimizer), ("activations", est.activations),
            ("frozen models (reference, reward)", est.frozen_models), ("rollout engine (vLLM)", est.rollout_engine),
            ("overhead (CUDA context, buffers)", est.overhead), ("total (peak)", est.total)]


def cmd_estimate_training(args: argparse.Namespace, gpu: GPUType, console: Console) -> int:
    spec = resolve_model(args.model)
    cfg = training_config(args, args.train_gpus, _sharding(args))
    est = estimate_training(spec, gpu, cfg)
    if args.output == "json":
        console.print_json(json.dumps({**est.gib(), "trainable_params": est.trainable_params,
                                       "frozen_params": est.frozen_params, "notes": list(est.notes)}))
        return 0 if est.fits else 1
    t = Table(title=f"{spec.name}: {cfg.mode.value} on {cfg.gpus}x {gpu.name} ({cfg.sharding.value}, "
                    f"{cfg.precision.value}, {cfg.optimizer.value}, micro-batch {cfg.micro_batch} x {cfg.seq_len})")
    t.add_column("per GPU")
    t.add_column("GiB", justify="right")
    for label, value in _rows(est):
        t.add_row(label, f"{value / GIB:.2f}")
    t.add_row("GPU memory", f"{gpu.memory_gib:.2f}")
    console.print(t)
    console.print(f"trainable parameters: {est.trainable_params:,}")
    for note in est.notes:
        console.print(f"- {note}", highlight=False)
    console.print("[green]fits" if est.fits else f"[red]does not fit: needs {est.total / GIB:.2f} GiB per GPU, "
                   f"{gpu.name} has {gpu.memory_gib:g} GiB")
    return 0 if est.fits else 1


def cmd_plan_training(args: argparse.Namespace, console: Console) -> int:
    spec = resolve_model(args.model)
    cat = load_catalog(args.gpu_catalog)
    gpus = [cat.get(g.partition(":")[0]) for g in args.gpus] if args.gpus else list(cat.gpus)
    fixed = _sharding(args)
    found: list[tuple[float, GPUType, int, TrainingEstimate, Sharding]] = []
    closest: tuple[float, str] | None = None  # (share of GPU memory needed, what) of the nearest miss
    error = ""  # why a set-up could not be estimated at all (a flag combination, a target): said if nothing fits
    for gpu in gpus:
        for count in PLAN_GPU_COUNTS:
            for sharding in [fixed] if fixed else PLAN_SHARDINGS:
                try:
                    est = estimate_training(spec, gpu, training_config(args, count, sharding))
                except (EstimatorError, ValueError) as exc:
                    error = str(exc).splitlines()[0]
                    continue
                if est.fits:
                    found.append((count * gpu.price_per_hour, gpu, count, est, sharding or Sharding.DDP))
                    break
                share = est.total / est.gpu_memory
                if closest is None or share < closest[0]:
                    closest = (share, f"{count}x {gpu.name} ({(sharding or Sharding.DDP).value}) needs "
                                      f"{est.total / GIB:.1f} GiB per GPU of {est.gpu_memory / GIB:.1f}, activations "
                                      f"{est.activations / GIB:.1f} GiB")
            if found and found[-1][1] is gpu:
                break  # more of this GPU type only costs more
    found.sort(key=lambda f: (f[0], f[2]))
    if args.output == "json":
        console.print_json(json.dumps([{"gpu": g.name, "gpus": n, "sharding": s.value, "cost_per_hour": round(c, 4),
                                        **e.gib()} for c, g, n, e, s in found]))
        return 0 if found else 1
    if not found:
        console.print(f"[red]no GPU type of {', '.join(g.name for g in gpus)} fits {spec.name} ({args.mode}) with up "
                      f"to {PLAN_GPU_COUNTS[-1]} GPUs" + (f"; the closest: {closest[1]}" if closest else "")
                      + (f"; not estimated: {error}" if error and not closest else ""))
        return 1
    t = Table(title=f"{spec.name}: {args.mode}, micro-batch {args.micro_batch} x {args.seq_len}")
    for col in ("#", "GPU", "GPUs", "sharding", "GiB/GPU", "$/hour"):
        t.add_column(col, justify="left" if col in ("GPU", "sharding") else "right")
    for i, (cost, gpu, n, est, sharding) in enumerate(found, 1):
        t.add_row(str(i), gpu.name, str(n), sharding.value, f"{est.total / GIB:.1f}", f"{cost:.2f}")
    console.print(t)
    return 0
