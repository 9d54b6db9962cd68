"""The LLMDeployment that real-node tests, the demo and the start-up benchmark run on CPU vLLM pods.

``llama_kv_heavy`` is a tiny Llama whose KV cache is large per token (8 layers x 32 KV heads x 64 dims
x 2 x bf16 = 64 KiB), so the 1 GiB KV cache the CPU image sizes by default holds 16,384 tokens: a
dozen concurrent requests fill it. The weights are dummies and the config ships in the image under
``/models``, so the pod downloads nothing. The extra arguments are what any user of a dummy-weight,
tokenizer-less model passes. What is CPU-specific is set through spec fields, as a user would: the CPU
backend's block size and host resources sized for a 2-core machine.
"""

from __future__ import annotations

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


def tiny_llmdeployment(name: str, gpu: str = "L4", vllm: dict[str, Any] | None = None,
                       **autoscaling: Any) -> dict[str, Any]:
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
                     "resources": {"requests": {"cpu": CPU_REQUEST, "memory": MEMORY_REQUEST}}, **(vllm or {})},
        },
    }
