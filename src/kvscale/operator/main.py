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

from . import health, metrics
from .leadership import LeaseElector
from .settings import LogFormat, OperatorSettings

#: the exit status of a replica that lost the Lease (distinct from a crash in the logs)
LOST_LEASE_EXIT = 3


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
    for noisy in ("kubernetes", "aiohttp.access", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger("urllib3").setLevel(logging.ERROR)  # its retries are reported once, by the caller


def operator_identity() -> str:
    """This replica's identity (Lease holder, Kopf). Kopf would ask the password database for the user name, which
    a non-root image has no entry for (uid 65532 in a distroless-style image): the pod name (hostname)
    and process id say the same without one."""
    now = time.strftime("%Y%m%d%H%M%S", time.gmtime())
    return f"kvscale@{socket.gethostname()}/{now}/{os.getpid()}"


def run(settings: OperatorSettings, verbose: bool = False) -> None:
    """Serve liveness at once; with leader election, wait for the Lease before starting Kopf."""
    from . import handlers  # registers the handlers

    handlers.STATE.settings = settings
    _logging(settings.log_format, verbose)
    logging.getLogger("kvscale.leadership").setLevel(logging.INFO)
    if settings.metrics_port:
        start_http_server(settings.metrics_port, addr="0.0.0.0")
    identity = operator_identity()
    elector = None
    if settings.leader_election:
        elector = LeaseElector(handlers.api_client(), settings.leader_election, settings.lease_namespace,
                               identity, on_lost=_lost_lease)
    if settings.health_port:
        health.serve(settings.health_port, lambda: health.judge(handlers.liveness(elector)))
    if elector is not None:
        elector.start()
        logging.getLogger("kvscale.operator").info(
            "standby: waiting for Lease %s/%s", settings.lease_namespace, settings.leader_election)
        while not elector.leading.wait(1.0):
            pass
    metrics.LEADER.set(1)
    try:
        asyncio.run(kopf.operator(
            clusterwide=not settings.namespaces,
            namespaces=list(settings.namespaces),
            standalone=True,
            identity=cast(Any, identity),  # kopf's Identity is a NewType of str
        ))
    finally:
        metrics.LEADER.set(0)
        if elector is not None:
            elector.release()


def _lost_lease() -> None:
    """Past the renew deadline another replica may lead: stop at once, writing nothing more (the
    kubelet restarts this one as a standby)."""
    logging.getLogger("kvscale.operator").error("leadership lost: exiting")
    logging.shutdown()
    os._exit(LOST_LEASE_EXIT)
