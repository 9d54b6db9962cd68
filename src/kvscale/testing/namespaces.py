"""A namespace per test, named after it, deleted afterwards (with everything in it)."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

#: namespace names are DNS labels (63 characters): a prefix, 40 of the test's name, a random suffix
NAME_CHARS = 40


@contextmanager
def namespace_for_test(api: Any, test_name: str, prefix: str) -> Iterator[str]:
    from kubernetes import client

    core = client.CoreV1Api(api)
    slug = re.sub(r"[^a-z0-9-]", "-", test_name.lower().replace("_", "-"))[:NAME_CHARS].strip("-")
    name = f"{prefix}-{slug}-{uuid.uuid4().hex[:5]}"
    core.create_namespace({"metadata": {"name": name}})  # type: ignore[arg-type]
    try:
        yield name
    finally:
        core.delete_namespace(name)
