"""Upstream Kubernetes binaries for the local control plane.

Lookup order: ``KVSCALE_K8S_BIN_DIR`` (e.g. official release binaries), then a
per-version cache outside the repository, then ``go build`` from the upstream
modules. A filled cache is never rebuilt.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

KUBERNETES_VERSION = "1.34.4"
ETCD_VERSION = "3.6.16"
KWOK_VERSION = "0.8.0"
HELM_VERSION = "3.19.5"
#: LeaderWorkerSet, which multi-node replicas run as (v0.10.0's module zip is refused by the proxy here;
#: v0.9.0 is the newest it serves)
LWS_VERSION = "0.9.0"
LWS_CRD = "config/crd/bases/leaderworkerset.x-k8s.io_leaderworkersets.yaml"

K8S_COMMANDS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl", "kubelet", "kube-proxy")
ALL_BINARIES = (*K8S_COMMANDS, "etcd", "kwok", "helm")
BIN_DIR_ENV = "KVSCALE_K8S_BIN_DIR"


class BinaryUnavailable(RuntimeError):
    """A binary could not be found or built; the message says which and why."""


@dataclass(frozen=True)
class Binaries:
    directory: Path

    def path(self, name: str) -> str:
        return str(self.directory / name)


def cache_dir() -> Path:
    root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return root / "kvscale" / f"k8s-{KUBERNETES_VERSION}" / "bin"


def _missing(directory: Path) -> list[str]:
    return [n for n in ALL_BINARIES if not os.access(directory / n, os.X_OK)]


def _log(msg: str) -> None:
    print(f"[kvscale binaries] {msg}", file=sys.stderr, flush=True)


def _go(args: list[str], cwd: Path, env: dict[str, str]) -> None:
    _log(f"go {' '.join(args)}")
    started = time.monotonic()
    proc = subprocess.run(["go", *args], cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise BinaryUnavailable(f"`go {' '.join(args)}` failed in {cwd}:\n{proc.stderr[-4000:]}")
    _log(f"  done in {time.monotonic() - started:.0f}s")


def _go_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("CGO_ENABLED", "0")
    env.setdefault("GOFLAGS", "-mod=mod")
    return env


def _kubernetes_replaces(env: dict[str, str], workdir: Path) -> list[str]:
    """Staging modules of k8s.io/kubernetes pinned to their published v0.x tags."""
    out = subprocess.run(
        ["go", "mod", "download", "-json", f"k8s.io/kubernetes@v{KUBERNETES_VERSION}"],
        cwd=workdir, env=env, capture_output=True, text=True, check=True,
    )
    gomod = Path(json.loads(out.stdout)["GoMod"]).read_text()
    staging = re.findall(r"^\s*(k8s\.io/[\w.-]+)\s*=>\s*\./staging/", gomod, re.M)
    minor = KUBERNETES_VERSION.split(".", 1)[1]
    return [f"replace {m} => {m} v0.{minor}" for m in staging]


def _build_in_wrapper(require: str, version: str, packages: dict[str, str], dest: Path,
                      env: dict[str, str], replaces: list[str] | None = None) -> None:
    """Build main packages of a module whose own go.mod uses local ``replace`` lines
    (so ``go install pkg@version`` refuses it): require it from a throwaway module."""
    with tempfile.TemporaryDirectory(prefix="kvscale-go-build-") as tmp:
        work = Path(tmp)
        imports = "\n".join(f'\t_ "{pkg}"' for pkg in packages.values())
        (work / "tools.go").write_text(f"//go:build tools\n\npackage tools\n\nimport (\n{imports}\n)\n")
        (work / "go.mod").write_text(
            f"module kvscale.local/build\n\ngo 1.24\n\nrequire {require} v{version}\n\n"
            + "\n".join(replaces or []) + "\n")
        _go(["mod", "tidy", "-e"], work, env)
        for name, pkg in packages.items():
            _go(["build", "-trimpath", "-ldflags=-s -w", "-o", str(dest / name), pkg], work, env)


def _build_kubernetes(dest: Path, env: dict[str, str]) -> None:
    with tempfile.TemporaryDirectory(prefix="kvscale-k8s-mod-") as tmp:
        replaces = _kubernetes_replaces(env, Path(tmp))
    packages = {c: f"k8s.io/kubernetes/cmd/{c}" for c in K8S_COMMANDS}
    _build_in_wrapper("k8s.io/kubernetes", KUBERNETES_VERSION, packages, dest, env, replaces)


def _install(module_cmd: str, version: str, name: str, dest: Path, env: dict[str, str]) -> None:
    genv = dict(env, GOBIN=str(dest))
    _go(["install", "-trimpath", "-ldflags=-s -w", f"{module_cmd}@v{version}"], dest, genv)
    built = dest / Path(module_cmd).name
    if built.name != name and built.exists():
        built.rename(dest / name)


def build_all(dest: Path) -> None:
    """Build whatever is missing into ``dest`` (minutes on two cores)."""
    if shutil.which("go") is None:
        raise BinaryUnavailable("`go` is not on PATH; install Go or set "
                                f"{BIN_DIR_ENV} to a directory holding {', '.join(ALL_BINARIES)}")
    dest.mkdir(parents=True, exist_ok=True)
    env = _go_env()
    missing = set(_missing(dest))
    if missing & set(K8S_COMMANDS):
        _build_kubernetes(dest, env)
    if "etcd" in missing:
        _build_in_wrapper("go.etcd.io/etcd/server/v3", ETCD_VERSION,
                          {"etcd": "go.etcd.io/etcd/server/v3"}, dest, env)
    if "kwok" in missing:
        _install("sigs.k8s.io/kwok/cmd/kwok", KWOK_VERSION, "kwok", dest, env)
    if "helm" in missing:
        _install("helm.sh/helm/v3/cmd/helm", HELM_VERSION, "helm", dest, env)
    still = _missing(dest)
    if still:
        raise BinaryUnavailable(f"after building, still missing in {dest}: {', '.join(still)}")


@dataclass(frozen=True)
class LWS:
    """The LeaderWorkerSet controller and its CRD, both from the upstream module."""

    controller: Path
    crd: Path


def lws_cache_dir() -> Path:
    root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return root / "kvscale" / f"lws-{LWS_VERSION}"


def ensure_lws() -> LWS:
    """Build the controller (``sigs.k8s.io/lws/cmd``) and copy its CRD from the same module, once."""
    directory = lws_cache_dir()
    out = LWS(directory / "lws-controller", directory / "leaderworkersets.yaml")
    if os.access(out.controller, os.X_OK) and out.crd.is_file():
        return out
    if shutil.which("go") is None:
        raise BinaryUnavailable("`go` is not on PATH: it builds the LeaderWorkerSet controller")
    directory.mkdir(parents=True, exist_ok=True)
    env = _go_env()
    _log(f"building LeaderWorkerSet {LWS_VERSION} into {directory} (cold: ~5 min on 2 cores)")
    with tempfile.TemporaryDirectory(prefix="kvscale-lws-") as tmp:
        info = subprocess.run(["go", "mod", "download", "-json", f"sigs.k8s.io/lws@v{LWS_VERSION}"], cwd=tmp,
                              env=env, capture_output=True, text=True)
        if info.returncode != 0:
            raise BinaryUnavailable(f"sigs.k8s.io/lws@v{LWS_VERSION}: {info.stdout[-2000:]}{info.stderr[-2000:]}")
        shutil.copyfile(Path(json.loads(info.stdout)["Dir"]) / LWS_CRD, out.crd)
    _build_in_wrapper("sigs.k8s.io/lws", LWS_VERSION, {"lws-controller": "sigs.k8s.io/lws/cmd"}, directory, env)
    return out


def ensure_binaries() -> Binaries:
    override = os.environ.get(BIN_DIR_ENV)
    if override:
        directory = Path(override)
        missing = _missing(directory)
        if missing:
            raise BinaryUnavailable(f"{BIN_DIR_ENV}={override} lacks: {', '.join(missing)}")
        return Binaries(directory)
    directory = cache_dir()
    if _missing(directory):
        _log(f"building Kubernetes {KUBERNETES_VERSION} binaries into {directory} (cold: ~20-40 min on 2 cores)")
        build_all(directory)
    return Binaries(directory)


if __name__ == "__main__":
    started = time.monotonic()
    b = ensure_binaries()
    if len(sys.argv) == 3 and sys.argv[1] == "--which":
        print(b.path(sys.argv[2]))
    else:
        lws = ensure_lws()
        print(f"binaries ready in {b.directory} and {lws.controller.parent} ({time.monotonic() - started:.1f}s)")
