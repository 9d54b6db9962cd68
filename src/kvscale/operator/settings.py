"""Operator settings from flags and ``KVSCALE_*`` environment variables."""

from __future__ import annotations

import os
from enum import StrEnum
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

#: the namespace of the pod's service account, mounted in every pod that has one
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def _own_namespace() -> str:
    try:
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip() or "default"
    except OSError:
        return "default"


class LogFormat(StrEnum):
    PLAIN = "plain"
    FULL = "full"
    JSON = "json"


class OperatorSettings(BaseModel):
    model_config = ConfigDict(frozen=True)

    namespaces: tuple[str, ...] = ()  # empty: all namespaces
    metrics_port: int = Field(default=8080, ge=0, le=65535)  # 0: no metrics endpoint
    health_port: int = Field(default=8081, ge=0, le=65535)
    log_format: LogFormat = LogFormat.PLAIN
    gpu_catalog: str | None = None  # YAML file (e.g. the chart's ConfigMap), else built-in
    gpu_prices: str | None = None  # YAML mapping GPU name -> price per hour, applied on top
    autoscale_interval_s: float = Field(default=15.0, gt=0)
    replan_interval_s: float = Field(default=30.0, gt=0)
    # name of the coordination.k8s.io Lease that elects the one active replica (None: a single replica)
    leader_election: str | None = None
    # Prometheus base URLs an LLMDeployment may point the operator at (scheme://host[:port][/path]);
    # empty: none, so a spec cannot make the operator send requests, or a token, anywhere
    prometheus_urls: tuple[str, ...] = ()
    lease_namespace: str = "default"  # where that Lease lives: the operator's own namespace in a cluster
    # read a failed vLLM container's previous log (RBAC pods/log): vLLM names why it did not start there,
    # not in the termination message kubelet keeps
    read_pod_logs: bool = False
    # a ConfigMap (in lease_namespace) where the KV blocks live replicas allocated are shared with every
    # LLMDeployment of the same model and layout (None: each object learns from its own replicas only)
    calibration_configmap: str | None = None

    @classmethod
    def from_env(cls) -> OperatorSettings:
        env = os.environ
        ns = tuple(n.strip() for n in env.get("KVSCALE_NAMESPACES", "").split(",") if n.strip())
        return cls(
            namespaces=ns,
            metrics_port=int(env.get("KVSCALE_METRICS_PORT", 8080)),
            health_port=int(env.get("KVSCALE_HEALTH_PORT", 8081)),
            log_format=LogFormat(env.get("KVSCALE_LOG_FORMAT", "plain")),
            gpu_catalog=env.get("KVSCALE_GPU_CATALOG") or None,
            gpu_prices=env.get("KVSCALE_GPU_PRICES") or None,
            autoscale_interval_s=float(env.get("KVSCALE_AUTOSCALE_INTERVAL", 15)),
            replan_interval_s=float(env.get("KVSCALE_REPLAN_INTERVAL", 30)),
            leader_election=env.get("KVSCALE_LEADER_ELECTION") or None,
            prometheus_urls=tuple(u.strip() for u in env.get("KVSCALE_PROMETHEUS_URLS", "").split(",") if u.strip()),
            lease_namespace=env.get("KVSCALE_LEASE_NAMESPACE") or _own_namespace(),
            read_pod_logs=env.get("KVSCALE_READ_POD_LOGS", "").lower() in ("1", "true", "yes"),
            calibration_configmap=env.get("KVSCALE_CALIBRATION_CONFIGMAP") or None,
        )
