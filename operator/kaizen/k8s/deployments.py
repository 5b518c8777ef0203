"""Deployments of a Rollout through the API: read one (:func:`read`, or from a watch: :class:`Watched`), server-side
apply (the canary, a promotion's model variable) and delete. The manifests and what a Deployment shows are pure, in
:mod:`kaizen.logic.deployments`.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

import kubernetes.client
from kubernetes.client.exceptions import ApiException
from kubernetes.watch.watch import iter_resp_lines

from kaizen.k8s import client
from kaizen.k8s.client import FIELD_MANAGER, api_client, configuration
from kaizen.k8s.errors import typed
from kaizen.logic.deployments import essentials

#: How long one watch request lasts before it is made again from the last resourceVersion seen.
WATCH_SECONDS = 300
log = logging.getLogger(__name__)


def _apps() -> kubernetes.client.AppsV1Api:
    return kubernetes.client.AppsV1Api(api_client())


@typed
def read(namespace: str, name: str) -> dict[str, Any] | None:
    """The Deployment as the API returns it (camelCase dict), or None if there is none.

    The JSON is read as it is, not through the client's model objects: a V1Deployment built only to be serialized
    back is CPU for nothing, twice per Rollout look."""
    try:
        # With _preload_content=False the client returns the raw HTTP response, not the V1Deployment it is typed as.
        response: Any = _apps().read_namespaced_deployment(name, namespace, _preload_content=False)
    except ApiException as error:
        if error.status == 404:
            return None
        raise
    return json.loads(response.data)


@typed
def apply(manifest: dict[str, Any]) -> None:
    """Server-side apply with Kaizen's field manager; ``force`` because these fields are Kaizen's to own."""
    meta = manifest["metadata"]
    _apps().patch_namespaced_deployment(
        meta["name"], meta["namespace"], manifest, field_manager=FIELD_MANAGER, force=True,
        _content_type="application/apply-patch+yaml",
    )


@typed
def delete(namespace: str, name: str) -> bool:
    """Delete the Deployment (its pods go with it); False if it was already gone."""
    try:
        _apps().delete_namespaced_deployment(name, namespace, propagation_policy="Background")
    except ApiException as error:
        if error.status == 404:
            return False
        raise
    return True


class Watched:
    """The Deployments of every namespace asked about, as the API server's watch last delivered them: a namespace is
    listed (in pages) at the first :meth:`get` in it, then followed by a watch in a thread of its own, listed again
    when the watch's resourceVersion has expired (410). So only namespaces with Rollouts are watched, with the
    operator's namespaced RBAC, and a look reads a Deployment without a request.

    Each is kept as the JSON text of :func:`kaizen.logic.deployments.essentials` (no managedFields, no annotations):
    about 2 KB, where kopf's watch kept some 20 KB of its own bookkeeping for every Deployment, and :meth:`get`
    decodes a copy of its own for the caller. The watches use a client of their own: a watch holds its connection,
    which the looks' pool must not lose."""

    def __init__(self) -> None:
        self._objects: dict[tuple[str, str], str] = {}
        self._followed: set[str] = set()
        self._lock = threading.Lock()
        self._client: kubernetes.client.ApiClient | None = None

    def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The Deployment as last watched, or None when there is none. Raises ApiError when the namespace's first
        listing fails (the look retries with backoff)."""
        if namespace not in self._followed:
            self._follow(namespace)
        text = self._objects.get((namespace, name))
        return None if text is None else json.loads(text)

    def _follow(self, namespace: str) -> None:
        with self._lock:
            if namespace in self._followed:
                return
            if self._client is None:
                self._client = kubernetes.client.ApiClient(configuration())
            version = self._list(namespace)
            self._followed.add(namespace)
        threading.Thread(target=self._watch_forever, args=(namespace, version), daemon=True,
                         name=f"kaizen-deployments-{namespace}").start()

    @typed
    def _list(self, namespace: str) -> str:
        """Replace the namespace's Deployments by a fresh listing; its resourceVersion."""
        apps, listed, token = kubernetes.client.AppsV1Api(self._client), {}, None
        while True:
            response: Any = apps.list_namespaced_deployment(namespace, limit=client.LIST_PAGE, _continue=token,
                                                            _preload_content=False)
            page = json.loads(response.data)
            for item in page.get("items") or []:
                listed[item["metadata"]["name"]] = _text(item)
            token = (page.get("metadata") or {}).get("continue")
            if not token:
                break
        for key in [k for k in list(self._objects) if k[0] == namespace and k[1] not in listed]:
            del self._objects[key]
        self._objects.update({(namespace, name): text for name, text in listed.items()})
        return str(page["metadata"]["resourceVersion"])

    def _watch_forever(self, namespace: str, version: str) -> None:
        apps, failures = kubernetes.client.AppsV1Api(self._client), 0
        while True:
            try:
                response: Any = apps.list_namespaced_deployment(
                    namespace, watch=True, resource_version=version, allow_watch_bookmarks=True,
                    timeout_seconds=WATCH_SECONDS, _preload_content=False)
                try:
                    for line in iter_resp_lines(response):
                        version = self._apply(namespace, json.loads(line), version)
                finally:
                    response.release_conn()
                failures = 0
            except Expired:
                version = self._relist(namespace)
            except Exception as error:  # noqa: BLE001  (the API server away: watch again, with a growing delay)
                failures += 1
                delay = min(2.0 ** failures, 30.0)
                log.warning(f"Watch of Deployments failed namespace={namespace} error={error!r}; again in {delay:g}s")
                time.sleep(delay)
                if isinstance(error, ApiException) and error.status == 410:
                    version = self._relist(namespace)

    def _relist(self, namespace: str) -> str:
        failures = 0
        while True:
            try:
                return self._list(namespace)
            except Exception as error:  # noqa: BLE001
                failures += 1
                delay = min(2.0 ** failures, 30.0)
                log.warning(f"Listing Deployments failed namespace={namespace} error={error!r}; again in {delay:g}s")
                time.sleep(delay)

    def _apply(self, namespace: str, event: dict[str, Any], version: str) -> str:
        """One watch event applied; the resourceVersion to watch on from."""
        kind, obj = event.get("type"), event.get("object") or {}
        if kind == "ERROR":
            raise Expired() if obj.get("code") == 410 else ApiException(obj.get("code"), obj.get("message"))
        meta = obj.get("metadata") or {}
        if kind in ("ADDED", "MODIFIED"):
            self._objects[(namespace, meta["name"])] = _text(obj)
        elif kind == "DELETED":
            self._objects.pop((namespace, meta["name"]), None)
        return str(meta.get("resourceVersion") or version)


class Expired(Exception):
    """The watch's resourceVersion is too old (410 Gone): list again."""


def _text(deployment: dict[str, Any]) -> str:
    return json.dumps(essentials(deployment), separators=(",", ":"))


#: The operator's watched Deployments.
WATCHED = Watched()
