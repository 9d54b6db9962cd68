"""What every command does with bad input: exit 2 with one line naming what is wrong."""

from __future__ import annotations

import importlib.util

from pydantic import ValidationError

EXIT_USAGE = 2


class UsageError(Exception):
    pass


def first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(x) for x in err.get("loc", ())) or "input"
    return f"{loc}: {err.get('msg', 'invalid')}"


def require_extra(command: str, extra: str, *modules: str) -> None:
    """Commands beyond the operator and the estimator need an optional extra; say which, not a traceback."""
    missing = [m for m in modules if not _importable(m)]
    if missing:
        raise UsageError(f"`kvscale {command}` needs the {extra!r} extra ({', '.join(missing)} not installed): "
                         f"pip install 'kvscale[{extra}]'")


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a dotted name whose parent package is missing
        return False
