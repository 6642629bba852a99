"""A real webhook receiver: an HTTP server in a thread that records every POST it gets.

The path picks the answer: ``/ok`` answers 204, ``/fail`` 500, ``/slow`` waits ``slow_s`` and then
answers 200 (longer than the tests' delivery timeout).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from service.notify.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, verify


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]  # names in lower case
    body: bytes
    at: float  # time.time() when it arrived

    def verified_with(self, secret: str) -> bool:
        """The documented recipe (README "Webhooks"): HMAC-SHA256 of "{timestamp}." + body."""
        return verify(
            secret,
            self.body,
            timestamp=self.headers[TIMESTAMP_HEADER.lower()],
            signature=self.headers[SIGNATURE_HEADER.lower()],
        )


class Receiver:
    def __init__(self, server: ThreadingHTTPServer) -> None:
        self.server = server
        self.received: list[Received] = []
        self.lock = threading.Lock()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def on(self, path: str) -> list[Received]:
        with self.lock:
            return [item for item in self.received if item.path == path]


@contextmanager
def receiver(slow_s: float = 2.0) -> Iterator[Receiver]:
    holder: dict[str, Receiver] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            item = Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body, time.time())
            with holder["r"].lock:
                holder["r"].received.append(item)
            if self.path == "/slow":
                time.sleep(slow_s)
            status = {"/ok": 204, "/fail": 500}.get(self.path, 200)
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    holder["r"] = Receiver(server)
    thread = threading.Thread(target=server.serve_forever, name="webhook-receiver", daemon=True)
    thread.start()
    try:
        yield holder["r"]
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
