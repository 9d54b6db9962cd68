"""The LLMDeployment that real-node tests, the demo and the start-up benchmark run on CPU vLLM pods.

``llama_kv_heavy`` is a tiny Llama whose KV cache is large per token (8 layers x 32 KV heads x 64 dims
x 2 x bf16 = 64 KiB), so the 1 GiB KV cache the CPU image sizes by default holds 16,384 tokens: a
dozen concurrent requests fill it. The weights are dummies and the config ships in the image under
``/models``, so the pod downloads nothing. The extra arguments are what any user of a dummy-weight,
tokenizer-less model passes; nothing here is CPU-specific (that lives in the image).
"""

from __future__ import annotations

from typing import Any

from ..operator.resource import GROUP, VERSION
from .images import MODELS_DIR
from .vllm_server import tiny_model_config

MODEL = "llama_kv_heavy"
SERVED_NAME = "tiny-llama"
#: KV tokens the CPU image's default 1 GiB cache holds for MODEL (2**30 / 65,536 bytes per token)
KV_TOKENS = 16_384


def tiny_llmdeployment(name: str, gpu: str = "L4", vllm: dict[str, Any] | None = None,
                       **autoscaling: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "LLMDeployment", "metadata": {"name": name},
        "spec": {
            "model": {"name": SERVED_NAME, "uri": f"{MODELS_DIR}/{MODEL}", "architecture": tiny_model_config(MODEL)},
            "serving": {"maxModelLen": 2048, "targetConcurrency": 1},
            "placement": {"gpuTypes": [gpu]},
            "autoscaling": {"minReplicas": 1, "maxReplicas": 2, **autoscaling},
            "vllm": {"extraArgs": ["--load-format", "dummy", "--skip-tokenizer-init", "--dtype", "bfloat16"],
                     **(vllm or {})},
        },
    }
