"""POST one notification to one webhook, signed per the Standard Webhooks spec (the ``standardwebhooks`` package):
``webhook-id`` (stable per event), ``webhook-timestamp`` (now: receivers reject old ones) and ``webhook-signature``.

One short attempt (:data:`TIMEOUT` seconds); retries and backoff are the caller's (:mod:`kaizen.logic.notifications`),
so a look is never held by a receiver that is down.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from datetime import datetime, timezone
from math import floor

from standardwebhooks.webhooks import EmptyWebhookSecretError, Webhook

#: Seconds one POST may take, connect included.
TIMEOUT = 5.0


def headers(event_id: str, body: str, secret: str | None, now: datetime | None = None) -> dict[str, str]:
    """The request headers: the Standard Webhooks three (signature only with a secret) and the content type."""
    now = now or datetime.now(timezone.utc)
    result = {"content-type": "application/json", "webhook-id": event_id,
              "webhook-timestamp": str(floor(now.timestamp()))}
    if secret:
        result["webhook-signature"] = Webhook(secret).sign(event_id, now, body)
    return result


def post(url: str, event_id: str, body: str, secret: str | None) -> str | None:
    """Send; None when the receiver answered 2xx, else what went wrong, in one line."""
    try:
        signed = headers(event_id, body, secret)
    except (ValueError, EmptyWebhookSecretError) as error:  # a secret that is not whsec_ and base64
        return f"the signing secret is not a Standard Webhooks secret (whsec_ and base64): {error}"
    request = urllib.request.Request(url, data=body.encode(), method="POST", headers=signed)
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:  # noqa: S310 (the spec's http(s) URL)
            return None if 200 <= response.status < 300 else f"HTTP {response.status}"
    except urllib.error.HTTPError as error:
        return f"HTTP {error.code}"
    except (urllib.error.URLError, OSError) as error:
        return f"{type(error).__name__}: {getattr(error, 'reason', error)}"
