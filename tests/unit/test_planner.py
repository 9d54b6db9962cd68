
import pytest

from kvscale.estimator.catalog import resolve_model
from kvscale.estimator.gpus import default_catalog
from kvscale.estimator.memory import ServingConfig, estimate
from kvscale.estimator.planner import GPUOption, LoadTarget, PlanRequest, Preference, plan
from kvscale.estimator.quantization import Quantization

CAT = default_catalog()


def opts(*names: str, per_node: int = 8) -> tuple[GPUOption, ...]:
    return tuple(GPUOption(gpu=CAT.get(n), gpus_per_node=per_node) for n in names)


def test_70b_on_h100_or_l4_picks_h100_with_required_tp() -> None:
    spec = resolve_model("meta-llama/Llama-3.1-70B-Instruct")
    result = plan(spec, PlanRequest(max_model_len=8192, concurrency=16, options=opts("H100-80GB", "L4"),
                                    max_nodes_per_replica=1))
    best = result.best
    assert best is not None and best.gpu == "H100-80GB"
    # 131 GiB of bf16 weights cannot fit TP1; the smallest feasible TP is chosen at equal cost per token
    assert best.tensor_parallel_size >= 2
    l4 = [r for r in result.rejections if r.gpu == "L4" and r.tensor_parallel_size == 4]
    assert l4 and "needs 131.4 GiB of weights per replica" in l4[0].reason
    assert all(p.cost_per_hour >= best.cost_per_hour for p in result.plans if p.gpu == "L4")


#: Llama-3.1-8B-Instruct at 8192 tokens, bf16, utilization 0.92, H100-80GB ($6.00/h) or L4 ($0.80/h) in nodes of 8.
#: KV per token: 32 layers x (K + V) x 8 KV heads x 128 dims x 2 bytes = 128 KiB, so C sequences of 8192 need
#: C GiB. Weights 14.96 GiB (vLLM #10517 measured 14.99 GB), split by TP. Usable per GPU: H100 79.11 GiB x 0.92 =
#: 72.78, L4 22.05 x 0.92 = 20.29. The per-GPU overhead (activations, CUDA graphs, non-torch) is taken anywhere in
#: 1-4 GiB, so the answers below hold for any overhead model in that range:
#:   H100 TP1: 72.78 - 14.96 - (1..4) = 53.8-56.8 GiB of KV          -> C <= 53 on one GPU:        $6.00
#:   L4 TP1:   20.29 - 14.96 - (1..4) = 1.3-4.3 GiB                   -> C=8: 2-7 replicas (>= $1.60); C=40: >= 10
#:   L4 TP2:   2 x (20.29 - 7.48 - (1..4)) = 17.6-23.6 GiB per replica -> C=8: 1 replica, 2 L4:       $1.60
#:   L4 TP4:   4 x (20.29 - 3.74 - (1..4)) = 50.2-62.2 GiB per replica -> C=40: 1 replica, 4 L4:      $3.20
#: (C=40 on L4 TP2 needs 2 or 3 replicas: never fewer than 4 L4.) So the cheapest is 2 L4 for C=8 and 4 L4 for C=40,
#: both below one H100.
HAND_COMPUTED = [(8, "L4", 2), (40, "L4", 4)]


@pytest.mark.parametrize(("concurrency", "gpu", "gpus"), HAND_COMPUTED)
def test_cheapest_plan_matches_the_hand_computed_one(concurrency: int, gpu: str, gpus: int) -> None:
    req = PlanRequest(max_model_len=8192, concurrency=concurrency, options=opts("H100-80GB", "L4"),
                      quantizations=(Quantization.AUTO,), gpu_memory_utilization=0.92)
    best = plan(resolve_model("meta-llama/Llama-3.1-8B-Instruct"), req).best
    assert best is not None and best.gpu == gpu
    assert best.total_gpus == gpus
    assert best.cost_per_hour == pytest.approx(gpus * CAT.get(gpu).price_per_hour)


def test_plans_are_listed_cheapest_first() -> None:
    req = PlanRequest(max_model_len=32768, concurrency=20, options=tuple(GPUOption(gpu=g) for g in CAT.gpus),
                      quantizations=(Quantization.AUTO, Quantization.FP8, Quantization.BNB_NF4))
    result = plan(resolve_model("meta-llama/Llama-3.1-70B-Instruct"), req)
    costs = [p.cost_per_hour for p in result.plans]
    assert result.best is not None and result.best.cost_per_hour == costs[0] and costs == sorted(costs)


