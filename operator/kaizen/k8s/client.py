"""One configured client of the official ``kubernetes`` package for the whole operator process.

Its writes can be fenced (:func:`fence`): with leader election, a replica that no longer holds the lease is refused
every create, update, patch and delete before it reaches the API server, whatever thread was about to send it.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any, cast

import kubernetes.client
import kubernetes.config

from kaizen.k8s.errors import ApiError

#: The field manager of everything Kaizen writes with server-side apply (the model pointer, canaries, Jobs).
FIELD_MANAGER = "kaizen"
#: How many requests the operator's threads may have in flight at once: the controllers' looks run in this many
#: threads (:mod:`kaizen.controllers.reconcile`), and each client keeps as many connections, so that no look waits
#: for a connection nor opens (and TLS-handshakes) one that the pool then throws away.
CONCURRENCY = 32
#: Objects per page of a first listing, the operator's and kopf's (client-go's reflectors list 500 a page too): one
#: response of every Deployment or Rollout of a large cluster, decoded at once, is the largest allocation it makes.
LIST_PAGE = 500
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_may_write: Callable[[], bool] | None = None


class FencedApiClient(kubernetes.client.ApiClient):
    """An ApiClient that sends a write only while :func:`fence`'s check allows it."""

    def call_api(self, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        if method.upper() not in READ_METHODS and _may_write is not None and not _may_write():
            raise ApiError(0, "NotLeader", f"refused {method} {url.split('?')[0]}: this operator replica no longer "
                           "holds the leader lease, so another one may be acting")
        return super().call_api(method, url, *args, **kwargs)


def configuration() -> kubernetes.client.Configuration:
    """In a pod: the service account. Elsewhere: ``$KUBECONFIG`` (read now, not when the client was imported)."""
    config = kubernetes.client.Configuration()
    try:
        kubernetes.config.load_incluster_config(client_configuration=config)
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config(config_file=os.environ.get("KUBECONFIG") or None,
                                           client_configuration=config)
    config.connection_pool_maxsize = max(config.connection_pool_maxsize, CONCURRENCY)
    return config


@functools.cache
def api_client() -> kubernetes.client.ApiClient:
    return FencedApiClient(configuration())


def json_object(response: object) -> dict[str, Any]:
    """What the CustomObjectsApi returns, typed there as ``object``: the API server's JSON object, decoded."""
    return cast(dict[str, Any], response)


def fence(may_write: Callable[[], bool] | None) -> None:
    """Refuse writes through :func:`api_client` whenever ``may_write()`` is false (None: never refuse)."""
    global _may_write
    _may_write = may_write


def reset() -> None:
    """Forget the client (tests that point the operator at another cluster)."""
    api_client.cache_clear()
