"""Errors of the Kubernetes API, typed, so that controllers classify them instead of reading HTTP dumps.

Every call in :mod:`kaizen.k8s` raises :class:`ApiError` (parsed from the API server's ``Status`` body, or made
from a connection failure) or :class:`NotOwned` (a child's name taken by an object Kaizen does not own). The
controllers decide what each means (:mod:`kaizen.controllers.reconcile`): a conflict or a refusal becomes a
condition, an unavailable API server a retry with backoff.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Any, TypeVar

import urllib3.exceptions
from kubernetes.client.exceptions import ApiException

F = TypeVar("F", bound=Callable[..., Any])


class ApiError(ApiException):
    """The API server refused a request, or could not be reached (``status`` 0).

    A subclass of the client's ApiException, so that callers written against the client (the CLI) keep working.
    """

    def __init__(self, status: int, reason: str, message: str):
        super().__init__(status=status, reason=reason)
        self.message = message

    @property
    def not_found(self) -> bool:
        return self.status == 404

    @property
    def conflict(self) -> bool:
        """409: the name exists (AlreadyExists) or the object changed since it was read (Conflict)."""
        return self.status == 409

    @property
    def invalid(self) -> bool:
        """The object itself was refused (422 Invalid, 400 BadRequest): sending it again cannot succeed."""
        return self.status in (400, 422)

    @property
    def forbidden(self) -> bool:
        """403: RBAC, a ResourceQuota or a LimitRange refused it; an administrator can change that."""
        return self.status == 403

    @property
    def transient(self) -> bool:
        """The API server is unreachable, overloaded or timed out: the same request may succeed later."""
        return self.status == 0 or self.status == 429 or self.status >= 500 or self.status == 408

    def __str__(self) -> str:
        return f"HTTP {self.status} {self.reason}: {self.message}" if self.status else self.message


def from_exception(error: ApiException) -> ApiError:
    """The API server's own message and reason, from the ``Status`` object in the body when there is one."""
    try:
        body = json.loads(error.body or "")
    except (TypeError, ValueError):
        body = None
    if isinstance(body, dict) and body.get("kind") == "Status":
        return ApiError(int(error.status or 0), str(body.get("reason") or error.reason or ""),
                        str(body.get("message") or error.reason or ""))
    return ApiError(int(error.status or 0), str(error.reason or ""), str(error.body or error.reason or ""))


def typed(function: F) -> F:
    """Raise :class:`ApiError` from ``function`` instead of the client's ApiException or a connection error."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except ApiError:
            raise
        except ApiException as error:
            raise from_exception(error) from error
        except (urllib3.exceptions.HTTPError, OSError) as error:
            raise ApiError(0, "Unavailable", f"the API server could not be reached: {error}") from error

    return wrapper  # type: ignore[return-value]


class NotOwned(Exception):
    """An object with a child's name exists and belongs to something else: Kaizen never adopts nor overwrites it."""

    def __init__(self, kind: str, namespace: str, name: str, owner: str):
        self.kind, self.namespace, self.name = kind, namespace, name
        super().__init__(f"{kind} {namespace}/{name} exists and is not owned by {owner}; Kaizen will not take it "
                         f"over: delete or rename it")
