"""A tiny HTTP server answering /metrics with a given page (vLLM's exposition format), bound to a pod IP."""

from __future__ import annotations

import contextlib
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

    class Server(http.server.ThreadingHTTPServer):
        def handle_error(self, request: Any, client_address: Any) -> None:
            pass  # a client that gave up (a scrape timeout under test) is not news

    srv = Server((ip, port), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def close_all(servers: list[http.server.ThreadingHTTPServer]) -> None:
    """Stop servers together: each shutdown waits out its serve_forever poll (0.5 s), a thousand in turn
    took seven minutes."""
    threads = [threading.Thread(target=srv.shutdown) for srv in servers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for srv in servers:
        srv.server_close()


class PodPages:
    """Serve ``page`` on the IP of every pod matching ``selector`` as pods appear (kwok pods have no
    process: this stands in for their vLLM's /metrics)."""

    def __init__(self, api: Any, namespace: str, selector: str, port: int, page: Callable[[], str]) -> None:
        self.api, self.namespace, self.selector, self.port, self.page = api, namespace, selector, port, page
        self.servers: dict[str, http.server.ThreadingHTTPServer] = {}
        self.paused = False  # True: every page is down (connections refused) until set False again
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PodPages:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        close_all(list(self.servers.values()))

    def _run(self) -> None:
        from kubernetes import client

        core = client.CoreV1Api(self.api)
        while not self._stop.wait(0.5):
            if self.paused:
                close_all([self.servers.pop(addr) for addr in list(self.servers)])
                continue
            try:
                pods = core.list_namespaced_pod(self.namespace, label_selector=self.selector).items
            except Exception:  # the apiserver may be restarting under a chaos test: try again
                continue
            for p in pods:
                ip: str | None = p.status.pod_ip if p.status else None
                if ip and ip not in self.servers:
                    with contextlib.suppress(OSError):  # the address is not up yet
                        self.servers[ip] = serve_page(ip, self.port, self.page)
