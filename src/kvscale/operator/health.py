"""The liveness endpoint: up from the first second (a standby replica is alive), failing when the
periodic worker or the leader election has stopped, so the kubelet restarts a replica that would
otherwise sit there doing nothing."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Callable
from dataclasses import dataclass

#: a worker pass that has not finished in this many intervals (plus the grace below) is stuck
STALE_INTERVALS = 4
#: room for one slow pass over many objects (API latency, scrape timeouts) on top of that
STALE_GRACE_S = 60.0


@dataclass(frozen=True)
class Liveness:
    """The facts liveness is judged on, as values."""

    leading: bool  # this replica runs Kopf and the worker (always, without leader election)
    election_alive: bool  # the campaign thread loops (True without leader election)
    worker_started: bool
    worker_alive: bool
    since_beat_s: float | None  # since the worker last began a pass (None: not yet)
    interval_s: float


def judge(f: Liveness) -> tuple[bool, str]:
    """(alive, why) (pure)."""
    if not f.election_alive:
        return False, "leader election stopped"
    if not f.leading:
        return True, "standby"
    if f.worker_started and not f.worker_alive:
        return False, "periodic worker died"
    limit = STALE_INTERVALS * f.interval_s + STALE_GRACE_S
    if f.since_beat_s is not None and f.since_beat_s > limit:
        return False, f"periodic worker stuck: no pass for {f.since_beat_s:.0f} s (limit {limit:.0f} s)"
    return True, "leading"


def serve(port: int, check: Callable[[], tuple[bool, str]]) -> http.server.ThreadingHTTPServer:
    """GET /healthz answers 200 or 503 with the reason."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?")[0] not in ("/healthz", "/readyz"):
                self.send_error(404)
                return
            ok, why = check()
            body = why.encode()
            self.send_response(200 if ok else 503)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: object) -> None:  # probes every few seconds are not news
            pass

    server = http.server.ThreadingHTTPServer(("0.0.0.0", port), Handler)
    threading.Thread(target=server.serve_forever, name="kvscale-health", daemon=True).start()
    return server
