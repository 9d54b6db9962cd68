"""Generated LLMDeployment specs for the hostile-input checks: mostly plausible fields, often not.

Every field the CRD and the operator read can come out as a valid value, an extreme one, the wrong
type, or junk, with unknown fields mixed in. ``replicas`` is left out: the checks set 0, so
admission and reconciliation are under test, not pods.
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

JUNK = st.one_of(st.none(), st.booleans(), st.integers(-2**40, 2**40),
                 st.floats(allow_nan=False, allow_infinity=False, width=32), st.text(max_size=30),
                 st.lists(st.integers(-3, 3), max_size=3), st.dictionaries(st.text(min_size=1, max_size=5),
                                                                           st.integers(), max_size=2))


#: one field in this many is junk: with a dozen fields, about a third of the objects have none and reach
#: the operator (where the values themselves may still be impossible: a 405B model on one L4, a taken flag)
PLAUSIBLE_PER_JUNK = 7


@st.composite
def _either(draw: st.DrawFn, valid: st.SearchStrategy[Any]) -> Any:
    junk = draw(st.sampled_from([False] * PLAUSIBLE_PER_JUNK + [True]))
    return draw(JUNK if junk else valid)


def field(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return _either(valid)


MODELS = st.sampled_from(["Qwen/Qwen2.5-0.5B-Instruct", "meta-llama/Llama-3.1-8B-Instruct",
                          "meta-llama/Llama-3.1-405B-Instruct", "acme/unknown-7b", "x" * 300, ""])
LENGTHS = st.sampled_from([16, 2048, 4096, 8192, 32768, 131072, 10**7, 2**31 - 1])
SPECS = st.fixed_dictionaries({
    "model": st.fixed_dictionaries({"name": field(MODELS)}, optional={
        "uri": field(st.sampled_from(["s3://b/m", "pvc://c/p", "gs://", "ftp://x", "/models/x", "pvc://", "hf://"])),
        "sizeGiB": field(st.sampled_from([0.5, 16, 140, 5000])),
        "hfTokenSecret": field(st.sampled_from(["hf", "x" * 300])),
        "architecture": field(st.sampled_from([{}, {"architectures": ["LlamaForCausalLM"], "hidden_size": -1},
                                               {"model_type": "llama", "num_hidden_layers": 10**9}]))}),
    "serving": st.fixed_dictionaries({"maxModelLen": field(LENGTHS)}, optional={
        "targetConcurrency": field(st.sampled_from([1, 4, 64, 10**6])),
        "gpuMemoryUtilization": field(st.sampled_from([0.05, 0.5, 0.9, 0.99, 1.0])),
        "kvCacheDtype": field(st.sampled_from(["auto", "fp8", "fp4"])),
        "maxNumSeqs": field(st.sampled_from([1, 256, 10**6])),
        "maxNumBatchedTokens": field(st.sampled_from([1, 8192, 10**8])),
        "blockSize": field(st.sampled_from([1, 8, 16, 17, 128, 4096]))}),
}, optional={
    "placement": st.fixed_dictionaries({}, optional={
        "gpuTypes": field(st.lists(st.sampled_from(["L4", "H100-80GB", "MI300X", "TPU-v5"]), max_size=4)),
        "quantization": field(st.lists(st.sampled_from(["auto", "fp8", "awq", "bitsandbytes"]), min_size=1,
                                       max_size=3)),
        "tensorParallelSize": field(st.sampled_from([1, 2, 3, 8, 16])),
        "maxGPUsPerReplica": field(st.sampled_from([1, 2, 8, 16])),
        "nodeSelector": field(st.dictionaries(st.sampled_from(["zone", "a/b", "x" * 70]), st.text(max_size=8),
                                              max_size=2))}),
    "autoscaling": st.fixed_dictionaries({"enabled": st.just(False)}, optional={
        "minReplicas": field(st.sampled_from([0, 1, 3, 1000])), "maxReplicas": field(st.sampled_from([1, 2, 1000])),
        "targetKVCacheUtilization": field(st.sampled_from([0.01, 0.7, 1.0])),
        "metrics": field(st.fixed_dictionaries({"type": st.sampled_from(["pod", "prometheus"])},
                                               optional={"prometheusURL": st.sampled_from(
                                                   ["http://p:9090", "file:///etc/passwd", "x"])}))}),
    "vllm": st.fixed_dictionaries({}, optional={
        "extraArgs": field(st.lists(st.sampled_from(["--enforce-eager", "--tensor-parallel-size", "4",
                                                     "--max-model-len=9", "--seed", "x" * 300]), max_size=5)),
        "port": field(st.sampled_from([1, 8000, 65535])), "image": field(st.sampled_from(
            ["vllm/vllm-openai:v0.10.0", "vllm/vllm-openai:latest", "my/image@sha256:" + "0" * 64, "x" * 600])),
        "drainSeconds": field(st.sampled_from([0, 30, 3600])),
        "resources": field(st.sampled_from([{}, {"limits": {"memory": "lots"}}, {"requests": {"cpu": "2"}}]))}),
    "bogusField": JUNK,
})
