"""Real vLLM OpenAI servers on CPU with dummy weights, for tests and the local demo.

A tiny architecture (``tiny_models/``) and ``--load-format dummy`` mean no download; the KV
cache is sized with ``VLLM_CPU_KVCACHE_SPACE`` (whole GiB) or ``--num-gpu-blocks-override``
so that modest load fills it. The server exports the same ``vllm:*`` metrics as on GPU.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from .processes import stop_group, wait_healthy
from .vllm_install import DEFAULT_VENV, venv_python

KV_LINE = re.compile(r"KV cache size: ([\d,]+) tokens, Maximum concurrency for ([\d,]+) tokens per request: "
                     r"([\d.]+)x")
VLLM_PYTHON_ENV = "KVSCALE_VLLM_PYTHON"


class VLLMUnavailable(RuntimeError):
    pass


def vllm_python() -> Path:
    override = os.environ.get(VLLM_PYTHON_ENV)
    py = Path(override) if override else venv_python(Path(os.environ.get("KVSCALE_VLLM_VENV", DEFAULT_VENV)))
    if not py.exists():
        raise VLLMUnavailable(f"no vLLM Python at {py}: run `make vllm-env` (or set {VLLM_PYTHON_ENV})")
    return py


def tiny_model_config(name: str) -> dict[str, Any]:
    text = resources.files("kvscale.testing").joinpath(f"tiny_models/{name}.json").read_text()
    data: dict[str, Any] = json.loads(text)
    return data


def write_model_dir(config: dict[str, Any], root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps(config, indent=1))
    return root


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class VLLMServer:
    model_dir: Path
    host: str = "127.0.0.1"
    port: int = 0
    kv_cache_gib: int | None = 1
    num_blocks: int | None = None
    max_model_len: int = 2048
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    served_model_name: str | None = None
    extra_args: list[str] = field(default_factory=list)
    log_path: Path | None = None
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def command(self) -> list[str]:
        cmd = [str(vllm_python()), "-m", "vllm.entrypoints.openai.api_server",
               "--model", str(self.model_dir), "--load-format", "dummy", "--skip-tokenizer-init",
               "--host", self.host, "--port", str(self.port), "--max-model-len", str(self.max_model_len),
               "--dtype", "bfloat16", "--uvicorn-log-level", "warning"]
        if self.served_model_name:
            cmd += ["--served-model-name", self.served_model_name]
        if self.num_blocks is not None:
            cmd += ["--num-gpu-blocks-override", str(self.num_blocks)]
        if self.max_num_seqs is not None:
            cmd += ["--max-num-seqs", str(self.max_num_seqs)]
        if self.max_num_batched_tokens is not None:
            cmd += ["--max-num-batched-tokens", str(self.max_num_batched_tokens)]
        return cmd + self.extra_args

    def start(self) -> VLLMServer:
        if self.port == 0:
            self.port = free_port(self.host)
        if self.log_path is None:
            self.log_path = Path(tempfile.mkdtemp(prefix="kvscale-vllm-")) / "vllm.log"
        env = dict(os.environ)
        env.pop(VLLM_PYTHON_ENV, None)
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(self.kv_cache_gib or 1))
        env.setdefault("VLLM_TARGET_DEVICE", "cpu")
        env.setdefault("HF_HUB_OFFLINE", "1")
        env.setdefault("VLLM_NO_USAGE_STATS", "1")
        env.setdefault("DO_NOT_TRACK", "1")
        env.setdefault("OMP_NUM_THREADS", "1")
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, env=env,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        return self

    def wait_ready(self, timeout: float = 420.0) -> VLLMServer:
        assert self.proc is not None
        why = wait_healthy(self.proc, f"{self.url}/health", timeout, interval=1.0)
        if why:
            raise VLLMUnavailable(f"vLLM {why}; log tail:\n{self.log_tail()}")
        return self

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""

    def log_tail(self, n: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-n:])

    def reported_kv(self) -> tuple[int, int, float]:
        """(tokens, max_model_len, concurrency) from vLLM's start-up line."""
        m = KV_LINE.search(self.log_text())
        if not m:
            raise VLLMUnavailable(f"no 'KV cache size' line in the vLLM log:\n{self.log_tail()}")
        return int(m.group(1).replace(",", "")), int(m.group(2).replace(",", "")), float(m.group(3))

    def stop(self, timeout: float = 20.0) -> None:
        stop_group(self.proc, timeout)

    def __enter__(self) -> VLLMServer:
        return self.start().wait_ready()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def cleanup_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
