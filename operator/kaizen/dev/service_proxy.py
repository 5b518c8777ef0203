"""A Service of the local stack reached from this machine: what kube-proxy does for a cluster's clients.

``with ServiceProxy(cluster, "demo", "support-bot") as proxy: urlopen(proxy.url + "/v1/models")``. The proxy
listens on a free port of 127.0.0.1 and forwards each new TCP connection to a ready endpoint of the Service's port,
picked at random, as kube-proxy's iptables mode spreads connections (so keep-alive requests stay on one pod). The
endpoints are the Service's EndpointSlices, which kube-controller-manager keeps from the pods' readiness and which
the proxy watches; an endpoint's pod IP is reached at the loopback address the dev node agent serves it on
(:func:`kaizen.dev.serving.local_address`); endpoints the agent does not run (kwok's fake pods) are skipped.

With no ready endpoint a connection is answered ``503 Service Unavailable`` with a JSON error saying so, where
kube-proxy would refuse it: an HTTP client then reads why. An endpoint that refuses the connection (its pod just
went away) is skipped for the next one. Dev-stack code, never imported by the operator.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import kubernetes.client
import kubernetes.config
import kubernetes.watch
from kubernetes.client.exceptions import ApiException

from kaizen.dev.cluster import ClusterAccess, raw_json
from kaizen.dev.serving import local_address

log = logging.getLogger("kaizen.dev.service_proxy")

_SERVICE_LABEL = "kubernetes.io/service-name"
_LINGER_SECONDS = 30  # how long a connection's other direction may stay open once one direction has ended
_WATCH_SECONDS = 5  # how long one watch request lasts: also how long stop() may leave the watching thread behind


class ServiceProxyError(RuntimeError):
    """The Service cannot be proxied (missing, or without the port asked for); the message says what to do."""


def ready_endpoints(slices: list[dict[str, Any]], port_name: str) -> list[tuple[str, int]]:
    """The local ``(address, port)`` of each ready endpoint of the slices for the Service port named ``port_name``
    (``""`` when unnamed); an endpoint with no ready condition counts as ready, as the EndpointSlice API says."""
    found = set()
    for endpoint_slice in slices:
        ports = [p.get("port") for p in endpoint_slice.get("ports") or [] if (p.get("name") or "") == port_name]
        if not ports or ports[0] is None:
            continue
        for endpoint in endpoint_slice.get("endpoints") or []:
            if (endpoint.get("conditions") or {}).get("ready") is False:
                continue
            for address in endpoint.get("addresses") or []:
                local = local_address(address)
                if local is not None:
                    found.add((local, int(ports[0])))
    return sorted(found)


def service_port(service: dict[str, Any], port: int | str | None) -> dict[str, Any]:
    """The Service's port named or numbered ``port`` (None: its only port)."""
    ports = service.get("spec", {}).get("ports") or []
    name = f"{service['metadata']['namespace']}/{service['metadata']['name']}"
    matching = [p for p in ports if port is None or p.get("name") == port or p.get("port") == port]
    if port is None and len(ports) > 1:
        raise ServiceProxyError(f"Service {name} has {len(ports)} ports: pass port= one of "
                                f"{', '.join(str(p.get('name') or p['port']) for p in ports)}")
    if not matching:
        raise ServiceProxyError(f"Service {name} has no port {port!r}: it has "
                                f"{', '.join(str(p.get('name') or p['port']) for p in ports) or 'none'}")
    return matching[0]


