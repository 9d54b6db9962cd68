"""The LLMDeployment that real-node tests, the demo and the start-up benchmark run on CPU vLLM pods.

``llama_kv_heavy`` is a tiny Llama whose KV cache is large per token (8 layers x 32 KV heads x 64 dims
x 2 x bf16 = 64 KiB), so the 1 GiB KV cache the CPU image sizes by default holds 16,384 tokens: a
dozen concurrent requests fill it. The weights are dummies and the config ships in the image under
``/models``, so the pod downloads nothing. The extra arguments are what any user of a dummy-weight,
tokenizer-less model passes. What is CPU-specific is set through spec fields, as a user would: the CPU
backend's block size and host resources sized for a 2-core machine; and, as a user keeps a persistent
compile cache, a hostPath volume holds vLLM's (``compile_cache_dir``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..estimator.memory import CPU_BLOCK_SIZE
from ..operator.resource import GROUP, VERSION
from .images import MODELS_DIR
from .vllm_server import tiny_model_config

MODEL = "llama_kv_heavy"
SERVED_NAME = "tiny-llama"
#: KV tokens the CPU image's default 1 GiB cache holds for MODEL (2**30 / 65,536 bytes per token)
KV_TOKENS = 16_384
#: what one CPU replica of MODEL needs here, in place of the GPU-host figures kvscale derives (two replicas
#: fit a 2-core node). Memory: the pod's cgroup peaked at 3.5 GiB under the scale test's load (torch in
#: three processes, the 1 GiB KV cache, the page cache it charges)
CPU_REQUEST = "500m"
#: vLLM's CPU server default (the L4 plan would render 256, whose warm-up a loaded 2-core machine drags out)
CPU_MAX_NUM_SEQS = 128
MEMORY_REQUEST = "6Gi"
#: vLLM's compile cache on this host, shared by every CPU pod through a hostPath volume, as a user mounts a
#: persistent cache: a pod after the first loads the compiled graphs instead of spending about 40 s of this
#: 2-core machine in torch.compile (the artifacts are keyed by vLLM's config hash and written atomically)
COMPILE_CACHE_MOUNT = "/vllm-cache"


def compile_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "kvscale" / "vllm-compile-cache"


def _compile_cache() -> dict[str, Any]:
    return {"env": [{"name": "VLLM_CACHE_ROOT", "value": COMPILE_CACHE_MOUNT}],
            "volumes": [{"name": "vllm-cache", "hostPath": {"path": str(compile_cache_dir()),
                                                            "type": "DirectoryOrCreate"}}],
            "volumeMounts": [{"name": "vllm-cache", "mountPath": COMPILE_CACHE_MOUNT}]}


LIST_FIELDS = ("env", "volumes", "volumeMounts")


def _merged(base: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    """``given`` over ``base``; the list fields are joined (a caller's env adds to the compile cache's)."""
    out = {**base, **given}
    for k in LIST_FIELDS:
        if k in base and k in given:
            out[k] = [*base[k], *given[k]]
    return out


def tiny_llmdeployment(name: str, gpu: str = "L4", vllm: dict[str, Any] | None = None, compile_cache: bool = True,
                       **autoscaling: Any) -> dict[str, Any]:
    """``compile_cache``: mount the host's compile cache (off: every pod compiles, as on a fresh node)."""
    return {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "LLMDeployment", "metadata": {"name": name},
        "spec": {
            "model": {"name": SERVED_NAME, "uri": f"{MODELS_DIR}/{MODEL}", "architecture": tiny_model_config(MODEL)},
            # the CPU build's own defaults (vLLM's CPU block size and server batch limit), where a GPU's differ
            "serving": {"maxModelLen": 2048, "targetConcurrency": 1, "blockSize": CPU_BLOCK_SIZE,
                        "maxNumSeqs": CPU_MAX_NUM_SEQS},
            "placement": {"gpuTypes": [gpu]},
            "autoscaling": {"minReplicas": 1, "maxReplicas": 2, **autoscaling},
            "vllm": {"extraArgs": ["--load-format", "dummy", "--skip-tokenizer-init", "--dtype", "bfloat16"],
                     "resources": {"requests": {"cpu": CPU_REQUEST, "memory": MEMORY_REQUEST}},
                     **_merged(_compile_cache() if compile_cache else {}, vllm or {})},
        },
    }
