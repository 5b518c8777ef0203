"""One configured client of the official ``kubernetes`` package for the whole operator process."""

from __future__ import annotations

import functools
import os

import kubernetes.client
import kubernetes.config

#: The field manager of everything Kaizen writes with server-side apply (the model pointer, canaries, Jobs).
FIELD_MANAGER = "kaizen"


@functools.cache
def api_client() -> kubernetes.client.ApiClient:
    """In a pod: the service account. Elsewhere: ``$KUBECONFIG`` (read now, not when the client was imported)."""
    try:
        kubernetes.config.load_incluster_config()
        return kubernetes.client.ApiClient()
    except kubernetes.config.ConfigException:
        return kubernetes.config.new_client_from_config(config_file=os.environ.get("KUBECONFIG") or None)


def reset() -> None:
    """Forget the client (tests that point the operator at another cluster)."""
    api_client.cache_clear()
