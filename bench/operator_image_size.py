"""Installed size of the operator image, built from one or more git revisions side by side.

Each revision is exported with ``git archive`` and installed as the operator image installs it
(``pip install .`` into the image's /usr/local venv, over the same Debian base layer: see
kvscale.testing.images). Prints the layer's installed bytes, the whole image's, and the largest
installed distributions, so a dependency that slipped into the runtime shows.

    python bench/operator_image_size.py [--ref REV ...]     (default: HEAD)
"""

from __future__ import annotations

import argparse
import subprocess
import tarfile
import tempfile
from collections import Counter
from pathlib import Path

from rich.console import Console
from rich.table import Table

from kvscale.testing.images import base_layer, operator_layer

REPO = Path(__file__).resolve().parents[1]
MIB = 1 << 20
LARGEST = 6


def installed_bytes(layer: Path) -> tuple[int, Counter[str]]:
    """Bytes of the regular files in a layer tar, and per top-level site-packages entry."""
    total, per_package = 0, Counter[str]()
    with tarfile.open(layer) as tar:
        for m in tar:
            if not m.isfile():
                continue
            total += m.size
            parts = m.name.lstrip("./").split("/")
            if "site-packages" in parts:
                i = parts.index("site-packages")
                if len(parts) > i + 1:
                    name = parts[i + 1].split("-")[0].removesuffix(".libs")
                    per_package[name.lower()] += m.size
    return total, per_package


def build(ref: str, work: Path) -> Path:
    src = work / ref.replace("/", "_")
    src.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", ref], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
    return operator_layer(src)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ref", action="append", help="git revision (repeatable; default HEAD)")
    args = ap.parse_args()
    refs = args.ref or ["HEAD"]
    base, _ = installed_bytes(base_layer())
    console = Console(width=160)
    t = Table(title=f"operator image (base layer {base / MIB:.0f} MiB)")
    for col in ("revision", "layer MiB", "image MiB", "vs first", "largest installed"):
        t.add_column(col)
    first = None
    with tempfile.TemporaryDirectory(prefix="kvscale-image-size-") as tmp:
        for ref in refs:
            sha = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", ref], check=True,
                                 capture_output=True, text=True).stdout.strip()
            size, per_package = installed_bytes(build(ref, Path(tmp)))
            first = first or size
            top = ", ".join(f"{n} {b / MIB:.0f}" for n, b in per_package.most_common(LARGEST))
            t.add_row(f"{ref} ({sha})", f"{size / MIB:.1f}", f"{(base + size) / MIB:.1f}", f"{size / first:.2f}x",
                      top)
    console.print(t)


if __name__ == "__main__":
    main()
