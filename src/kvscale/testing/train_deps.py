"""PEFT for the training probe, beside the vLLM CPU environment's torch and Transformers.

PEFT and Accelerate are pure Python; they are installed without dependencies into a cached directory
put on the probe's ``PYTHONPATH``, so the vLLM environment itself is left as it is.

    python -m kvscale.testing.train_deps
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from .vllm_install import DEFAULT_VENV, venv_python

PEFT_VERSION = "0.21.2"
ACCELERATE_VERSION = "1.15.0"
TARGET = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "kvscale" / \
    f"train-deps-peft-{PEFT_VERSION}-accelerate-{ACCELERATE_VERSION}"
PROBE = Path(__file__).with_name("train_probe.py")


def probe_python() -> Path:
    return venv_python(Path(os.environ.get("KVSCALE_VLLM_VENV", DEFAULT_VENV)))


def ensure() -> Path:
    """The directory holding PEFT and Accelerate (installed on first use)."""
    if (TARGET / "peft").is_dir() and (TARGET / "accelerate").is_dir():
        return TARGET
    subprocess.run([str(probe_python()), "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps",
                    "--target", str(TARGET), f"peft=={PEFT_VERSION}", f"accelerate=={ACCELERATE_VERSION}"],
                   check=True)
    return TARGET


def main() -> int:
    print(ensure())
    return 0


if __name__ == "__main__":
    sys.exit(main())
