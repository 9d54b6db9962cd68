"""What every command does with bad input: exit 2 with one line naming what is wrong."""

from __future__ import annotations

from pydantic import ValidationError

EXIT_USAGE = 2


class UsageError(Exception):
    pass


def first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(x) for x in err.get("loc", ())) or "input"
    return f"{loc}: {err.get('msg', 'invalid')}"
