"""The dev node agent's serving pods: the pods of Deployments (any pod not owned by a Job) whose image has a local
entry point, run as local processes the way a kubelet runs containers, so Services, probes and Prometheus see a
real model server behind every pod.

kwok leaves these pods alone (the ``pod-ready`` stage in ``kwok-stages.yaml`` skips them by image), and
:class:`ServingPods` plays their kubelet: it gives each pod an address, starts its first container with the pod's
environment (``env`` values, ``envFrom``, downward-API ``fieldRef``, ``configMapKeyRef``, ``secretKeyRef``, ``$(VAR)``
expansion), runs its readiness probe (``httpGet`` or ``tcpSocket``), restarts a container that exits as its
``restartPolicy`` says with the kubelet's back-off (10 s doubling to 5 min, reported as ``CrashLoopBackOff``),
reports the pod's status as a kubelet does (phase, ``podIP``, ``hostIP``, conditions, ``containerStatuses``; patched
only when it changes), stops a deleted pod's process (SIGTERM, SIGKILL after its grace period, at most
:data:`MAX_GRACE_SECONDS`), and keeps a Prometheus file_sd file of the pods that run.

Addresses: kube-apiserver refuses loopback addresses in EndpointSlices ("may not be in the loopback range"), so a
pod's IP in the API is one of :data:`POD_CIDR` (10.245.x.y) and its process listens on the loopback address with the
same last three bytes (127.245.x.y, :func:`local_address`): whatever connects to a pod on this machine (probes,
:mod:`kaizen.dev.service_proxy`, Prometheus) translates the pod IP it read. The process is told where to listen by
``HOST`` (the local address) and ``PORT`` (the container's port named ``http``, else its first), which override the
container's own values: in a cluster the pod's network namespace gives each pod its own address, here one machine
has one network, and model servers (``kaizen_server``) read ``HOST``/``PORT``. ``status.podIP`` in the downward API
stays the pod IP.

The pure parts (addresses, environment, probes, back-off, status) are functions and small state classes; the class
:class:`ServingPods` does the I/O, through callables the agent passes for the API.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import logging
import math
import os
import random
import re
import signal
import socket
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

from kaizen.dev import processes
from kaizen.dev.prometheus import kubernetes_pod_target

log = logging.getLogger("kaizen.dev.node_agent")

#: The serving pods' IPs as the API server sees them: outside kwok's pod CIDR (10.244.0.0/16, its fake IPs) and the
#: Service range (10.0.0.0/24).
POD_CIDR = ipaddress.IPv4Network("10.245.0.0/16")
#: A deleted pod's process gets SIGKILL after its terminationGracePeriodSeconds, but no later than this: a dev stack
#: waits for no one.
MAX_GRACE_SECONDS = 5.0
#: The kubelet's CrashLoopBackOff: the first restart at once, then 10 s doubling up to 5 min; a container that ran
#: twice the maximum starts over.
BACKOFF_INITIAL, BACKOFF_MAX = 10.0, 300.0
#: How often a container whose configuration failed (a missing Secret, say) is tried again.
CONFIG_RETRY_SECONDS = 2.0
#: How often a running pod's ConfigMap and Secret volumes are written again from the API (a kubelet's sync period
#: is a minute; a dev stack need not wait that long).
VOLUME_REFRESH_SECONDS = 1.0
#: Fields of the downward API an environment variable can name (besides metadata.labels['...'] and annotations).
_FIELDS = ("metadata.name", "metadata.namespace", "metadata.uid", "spec.nodeName", "spec.serviceAccountName",
           "status.podIP", "status.podIPs", "status.hostIP", "status.hostIPs")
_KEYED_FIELD = re.compile(r"metadata\.(labels|annotations)\['([^']*)'\]")
_REFERENCE = re.compile(r"\$\$|\$\(([-._a-zA-Z][-._a-zA-Z0-9]*)\)")


class ConfigError(ValueError):
    """The container cannot be configured (the kubelet's CreateContainerConfigError); the message says why."""


# --- addresses -------------------------------------------------------------------------------------------------


def local_address(pod_ip: str) -> str | None:
    """The loopback address a serving pod with this IP listens on, or None if no serving pod has it."""
    try:
        ip = ipaddress.IPv4Address(pod_ip)
    except ValueError:
        return None
    if ip not in POD_CIDR:
        return None
    return str(ipaddress.IPv4Address((127 << 24) | (int(ip) & 0xFFFFFF)))


def allocate_ip(taken: Collection[str], after: str | None = None) -> str:
    """The next pod IP of :data:`POD_CIDR` after ``after`` (wrapping) that is not ``taken``.

    Deterministic, and like a cluster's IPAM it moves on rather than handing a just-released address to the next
    pod; addresses ending in .0 or .255 are skipped, to read as hosts.
    """
    base, size = int(POD_CIDR.network_address), POD_CIDR.num_addresses
    start = int(ipaddress.IPv4Address(after)) - base if after and ipaddress.IPv4Address(after) in POD_CIDR else 0
    for step in range(1, size):
        offset = (start + step) % size
        ip = str(ipaddress.IPv4Address(base + offset))
        if offset & 0xFF not in (0, 0xFF) and ip not in taken:
            return ip
    raise RuntimeError(f"every address of {POD_CIDR} is taken by a serving pod")


def listening(address: str, port: int) -> bool:
    """Whether some process on this machine already listens on ``address:port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(0.2)
        return probe.connect_ex((address, port)) == 0


# --- environment -----------------------------------------------------------------------------------------------

#: ``lookup(kind, name)``: the data of the ConfigMap or Secret (decoded) of the pod's namespace, None if missing.
Lookup = Callable[[str, str], "Mapping[str, str] | None"]


def field_value(pod: Mapping[str, Any], path: str) -> str:
    """The value of a downward-API ``fieldRef.fieldPath`` for this pod."""
    meta, spec, status = pod["metadata"], pod.get("spec") or {}, pod.get("status") or {}
    match = _KEYED_FIELD.fullmatch(path)
    if match:
        return str((meta.get(match[1]) or {}).get(match[2], ""))
    if path not in _FIELDS:
        raise ConfigError(f"unsupported fieldRef fieldPath {path!r}: use one of {', '.join(_FIELDS)}, "
                          "metadata.labels['KEY'] or metadata.annotations['KEY']")
    section, name = path.split(".")
    value = {"metadata": meta, "spec": spec, "status": status}[section].get(name)
    if name in ("podIPs", "hostIPs"):
        return ",".join(entry["ip"] for entry in value or [])
    return "" if value is None else str(value)


def expand(value: str, env: Mapping[str, str]) -> str:
    """``$(VAR)`` references to variables defined before, expanded as the kubelet does: ``$$`` is a literal ``$``,
    and a reference to an unknown variable stays as written."""
    return _REFERENCE.sub(lambda m: "$" if m[0] == "$$" else env.get(m[1], m[0]), value)


def _source(lookup: Lookup, kind: str, ref: Mapping[str, Any], namespace: str) -> Mapping[str, str] | None:
    data = lookup(kind, ref["name"])
    if data is None and not ref.get("optional"):
        raise ConfigError(f'{kind.lower()} "{ref["name"]}" not found in namespace {namespace}')
    return data


def container_env(pod: Mapping[str, Any], container: Mapping[str, Any], lookup: Lookup) -> dict[str, str]:
    """The container's environment as the kubelet makes it: ``envFrom`` first, then ``env`` in order."""
    namespace = pod["metadata"]["namespace"]
    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        for kind, key in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
            if key in source:
                data = _source(lookup, kind, source[key], namespace) or {}
                env.update({source.get("prefix", "") + k: v for k, v in data.items()})
    for variable in container.get("env") or []:
        name, source = variable["name"], variable.get("valueFrom")
        if source is None:
            env[name] = expand(variable.get("value", ""), env)
        elif "fieldRef" in source:
            env[name] = field_value(pod, source["fieldRef"]["fieldPath"])
        elif "configMapKeyRef" in source or "secretKeyRef" in source:
            kind, ref = (("ConfigMap", source["configMapKeyRef"]) if "configMapKeyRef" in source
                         else ("Secret", source["secretKeyRef"]))
            found = _source(lookup, kind, ref, namespace)
            if found is not None and ref["key"] in found:
                env[name] = found[ref["key"]]
            elif not ref.get("optional"):
                raise ConfigError(f"couldn't find key {ref['key']} in {kind} {namespace}/{ref['name']}")
        else:
            raise ConfigError(f"env {name}: the dev node agent resolves valueFrom.fieldRef, configMapKeyRef and "
                              f"secretKeyRef, not {', '.join(source)}")
    return env


def local_path(value: str, host: Callable[[str], str], claim: Callable[[str], Path]) -> str:
    """A value naming a file of the pod (an absolute path, ``file://`` or ``pvc://CLAIM/PATH``) as this machine's
    path; anything else unchanged."""
    if value.startswith("file:///"):
        return "file://" + host(value[len("file://"):])
    if value.startswith("pvc://"):
        name, _, path = value[len("pvc://"):].partition("/")
        return str(claim(name) / path) if name else value
    return host(value) if value.startswith("/") else value


def threads(container: Mapping[str, Any]) -> int:
    """The threads a container's CPU request pays for (at least one), as a CPU limit would hold them."""
    quantity = str(((container.get("resources") or {}).get("requests") or {}).get("cpu", "1"))
    cpus = float(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)
    return max(1, math.ceil(cpus))


def container_port(container: Mapping[str, Any]) -> dict[str, Any] | None:
    """The port the container serves on: the one named ``http`` (or ``metrics``), else its first."""
    ports = container.get("ports") or []
    named = {p.get("name"): p for p in ports}
    return named.get("http") or named.get("metrics") or (ports[0] if ports else None)


# --- probes ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Probe:
    """A readiness probe: ``httpGet`` (``path``) or ``tcpSocket`` on ``port``, with the kubelet's defaults."""

    port: int
    path: str | None = None  # None: a TCP probe
    initial_delay: float = 0.0
    period: float = 10.0
    timeout: float = 1.0
    success_threshold: int = 1
    failure_threshold: int = 3

    @classmethod
    def of(cls, spec: Mapping[str, Any] | None, container: Mapping[str, Any]) -> Probe | None:
        """The container's probe from its spec (None when it has none); named ports resolve as the kubelet does."""
        if not spec:
            return None
        handler = spec.get("httpGet") or spec.get("tcpSocket")
        if handler is None:
            raise ConfigError(f"the dev node agent runs httpGet and tcpSocket probes, not {', '.join(spec)}: "
                              "change the readinessProbe")
        port = handler.get("port")
        if isinstance(port, str) and not port.isdigit():
            numbers = {p.get("name"): p["containerPort"] for p in container.get("ports") or []}
            if port not in numbers:
                raise ConfigError(f"the readinessProbe names port {port!r}, which the container does not declare")
            port = numbers[port]
        return cls(port=int(port), path=handler.get("path", "/") if "httpGet" in spec else None,
                   initial_delay=float(spec.get("initialDelaySeconds", 0)), period=float(spec.get("periodSeconds", 10)),
                   timeout=float(spec.get("timeoutSeconds", 1)), success_threshold=int(spec.get("successThreshold", 1)),
                   failure_threshold=int(spec.get("failureThreshold", 3)))

    def run(self, address: str) -> bool:
        """One probe of the container at ``address``: an HTTP status 200-399, or a TCP connection, succeeds."""
        try:
            if self.path is None:
                socket.create_connection((address, self.port), timeout=self.timeout).close()
                return True
            connection = http.client.HTTPConnection(address, self.port, timeout=self.timeout)
            try:
                connection.request("GET", self.path, headers={"User-Agent": "kube-probe/1.36"})
                return 200 <= connection.getresponse().status < 400
            finally:
                connection.close()
        except (OSError, http.client.HTTPException):
            return False


@dataclass
class Readiness:
    """Whether a running container is ready, as its probe's results say (without a probe: ready once running)."""

    probe: Probe | None
    started: float  # when the container started (monotonic seconds)
    ready: bool = False
    successes: int = 0
    failures: int = 0
    next_at: float = 0.0

    def __post_init__(self) -> None:
        self.ready = self.probe is None
        self.next_at = self.started + (self.probe.initial_delay if self.probe else 0.0)

    def due(self, now: float) -> bool:
        return self.probe is not None and now >= self.next_at

    def record(self, ok: bool, now: float) -> None:
        """Count a probe's result: ready after ``successThreshold`` successes in a row, unready after
        ``failureThreshold`` failures in a row."""
        assert self.probe is not None
        self.next_at = now + self.probe.period
        if ok:
            self.successes, self.failures = self.successes + 1, 0
            self.ready = self.ready or self.successes >= self.probe.success_threshold
        else:
            self.successes, self.failures = 0, self.failures + 1
            self.ready = self.ready and self.failures < self.probe.failure_threshold


# --- restarts --------------------------------------------------------------------------------------------------


def restarts_after_exit(policy: str, exit_code: int) -> bool:
    """Whether ``restartPolicy`` restarts a container that exited with ``exit_code``."""
    return policy == "Always" or (policy == "OnFailure" and exit_code != 0)


def backoff(crashes: int) -> float:
    """Seconds to wait before restarting a container after its ``crashes``-th exit in a row (the first: none)."""
    return 0.0 if crashes <= 1 else min(BACKOFF_INITIAL * 2 ** (crashes - 2), BACKOFF_MAX)


def exit_code_of(returncode: int | None) -> int:
    """A process's return code as a container's exit code: killed by signal N is 128 + N."""
    return 128 - returncode if returncode is not None and returncode < 0 else returncode or 0


# --- status ----------------------------------------------------------------------------------------------------


def now_rfc3339() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Container:
    """What the kubelet knows of a container, for its status: the current run, the last one, and why it waits."""

    name: str
    image: str
    restart_count: int = 0
    running_since: str | None = None  # RFC 3339, while the process runs
    container_id: str = ""
    last_terminated: dict[str, Any] | None = None
    terminated: dict[str, Any] | None = None  # the final state, when it will not be restarted
    waiting: tuple[str, str] | None = ("ContainerCreating", "")
    ready: bool = False

    def status(self) -> dict[str, Any]:
        """The container's entry of ``containerStatuses``."""
        if self.running_since is not None:
            state: dict[str, Any] = {"running": {"startedAt": self.running_since}}
        elif self.terminated is not None:
            state = {"terminated": self.terminated}
        else:
            reason, message = self.waiting or ("ContainerCreating", "")
            state = {"waiting": {"reason": reason, **({"message": message} if message else {})}}
        status = {"name": self.name, "image": self.image, "imageID": "", "ready": self.ready,
                  "restartCount": self.restart_count, "started": self.running_since is not None, "state": state,
                  "lastState": {"terminated": self.last_terminated} if self.last_terminated else {}}
        if self.container_id:
            status["containerID"] = self.container_id
        return status


def conditions(previous: Sequence[Mapping[str, Any]], wanted: Mapping[str, tuple[str, str, str]],
               now: str) -> list[dict[str, Any]]:
    """The pod's conditions: ``wanted`` (type -> status, reason, message) with ``lastTransitionTime`` kept from
    ``previous`` while a status stays the same, and the other conditions of ``previous`` (PodScheduled) as they were."""
    before = {c.get("type"): c for c in previous}
    result = [dict(c) for c in previous if c.get("type") not in wanted]
    for type_, (status, reason, message) in wanted.items():
        old = before.get(type_)
        since = old.get("lastTransitionTime") if old and old.get("status") == status else now
        condition = {"type": type_, "status": status, "lastTransitionTime": since or now}
        if reason:
            condition["reason"] = reason
        if message:
            condition["message"] = message
        result.append(condition)
    order = ("PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady", "PodScheduled")
    return sorted(result, key=lambda c: order.index(c["type"]) if c["type"] in order else len(order))


def pod_status(previous: Mapping[str, Any], container: Container, *, pod_ip: str | None, host_ip: str,
               start_time: str, now: str) -> dict[str, Any]:
    """The pod's status as a kubelet reports it for one container; ``previous`` is the pod's status before (its
    conditions keep their transition times)."""
    if container.terminated is not None:
        phase = "Succeeded" if container.terminated["exitCode"] == 0 else "Failed"
    else:
        phase = "Running" if container.running_since is not None or container.restart_count else "Pending"
    ready = container.ready and phase == "Running"
    unready = ("ContainersNotReady", f"containers with unready status: [{container.name}]")
    if phase in ("Succeeded", "Failed"):
        unready = ("PodCompleted", "")
    readiness = ("True", "", "") if ready else ("False", *unready)
    status: dict[str, Any] = {
        "phase": phase,
        "conditions": conditions(previous.get("conditions") or [], {
            "PodReadyToStartContainers": ("True", "", ""), "Initialized": ("True", "", ""),
            "Ready": readiness, "ContainersReady": readiness, "PodScheduled": ("True", "", "")}, now),
        "hostIP": host_ip, "hostIPs": [{"ip": host_ip}],
        "startTime": start_time,
        "containerStatuses": [container.status()],
        "qosClass": previous.get("qosClass", "BestEffort"),
    }
    if pod_ip:
        status.update(podIP=pod_ip, podIPs=[{"ip": pod_ip}])
    return status


# --- the pods --------------------------------------------------------------------------------------------------


class _Filesystem(Protocol):
    def host(self, path: str) -> str: ...


@dataclass
class _Pod:
    """A serving pod this agent runs: its container, process and what it reported last."""

    pod: dict[str, Any]
    ip: str
    directory: Path
    container: Container
    start_time: str
    policy: str
    grace: float
    process: processes.ManagedProcess | None = None
    readiness: Readiness | None = None
    probing: Future[bool] | None = None
    started: float = 0.0  # monotonic start of the current run
    crashes: int = 0
    retry_at: float = 0.0  # when to (re)start the container
    reported: dict[str, Any] | None = None
    stop_deadline: float | None = None
    refresh_at: float = 0.0  # when to write its ConfigMap and Secret volumes again

    @property
    def uid(self) -> str:
        return str(self.pod["metadata"]["uid"])

    @property
    def key(self) -> str:
        return f"{self.pod['metadata']['namespace']}/{self.pod['metadata']['name']}"


class ServingPods:
    """The serving pods of one node, synced by the agent's loop: ``sync(pods)`` with the node's serving pods.

    ``entry(image)`` gives an image's argv; ``volumes(pod, container, directory)`` makes the pod's volume folders
    and returns its filesystem; ``claim(namespace, name)`` is a claim's folder; ``lookup(namespace)`` reads its
    ConfigMaps and Secrets; ``patch_status(pod, status)`` writes a pod's status (False when the pod is gone).
    """

    def __init__(self, workdir: Path, *, host_ip: str, base_env: Mapping[str, str],
                 entry: Callable[[str], list[str] | None],
                 volumes: Callable[[dict[str, Any], dict[str, Any], Path], _Filesystem],
                 claim: Callable[[str, str], Path], lookup: Callable[[str], Lookup],
                 patch_status: Callable[[dict[str, Any], dict[str, Any]], bool],
                 targets_file: Path | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.workdir, self.host_ip, self.base_env = workdir, host_ip, dict(base_env)
        self.entry, self.volumes, self.claim, self.lookup = entry, volumes, claim, lookup
        self.patch_status, self.targets_file, self.clock = patch_status, targets_file, clock
        self.pods: dict[str, _Pod] = {}  # by uid
        self.stopping: list[_Pod] = []  # deleted, their process not yet gone
        self.finished: set[str] = set()
        # Each agent starts at its own random point of the range, so two dev stacks on one machine (two test
        # workers) rarely reach for the same address at once; an address already listened on is skipped below.
        self._last_ip: str | None = str(POD_CIDR[random.randrange(POD_CIDR.num_addresses)])
        self._targets: str | None = None
        self._probes = ThreadPoolExecutor(max_workers=4, thread_name_prefix="probe")

    def taken(self) -> set[str]:
        return {p.ip for p in [*self.pods.values(), *self.stopping]}

    def sync(self, pods: Sequence[dict[str, Any]]) -> None:
        """One pass over the node's serving pods: start new ones, restart, probe, report, stop the deleted."""
        now = self.clock()
        current = {p["metadata"]["uid"]: p for p in pods}
        self.finished &= current.keys()
        for uid, pod in current.items():
            ended = (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed") and uid not in self.pods
            if pod["metadata"].get("deletionTimestamp") or uid in self.finished or ended:
                continue
            if uid not in self.pods:
                self.pods[uid] = self._adopt(pod)
            self.pods[uid].pod = pod
        for uid, served in list(self.pods.items()):
            seen = current.get(uid)
            if seen is None or seen["metadata"].get("deletionTimestamp"):
                del self.pods[uid]
                self._begin_stop(served, now)
                continue
            self._step(served, now)
            if served.container.terminated is not None:
                self.finished.add(uid)
                del self.pods[uid]
            if not self._report(served):
                self.pods.pop(uid, None)
                self._begin_stop(served, now)
        self._finish_stops(now)
        self._write_targets()

    def _adopt(self, pod: dict[str, Any]) -> _Pod:
        status, spec = pod.get("status") or {}, pod["spec"]
        container = spec["containers"][0]
        # A pod this agent ran before it restarted keeps its address and counts the lost container as a restart.
        ip = status.get("podIP") if local_address(status.get("podIP") or "") else None
        if ip is None or ip in self.taken():
            port = (container_port(container) or {}).get("containerPort", 8080)
            skipped: set[str] = set()
            ip = self._last_ip = allocate_ip(self.taken(), self._last_ip)
            # Other dev stacks on this machine (other clusters' agents) hand out the same addresses: one a process
            # already listens on would answer this pod's probes and requests, so it is skipped.
            while listening(local_address(ip) or ip, port) and len(skipped) < 1024:
                skipped.add(ip)
                ip = self._last_ip = allocate_ip(self.taken() | skipped, ip)
        before = (status.get("containerStatuses") or [{}])[0]
        restarts = before.get("restartCount", 0) + (1 if before.get("state", {}).get("running") else 0)
        directory = self.workdir / "pods" / f"{pod['metadata']['namespace']}_{pod['metadata']['name']}"
        grace = float(spec.get("terminationGracePeriodSeconds", 30))
        return _Pod(pod, ip, directory, Container(container["name"], container["image"], restart_count=restarts),
                    start_time=status.get("startTime") or now_rfc3339(), policy=spec.get("restartPolicy", "Always"),
                    grace=min(grace, MAX_GRACE_SECONDS))

    def _step(self, served: _Pod, now: float) -> None:
        container = served.container
        if served.process is not None and not served.process.alive():
            self._exited(served, now)
        if served.process is None and container.terminated is None and now >= served.retry_at:
            self._start(served, now)
        if served.process is None or served.readiness is None:
            container.ready = False
            return
        if now >= served.refresh_at:
            served.refresh_at = now + VOLUME_REFRESH_SECONDS
            try:  # as the kubelet updates mounted ConfigMaps and Secrets of a running pod in place
                self.volumes(served.pod, served.pod["spec"]["containers"][0], served.directory)
            except ConfigError as error:
                log.warning(f"Failed to refresh volumes pod={served.key} error={error}")
        readiness = served.readiness
        if served.probing is not None and served.probing.done():
            readiness.record(served.probing.result(), self.clock())
            served.probing = None
        if served.probing is None and readiness.due(now):
            assert readiness.probe is not None
            served.probing = self._probes.submit(readiness.probe.run, local_address(served.ip) or served.ip)
        if container.ready != readiness.ready:
            log.info(f"Container {'became' if readiness.ready else 'is no longer'} ready pod={served.key} "
                     f"container={container.name}")
        container.ready = readiness.ready

    def _start(self, served: _Pod, now: float) -> None:
        pod, spec = served.pod, served.pod["spec"]["containers"][0]
        container = served.container
        argv = self.entry(spec["image"])
        if argv is None:  # kwok holds only pods of known images; a pod whose image changed cannot be run
            self._config_failed(served, now, f"the dev node agent has no local entry point for image {spec['image']}")
            return
        namespace = pod["metadata"]["namespace"]
        local = local_address(served.ip)
        assert local is not None
        try:
            filesystem = self.volumes(pod, spec, served.directory)
            probe = Probe.of(spec.get("readinessProbe"), spec)
            with_ip = {**pod, "status": {**(pod.get("status") or {}), "podIP": served.ip, "podIPs": [{"ip": served.ip}],
                                         "hostIP": self.host_ip, "hostIPs": [{"ip": self.host_ip}]}}
            env = container_env(with_ip, spec, self.lookup(namespace))
        except ConfigError as error:
            self._config_failed(served, now, str(error))
            return
        env = {name: local_path(value, filesystem.host, lambda claim: self.claim(namespace, claim))
               for name, value in env.items()}
        port = container_port(spec)
        termination_log = served.directory / "termination-log"
        argv = [a.format(terminationMessagePath=termination_log) for a in argv]
        argv += [filesystem.host(a) if a.startswith("/") else a for a in spec.get("args") or []]
        home = served.directory / "home"
        home.mkdir(parents=True, exist_ok=True)
        process_env = {**self.base_env, "HOME": str(home), "OMP_NUM_THREADS": str(threads(spec)), **env, "HOST": local,
                       **({"PORT": str(port["containerPort"])} if port else {})}
        served.process = processes.spawn(f"{pod['metadata']['name']}/{container.name}", argv,
                                         served.directory / "container.log", detach=False, env=process_env,
                                         cwd=served.directory)
        served.started = now
        served.refresh_at = now + VOLUME_REFRESH_SECONDS
        served.readiness = Readiness(probe, started=now)
        container.running_since, container.waiting = now_rfc3339(), None
        container.container_id = f"local://{served.process.pid}"
        log.info(f"Started container pod={served.key} container={container.name} image={spec['image']} "
                 f"podIP={served.ip} address={local}:{port['containerPort'] if port else '-'} "
                 f"restartCount={container.restart_count} log={served.directory / 'container.log'}")

    def _config_failed(self, served: _Pod, now: float, message: str) -> None:
        if served.container.waiting != ("CreateContainerConfigError", message):
            log.warning(f"Failed to configure container pod={served.key} error={message}")
        served.container.waiting = ("CreateContainerConfigError", message)
        served.retry_at = now + CONFIG_RETRY_SECONDS

    def _exited(self, served: _Pod, now: float) -> None:
        assert served.process is not None
        process, container = served.process, served.container
        _kill_group(process)
        code = exit_code_of(process.exit_code())
        terminated = {"exitCode": code, "reason": "Completed" if code == 0 else "Error",
                      "startedAt": container.running_since, "finishedAt": now_rfc3339(),
                      "containerID": container.container_id}
        served.process, served.readiness, served.probing = None, None, None
        container.running_since, container.ready = None, False
        log.info(f"Container exited pod={served.key} container={container.name} exitCode={code}")
        if not restarts_after_exit(served.policy, code):
            container.terminated = terminated
            return
        # A run twice as long as the longest back-off forgives the crashes before it.
        served.crashes = 1 if now - served.started >= 2 * BACKOFF_MAX else served.crashes + 1
        delay = backoff(served.crashes)
        served.retry_at = now + delay
        container.last_terminated = terminated
        container.restart_count += 1
        if delay:
            pod_name = f"{served.pod['metadata']['name']}_{served.pod['metadata']['namespace']}({served.uid})"
            container.waiting = ("CrashLoopBackOff",
                                 f"back-off {delay:g}s restarting failed container={container.name} pod={pod_name}")

    def _report(self, served: _Pod) -> bool:
        """Patch the pod's status if it changed; False when the pod is gone."""
        status = pod_status(served.pod.get("status") or {}, served.container, pod_ip=served.ip,
                            host_ip=self.host_ip, start_time=served.start_time, now=now_rfc3339())
        if status == served.reported:
            return True
        if not self.patch_status(served.pod, status):
            return False
        served.reported = status
        # The next pass reads the pod from the API; until then, the conditions' transition times are these.
        served.pod = {**served.pod, "status": status}
        return True

    def _begin_stop(self, served: _Pod, now: float) -> None:
        if served.process is None or not served.process.alive():
            if served.process is not None:
                _kill_group(served.process)
            return
        log.info(f"Stopping container of deleted pod pod={served.key} gracePeriod={served.grace:g}s")
        _signal(served.process, signal.SIGTERM)
        served.stop_deadline = now + served.grace
        self.stopping.append(served)

    def _finish_stops(self, now: float) -> None:
        for served in list(self.stopping):
            assert served.process is not None and served.stop_deadline is not None
            served.process.alive()  # reaps the leader, so it stops counting as a member of its group
            if not processes.group_alive(served.process.pgid):
                self.stopping.remove(served)
                log.info(f"Stopped container pod={served.key} exitCode={exit_code_of(served.process.exit_code())}")
            elif now >= served.stop_deadline:
                log.info(f"Killed container after its grace period pod={served.key}")
                _signal(served.process, signal.SIGKILL)
                served.stop_deadline = now + 10

    def _write_targets(self) -> None:
        """The file_sd file of the pods whose container runs, as Kubernetes SD describes them."""
        if self.targets_file is None:
            return
        groups = []
        for served in sorted(self.pods.values(), key=lambda p: p.key):
            spec = served.pod["spec"]["containers"][0]
            port, local = container_port(spec), local_address(served.ip)
            if served.process is None or port is None or local is None:
                continue
            target = kubernetes_pod_target(served.pod, spec, port, f"{local}:{port['containerPort']}")
            groups.append({"targets": [target.address], "labels": target.labels})
        text = json.dumps(groups, indent=1, sort_keys=True)
        if text != self._targets:
            # Written whole and renamed, so Prometheus never reads half a file.
            self.targets_file.parent.mkdir(parents=True, exist_ok=True)
            partial = self.targets_file.with_name(self.targets_file.name + ".tmp")
            partial.write_text(text)
            partial.replace(self.targets_file)
            self._targets = text

    def stop(self) -> None:
        """Stop every container (SIGTERM, then SIGKILL after its grace period) and wait until they are gone."""
        running = [p.process for p in [*self.pods.values(), *self.stopping] if p.process is not None]
        processes.stop(running, grace=MAX_GRACE_SECONDS)
        self.pods.clear()
        self.stopping.clear()
        self._probes.shutdown(wait=False, cancel_futures=True)


def _signal(process: processes.ManagedProcess, sig: signal.Signals) -> None:
    try:
        os.killpg(process.pgid, sig)
    except ProcessLookupError:
        pass


def _kill_group(process: processes.ManagedProcess) -> None:
    """What the container's main process left behind goes with it, as a container's cgroup would."""
    _signal(process, signal.SIGKILL)

