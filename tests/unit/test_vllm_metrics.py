import pytest

from kvscale.autoscaler.vllm_metrics import MetricsParseError, parse_vllm_metrics

CURRENT = """# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 7.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="m"} 3.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.8125
# HELP vllm:num_preemptions_total Cumulative number of preemption from the engine.
# TYPE vllm:num_preemptions_total counter
vllm:num_preemptions_total{engine="0",model_name="m"} 12.0
# HELP vllm:cache_config_info Information of the LLMEngine CacheConfig
# TYPE vllm:cache_config_info gauge
vllm:cache_config_info{block_size="128",engine="0",num_gpu_blocks="4096",cache_dtype="auto"} 1.0
"""

OLD = """# TYPE vllm:gpu_cache_usage_perc gauge
vllm:gpu_cache_usage_perc{model_name="m"} 0.25
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{model_name="m"} 2.0
"""

TWO_ENGINES = """# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0"} 0.2
vllm:kv_cache_usage_perc{engine="1"} 0.6
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0"} 1.0
vllm:num_requests_waiting{engine="1"} 4.0
"""


@pytest.mark.parametrize(
    ("text", "kv", "running", "waiting", "preempt", "blocks"),
    [
        (CURRENT, 0.8125, 7, 3, 12, 4096),
        (OLD, 0.25, 2, 0, 0, None),
        (TWO_ENGINES, 0.4, 0, 5, 0, None),
    ],
)
def test_parse(text: str, kv: float, running: float, waiting: float, preempt: float, blocks: int | None) -> None:
    m = parse_vllm_metrics(text)
    assert (m.kv_cache_usage, m.running, m.waiting, m.preemptions_total, m.num_gpu_blocks) == pytest.approx(
        (kv, running, waiting, preempt, blocks)) if blocks else (
        m.kv_cache_usage, m.running, m.waiting, m.preemptions_total) == pytest.approx((kv, running, waiting, preempt))


@pytest.mark.parametrize("text", ["# TYPE up gauge\nup 1\n", "garbage {{{"])
def test_pages_without_vllm_metrics_are_errors_not_zero(text: str) -> None:
    with pytest.raises(MetricsParseError):
        parse_vllm_metrics(text)


QUEUE = CURRENT + """# HELP vllm:request_queue_time_seconds Histogram of time spent in WAITING phase for request.
# TYPE vllm:request_queue_time_seconds histogram
vllm:request_queue_time_seconds_bucket{engine="0",le="0.3",model_name="m"} 50.0
vllm:request_queue_time_seconds_bucket{engine="0",le="1.0",model_name="m"} 90.0
vllm:request_queue_time_seconds_bucket{engine="0",le="2.0",model_name="m"} 97.0
vllm:request_queue_time_seconds_bucket{engine="0",le="+Inf",model_name="m"} 100.0
vllm:request_queue_time_seconds_count{engine="0",model_name="m"} 100.0
vllm:request_queue_time_seconds_sum{engine="0",model_name="m"} 61.5
"""


def test_queue_time_histogram_counts_requests_over_an_objective() -> None:
    m = parse_vllm_metrics(QUEUE)
    assert m.queue_time_buckets[-1] == (float("inf"), 100.0)
    assert m.queue_time_counts(1.0) == (100.0, 10.0)
    assert m.queue_time_counts(2.0) == (100.0, 3.0)
    assert m.queue_time_counts(1.5) == (100.0, 6.5)  # halfway between the 1.0 s (90) and 2.0 s (97) bounds
    assert m.queue_time_counts(0.15) == (100.0, 50.0)  # below the first bound: that bound
    assert m.queue_time_counts(9999) == (100.0, 3.0)  # past the last finite bound nothing is known
    assert parse_vllm_metrics(CURRENT).queue_time_counts(1.0) == (0.0, 0.0)  # no histogram: no signal
