"""Operator settings from flags and ``KVSCALE_*`` environment variables."""

from __future__ import annotations

import os
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field


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
    peering: str | None = None  # Kopf peering name for leader election across operator replicas

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
            peering=env.get("KVSCALE_PEERING") or None,
        )
