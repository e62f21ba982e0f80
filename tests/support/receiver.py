"""A real HTTP server on loopback that records webhook deliveries (and can fail on purpose)."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class WebhookReceiver:
    def __init__(
        self, fail_first: int = 0, *, host: str = "127.0.0.1", port: int = 0, delay_s: float = 0.0
    ) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.fail_remaining = fail_first
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if delay_s:
                    time.sleep(delay_s)  # a slow receiver: answers late
                with owner._lock:
                    failing = owner.fail_remaining > 0
                    if failing:
                        owner.fail_remaining -= 1
                    else:
                        owner.received.append(
                            ({k.lower(): v for k, v in self.headers.items()}, body)
                        )
                self.send_response(500 if failing else 204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://{host}:{self.port}/hook"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> WebhookReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
