"""Parse a vLLM ``/metrics`` page into ReplicaMetrics (pure; prometheus-client's text parser)."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from .snapshot import ReplicaMetrics

KV_USAGE = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")  # new name first; old before vLLM 0.10
RUNNING = "vllm:num_requests_running"
WAITING = "vllm:num_requests_waiting"
PREEMPTIONS = "vllm:num_preemptions"  # counter: exposed as ..._total
CACHE_INFO = "vllm:cache_config_info"


class MetricsParseError(ValueError):
    pass


def parse_vllm_metrics(text: str) -> ReplicaMetrics:
    """One replica's signals; several engines (data parallel) are averaged (usage) or summed (counts)."""
    values: dict[str, list[float]] = {}
    info: dict[str, str] = {}
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if family.name == CACHE_INFO and not info:
                    info = dict(sample.labels)
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
    )