def test_every_option_is_either_planned_or_rejected_with_a_reason() -> None:
    spec = resolve_model("meta-llama/Llama-3.1-8B-Instruct")
    req = PlanRequest(max_model_len=8192, concurrency=8, options=opts("L4", "A100-80GB"),
                      quantizations=(Quantization.AUTO, Quantization.FP8))
    result = plan(spec, req)
    # 2 GPU types x 5 TP degrees x 2 formats in one node; fp8 runs on no A100 (no fp8 support), which more
    # nodes would not change: no layout spans nodes
    assert len(result.plans) + len(result.rejections) == 2 * 5 * 2
    assert all(r.pipeline_parallel_size == 1 for r in result.rejections)
    assert all(r.reason for r in result.rejections)
    assert any("no fp8 support" in r.reason for r in result.rejections if r.gpu == "A100-80GB")


def test_plan_is_deterministic() -> None:
    spec = resolve_model("Qwen/Qwen3-32B")
    req = PlanRequest(max_model_len=16384, concurrency=32, options=tuple(GPUOption(gpu=g) for g in CAT.gpus))
    assert plan(spec, req) == plan(spec, req)


def test_nothing_fits_explains_with_numbers() -> None:
    spec = resolve_model("meta-llama/Llama-3.1-405B-Instruct")
    result = plan(spec, PlanRequest(max_model_len=32768, concurrency=1, options=opts("L4", per_node=4)))
    assert result.best is None
    msg = result.explain_infeasible()
    assert "L4" in msg and "GiB" in msg


def test_the_infeasible_summary_names_the_largest_replica_tried() -> None:
    """DeepSeek-R1 on 8xH100 and 8xA100 nodes: 8 GPUs of 80 GB were tried, not 1 L4."""
    spec = resolve_model("deepseek-ai/DeepSeek-R1")
    result = plan(spec, PlanRequest(max_model_len=16384, concurrency=8, max_nodes_per_replica=1,
                                    options=(*opts("H100-80GB", per_node=8), *opts("A100-80GB", per_node=8))))
    assert result.best is None
    message = result.explain_infeasible()
    assert "largest tried 8x " in message
    # and the smallest layout that would hold it, per GPU type: two nodes (fp8 weights: 626.8 GiB > 8 x 72.8)
    assert "needs 2 nodes of 8x H100-80GB (TP8xPP2, fp8) or 2 nodes of 8x A100-80GB (TP8xPP2, fp8)" in message


def test_a_model_larger_than_a_node_spans_whole_nodes_one_stage_per_node() -> None:
    """DeepSeek-R1 (fp8, 671 B) on 8xH100 nodes: TP8 within a node, PP2 across two, billed as 16 GPUs."""
    spec = resolve_model("deepseek-ai/DeepSeek-R1")
    result = plan(spec, PlanRequest(max_model_len=16384, concurrency=8, options=opts("H100-80GB", per_node=8)))
    best = result.best
    assert best is not None
    assert (best.tensor_parallel_size, best.pipeline_parallel_size, best.nodes_per_replica) == (8, 2, 2)
    price = CAT.get("H100-80GB").price_per_hour
    assert best.gpus_per_replica == 16 and best.cost_per_hour == best.replicas * 16 * price
    assert "400 Gb/s between 2 nodes" in best.interconnect and "nvlink 900 GB/s" in best.interconnect
    # the busiest stage holds 31 of 61 layers (vLLM gives the extra layer to the first stage) and the embedding
    one_stage = estimate(spec, CAT.get("H100-80GB"), ServingConfig(tensor_parallel_size=8, max_model_len=16384))
    assert 0.5 < best.memory.weights_bytes / one_stage.weights_bytes < 31 / 61 + 0.01
    # the hand-off between stages is charged: a token crosses the link once per step, slower over a slower link
    slow = plan(spec, PlanRequest(max_model_len=16384, concurrency=8, options=opts("H100-80GB", per_node=8),
                                  inter_node_gbits=25)).best
    assert slow is not None and slow.layout == best.layout
    assert slow.inter_token_latency_ms > best.inter_token_latency_ms
    one_node = next(p for p in plan(spec, PlanRequest(max_model_len=16384, concurrency=8,
                                                      options=opts("H200", per_node=8))).plans)
    assert one_node.nodes_per_replica == 1 and one_node.pipeline_parallel_size == 1
    assert one_node.interconnect == "nvlink 900 GB/s"


