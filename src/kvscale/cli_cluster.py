"""Cluster-facing commands (local control plane, operator, demo)."""

from __future__ import annotations

from typing import Any


def add_cluster_commands(sub: Any) -> None:
    return None
