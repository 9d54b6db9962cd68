"""Parse a vLLM ``/metrics`` page into ReplicaMetrics (pure; prometheus-client's text parser)."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from .snapshot import ReplicaMetrics

KV_USAGE = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")  # new name first; old before vLLM 0.10
RUNNING = "vllm:num_requests_running"
WAITING = "vllm:num_requests_waiting"
PREEMPTIONS = "vllm:num_preemptions"  # counter: exposed as ..._total
CACHE_INFO = "vllm:cache_config_info"
# time from arrival to the first scheduling step, observed when the request finishes; unlike TTFT it
# excludes the prefill itself, so it measures only what more replicas can shorten
QUEUE_TIME = "vllm:request_queue_time_seconds"
# vLLM's default bucket bounds for it (seconds); +Inf closes the histogram
QUEUE_TIME_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0,
                      240.0, 480.0, 960.0, 1920.0, 7680.0, float("inf"))


class MetricsParseError(ValueError):
    pass


def parse_vllm_metrics(text: str) -> ReplicaMetrics:
    """One replica's signals; several engines (data parallel) are averaged (usage) or summed (counts)."""
    values: dict[str, list[float]] = {}
    info: dict[str, str] = {}
    queue: dict[float, float] = {}
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if family.name == CACHE_INFO and not info:
                    info = dict(sample.labels)
                    continue
                if sample.name == f"{QUEUE_TIME}_bucket":
                    le = float(sample.labels.get("le", "inf"))
                    queue[le] = queue.get(le, 0.0) + float(sample.value)
                    continue
                values.setdefault(sample.name, []).append(float(sample.value))
    except ValueError as exc:
        raise MetricsParseError(f"not a Prometheus text page: {exc}") from None
    usage = next((values[k] for k in KV_USAGE if k in values), None)
    if usage is None:
        raise MetricsParseError(f"no {KV_USAGE[0]} (or {KV_USAGE[1]}) in the page: not a vLLM server?")
    preempt = values.get(f"{PREEMPTIONS}_total") or values.get(PREEMPTIONS) or [0.0]

    def as_int(key: str) -> int | None:
        raw = info.get(key)
        return int(raw) if raw not in (None, "", "None") and str(raw).isdigit() else None

    return ReplicaMetrics(
        kv_cache_usage=sum(usage) / len(usage),
        running=sum(values.get(RUNNING, [0.0])),
        waiting=sum(values.get(WAITING, [0.0])),
        preemptions_total=sum(preempt),
        num_gpu_blocks=as_int("num_gpu_blocks"),
        block_size=as_int("block_size"),
        queue_time_buckets=tuple(sorted(queue.items())),
    )
