"""A real Prometheus (Debian's package) on loopback, scraping targets from a file_sd file."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .processes import stop_group, wait_healthy
from .vllm_server import free_port


class PrometheusUnavailable(RuntimeError):
    pass


def prometheus_binary() -> str:
    found = os.environ.get("KVSCALE_PROMETHEUS") or shutil.which("prometheus")
    if not found:
        raise PrometheusUnavailable("no `prometheus` binary: `apt-get install prometheus` (Debian) or set "
                                    "KVSCALE_PROMETHEUS")
    return found


@dataclass
class PrometheusServer:
    scrape_interval_s: float = 2.0
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="kvscale-prometheus-")))
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def targets_file(self) -> Path:
        return self.workdir / "targets.json"

    def set_targets(self, targets: list[tuple[str, str, str]]) -> None:
        """(namespace, pod, host:port) -> file_sd entries labelled like Kubernetes service discovery."""
        entries = [{"targets": [addr], "labels": {"namespace": ns, "pod": pod}} for ns, pod, addr in targets]
        tmp = self.targets_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(entries))
        tmp.replace(self.targets_file)

    def start(self, timeout: float = 60.0) -> PrometheusServer:
        self.port = self.port or free_port()
        self.set_targets([])
        cfg = {"global": {"scrape_interval": f"{self.scrape_interval_s:g}s",
                          "evaluation_interval": f"{self.scrape_interval_s:g}s"},
               "scrape_configs": [{"job_name": "vllm", "metrics_path": "/metrics",
                                   "file_sd_configs": [{"files": [str(self.targets_file)], "refresh_interval": "1s"}]}]}
        (self.workdir / "prometheus.yml").write_text(yaml.safe_dump(cfg))
        with (self.workdir / "prometheus.log").open("wb") as log:
            self.proc = subprocess.Popen(
                [prometheus_binary(), f"--config.file={self.workdir / 'prometheus.yml'}",
                 f"--storage.tsdb.path={self.workdir / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}",
                 "--storage.tsdb.retention.time=1h"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        why = wait_healthy(self.proc, f"{self.url}/-/ready", timeout)
        if why:
            raise PrometheusUnavailable(f"prometheus {why}:\n{(self.workdir / 'prometheus.log').read_text()[-2000:]}")
        return self

    def stop(self) -> None:
        stop_group(self.proc, 15)
        shutil.rmtree(self.workdir, ignore_errors=True)
