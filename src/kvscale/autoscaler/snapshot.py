"""What the autoscaler sees at one instant (values only)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ReplicaMetrics:
    """One vLLM replica's signals, as its /metrics exports them."""

    kv_cache_usage: float  # 0..1 (vllm:kv_cache_usage_perc, formerly gpu_cache_usage_perc)
    running: float
    waiting: float
    preemptions_total: float
    num_gpu_blocks: int | None = None
    block_size: int | None = None
    # vllm:request_queue_time_seconds as cumulative (upper bound, count) buckets, +Inf last
    queue_time_buckets: tuple[tuple[float, float], ...] = ()

    def queue_time_counts(self, objective_s: float) -> tuple[float, float]:
        """(requests, requests that queued longer than the objective).

        An objective between two bucket bounds is interpolated linearly, as Prometheus's
        ``histogram_quantile`` does, so 2.4 s means 2.4 s and not the 2.5 s bound. Below the first
        bound it is that bound: most requests there did not wait at all, and spreading them evenly
        from 0 s would call a share of them slow. Past the last finite bound nothing is known, so
        every request there counts as slow.
        """
        if not self.queue_time_buckets:
            return 0.0, 0.0
        total = self.queue_time_buckets[-1][1]
        lo_le, lo_c = None, 0.0
        for le, c in self.queue_time_buckets:
            if le >= objective_s:
                if le == float("inf"):
                    return total, total - lo_c
                if lo_le is None or le == lo_le:
                    return total, total - c
                return total, total - (lo_c + (c - lo_c) * (objective_s - lo_le) / (le - lo_le))
            lo_le, lo_c = le, c
        return total, total - lo_c


@dataclass(frozen=True)
class Snapshot:
    now: float
    replicas: int  # what the scale target currently asks for
    ready: dict[str, ReplicaMetrics]  # pod name -> metrics of each serving pod that answered
    missing: tuple[str, ...] = ()  # serving pods whose metrics could not be read
    pending: int = 0  # pods not yet Running (starting, pulling, loading)
    unschedulable: int = 0  # pods the scheduler cannot place
    unschedulable_reason: str = ""
    failed: int = 0  # pods that are broken rather than starting (crash loop, image errors): never "starting"
    errors: tuple[str, ...] = field(default_factory=tuple)

    @property
    def observed(self) -> int:
        return len(self.ready)
