"""A stand-in for a model server's telemetry: a process serving ``/metrics`` with ``http_requests_total{code}``
counters that grow at a request rate and error rate a test sets, and changes, while it runs.

Pods on kwok never run, so tests start these as local processes and point :class:`kaizen.dev.prometheus
.LocalPrometheus` at them with the pod's labels. ``POST /control`` with JSON ``{"rate": 50, "errorRate": 0.02}``
changes the stream; ``GET /control`` returns the settings and the counts so far. Errors are not random: the 5xx
counter is the floor of ``requests * errorRate`` accumulated over time, so a test's numbers are reproducible.

Run as ``python -m kaizen.dev.emitter --port PORT [--rate R] [--error-rate E]``; :class:`Emitter` starts and
controls one from Python.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from kaizen.dev import processes
from kaizen.dev.cluster import free_ports

_TICK = 0.05


class Stream:
    """The request counters; ``advance`` adds what ``rate`` and ``error_rate`` produce over elapsed time."""

    def __init__(self, rate: float, error_rate: float) -> None:
        self.rate, self.error_rate = rate, error_rate
        self.requests = 0.0  # fractional, so low rates still add up exactly
        self.errors = 0.0
        self._lock = threading.Lock()

    def advance(self, seconds: float) -> None:
        with self._lock:
            new = self.rate * seconds
            self.requests += new
            self.errors += new * self.error_rate

    def set(self, rate: float | None = None, error_rate: float | None = None) -> None:
        with self._lock:
            if rate is not None:
                self.rate = rate
            if error_rate is not None:
                self.error_rate = error_rate

    def snapshot(self) -> dict[str, float]:
        with self._lock:
            errors, requests = int(self.errors), int(self.requests)
            return {"rate": self.rate, "errorRate": self.error_rate, "requests": requests, "errors": errors}

    def exposition(self) -> str:
        counts = self.snapshot()
        return ("# HELP http_requests_total Requests served, by status code.\n"
                "# TYPE http_requests_total counter\n"
                f'http_requests_total{{code="200"}} {counts["requests"] - counts["errors"]}\n'
                f'http_requests_total{{code="500"}} {counts["errors"]}\n')


def serve(port: int, stream: Stream) -> None:
    """Serve ``/metrics`` and ``/control`` on loopback until killed."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/metrics":
                self._reply(200, stream.exposition(), "text/plain; version=0.0.4")
            elif self.path == "/control":
                self._reply(200, json.dumps(stream.snapshot()), "application/json")
            else:
                self._reply(404, "not found: try /metrics or /control\n", "text/plain")

        def do_POST(self) -> None:
            if self.path != "/control":
                self._reply(404, "not found: POST /control\n", "text/plain")
                return
            try:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                stream.set(rate=body.get("rate"), error_rate=body.get("errorRate"))
            except (ValueError, AttributeError) as error:
                self._reply(400, f"expected JSON like {{\"rate\": 50, \"errorRate\": 0.01}}: {error}\n", "text/plain")
                return
            self._reply(200, json.dumps(stream.snapshot()), "application/json")

        def _reply(self, code: int, text: str, content_type: str) -> None:
            data = text.encode()
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *_: Any) -> None:
            pass  # One line per scrape would bury anything useful in the log.

    def produce() -> None:
        last = time.monotonic()
        while True:
            time.sleep(_TICK)
            now = time.monotonic()
            stream.advance(now - last)
            last = now

    threading.Thread(target=produce, daemon=True).start()
    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()


class Emitter:
    """One emitter process, started from Python: ``address`` to scrape, ``set(...)`` to change its stream."""

    def __init__(self, log_dir: Path, name: str = "emitter", rate: float = 100, error_rate: float = 0.0,
                 timeout: float = 10.0) -> None:
        self.port = free_ports(1)[0]
        self.address = f"127.0.0.1:{self.port}"
        self._process = processes.spawn(name, [
            sys.executable, "-m", "kaizen.dev.emitter", "--port", str(self.port), "--rate", str(rate),
            "--error-rate", str(error_rate),
        ], log_dir / f"{name}.log", detach=False)
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.counts()
                break
            except (urllib.error.URLError, ConnectionError):
                if not self._process.alive() or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"emitter {name} did not start:\n{self._process.log_tail()}") from None
                time.sleep(0.05)

    def _control(self, body: dict[str, float] | None = None) -> dict[str, float]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"http://{self.address}/control", data=data, method="POST" if data else "GET")
        with urllib.request.urlopen(request, timeout=5) as response:
            return json.load(response)

    def set(self, rate: float | None = None, error_rate: float | None = None) -> dict[str, float]:
        """Change the request rate (per second) and/or the error rate (0..1) from now on."""
        return self._control({k: v for k, v in (("rate", rate), ("errorRate", error_rate)) if v is not None})

    def counts(self) -> dict[str, float]:
        return self._control()

    def stop(self) -> None:
        processes.stop([self._process])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True, help="loopback port to serve on")
    parser.add_argument("--rate", type=float, default=100.0, help="requests per second (default 100)")
    parser.add_argument("--error-rate", type=float, default=0.0, help="fraction of requests answered 500")
    args = parser.parse_args(argv)
    serve(args.port, Stream(args.rate, args.error_rate))
    return 0


if __name__ == "__main__":
    sys.exit(main())
