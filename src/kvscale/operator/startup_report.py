"""What a vLLM replica's start-up log says about its memory, per GPU (pure).

vLLM prints the weights it loaded ("Model loading took 14.25 GiB"), the KV cache memory it found
("Available KV cache memory: 5.01 GiB") and, unless eager, the CUDA-graph pool ("Graph capturing finished
in 5 secs, took 0.50 GiB"); the worker of rank 0 prints first. Kept beside a replica's calibration record,
they say which part of the estimate a KV-block gap came from. The CPU backend prints none of them.
"""

from __future__ import annotations

import re

_FIELDS = {
    "weightsGiB": re.compile(r"Model loading took (-?\d+(?:\.\d+)?) GiB"),
    "availableKVCacheGiB": re.compile(r"Available KV cache memory: (-?\d+(?:\.\d+)?) GiB"),
    "cudaGraphGiB": re.compile(r"Graph capturing finished in [\d.]+ secs?, took (-?\d+(?:\.\d+)?) GiB"),
}


def startup_report(log: str | None) -> dict[str, float]:
    """The memory figures a start-up log states (the first of each), by status field name."""
    out: dict[str, float] = {}
    for field, pattern in _FIELDS.items():
        m = pattern.search(log or "")
        if m:
            out[field] = float(m.group(1))
    return out
