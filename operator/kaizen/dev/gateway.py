"""A real Gateway API implementation on loopback, for tests and the demo: the Gateway API CRDs of the pinned
release, and Traefik's Kubernetes Gateway provider routing real requests by the cluster's HTTPRoutes.

``install_gateway_api(cluster)`` server-side applies the CRDs that ``make setup`` generated with controller-gen
(:func:`kaizen.dev.binaries.gateway_api_crds`). ``with LocalGateway(cluster, "demo") as gateway:`` runs the pinned
Traefik build pointed at the cluster's API server (through its kubeconfig), creates the GatewayClass ``kaizen-dev``
and a Gateway whose one HTTP listener is Traefik's entry point on a free port of 127.0.0.1, and serves
``gateway.url``. Every HTTPRoute attached to that Gateway (``gateway.parent_ref``) is routed by Traefik itself:
matches, filters, weights, all as Traefik implements Gateway API.

Backends: Traefik sends a Service's traffic to the addresses of its EndpointSlices. The dev node agent's pods have
pod IPs of :data:`kaizen.dev.serving.POD_CIDR` (the API server refuses loopback addresses in EndpointSlices of type
IPv4) and listen on the loopback address with the same last three bytes, and only loopback may be a network target
here. So a Service meant for the gateway has no selector, and names its pods by the annotation
:data:`LOCAL_SELECTOR` instead (e.g. ``app=support-bot,kaizen.dev/track=stable``); :class:`LocalGateway` keeps an
EndpointSlice of type FQDN for it (the API accepts the dotted loopback address there) with the ready pods'
loopback addresses and the Service's ports, as kube-controller-manager keeps one with pod IPs in a cluster
(:func:`local_service` turns a Service written for a cluster into such a one). The route itself, and what Kaizen
does to it, is exactly what it would be in a cluster. Dev-stack code, never imported by the operator.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

import kubernetes.client
import yaml
from kubernetes.client.exceptions import ApiException

from kaizen.dev import processes
from kaizen.dev.binaries import find_binary, gateway_api_crds
from kaizen.dev.cluster import ClusterAccess, free_ports
from kaizen.dev.serving import local_address

log = logging.getLogger("kaizen.dev.gateway")

GATEWAY_GROUP = "gateway.networking.k8s.io"
GATEWAY_CLASS = "kaizen-dev"
#: Traefik's controller name for GatewayClasses.
CONTROLLER_NAME = "traefik.io/gateway-controller"
#: Annotation of a selector-less Service: the label selector of the pods whose loopback addresses it serves.
LOCAL_SELECTOR = "dev.kaizen.dev/local-selector"
_MIRROR_MANAGER = "kaizen-dev-gateway"
_MIRROR_SECONDS = 0.3


class GatewayStartError(RuntimeError):
    """Traefik did not become ready; the message carries the end of its log."""


def install_gateway_api(cluster: ClusterAccess, timeout: float = 60.0) -> None:
    """Server-side apply the pinned Gateway API CRDs and wait until the API server serves them (idempotent)."""
    files = [arg for path in gateway_api_crds() for arg in ("-f", str(path))]  # one kubectl for all of them
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "--field-manager=kaizen-dev", *files,
                    timeout=timeout)
    cluster.kubectl("wait", "--for=condition=Established", f"--timeout={timeout:g}s",
                    *(f"crd/{yaml.safe_load(p.read_text())['metadata']['name']}" for p in gateway_api_crds()),
                    timeout=timeout + 5)


def local_endpoint_slice(service: dict[str, Any], pods: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The FQDN EndpointSlice of a selector-less Service annotated with :data:`LOCAL_SELECTOR`: the loopback
    addresses of its ready serving pods (those ``pods`` match the selector), or None for any other Service."""
    meta = service["metadata"]
    if LOCAL_SELECTOR not in (meta.get("annotations") or {}) or (service["spec"].get("selector")):
        return None
    wanted = dict(part.split("=", 1) for part in meta["annotations"][LOCAL_SELECTOR].split(",") if "=" in part)
    endpoints = []
    for pod in sorted(pods, key=lambda p: p["metadata"]["name"]):
        labels = pod["metadata"].get("labels") or {}
        status = pod.get("status") or {}
        address = local_address(status.get("podIP") or "")
        if address is None or any(labels.get(k) != v for k, v in wanted.items()) or pod["metadata"].get(
                "deletionTimestamp"):
            continue
        ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])
        endpoints.append({"addresses": [address], "conditions": {"ready": ready},
                          "targetRef": {"kind": "Pod", "name": pod["metadata"]["name"],
                                        "namespace": pod["metadata"]["namespace"]}})
    container_ports = {port["name"]: port["containerPort"] for pod in pods for c in pod["spec"]["containers"]
                       for port in c.get("ports") or [] if port.get("name")}
    ports = []
    for port in service["spec"].get("ports") or []:
        target = port.get("targetPort") or port["port"]
        number = target if isinstance(target, int) else container_ports.get(target)
        if number is not None:  # a named port no pod has yet
            ports.append({"name": port.get("name") or "", "port": number, "protocol": port.get("protocol", "TCP")})
    return {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": f"{meta['name']}-local", "namespace": meta["namespace"],
                     "labels": {"kubernetes.io/service-name": meta["name"],
                                "endpointslice.kubernetes.io/managed-by": _MIRROR_MANAGER}},
        "addressType": "FQDN", "endpoints": endpoints, "ports": ports,
    }


