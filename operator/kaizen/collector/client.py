"""A small synchronous client of the collector, for the operator (called from kopf's thread pool) and the SDK.

Standard library only (``urllib``), so it adds nothing to a model server's image. Every failure - connection
refused, timeout, a 4xx or 5xx, a body that is not what the API promises - raises :class:`CollectorError` with a
message that says which call failed and why, including the collector's own error text.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from kaizen.collector.models import AuditEntry, BacklogItem, Backlog, FeedbackCount


class CollectorError(Exception):
    """A collector call failed; ``status`` is the HTTP status when there was a response."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class CollectorClient:
    """Calls one collector at ``url`` (its base URL, e.g. ``http://kaizen-collector.kaizen:8090``)."""

    def __init__(self, url: str, token: str | None = None, timeout: float = 10) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"collector URL {url!r} must start with http:// or https://")
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout

    def request(self, method: str, path: str, body: Any = None, query: dict[str, Any] | None = None) -> Any:
        """One JSON call; returns the decoded response body."""
        url = self.url + path
        if query:
            url += "?" + urllib.parse.urlencode({k: v for k, v in query.items() if v is not None})
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        what = f"{method} {self.url}{path}"
        try:
            with urllib.request.urlopen(
                urllib.request.Request(url, data=data, headers=headers, method=method), timeout=self.timeout
            ) as response:
                payload = response.read()
        except urllib.error.HTTPError as error:
            raise CollectorError(f"{what} failed with HTTP {error.code}: {_error_text(error)}", error.code) from None
        except (urllib.error.URLError, TimeoutError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise CollectorError(f"{what} failed: cannot reach the collector ({reason})") from None
        try:
            return json.loads(payload)
        except ValueError:
            raise CollectorError(f"{what} returned a body that is not JSON: {payload[:200]!r}") from None

    def backlog(
        self, model: str, since: datetime | None = None, categories: Iterable[str] = (), consented_only: bool = True,
        limit: int = 50,
    ) -> list[BacklogItem]:
        """Negative feedback for ``model`` grouped by (category, scenario, cohort), most important first."""
        body = self.request("GET", "/v1/backlog", query=self._filters(model, since, categories) | {
            "consentedOnly": _bool(consented_only), "limit": limit,
        })
        return self._parse(Backlog, body, "backlog").items

    def feedback_count(
        self, model: str, since: datetime | None = None, categories: Iterable[str] = (), consented_only: bool = True
    ) -> int:
        """Negative feedback items for ``model`` stored after ``since`` (consented ones only, by default)."""
        body = self.request("GET", "/v1/feedback/count", query=self._filters(model, since, categories) | {
            "consentedOnly": _bool(consented_only),
        })
        return self._parse(FeedbackCount, body, "feedback count").count

    def post_audit(self, entry: dict[str, Any]) -> None:
        """Append a decision to the audit log (camelCase or snake_case keys; see :class:`AuditEntry`)."""
        try:
            wire = AuditEntry.model_validate(entry).to_wire()
        except ValidationError as error:
            raise CollectorError(f"invalid audit entry, not sent: {error}") from None
        self.request("POST", "/v1/audit", wire)

    @staticmethod
    def _filters(model: str, since: datetime | None, categories: Iterable[str]) -> dict[str, Any]:
        if since is not None and since.tzinfo is None:
            raise ValueError("since must carry a time zone (e.g. datetime.now(UTC))")
        return {
            "model": model, "since": since.isoformat() if since else None,
            "categories": ",".join(categories) or None,
        }

    def _parse(self, model: Any, body: Any, what: str) -> Any:
        try:
            return model.model_validate(body)
        except ValidationError as error:
            raise CollectorError(f"the collector at {self.url} returned an unexpected {what}: {error}") from None


def _bool(value: bool) -> str:
    return "true" if value else "false"


def _error_text(error: urllib.error.HTTPError) -> str:
    try:
        body = json.loads(error.read())
    except (ValueError, OSError):
        return error.reason or "no details"
    if not isinstance(body, dict):
        return str(body)[:300]
    fields = "; ".join(f"{f.get('loc')}: {f.get('message')}" for f in body.get("fields", []))
    return str(body.get("error", body)) + (f" ({fields})" if fields else "")
