"""Run ``kvscale operator run`` as a real subprocess against a cluster (tests, demo, benchmarks)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from .processes import stop_group, wait_healthy
from .vllm_server import free_port


@dataclass
class OperatorProcess:
    kubeconfig: Path
    extra_env: dict[str, str] = field(default_factory=dict)
    extra_args: list[str] = field(default_factory=list)
    metrics_port: int = 0
    health_port: int = 0
    log_path: Path | None = None
    proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> OperatorProcess:
        self.metrics_port = self.metrics_port or free_port()
        self.health_port = self.health_port or free_port()
        self.log_path = self.log_path or Path(tempfile.mkdtemp(prefix="kvscale-operator-")) / "operator.log"
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig), **self.extra_env}
        cmd = [sys.executable, "-m", "kvscale.cli", "operator", "run", "--metrics-port", str(self.metrics_port),
               "--health-port", str(self.health_port), *self.extra_args]
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        why = wait_healthy(self.proc, f"http://127.0.0.1:{self.health_port}/healthz", timeout)
        if why:
            raise RuntimeError(f"operator {why}:\n{self.log_tail()}")
        return self

    def log_tail(self, n: int = 60) -> str:
        if not self.log_path or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def metrics(self) -> str:
        return httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).text

    def rss_bytes(self) -> int:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def stop(self, timeout: float = 20.0) -> None:
        stop_group(self.proc, timeout)
