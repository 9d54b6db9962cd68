"""A tiny HTTP server answering /metrics with a given page (vLLM's exposition format), bound to a pod IP."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Callable
from typing import Any


def serve_page(ip: str, port: int, page: Callable[[], str]) -> http.server.ThreadingHTTPServer:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = page().encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    srv = http.server.ThreadingHTTPServer((ip, port), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv
