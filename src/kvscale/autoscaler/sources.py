"""Metric sources behind one small interface: scrape pods, or ask Prometheus.

A target that cannot be read is reported as missing, never as zero load.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import httpx

from .snapshot import ReplicaMetrics
from .vllm_metrics import MetricsParseError, parse_vllm_metrics


@dataclass(frozen=True)
class Target:
    """A vLLM pod to read."""

    namespace: str
    pod: str
    ip: str
    port: int


@dataclass(frozen=True)
class Readings:
    metrics: dict[str, ReplicaMetrics]  # pod -> metrics
    missing: tuple[str, ...]
    errors: tuple[str, ...]


class MetricsSource(Protocol):
    def read(self, targets: Sequence[Target]) -> Readings: ...


class MetricsUnavailable(RuntimeError):
    pass


_SCRAPERS = threading.local()


def _scrape_client(timeout_s: float, concurrency: int) -> httpx.Client:
    """One HTTP client per calling thread, kept across passes: a client per read built a TLS context
    (loading the CA bundle) for every plain-HTTP scrape, a thousand times a pass at a thousand
    LLMDeployments."""
    key = (timeout_s, concurrency)
    clients: dict[tuple[float, int], httpx.Client] = _SCRAPERS.__dict__.setdefault("clients", {})
    if key not in clients:
        clients[key] = httpx.Client(timeout=timeout_s, limits=httpx.Limits(max_connections=concurrency))
    return clients[key]


@dataclass
class PodScrapeSource:
    """GET http://<pod IP>:<port>/metrics on each Ready pod (no extra dependency)."""

    timeout_s: float = 3.0
    # pods read at once: a pod that times out holds one slot, not the whole read
    concurrency: int = 16

    def read(self, targets: Sequence[Target]) -> Readings:
        def one(http: httpx.Client, t: Target) -> ReplicaMetrics | str:
            try:
                resp = http.get(f"http://{t.ip}:{t.port}/metrics")
                resp.raise_for_status()
                return parse_vllm_metrics(resp.text)
            except (httpx.HTTPError, MetricsParseError) as exc:
                return f"{t.pod}: {type(exc).__name__}: {str(exc)[:120]}"

        if not targets:
            return Readings({}, (), ())
        http = _scrape_client(self.timeout_s, self.concurrency)
        if len(targets) == 1:
            results = [one(http, targets[0])]
        else:
            with ThreadPoolExecutor(min(self.concurrency, len(targets))) as pool:
                results = list(pool.map(lambda t: one(http, t), targets))
        out = {t.pod: r for t, r in zip(targets, results, strict=True) if not isinstance(r, str)}
        missing = tuple(t.pod for t, r in zip(targets, results, strict=True) if isinstance(r, str))
        return Readings(out, missing, tuple(r for r in results if isinstance(r, str)))


