"""Runs the collector as a real process (``python -m kaizen.collector``) and talks to it over real HTTP."""

from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from kaizen.dev import processes
from kaizen.dev.cluster import free_ports

TOKENS = {
    "ingest": "ingest-token-000000000000",
    "read": "read-token-0000000000000",
    "audit": "audit-token-000000000000",
    "admin": "admin-token-000000000000",
}


def write_tokens(path: Path) -> Path:
    path.write_text("# test tokens\n" + "".join(f"{token} {scope} {scope}-client\n" for scope, token in TOKENS.items()))
    return path


class Collector:
    """One collector process on a free loopback port."""

    def __init__(self, db: str, workdir: Path, *extra: str) -> None:
        self.db, self.workdir, self.extra = db, workdir, extra
        self.tokens = write_tokens(workdir / "tokens")
        self.port = free_ports(1)[0]
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: processes.ManagedProcess | None = None

    def start(self, timeout: float = 30) -> Collector:
        self.process = processes.spawn("collector", [
            sys.executable, "-m", "kaizen.collector", "--db", self.db, "--host", "127.0.0.1",
            "--port", str(self.port), "--tokens-file", self.tokens, *self.extra,
        ], self.workdir / f"collector-{self.port}.log", detach=False)
        deadline = time.monotonic() + timeout
        while True:
            try:
                if call(self, "GET", "/readyz")[0] == 200:
                    return self
            except OSError:
                pass
            if not self.process.alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the collector did not become ready:\n{self.process.log_tail()}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None:
            processes.stop([self.process])

    def kill(self) -> None:
        """kill -9: no shutdown, no flush."""
        assert self.process is not None and self.process.popen is not None
        self.process.popen.kill()
        self.process.popen.wait()

    def log(self) -> str:
        return self.process.log_tail(200) if self.process else ""


def call(
    collector: Collector, method: str, path: str, body: Any = None, scope: str | None = None,
    raw: bytes | None = None, headers: dict[str, str] | None = None, timeout: float = 10,
) -> tuple[int, Any]:
    """One request; returns (status, decoded JSON body or text)."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    all_headers = {"Content-Type": "application/json"} if data is not None else {}
    if scope is not None:
        all_headers["Authorization"] = f"Bearer {TOKENS[scope]}"
    all_headers.update(headers or {})
    request = urllib.request.Request(collector.url + path, data=data, headers=all_headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, payload, content_type = response.status, response.read(), response.headers.get_content_type()
    except urllib.error.HTTPError as error:
        status, payload, content_type = error.code, error.read(), error.headers.get_content_type()
    if content_type == "application/json":
        return status, json.loads(payload)
    return status, payload.decode()


def export(collector: Collector, query: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The rows and the manifest of an export."""
    status, text = call(collector, "GET", f"/v1/export?{query}", scope="read")
    assert status == 200, text
    lines = [json.loads(line) for line in text.splitlines()]
    assert lines and lines[-1]["kind"] == "manifest", "the export must end with its manifest"
    return lines[:-1], lines[-1]
