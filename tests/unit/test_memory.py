import pytest

from kvscale.estimator.catalog import resolve_model
from kvscale.estimator.errors import EstimatorError, InvalidParallelism
from kvscale.estimator.gpus import GIB, custom_gpu, default_catalog
from kvscale.estimator.memory import ServingConfig, estimate, pp_stages
from kvscale.estimator.quantization import Quantization
from kvscale.estimator.vllm_profiles import profile_for

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


#: Qwen/Qwen2-7B-Instruct on one or two A100-80GB, max_model_len 16384, vLLM 0.10.1.1 (dennislee22/vLLM-benchmarking
#: logs, bench/data/published_vllm_startups.json): the KV memory vLLM said it had and the tokens it made of it,
#: which checks the KV layout and block rounding, not the overhead model (bench/estimator_accuracy.py does that).
#: Qwen2.5-7B has Qwen2-7B's layout: 28 layers x (K + V) x 4 KV heads x 128 dims x 2 bytes = 57,344 bytes/token.
QWEN2_7B_A100 = [  # (tensor parallel, "Available KV cache memory" GiB, "GPU KV cache size" tokens)
    (1, 5.01, 93_872), (1, 24.83, 464_848), (2, 12.02, 450_192), (2, 31.83, 1_192_160)]


@pytest.mark.parametrize(("tp", "kv_gib", "vllm_tokens"), QWEN2_7B_A100)
def test_kv_tokens_from_the_kv_memory_vllm_reported_are_the_tokens_it_reported(tp: int, kv_gib: float,
                                                                              vllm_tokens: int) -> None:
    """vLLM prints the KV memory to two decimals: ±0.005 GiB is ±94 tokens at 57,344 bytes per token, ±187 at
    TP2 (each GPU holds two of the four KV heads, 28,672 bytes per token), plus one 16-token block."""
    e = est("Qwen/Qwen2.5-7B-Instruct", gpu=default_catalog().get("A100-80GB"), tensor_parallel_size=tp,
            max_model_len=16384, kv_cache_memory_bytes=int(kv_gib * GIB))
    rounding = 0.005 * GIB / (57_344 / tp) + 16
    assert abs(e.kv_cache_tokens - vllm_tokens) <= rounding
    assert e.max_concurrency == pytest.approx(vllm_tokens / 16384, abs=rounding / 16384)


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


@pytest.mark.parametrize(("release", "line", "utilization", "graphs_in_budget"), [
    ("0.32.0", (0, 25), 0.92, True), ("0.14.1", (0, 13), 0.9, True), ("0.10.1.1", (0, 10), 0.9, False),
    ("0.8.5", (0, 10), 0.9, False)])
def test_each_release_gets_its_lines_profile(release: str, line: tuple[int, int], utilization: float,
                                             graphs_in_budget: bool) -> None:
    p = profile_for(release)
    assert (p.line, p.gpu_memory_utilization, p.graphs_in_kv_budget) == (line, utilization, graphs_in_budget)


def test_a_release_that_is_not_one_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="'latest'"):
        ServingConfig(vllm_release="latest")


def test_before_0_13_cuda_graphs_come_out_of_what_the_kv_cache_leaves_not_out_of_its_budget() -> None:
    """vLLM 0.10 captured graphs after allocating the KV cache; 0.13 on subtracts its graph estimate first."""
    new = est("meta-llama/Llama-3.1-8B-Instruct", max_model_len=8192, gpu_memory_utilization=0.9)
    old = est("meta-llama/Llama-3.1-8B-Instruct", max_model_len=8192, gpu_memory_utilization=0.9,
              vllm_release="0.10.1")
    assert new.cuda_graph_bytes > 0 and old.cuda_graph_bytes == 0
    assert old.kv_cache_bytes == new.kv_cache_bytes + new.cuda_graph_bytes
