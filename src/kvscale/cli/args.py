"""Argument types and shared arguments: each bad value names its flag and what is wrong."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from typing import NoReturn

from ..estimator.gpus import GPUType, custom_gpu, load_catalog
from ..estimator.kv_cache import KV_CACHE_DTYPES
from ..estimator.memory import DEFAULT_GPU_MEMORY_UTILIZATION
from ..estimator.quantization import Quantization
from .errors import EXIT_USAGE

#: the GPU `estimate` and `perf` assume when none is named
DEFAULT_GPU = "H100-80GB"


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        print(f"kvscale: error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def positive_int(name: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be an integer, got {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{name} must be positive, got {value}")
        return value
    return parse


def fraction(name: str) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number, got {text!r}") from None
        if not 0 < value <= 1:
            raise argparse.ArgumentTypeError(f"{name} must be in (0, 1], got {value}")
        return value
    return parse


def positive_float(name: str) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number, got {text!r}") from None
        if not math.isfinite(value) or value <= 0:
            raise argparse.ArgumentTypeError(f"{name} must be a positive finite number, got {value}")
        return value
    return parse


def percentile(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--percentile must be a number, got {text!r}") from None
    if not 50 <= value < 100:
        raise argparse.ArgumentTypeError(f"--percentile must be in [50, 100), got {value:g}")
    return value


def quant(text: str) -> Quantization:
    try:
        return Quantization(text.lower())
    except ValueError:
        choices = ", ".join(q.value for q in Quantization)
        raise argparse.ArgumentTypeError(f"unknown quantization {text!r} (choose from {choices})") from None


def add_replica_args(p: argparse.ArgumentParser) -> None:
    """One replica's GPU and layout, as `estimate` and `perf` take them."""
    gpu = p.add_mutually_exclusive_group()
    gpu.add_argument("--gpu", default=None, help=f"GPU type from the catalog (default {DEFAULT_GPU})")
    gpu.add_argument("--gpu-memory-gib", type=positive_float("--gpu-memory-gib"),
                     help="total memory vLLM sees, for a card not in the catalog")
    p.add_argument("--tp", type=positive_int("--tp"), default=1, help="tensor-parallel size")
    p.add_argument("--pp", type=positive_int("--pp"), default=1, help="pipeline-parallel size")
    p.add_argument("--quantization", type=quant, default=Quantization.AUTO)
    p.add_argument("--max-num-seqs", type=positive_int("--max-num-seqs"))


def replica_gpu(args: argparse.Namespace) -> GPUType:
    """The GPU that --gpu or --gpu-memory-gib names (add_replica_args)."""
    if args.gpu_memory_gib is not None:
        return custom_gpu(args.gpu_memory_gib)
    return load_catalog(args.gpu_catalog).get(args.gpu or DEFAULT_GPU)


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="catalog id (see `kvscale models`), path to a config.json, or a Hub id (online)")
    p.add_argument("--max-model-len", type=positive_int("--max-model-len"))
    p.add_argument("--kv-cache-dtype", default="auto", choices=KV_CACHE_DTYPES)
    p.add_argument("--gpu-memory-utilization", type=fraction("--gpu-memory-utilization"),
                   default=DEFAULT_GPU_MEMORY_UTILIZATION)
    p.add_argument("--max-num-batched-tokens", type=positive_int("--max-num-batched-tokens"))
    p.add_argument("--gpu-catalog", help="YAML GPU catalog replacing the built-in one (prices, new cards)")
    p.add_argument("--output", choices=("table", "json"), default="table")
