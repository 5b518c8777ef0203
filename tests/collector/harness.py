"""Runs the collector as a real process (``python -m kaizen.collector``) and talks to it over real HTTP."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from pathlib import Path

from kaizen.dev.collector import TOKENS, LocalCollector  # noqa: F401 - TOKENS: the tests import it from here

#: The review queue's scope is not among the local collector's tokens (no demo part reviews): the tests add one.
REVIEW_TOKEN = "review-token-00000000000"


class Collector(LocalCollector):
    """One collector process on a free loopback port (:class:`kaizen.dev.collector.LocalCollector`), with a token
    for the ``review`` scope too, which tests may also kill -9."""

    def __init__(self, db: str, workdir: Path, *options: str) -> None:
        super().__init__(db, workdir, *options)
        self.tokens["review"] = REVIEW_TOKEN
        with self.tokens_file.open("a") as tokens:
            tokens.write(f"{REVIEW_TOKEN} review review-client\n")

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
        all_headers["Authorization"] = f"Bearer {collector.tokens[scope]}"
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
