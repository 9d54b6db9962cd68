"""Argument types and shared arguments: each bad value names its flag and what is wrong."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import NoReturn

from ..estimator.kv_cache import KV_CACHE_DTYPES
from ..estimator.memory import DEFAULT_GPU_MEMORY_UTILIZATION
from ..estimator.quantization import Quantization
from .errors import EXIT_USAGE


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
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{name} must be positive, got {value}")
        return value
    return parse


def quant(text: str) -> Quantization:
    try:
        return Quantization(text.lower())
    except ValueError:
        choices = ", ".join(q.value for q in Quantization)
        raise argparse.ArgumentTypeError(f"unknown quantization {text!r} (choose from {choices})") from None


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="catalog id (see `kvscale models`), path to a config.json, or a Hub id (online)")
    p.add_argument("--max-model-len", type=positive_int("--max-model-len"))
    p.add_argument("--kv-cache-dtype", default="auto", choices=KV_CACHE_DTYPES)
    p.add_argument("--gpu-memory-utilization", type=fraction("--gpu-memory-utilization"),
                   default=DEFAULT_GPU_MEMORY_UTILIZATION)
    p.add_argument("--max-num-batched-tokens", type=positive_int("--max-num-batched-tokens"))
    p.add_argument("--gpu-catalog", help="YAML GPU catalog replacing the built-in one (prices, new cards)")
    p.add_argument("--output", choices=("table", "json"), default="table")
