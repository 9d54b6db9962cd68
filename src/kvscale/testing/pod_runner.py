"""Give simulated pods a real vLLM: one CPU vLLM server per Running pod, bound to the pod's IP.

kwok hands pods loopback IPs, so the operator reaches each replica exactly as in production
(pod IP and port) and finds a real vLLM there. Servers stop when their pod goes away.
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from .vllm_server import VLLMServer


@dataclass
class PodVLLMRunner:
    api: Any  # kubernetes ApiClient
    namespace: str
    selector: str
    model_dir: Path
    served_model_name: str
    port: int = 8000
    num_blocks: int | None = 40
    max_model_len: int = 2048
    max_num_seqs: int = 16
    log_dir: Path | None = None
    poll_s: float = 1.0
    on_change: Any = None  # called with [(namespace, pod, "ip:port")] of healthy servers (e.g. Prometheus file_sd)
    servers: dict[str, VLLMServer] = field(default_factory=dict)
    started_at: dict[str, float] = field(default_factory=dict)
    ready_at: dict[str, float] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> PodVLLMRunner:
        self._thread = threading.Thread(target=self._loop, name="pod-vllm-runner", daemon=True)
        self._thread.start()
        return self

    def _pods(self) -> dict[str, str]:
        from kubernetes import client

        core: Any = client.CoreV1Api(self.api)
        pods = core.list_namespaced_pod(self.namespace, label_selector=self.selector).items
        return {p.metadata.name: p.status.pod_ip for p in pods
                if p.status.phase == "Running" and p.status.pod_ip and not p.metadata.deletion_timestamp}

    def _loop(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(Exception):
                self.sync(self._pods())
            self._stop.wait(self.poll_s)

    def sync(self, pods: dict[str, str]) -> None:
        with self._lock:
            for name, ip in pods.items():
                if name not in self.servers:
                    log = (self.log_dir / f"{name}.log") if self.log_dir else None
                    server = VLLMServer(model_dir=self.model_dir, host=ip, port=self.port, num_blocks=self.num_blocks,
                                        max_model_len=self.max_model_len, max_num_seqs=self.max_num_seqs,
                                        served_model_name=self.served_model_name, log_path=log)
                    self.servers[name] = server.start()
                    self.started_at[name] = time.monotonic()
            for name in [n for n in self.servers if n not in pods]:
                self.servers.pop(name).stop()
            for name in [n for n in self.ready_at if n not in self.servers]:
                self.ready_at.pop(name)
            for name, server in self.servers.items():
                if name not in self.ready_at and server.proc is not None and server.proc.poll() is None:
                    with contextlib.suppress(Exception):
                        if httpx.get(f"{server.url}/health", timeout=1).status_code == 200:
                            self.ready_at[name] = time.monotonic()
            if self.on_change is not None:
                self.on_change([(self.namespace, n, f"{s.host}:{s.port}") for n, s in self.servers.items()
                                if n in self.ready_at])

    def healthy_urls(self) -> list[str]:
        with self._lock:
            return [s.url for n, s in self.servers.items() if n in self.ready_at]

    def kill(self, pod: str) -> None:
        """Fault injection: the vLLM process dies while its pod stays Running."""
        with self._lock:
            server = self.servers.get(pod)
            if server is not None:
                server.stop(timeout=5)
                self.ready_at.pop(pod, None)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        with self._lock:
            for server in self.servers.values():
                server.stop()
            self.servers.clear()