@dataclass
class PrometheusSource:
    """PromQL over Prometheus' HTTP API, for clusters that already scrape vLLM.

    Series are matched to pods by the ``namespace`` and ``pod`` labels that Kubernetes service
    discovery (or a PodMonitor) attaches.
    """

    url: str
    bearer_token: str | None = field(default=None, repr=False)  # a credential: never in a log line
    timeout_s: float = 5.0

    QUERIES: ClassVar[dict[str, str]] = {
        "kv": 'max by (pod) ({metric}{{namespace="{ns}",pod=~"{pods}"}})',
        "running": 'sum by (pod) (vllm:num_requests_running{{namespace="{ns}",pod=~"{pods}"}})',
        "waiting": 'sum by (pod) (vllm:num_requests_waiting{{namespace="{ns}",pod=~"{pods}"}})',
        "preempt": 'sum by (pod) (vllm:num_preemptions_total{{namespace="{ns}",pod=~"{pods}"}})',
        "queue": 'sum by (pod, le) (vllm:request_queue_time_seconds_bucket{{namespace="{ns}",pod=~"{pods}"}})',
    }

    def _result(self, http: httpx.Client, promql: str) -> list[dict[str, Any]]:
        resp = http.get(f"{self.url.rstrip('/')}/api/v1/query", params={"query": promql})
        resp.raise_for_status()
        body = resp.json()
        if body.get("status") != "success":
            raise MetricsUnavailable(f"Prometheus: {body.get('error', 'query failed')}")
        rows: list[dict[str, Any]] = body["data"]["result"]
        return rows

    def _query(self, http: httpx.Client, promql: str) -> dict[str, float]:
        return {r["metric"].get("pod", ""): float(r["value"][1]) for r in self._result(http, promql)}

    def _buckets(self, http: httpx.Client, promql: str) -> dict[str, tuple[tuple[float, float], ...]]:
        """Histogram buckets per pod, cumulative, sorted by upper bound."""
        per_pod: dict[str, dict[float, float]] = {}
        for r in self._result(http, promql):
            per_pod.setdefault(r["metric"].get("pod", ""), {})[float(r["metric"].get("le", "inf"))] = \
                float(r["value"][1])
        return {pod: tuple(sorted(b.items())) for pod, b in per_pod.items()}

    def value(self, promql: str) -> tuple[float | None, str]:
        """One number: the sum of the query's series (0 when none), or None and why it could not be read."""
        headers = {"Authorization": f"Bearer {self.bearer_token}"} if self.bearer_token else {}
        try:
            with httpx.Client(timeout=self.timeout_s, headers=headers) as http:
                resp = http.get(f"{self.url.rstrip('/')}/api/v1/query", params={"query": promql})
                resp.raise_for_status()
                body = resp.json()
                if body.get("status") != "success":
                    raise MetricsUnavailable(f"Prometheus: {body.get('error', 'query failed')}")
                data = body["data"]
                rows = [data["result"]] if data["resultType"] == "scalar" else [r["value"] for r in data["result"]]
                total = sum(float(v[1]) for v in rows)
        except (httpx.HTTPError, MetricsUnavailable, ValueError, KeyError, TypeError, IndexError) as exc:
            return None, f"prometheus {self.url}: {type(exc).__name__}: {str(exc)[:200]}"
        return (total, "") if math.isfinite(total) else (None, f"prometheus {self.url}: {total} is not a number")

    def read(self, targets: Sequence[Target]) -> Readings:
        if not targets:
            return Readings({}, (), ())
        ns = targets[0].namespace
        pods = "|".join(t.pod for t in targets)
        headers = {"Authorization": f"Bearer {self.bearer_token}"} if self.bearer_token else {}
        try:
            with httpx.Client(timeout=self.timeout_s, headers=headers) as http:
                kv = self._query(http, self.QUERIES["kv"].format(metric="vllm:kv_cache_usage_perc", ns=ns, pods=pods))
                if not kv:
                    kv = self._query(http, self.QUERIES["kv"].format(metric="vllm:gpu_cache_usage_perc", ns=ns,
                                                                     pods=pods))
                running = self._query(http, self.QUERIES["running"].format(ns=ns, pods=pods))
                waiting = self._query(http, self.QUERIES["waiting"].format(ns=ns, pods=pods))
                preempt = self._query(http, self.QUERIES["preempt"].format(ns=ns, pods=pods))
                queue = self._buckets(http, self.QUERIES["queue"].format(ns=ns, pods=pods))
        except (httpx.HTTPError, MetricsUnavailable, ValueError, KeyError) as exc:
            return Readings({}, tuple(t.pod for t in targets), (f"prometheus {self.url}: {exc}",))
        out = {t.pod: ReplicaMetrics(kv_cache_usage=kv[t.pod], running=running.get(t.pod, 0.0),
                                     waiting=waiting.get(t.pod, 0.0), preemptions_total=preempt.get(t.pod, 0.0),
                                     queue_time_buckets=queue.get(t.pod, ()))
               for t in targets if t.pod in kv}
        missing = tuple(t.pod for t in targets if t.pod not in kv)
        return Readings(out, missing, tuple(f"{p}: no series in Prometheus" for p in missing))