def local_service(service: dict[str, Any]) -> dict[str, Any]:
    """``service`` (a manifest with a selector, as it is written for a cluster) as the local gateway reaches its pods:
    selector-less, its selector moved to :data:`LOCAL_SELECTOR`, so :class:`LocalGateway` keeps its endpoints."""
    spec = dict(service["spec"])
    selector = spec.pop("selector", None)
    if not selector:
        raise ValueError(f"Service {service['metadata']['name']} has no selector: the local gateway serves the pods "
                         "a selector names")
    meta = dict(service["metadata"])
    meta["annotations"] = {**(meta.get("annotations") or {}),
                           LOCAL_SELECTOR: ",".join(f"{k}={v}" for k, v in sorted(selector.items()))}
    return {**service, "metadata": meta, "spec": spec}


class LocalGateway:
    """``with LocalGateway(cluster, "demo") as gateway: urlopen(gateway.url + "/v1/models")``.

    Runs Traefik (its ``kubernetesGateway`` provider, watching ``namespace``) in its own process group, creates the
    GatewayClass and the Gateway ``name`` in ``namespace``, and keeps the local EndpointSlices of the namespace's
    :data:`LOCAL_SELECTOR` Services. Stopping it stops Traefik and the thread; the Gateway objects stay (a test's
    namespace goes with them).
    """

    def __init__(self, cluster: ClusterAccess, namespace: str, name: str = "kaizen-dev",
                 workdir: Path | None = None, throttle: str = "100ms") -> None:
        # throttle: how long Traefik waits for more changes before it loads a new configuration (routes and
        # endpoints alike); Traefik's own default is 2s, and 100ms keeps tests quick.
        self.cluster, self.namespace, self.name, self.throttle = cluster, namespace, name, throttle
        self._owned = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="kaizen-gateway-"))
        self.port, self.ping_port = free_ports(2)
        self._process: processes.ManagedProcess | None = None
        self._stop = threading.Event()
        self._mirror: threading.Thread | None = None
        self._api: kubernetes.client.ApiClient | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def parent_ref(self) -> dict[str, Any]:
        """The ``parentRefs`` entry that attaches an HTTPRoute to this Gateway."""
        return {"group": GATEWAY_GROUP, "kind": "Gateway", "name": self.name, "namespace": self.namespace}

    def __enter__(self) -> LocalGateway:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
        if self._owned:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def config(self) -> dict[str, Any]:
        """Traefik's static configuration."""
        return {
            "entryPoints": {"web": {"address": f"127.0.0.1:{self.port}"},
                            "ping": {"address": f"127.0.0.1:{self.ping_port}"}},
            "ping": {"entryPoint": "ping"},
            "log": {"level": "INFO", "noColor": True},
            "global": {"checkNewVersion": False, "sendAnonymousUsage": False},
            "providers": {"providersThrottleDuration": self.throttle,
                          "kubernetesGateway": {"namespaces": [self.namespace], "throttleDuration": self.throttle}},
        }

    def start(self, timeout: float = 60.0) -> LocalGateway:
        """Start Traefik and the Gateway objects, and wait until Traefik answers its ping."""
        traefik = find_binary("traefik")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._api = api = self.cluster.api_client()
        self._apply_gateway()
        config = self.workdir / "traefik.yml"
        config.write_text(yaml.safe_dump(self.config()))
        self._process = processes.spawn("traefik", [traefik, f"--configFile={config}"],
                                        self.workdir / "traefik.log", detach=False,
                                        env={"KUBECONFIG": str(self.cluster.kubeconfig), "PATH": "/usr/bin:/bin"})
        self._stop.clear()
        self._mirror = threading.Thread(target=self._mirror_endpoints, args=(api,), name="kaizen-gateway-endpoints",
                                        daemon=True)
        self._mirror.start()
        deadline = time.monotonic() + timeout
        while not self._pinged():
            if not self._process.alive():
                raise GatewayStartError(f"Traefik exited with status {self._process.exit_code()}:\n"
                                        f"{self._process.log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise GatewayStartError(f"Traefik did not answer its ping after {timeout:g}s:\n"
                                        f"{self._process.log_tail()}")
            time.sleep(0.1)
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._mirror is not None:
            self._mirror.join(timeout=5)
            self._mirror = None
        if self._process is not None:
            processes.stop([self._process])
            self._process = None

    def log_tail(self, lines: int = 30) -> str:
        return self._process.log_tail(lines) if self._process else "(not running)"

    def _apply_gateway(self) -> None:
        objects = kubernetes.client.CustomObjectsApi(self._api)
        gateway_class = {"apiVersion": f"{GATEWAY_GROUP}/v1", "kind": "GatewayClass",
                         "metadata": {"name": GATEWAY_CLASS}, "spec": {"controllerName": CONTROLLER_NAME}}
        gateway = {"apiVersion": f"{GATEWAY_GROUP}/v1", "kind": "Gateway",
                   "metadata": {"name": self.name, "namespace": self.namespace},
                   "spec": {"gatewayClassName": GATEWAY_CLASS, "listeners": [
                       {"name": "web", "protocol": "HTTP", "port": self.port,
                        "allowedRoutes": {"namespaces": {"from": "Same"}}}]}}
        apply: dict[str, Any] = dict(field_manager="kaizen-dev", force=True,
                                     _content_type="application/apply-patch+yaml")
        objects.patch_cluster_custom_object(GATEWAY_GROUP, "v1", "gatewayclasses", GATEWAY_CLASS, gateway_class,
                                            **apply)
        objects.patch_namespaced_custom_object(GATEWAY_GROUP, "v1", self.namespace, "gateways", self.name, gateway,
                                               **apply)

    def _mirror_endpoints(self, api: kubernetes.client.ApiClient) -> None:
        core = kubernetes.client.CoreV1Api(api)
        discovery = kubernetes.client.DiscoveryV1Api(api)
        written: dict[str, dict[str, Any]] = {}
        while not self._stop.wait(_MIRROR_SECONDS):
            try:
                services = api.sanitize_for_serialization(core.list_namespaced_service(self.namespace).items)
                pods = api.sanitize_for_serialization(core.list_namespaced_pod(self.namespace).items)
                for service in services:
                    desired = local_endpoint_slice(service, pods)
                    if desired is None or written.get(desired["metadata"]["name"]) == desired:
                        continue
                    name = desired["metadata"]["name"]
                    # The client types a body as its model, and sends a dict (the API's JSON) as it is.
                    try:
                        discovery.replace_namespaced_endpoint_slice(
                            name, self.namespace, desired)  # type: ignore[arg-type]
                    except ApiException as error:
                        if error.status != 404:
                            raise
                        discovery.create_namespaced_endpoint_slice(self.namespace, desired)  # type: ignore[arg-type]
                    written[name] = desired
                    log.info("Updated local endpoints service=%s addresses=%s", service["metadata"]["name"],
                             [e["addresses"][0] for e in desired["endpoints"] if e["conditions"]["ready"]])
            except (ApiException, OSError) as error:
                if not self._stop.is_set():
                    log.warning("Listing for local endpoints failed namespace=%s error=%s", self.namespace, error)

    def _pinged(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.ping_port}/ping", timeout=1) as response:
                return response.status == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False
