"""The operator image installs the runtime dependencies only: the operator and the estimator CLI must run
without the ``sim`` and ``testing`` extras, and never load the local-cluster harness."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

#: what the extras bring (pyproject.toml); the runtime must run with none of them importable
EXTRAS_MODULES = ("matplotlib", "cryptography", "grpc", "google.protobuf", "hypothesis")

PROBE = textwrap.dedent("""
    import contextlib, io, json, sys
    for name in {blocked!r}:
        sys.modules[name] = None  # importing it raises ImportError; importlib.util.find_spec returns None
    from kvscale.cli import main
    import kvscale.operator.main  # what `kvscale operator run` starts
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        plan = main(["plan", "Qwen/Qwen2.5-7B-Instruct", "--max-model-len", "8192", "--concurrency", "4"])
        demo = main(["demo"])
    loaded = sorted(m for m in sys.modules if m.startswith("kvscale.testing") or m.startswith("kvscale.sim"))
    print(json.dumps({{"plan": plan, "demo": demo, "stderr": err.getvalue(), "stdout": out.getvalue(),
                      "loaded": loaded}}))
""")


@pytest.fixture(scope="module")
def without_extras() -> dict[str, object]:
    proc = subprocess.run([sys.executable, "-c", PROBE.format(blocked=EXTRAS_MODULES)], capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def test_operator_and_estimator_cli_run_without_the_extras_and_never_load_the_harness(
        without_extras: dict[str, object]) -> None:
    r = without_extras
    assert r["plan"] == 0, r["stderr"]
    assert "Qwen2.5-7B" in str(r["stdout"])
    assert r["loaded"] == [], f"the runtime imported tooling: {r['loaded']}"


def test_a_tooling_command_without_its_extra_names_the_extra_to_install(without_extras: dict[str, object]) -> None:
    r = without_extras
    assert r["demo"] == 2
    assert "pip install 'kvscale[testing]'" in str(r["stderr"])
    assert "cryptography" in str(r["stderr"])
