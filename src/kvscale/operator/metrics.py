"""The operator's own Prometheus metrics."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

RECONCILES = Counter("kvscale_reconciles_total", "LLMDeployment reconciliations", ["result"])
ERRORS = Counter("kvscale_reconcile_errors_total", "Reconciliations that raised", ["stage"])
PLAN_CHANGES = Counter("kvscale_plan_changes_total", "Times a different plan was chosen")
INFEASIBLE = Gauge("kvscale_unplanned_llmdeployments", "LLMDeployments without a feasible plan", ["namespace", "name"])
DECISIONS = Counter("kvscale_scale_decisions_total", "Autoscaler decisions", ["direction", "applied"])
DESIRED = Gauge("kvscale_desired_replicas", "Replicas the autoscaler wants", ["namespace", "name"])
ACTUAL = Gauge("kvscale_ready_replicas", "Ready vLLM replicas", ["namespace", "name"])
KV_UTIL = Gauge("kvscale_kv_cache_utilization", "Mean KV-cache utilization of ready replicas", ["namespace", "name"])
ESTIMATOR_ERROR = Gauge("kvscale_estimator_kv_blocks_error_ratio",
                        "(observed - predicted) / predicted vLLM KV blocks per replica", ["namespace", "name"])
LEADER = Gauge("kvscale_leader", "1 while this replica is the active one (holds the Lease, or runs alone)")
PERIODIC_FAILURES = Counter("kvscale_periodic_failures_total",
                            "Periodic work that raised (the traceback is logged)", ["stage"])
PASS_SECONDS = Gauge("kvscale_periodic_pass_seconds", "Duration of the last periodic pass over all objects")
ACTIVATION = Gauge("kvscale_activation_value", "Last value of autoscaling.activation's query", ["namespace", "name"])
