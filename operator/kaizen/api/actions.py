"""User actions on Kaizen objects, carried by annotations so that nothing in a GitOps-managed spec changes.

``kaizen approve``, ``kaizen retrain``, ``kaizen promote`` and ``kaizen abort`` set ``kaizen.dev/action`` with who
asked and when; the controller acts on it, records the requester in its decision log, and removes the annotations.
``kaizen pause`` and ``kaizen resume`` set or remove ``kaizen.dev/paused``. Who may do any of this is decided by
Kubernetes RBAC on the object (``patch``), as for any other change.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from kaizen.api.common import API_GROUP

ACTION = f"{API_GROUP}/action"
ACTION_BY = f"{API_GROUP}/action-by"
ACTION_AT = f"{API_GROUP}/action-at"
PAUSED = f"{API_GROUP}/paused"
#: Set by ``kaizen resume``: failures before this time no longer count toward Degraded.
FAILURES_ACKNOWLEDGED = f"{API_GROUP}/failures-acknowledged-at"
REQUEST_KEYS = [ACTION, ACTION_BY, ACTION_AT]


def parse_timestamp(value: str) -> datetime:
    """A timestamp the API server always writes, in RFC 3339 (``metadata.creationTimestamp``)."""
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def action_annotations(action: str, by: str, at: datetime) -> dict[str, Any]:
    return {ACTION: action, ACTION_BY: by, ACTION_AT: at.isoformat().replace("+00:00", "Z")}