def test_replicas_span_nodes_only_when_no_single_node_holds_the_model() -> None:
    spec = resolve_model("meta-llama/Llama-3.1-8B-Instruct")
    result = plan(spec, PlanRequest(max_model_len=8192, concurrency=64, options=opts("L4", per_node=1)))
    assert result.plans and all(p.nodes_per_replica == 1 for p in result.plans)
    assert not any(r.pipeline_parallel_size > 1 for r in result.rejections)


def test_spanning_nodes_is_refused_with_the_reason_where_the_cluster_cannot_run_it() -> None:
    spec = resolve_model("deepseek-ai/DeepSeek-R1")
    why = "the cluster does not serve leaderworkerset.x-k8s.io/v1"
    result = plan(spec, PlanRequest(max_model_len=16384, concurrency=8, options=opts("H100-80GB", per_node=8),
                                    multi_node_unavailable=why))
    assert result.best is None
    spanning = [r for r in result.rejections if r.pipeline_parallel_size > 1]
    assert len(spanning) == 3 and all(why in r.reason and "needs" in r.reason for r in spanning)
    assert "needs 2 nodes of 8x H100-80GB (TP8xPP2, fp8)" in result.explain_infeasible()


def test_a_cluster_with_too_few_nodes_for_a_spanning_replica_says_how_many() -> None:
    spec = resolve_model("deepseek-ai/DeepSeek-R1")
    opt = GPUOption(gpu=CAT.get("H100-80GB"), gpus_per_node=8, nodes=3)
    result = plan(spec, PlanRequest(max_model_len=16384, concurrency=120, options=(opt,), max_nodes_per_replica=2))
    assert result.best is None
    pp2 = next(r for r in result.rejections if r.pipeline_parallel_size == 2)
    assert "x 2 nodes =" in pp2.reason and "the cluster has 3" in pp2.reason


def test_prefer_quality_keeps_bf16_when_it_fits() -> None:
    spec = resolve_model("meta-llama/Llama-3.1-8B-Instruct")
    base = dict(max_model_len=8192, concurrency=4, options=opts("L4"),
                quantizations=(Quantization.AUTO, Quantization.FP8, Quantization.BNB_NF4))
    cheap = plan(spec, PlanRequest(**base)).best
    good = plan(spec, PlanRequest(**base, prefer=Preference.QUALITY)).best
    assert good is not None and cheap is not None
    assert good.quantization is Quantization.BF16
    assert cheap.cost_per_hour <= good.cost_per_hour


def test_load_target_sizes_replicas_from_roofline_throughput() -> None:
    spec = resolve_model("meta-llama/Llama-3.1-8B-Instruct")
    low = plan(spec, PlanRequest(max_model_len=8192, options=opts("H100-80GB"),
                                 load=LoadTarget(requests_per_second=1, mean_input_tokens=1000,
                                                 mean_output_tokens=200))).best
    high = plan(spec, PlanRequest(max_model_len=8192, options=opts("H100-80GB"),
                                  load=LoadTarget(requests_per_second=200, mean_input_tokens=1000,
                                                  mean_output_tokens=200))).best
    assert low is not None and high is not None
    assert low.total_gpus == 1 and high.total_gpus > low.total_gpus
    assert high.decode_tokens_per_s > 1000


def test_checkpoint_quantization_cannot_be_replaced() -> None:
    spec = resolve_model("openai/gpt-oss-120b")
    result = plan(spec, PlanRequest(max_model_len=8192, concurrency=1, options=opts("H100-80GB"),
                                    quantizations=(Quantization.AUTO, Quantization.BF16)))
    assert result.best is not None and result.best.quantization is Quantization.MXFP4
    assert any("already quantized" in r.reason for r in result.rejections)


def test_replicas_are_counted_per_node_where_tp_leaves_gpus_idle() -> None:
    # two 6-GPU nodes: 12 GPUs, but a TP4 replica needs its 4 on one node, so they hold 2 replicas, not 3
    spec = resolve_model("meta-llama/Llama-3.1-70B-Instruct")
    pool = (GPUOption(gpu=CAT.get("H100-80GB"), gpus_per_node=6, nodes=2),)
    fits = plan(spec, PlanRequest(max_model_len=32768, concurrency=20, tensor_parallel_size=4, options=pool))
    assert fits.best is not None and fits.best.replicas == 2
    more = plan(spec, PlanRequest(max_model_len=32768, concurrency=40, tensor_parallel_size=4, options=pool))
    assert not more.plans
    assert "replicas x 4 GPUs; the cluster's 2 H100-80GB nodes of 6 hold 2" in more.rejections[0].reason
