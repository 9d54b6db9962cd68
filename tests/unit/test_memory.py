import pytest

from kvscale.estimator.catalog import resolve_model
from kvscale.estimator.errors import EstimatorError, InvalidParallelism
from kvscale.estimator.gpus import GIB, custom_gpu, default_catalog
from kvscale.estimator.memory import ServingConfig, estimate, pp_stages
from kvscale.estimator.quantization import Quantization

H100 = default_catalog().get("H100-80GB")
L4 = default_catalog().get("L4")


def est(model: str, gpu=H100, **kw):  # type: ignore[no-untyped-def]
    return estimate(resolve_model(model), gpu, ServingConfig(**kw))


def test_llama_8b_weights_match_vllm_log() -> None:
    # vLLM: "Loading model weights took 14.9888 GB" (vllm-project/vllm#10517)
    assert est("meta-llama/Llama-3.1-8B-Instruct", max_model_len=8192).weights_bytes / GIB == pytest.approx(
        14.9888, rel=0.01)


def test_tensor_parallel_splits_weights() -> None:
    one = est("meta-llama/Llama-3.1-70B-Instruct", tensor_parallel_size=4, max_model_len=8192)
    two = est("meta-llama/Llama-3.1-70B-Instruct", tensor_parallel_size=8, max_model_len=8192)
    assert two.weights_bytes == pytest.approx(one.weights_bytes / 2, rel=0.01)
    assert two.kv_cache_tokens > 2 * one.kv_cache_tokens  # freed weights and halved KV heads per GPU


def test_pipeline_stages_split_layers_like_vllm() -> None:
    assert [len(r) for r in pp_stages(80, 3)] == [27, 27, 26]  # extra layers go before the last stage
    assert [len(r) for r in pp_stages(32, 4)] == [8, 8, 8, 8]
    a = est("meta-llama/Llama-3.1-70B-Instruct", tensor_parallel_size=4, max_model_len=8192)
    b = est("meta-llama/Llama-3.1-70B-Instruct", tensor_parallel_size=2, pipeline_parallel_size=2,
            max_model_len=8192)
    assert b.weights_bytes == pytest.approx(a.weights_bytes, rel=0.05)


@pytest.mark.parametrize("quant", [Quantization.BNB_NF4])
def test_online_4bit_lands_near_a_third_of_bf16(quant: Quantization) -> None:
    bf16 = est("meta-llama/Llama-3.1-8B-Instruct", max_model_len=8192).weights_bytes
    q4 = est("meta-llama/Llama-3.1-8B-Instruct", max_model_len=8192, quantization=quant).weights_bytes
    assert 0.30 <= q4 / bf16 <= 0.40  # embeddings and lm_head stay 16-bit


def test_awq_checkpoint_with_scales_and_16bit_embeddings() -> None:
    awq = est("hugging-quants/Meta-Llama-3.1-70B-Instruct-AWQ-INT4", tensor_parallel_size=2, max_model_len=8192)
    bf16 = est("meta-llama/Llama-3.1-70B-Instruct", tensor_parallel_size=2, max_model_len=8192)
    assert 0.27 <= awq.weights_bytes / bf16.weights_bytes <= 0.32


def test_fp8_halves_linear_weights() -> None:
    bf16 = est("Qwen/Qwen2.5-7B-Instruct", max_model_len=8192).weights_bytes
    fp8 = est("Qwen/Qwen2.5-7B-Instruct", max_model_len=8192, quantization=Quantization.FP8).weights_bytes
    assert 0.5 < fp8 / bf16 < 0.6  # the 152k-token embeddings stay bf16


def test_kv_budget_is_utilization_minus_weights_and_overheads() -> None:
    e = est("meta-llama/Llama-3.1-8B-Instruct", max_model_len=8192, gpu_memory_utilization=0.9)
    assert e.kv_cache_bytes == e.requested_bytes - e.weights_bytes - e.activation_bytes - e.non_torch_bytes \
        - e.cuda_graph_bytes
    assert e.num_blocks == e.kv_cache_bytes // (131072 * 16)
    assert e.max_concurrency == pytest.approx(e.kv_cache_tokens / 8192, rel=1e-3)


def test_more_batched_tokens_cost_activation_memory() -> None:
    small = est("meta-llama/Llama-3.1-8B-Instruct", max_model_len=8192, max_num_batched_tokens=2048)
    big = est("meta-llama/Llama-3.1-8B-Instruct", max_model_len=8192, max_num_batched_tokens=16384)
    assert big.activation_bytes > 4 * small.activation_bytes - small.activation_bytes
    assert big.kv_cache_tokens < small.kv_cache_tokens


def test_eager_mode_frees_cuda_graph_memory() -> None:
    graphs = est("meta-llama/Llama-3.1-8B-Instruct", max_model_len=8192)
    eager = est("meta-llama/Llama-3.1-8B-Instruct", max_model_len=8192, enforce_eager=True)
    assert eager.cuda_graph_bytes == 0 and eager.kv_cache_tokens > graphs.kv_cache_tokens


def test_70b_does_not_fit_one_l4_and_says_by_how_much() -> None:
    e = est("meta-llama/Llama-3.1-70B-Instruct", gpu=L4, max_model_len=8192)
    assert not e.fits
    assert "131.42 GiB" in e.reason and "20.29 GiB" in e.reason


def test_custom_gpu_memory() -> None:
    e = est("Qwen/Qwen2.5-0.5B-Instruct", gpu=custom_gpu(23.6), max_model_len=4096)
    assert e.fits and e.gpu_memory_bytes == int(23.6 * GIB)


def test_fixed_kv_space_like_vllm_cpu() -> None:
    e = estimate(resolve_model("Qwen/Qwen2.5-0.5B-Instruct"), H100,
                 ServingConfig(max_model_len=4096, kv_cache_memory_bytes=GIB, block_size=128))
    # 24 layers x 2 x 2 kv heads x 64 dims x 2 bytes = 12288 bytes/token
    assert e.kv_cache_tokens == GIB // 12288 // 128 * 128


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"tensor_parallel_size": 3}, "does not divide num_attention_heads 32"),
        ({"tensor_parallel_size": 64}, "does not divide num_attention_heads"),
        ({"max_model_len": 10**7}, "exceeds the model's max_position_embeddings 131072"),
    ],
)
def test_impossible_settings_are_rejected_with_reasons(kw: dict[str, int], message: str) -> None:
    with pytest.raises(EstimatorError, match=message):
        est("meta-llama/Llama-3.1-8B-Instruct", **kw)


def test_kv_heads_not_divisible() -> None:
    with pytest.raises(InvalidParallelism, match="num_key_value_heads 10"):
        est("microsoft/Phi-3-medium-4k-instruct", tensor_parallel_size=8, max_model_len=4096)