class ServiceProxy:
    """A local URL for one port of a Service: ``proxy.url``; ``proxy.endpoints()``, what it forwards to now."""

    def __init__(self, cluster: ClusterAccess | Path | str, namespace: str, service: str,
                 port: int | str | None = None) -> None:
        self.access = cluster if isinstance(cluster, ClusterAccess) else ClusterAccess(cluster)
        self.namespace, self.service, self.requested_port = namespace, service, port
        self.port = 0
        self._slices: dict[str, dict[str, Any]] = {}  # by name
        self._port_name = ""
        self._stopping = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None] | None] = set()
        self._threads: list[threading.Thread] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ServiceProxy:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def endpoints(self) -> list[tuple[str, int]]:
        """The ready endpoints new connections go to, as local addresses."""
        return ready_endpoints(list(self._slices.values()), self._port_name)

    def start(self, timeout: float = 10.0) -> ServiceProxy:
        """Read the Service, start watching its EndpointSlices and listening; returns once both run."""
        api = self.access.api_client()
        core, discovery = kubernetes.client.CoreV1Api(api), kubernetes.client.DiscoveryV1Api(api)
        try:
            service = raw_json(core.read_namespaced_service(self.service, self.namespace, _preload_content=False))
        except ApiException as error:
            if error.status == 404:
                raise ServiceProxyError(f"Service {self.namespace}/{self.service} not found: apply it first") from None
            raise
        self._port_name = service_port(service, self.requested_port).get("name") or ""
        listed = threading.Event()
        self._threads = [threading.Thread(target=self._watch, args=(discovery, listed), daemon=True,
                                          name=f"endpoints-{self.service}"),
                         threading.Thread(target=self._serve, daemon=True, name=f"proxy-{self.service}")]
        for thread in self._threads:
            thread.start()
        deadline = time.monotonic() + timeout
        while not (listed.is_set() and self.port):
            if time.monotonic() > deadline:
                self.stop()
                raise ServiceProxyError(f"the proxy of Service {self.namespace}/{self.service} did not start within "
                                        f"{timeout:g}s")
            time.sleep(0.02)
        log.info(f"Proxying Service service={self.namespace}/{self.service} port={self._port_name or '-'} "
                 f"url={self.url}")
        return self

    def stop(self) -> None:
        """Stop listening and watching; open connections are closed."""
        self._stopping.set()
        loop = self._loop
        if loop is not None and loop.is_running():
            loop.call_soon_threadsafe(loop.stop)
        serving = [t for t in self._threads if t.name.startswith("proxy-")]
        for thread in serving:
            thread.join(timeout=5)

    # --- the endpoints ---------------------------------------------------------------------------------------

    def _watch(self, discovery: kubernetes.client.DiscoveryV1Api, listed: threading.Event) -> None:
        """Keep ``_slices`` current: list, then watch from the list's version; start over after any error."""
        selector = f"{_SERVICE_LABEL}={self.service}"
        while not self._stopping.is_set():
            try:
                result = raw_json(discovery.list_namespaced_endpoint_slice(
                    self.namespace, label_selector=selector, _preload_content=False))
                self._slices = {s["metadata"]["name"]: s for s in result["items"]}
                listed.set()
                version = result["metadata"]["resourceVersion"]
                while not self._stopping.is_set():
                    watch = kubernetes.watch.Watch()
                    for event in watch.stream(discovery.list_namespaced_endpoint_slice, self.namespace,
                                              label_selector=selector, resource_version=version,
                                              timeout_seconds=_WATCH_SECONDS, _preload_content=False):
                        item = event["raw_object"]
                        version = item["metadata"]["resourceVersion"]
                        # Replaced, never changed in place: the connections read it from the other thread.
                        name = item["metadata"]["name"]
                        if event["type"] == "DELETED":
                            self._slices = {k: v for k, v in self._slices.items() if k != name}
                        elif event["type"] in ("ADDED", "MODIFIED"):
                            self._slices = {**self._slices, name: item}
                        if self._stopping.is_set():
                            watch.stop()
            except Exception as error:  # the API server restarting, an expired version: list again
                if self._stopping.is_set():
                    return
                log.warning(f"Watching EndpointSlices failed service={self.namespace}/{self.service} error={error}")
                self._stopping.wait(0.5)

    # --- the connections -------------------------------------------------------------------------------------

    def _serve(self) -> None:
        loop = self._loop = asyncio.new_event_loop()
        try:
            self._server = loop.run_until_complete(asyncio.start_server(self._connect, "127.0.0.1", 0))
            self.port = self._server.sockets[0].getsockname()[1]
            loop.run_forever()
        finally:
            if self._server is not None:
                self._server.close()
            for task in asyncio.all_tasks(loop):
                task.cancel()
            with contextlib.suppress(Exception):
                loop.run_until_complete(asyncio.sleep(0))
            loop.close()

    async def _connect(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        candidates = self.endpoints()
        random.shuffle(candidates)
        for host, port in candidates:
            try:
                reader, writer = await asyncio.open_connection(host, port)
            except OSError:
                continue
            # Held here: once the client's side has closed, asyncio keeps no reference to this task.
            self._connections.add(task := asyncio.current_task())
            pipes = [asyncio.ensure_future(_pipe(client_reader, writer)),
                     asyncio.ensure_future(_pipe(reader, client_writer))]
            try:
                # Once one direction has ended, the other gets a while to (a keep-alive server may never close).
                await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
                await asyncio.wait(pipes, timeout=_LINGER_SECONDS)
            except asyncio.CancelledError:
                # The proxy is stopping: a cancelled connection task would make asyncio's stream callback log the
                # cancellation as an error.
                pass
            finally:
                for pipe in pipes:
                    pipe.cancel()
                self._connections.discard(task)
                writer.close()
                client_writer.close()
            return
        await self._unavailable(client_reader, client_writer)

    async def _unavailable(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        body = json.dumps({"error": {"message": f"Service {self.namespace}/{self.service} has no ready endpoints",
                                     "type": "service_unavailable", "code": 503}}).encode()
        with contextlib.suppress(OSError, asyncio.TimeoutError):
            # Read the request first: closing with it unread would reset the connection before the client reads.
            await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=2)
            writer.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                         b"Connection: close\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
            await writer.drain()
        with contextlib.suppress(OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            writer.close()
            await writer.wait_closed()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy until the end of ``reader``, then half-close ``writer``, as a TCP proxy passes a FIN on."""
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except OSError:
        writer.transport.abort()
    except asyncio.CancelledError:
        writer.transport.abort()
        raise
