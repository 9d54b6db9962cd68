"""``kvscale operator run``: start the Kopf operator with its metrics and health endpoints."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import sys
import time
from typing import Any, cast

import kopf
from prometheus_client import start_http_server

from .settings import LogFormat, OperatorSettings


class _JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps({"time": self.formatTime(record), "level": record.levelname, "logger": record.name,
                           "message": record.getMessage()})


def _logging(fmt: LogFormat, verbose: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt is LogFormat.JSON:
        handler.setFormatter(_JSONFormatter())
    elif fmt is LogFormat.FULL:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for noisy in ("kubernetes", "urllib3", "aiohttp.access", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def operator_identity() -> str:
    """This replica's peering identity. Kopf would ask the password database for the user name, which
    a non-root image has no entry for (uid 65532 in a distroless-style image): the pod name (hostname)
    and process id say the same without one."""
    now = time.strftime("%Y%m%d%H%M%S", time.gmtime())
    return f"kvscale@{socket.gethostname()}/{now}/{os.getpid()}"


def run(settings: OperatorSettings, verbose: bool = False) -> None:
    from . import handlers  # registers the handlers

    handlers.STATE.settings = settings
    _logging(settings.log_format, verbose)
    if settings.metrics_port:
        start_http_server(settings.metrics_port, addr="0.0.0.0")
    liveness = f"http://0.0.0.0:{settings.health_port}/healthz" if settings.health_port else None
    asyncio.run(kopf.operator(
        clusterwide=not settings.namespaces,
        namespaces=list(settings.namespaces),
        liveness_endpoint=liveness,
        standalone=settings.peering is None,
        peering_name=settings.peering,
        identity=cast(Any, operator_identity()),  # kopf's Identity is a NewType of str
    ))
