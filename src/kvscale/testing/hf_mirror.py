"""An offline stand-in for the Hugging Face Hub: serves model directories at the Hub's URLs.

Pods reach it through ``HF_ENDPOINT``; every request is recorded, so a test can tell a download
from a cache hit. It answers what ``huggingface_hub`` asks when vLLM loads a model: repository
info, the file tree, and ``resolve`` for each file (with the commit and ETag headers the client
keys its cache on). ``root/<org>/<name>/`` is one repository at one commit.
"""

from __future__ import annotations

import hashlib
import json
import threading
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

CHUNK = 1 << 20


@dataclass
class HFMirror:
    root: Path
    host: str = "127.0.0.1"
    port: int = 0
    requests: list[tuple[str, str]] = field(default_factory=list)  # (method, path)
    tokens: set[str] = field(default_factory=set)  # bearer tokens clients sent
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def commit(self, repo: str) -> str:
        """A stable commit id for the repository's current files."""
        h = hashlib.sha1()
        for f in self.files(repo):
            h.update(f.encode())
            h.update(str((self.root / repo / f).stat().st_size).encode())
        return h.hexdigest()

    def files(self, repo: str) -> list[str]:
        base = self.root / repo
        return sorted(str(p.relative_to(base)) for p in base.rglob("*") if p.is_file())

    def downloads(self, suffix: str = "") -> list[str]:
        """Paths fetched in full (GET of a resolve URL), optionally only those ending in ``suffix``."""
        with self._lock:
            return [p for m, p in self.requests if m == "GET" and "/resolve/" in p and p.endswith(suffix)]

    def start(self) -> HFMirror:
        mirror = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_: Any) -> None:
                pass

            def do_HEAD(self) -> None:
                mirror._serve(self, body=False)

            def do_GET(self) -> None:
                mirror._serve(self, body=True)

        self._server = ThreadingHTTPServer((self.host, self.port), Handler)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, name="hf-mirror", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def _repo(self, parts: list[str]) -> tuple[str, list[str]] | None:
        if len(parts) >= 2 and (self.root / parts[0] / parts[1]).is_dir():
            return f"{parts[0]}/{parts[1]}", parts[2:]
        return None

    def _serve(self, h: BaseHTTPRequestHandler, body: bool) -> None:
        path = urllib.parse.urlparse(h.path).path
        auth = h.headers.get("Authorization", "")
        with self._lock:
            self.requests.append((h.command, path))
            if auth.startswith("Bearer "):
                self.tokens.add(auth.removeprefix("Bearer "))
        parts = [urllib.parse.unquote(p) for p in path.strip("/").split("/")]
        if parts[:2] == ["api", "models"]:
            found = self._repo(parts[2:])
            if found is None:
                return _send(h, 404, b'{"error": "Repository not found"}', body, {"X-Error-Code": "RepoNotFound"})
            repo, rest = found
            sha = self.commit(repo)
            if rest[:1] == ["tree"]:
                prefix = "/".join(rest[2:])
                entries = [{"type": "file", "path": f, "size": (self.root / repo / f).stat().st_size,
                            "oid": _etag(self.root / repo / f)} for f in self.files(repo) if f.startswith(prefix)]
                return _send(h, 200, json.dumps(entries).encode(), body)
            info = {"id": repo, "modelId": repo, "sha": sha, "private": False, "gated": False, "disabled": False,
                    "siblings": [{"rfilename": f} for f in self.files(repo)], "tags": [], "cardData": {}}
            return _send(h, 200, json.dumps(info).encode(), body)
        found = self._repo(parts)
        if found is None or found[1][:1] != ["resolve"] or len(found[1]) < 3:
            return _send(h, 404, b"not found", body, {"X-Error-Code": "EntryNotFound"})
        repo, rest = found
        file = self.root / repo / "/".join(rest[2:])
        if not file.is_file():
            return _send(h, 404, b"not found", body, {"X-Error-Code": "EntryNotFound",
                                                      "X-Repo-Commit": self.commit(repo)})
        headers = {"X-Repo-Commit": self.commit(repo), "ETag": f'"{_etag(file)}"',
                   "Content-Type": "application/octet-stream"}
        h.send_response(200)
        for k, v in {**headers, "Content-Length": str(file.stat().st_size)}.items():
            h.send_header(k, v)
        h.end_headers()
        if body:
            with file.open("rb") as fh:
                while chunk := fh.read(CHUNK):
                    h.wfile.write(chunk)


def _etag(file: Path) -> str:
    """sha256 of the content, as the Hub gives LFS files (cached beside the file by size and mtime)."""
    st = file.stat()
    key = (str(file), st.st_size, st.st_mtime_ns)
    if key not in _ETAGS:
        h = hashlib.sha256()
        with file.open("rb") as fh:
            while chunk := fh.read(CHUNK):
                h.update(chunk)
        _ETAGS[key] = h.hexdigest()
    return _ETAGS[key]


_ETAGS: dict[tuple[str, int, int], str] = {}


def _send(h: BaseHTTPRequestHandler, code: int, data: bytes, body: bool, headers: dict[str, str] | None = None
          ) -> None:
    h.send_response(code)
    for k, v in {"Content-Type": "application/json", **(headers or {}), "Content-Length": str(len(data))}.items():
        h.send_header(k, v)
    h.end_headers()
    if body:
        h.wfile.write(data)


_CHECKPOINT = """
import json, sys, torch
from transformers import AutoConfig, AutoModelForCausalLM
out = sys.argv[1]
cfg = AutoConfig.from_pretrained(out)
torch.manual_seed(0)
model = AutoModelForCausalLM.from_config(cfg, torch_dtype=torch.bfloat16)
model.save_pretrained(out, safe_serialization=True)
"""


def write_checkpoint(repo_dir: Path, config: dict[str, Any], python: Path) -> Path:
    """A real (random-weight) safetensors checkpoint for ``config``, written once by the vLLM Python."""
    import subprocess

    if any(repo_dir.glob("*.safetensors")):
        return repo_dir
    repo_dir.mkdir(parents=True, exist_ok=True)
    (repo_dir / "config.json").write_text(json.dumps(config, indent=1))
    done = subprocess.run([str(python), "-c", _CHECKPOINT, str(repo_dir)], capture_output=True, text=True,
                          timeout=600)
    if done.returncode != 0 or not any(repo_dir.glob("*.safetensors")):
        raise RuntimeError(f"writing the checkpoint in {repo_dir} failed: {done.stderr[-2000:]}")
    return repo_dir
