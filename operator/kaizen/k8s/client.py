"""One configured client of the official ``kubernetes`` package for the whole operator process, and kopf's own
session to the API server (:func:`kopf_session`), bounded as kopf's default is not.

Its writes can be fenced (:func:`fence`): with leader election, a replica that no longer holds the lease is refused
every create, update, patch and delete before it reaches the API server, whatever thread was about to send it.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any, cast

import aiohttp
import kopf
import kubernetes.client
import kubernetes.config

from kaizen.k8s.errors import ApiError

#: The field manager of everything Kaizen writes with server-side apply (the model pointer, canaries, Jobs).
FIELD_MANAGER = "kaizen"
#: How many requests the operator's threads may have in flight at once: the controllers' looks run in this many
#: threads (:mod:`kaizen.controllers.reconcile`), and each client keeps as many connections, so that no look waits
#: for a connection nor opens (and TLS-handshakes) one that the pool then throws away.
CONCURRENCY = 32
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


async def kopf_session(logger: kopf.Logger, settings: kopf.OperatorSettings, **_: Any) -> kopf.AiohttpSession:
    """kopf's connection to the API server (its watches, its patches of handler progress, its Events) with the
    credentials of :func:`configuration`, and at most :data:`CONCURRENCY` connections: kopf's default pool has no
    limit, so the handlers of every object at start-up opened one TLS connection each (160 at 100 loops and 100
    Rollouts; 128 KiB of buffers each, and OpenSSL's beside) and the process kept the memory. kopf logs in again
    when the API server refuses the token (a service account's is renewed)."""
    config = configuration()
    # The header the client sends ("Bearer <token>"; a token file's is read again here); "BearerToken" since 36.0.1.
    header = config.get_api_key_with_prefix("BearerToken") or config.get_api_key_with_prefix("authorization") or ""
    scheme, _space, token = header.rpartition(" ")
    info = kopf.ConnectionInfo(
        server=config.host, ca_path=config.ssl_ca_cert, insecure=not config.verify_ssl,
        username=config.username or None, password=config.password or None, scheme=scheme or None,
        token=token or None, certificate_path=config.cert_file, private_key_path=config.key_file,
        trust_env=settings.networking.trust_env)
    logger.debug(f"Logged in to {info.server} with at most {CONCURRENCY} connections.")
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=CONCURRENCY, ssl=info.as_ssl_context()),
        headers=info.as_http_headers(), trust_env=info.trust_env)
    return kopf.AiohttpSession(server=info.server, aiohttp_session=session)


def reset() -> None:
    """Forget the client (tests that point the operator at another cluster)."""
    api_client.cache_clear()
