"""A real Kubernetes control plane on loopback: etcd and kube-apiserver, optionally kube-controller-manager,
kube-scheduler and kwok with a fake GPU node, all upstream binaries found by :mod:`kaizen.dev.binaries`.

Used by the integration tests (``tests/conftest.py``) and by ``kaizen dev cluster up`` for the demo. Everything a
run creates lives in its work directory: certificates (``pki/``), etcd data, per-process logs (``logs/``), the admin
``kubeconfig`` and ``state.json`` (the processes, so that a detached cluster can be stopped later).
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, cast

import kubernetes.client
import kubernetes.config
import urllib3
import yaml

from kaizen.dev import processes
from kaizen.dev.binaries import find_binary
from kaizen.dev.pki import CertificateAuthority, KeyPair, service_account_key

SERVICE_CLUSTER_IP_RANGE = "10.0.0.0/24"
KUBERNETES_SERVICE_IP = "10.0.0.1"
# kwok's default pod CIDR is 10.0.0.0/24, which would hand out the service range's addresses as pod IPs.
POD_CIDR = "10.244.0.0/16"
GPU_NODE = "kaizen-gpu-0"
KWOK_NODE_ANNOTATION = ("kwok.x-k8s.io/node", "fake")
KWOK_STAGES = Path(__file__).with_name("kwok-stages.yaml")

_STATE_FILE = "state.json"
# What a run writes into its work directory; purge() removes exactly these, never anything else in a user's folder.
_GENERATED = (_STATE_FILE, "kubeconfig", "kubeconfigs", "pki", "etcd", "logs", "kwok.yaml")
_POLL = 0.05


class ClusterStartError(RuntimeError):
    """The local control plane did not come up; the message carries the end of the failing process's log."""


class KubectlError(subprocess.CalledProcessError):
    """kubectl exited with an error; unlike its base class, the message includes kubectl's stderr."""

    def __str__(self) -> str:
        return f"kubectl {' '.join(self.cmd[2:])} failed with exit status {self.returncode}: {self.stderr.strip()}"


class ClusterAccess:
    """A cluster reached through a kubeconfig, with the pinned kubectl and the official Python client."""

    def __init__(self, kubeconfig: Path | str) -> None:
        self.kubeconfig = Path(kubeconfig)

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        """Runs the pinned kubectl against this cluster; with ``check``, a failure raises :class:`KubectlError`."""
        argv = [str(find_binary("kubectl")), f"--kubeconfig={self.kubeconfig}", *args]
        result = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise KubectlError(result.returncode, argv, result.stdout, result.stderr)
        return result

    def api_client(self) -> kubernetes.client.ApiClient:
        """A new client of the official ``kubernetes`` package, configured from the kubeconfig."""
        return kubernetes.config.new_client_from_config(config_file=str(self.kubeconfig))


class LocalCluster(ClusterAccess):
    """A local control plane: ``with LocalCluster(controllers=True, kwok=True) as cluster: ...``.

    ``workdir`` defaults to a temporary directory that :meth:`stop` removes. ``controllers`` adds
    kube-controller-manager and kube-scheduler (Deployments make pods, pods get bound); ``kwok`` adds kwok and the
    fake node ``kaizen-gpu-0`` advertising ``nvidia.com/gpu`` (:data:`GPU_COUNT`), so bound pods become Running.
    ``detach`` starts the processes in their own sessions so that they outlive this Python process
    (``kaizen dev cluster up``); otherwise they die with it.
    """

    def __init__(
        self,
        workdir: Path | str | None = None,
        *,
        controllers: bool = False,
        kwok: bool = False,
        detach: bool = False,
        startup_timeout: float = 60.0,
    ) -> None:
        self._temporary = workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix="kaizen-cluster-") if workdir is None else workdir).resolve()
        super().__init__(self.workdir / "kubeconfig")
        self.controllers = controllers
        self.kwok = kwok
        self.detach = detach
        self.startup_timeout = startup_timeout
        self.processes: list[processes.ManagedProcess] = []
        self.startup_seconds: float | None = None
        self.api_url: str | None = None
        self.ca: CertificateAuthority | None = None
        # How this process started each component, and how to tell it is ready: what restart() needs.
        self._commands: dict[str, list[str]] = {}
        self._ready: dict[str, Callable[[], bool]] = {}

    @property
    def components(self) -> list[str]:
        """The processes this cluster runs."""
        names = ["etcd", "kube-apiserver"]
        if self.controllers:
            names += ["kube-controller-manager", "kube-scheduler"]
        if self.kwok:
            names.append("kwok")
        return names

    @classmethod
    def attach(cls, workdir: Path | str) -> LocalCluster | None:
        """The cluster recorded in ``workdir``'s state file (started by another process), or None if none is."""
        try:
            state = json.loads((Path(workdir) / _STATE_FILE).read_text())
        except FileNotFoundError:
            return None
        cluster = cls(workdir, controllers=state["controllers"], kwok=state["kwok"], detach=state["detach"])
        cluster.processes = [processes.ManagedProcess.from_json(p) for p in state["processes"]]
        cluster.startup_seconds = state["startup_seconds"]
        cluster.api_url = state["api_url"]
        return cluster

    def running(self) -> bool:
        """Whether every process of the cluster is running."""
        return bool(self.processes) and all(p.alive() for p in self.processes)

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> LocalCluster:
        """Starts every component and returns once all are ready.

        On failure it stops what it started and raises :class:`ClusterStartError`, leaving the work directory (even
        a temporary one) for the logs it names.
        """
        if self.processes:
            raise ClusterStartError(f"the local control plane in {self.workdir} was already started")
        recorded = LocalCluster.attach(self.workdir)
        if recorded is not None and any(p.alive() for p in recorded.processes):
            raise ClusterStartError(
                f"a local control plane is already running from {self.workdir}; stop it with "
                f"`kaizen dev cluster down --dir {self.workdir}`"
            )
        self.purge()
        started = time.monotonic()
        try:
            self._start(started + self.startup_timeout)
        except BaseException:
            # The files stay, so that the logs can be read; only the processes go.
            processes.stop(self.processes)
            self.processes = []
            raise
        self.startup_seconds = time.monotonic() - started
        self._write_state()
        print(
            f"Local control plane ready in {self.startup_seconds:.1f}s ({', '.join(self.components)})",
            file=sys.stderr,
        )
        return self

    def stop(self) -> None:
        """Stops every process (SIGTERM, then SIGKILL), removes the state file, and a temporary work directory."""
        processes.stop(self.processes)
        self.processes = []
        (self.workdir / _STATE_FILE).unlink(missing_ok=True)
        if self._temporary:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def purge(self) -> None:
        """Removes what a run wrote into the work directory (and the directory, when that leaves it empty)."""
        for name in _GENERATED:
            path = self.workdir / name
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
        with contextlib.suppress(FileNotFoundError, OSError):
            self.workdir.rmdir()

    def restart(self, component: str, down: float = 0.0, timeout: float | None = None) -> float:
        """Stop ``component`` (SIGTERM, then SIGKILL) and start it again with the same flags -- the same port, etcd
        data and certificates, so every client reconnects to what it knew -- as an upgrade or a crashed control-plane
        process does. ``down``: seconds it stays stopped. Returns once it is ready again, with the seconds it was
        unavailable; a component that does not come back raises :class:`ClusterStartError` with its log.

        Only for a cluster this process started (the flags are not recorded in the state file), and from a thread
        that lives as long as the cluster should (see :func:`kaizen.dev.processes.spawn`).
        """
        old = next((p for p in self.processes if p.name == component), None)
        if old is None or component not in self._commands:
            raise ValueError(f"{component} is not a component this process started; it runs {self.components}")
        started = time.monotonic()
        processes.stop([old])
        time.sleep(down)
        new = processes.spawn(component, self._commands[component], old.log, detach=self.detach)
        self.processes[self.processes.index(old)] = new
        self._wait(new, time.monotonic() + (timeout or self.startup_timeout), self._ready.get(component, new.alive))
        self._write_state()
        return time.monotonic() - started

    def kubeconfig_for(self, user: str, groups: Sequence[str] = ()) -> Path:
        """Writes a kubeconfig for a new client certificate of ``user`` in ``groups``, for testing RBAC."""
        if self.ca is None or self.api_url is None:
            raise RuntimeError("kubeconfig_for() needs a cluster started by this process")
        path = self.workdir / "kubeconfigs" / f"user-{user}.kubeconfig"
        _write_kubeconfig(path, self.api_url, self.ca, user, self.ca.issue_client(user, groups))
        return path

    def _start(self, deadline: float) -> None:
        binaries = {name: find_binary(name) for name in self.components}
        etcd_port, peer_port, api_port, kcm_port, scheduler_port = free_ports(5)
        self.api_url = api_url = f"https://127.0.0.1:{api_port}"
        pki = self.workdir / "pki"
        self.ca = ca = _write_pki(pki)
        admin = ca.issue_client("kaizen-admin", ["system:masters"])
        admin.write(pki, "admin")
        _write_kubeconfig(self.kubeconfig, api_url, ca, "kaizen-admin", admin)
        kubeconfigs = self.workdir / "kubeconfigs"
        logs = self.workdir / "logs"

        def spawn(name: str, *args: str) -> processes.ManagedProcess:
            self._commands[name] = [str(binaries[name]), *args]
            process = processes.spawn(name, self._commands[name], logs / f"{name}.log", detach=self.detach)
            self.processes.append(process)
            return process

        def spawn_as(
            user: str, groups: Sequence[str], name: str, *args: str, kubeconfig_flags: Sequence[str] = ("--kubeconfig",)
        ) -> processes.ManagedProcess:
            """Spawns a client of the API server with a kubeconfig of its own, passed in ``kubeconfig_flags``."""
            kubeconfig = kubeconfigs / f"{name}.kubeconfig"
            _write_kubeconfig(kubeconfig, api_url, ca, user, ca.issue_client(user, groups))
            return spawn(name, *(f"{flag}={kubeconfig}" for flag in kubeconfig_flags), *args)

        # etcd, kube-apiserver and kwok start at once: the API server and kwok retry until what they need is up.
        etcd = spawn(
            "etcd",
            "--name=kaizen",
            f"--data-dir={self.workdir / 'etcd'}",
            f"--listen-client-urls=http://127.0.0.1:{etcd_port}",
            f"--advertise-client-urls=http://127.0.0.1:{etcd_port}",
            f"--listen-peer-urls=http://127.0.0.1:{peer_port}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}",
            f"--initial-cluster=kaizen=http://127.0.0.1:{peer_port}",
            # A throw-away cluster needs no durability, and fsync dominates etcd's latency on a slow disk.
            "--unsafe-no-fsync",
        )
        apiserver = spawn(
            "kube-apiserver",
            f"--etcd-servers=http://127.0.0.1:{etcd_port}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={api_port}",
            f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            "--authorization-mode=Node,RBAC",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
            # Nothing can reach 127.0.0.1 as an endpoint of the `kubernetes` Service (and validation rejects it).
            "--endpoint-reconciler-type=none",
            "--allow-privileged=true",
            "--profiling=false",
        )
        if self.kwok:
            shutil.copyfile(KWOK_STAGES, self.workdir / "kwok.yaml")
            # kwok plays the kubelet of its nodes, which needs more than the Node authorizer grants a kubelet
            # (it deletes pods, for one); it is trusted like an administrator.
            kwok = spawn_as(
                "kwok", ["system:masters"], "kwok",
                f"--config={self.workdir / 'kwok.yaml'}",
                "--manage-all-nodes=false",
                f"--manage-nodes-with-annotation-selector={'='.join(KWOK_NODE_ANNOTATION)}",
                # As kwokctl runs it: the node-heartbeat-with-lease stage leaves heartbeats to the node's Lease.
                "--node-lease-duration-seconds=40",
                f"--cidr={POD_CIDR}",
            )

        api = _AdminClient(api_port, pki)
        etcd_client = http.client.HTTPConnection("127.0.0.1", etcd_port, timeout=1)
        self._ready["etcd"] = lambda: _ok(etcd_client, "/health")
        self._ready["kube-apiserver"] = lambda: api.request("GET", "/readyz")[0] == 200
        self._wait(etcd, deadline, self._ready["etcd"])
        self._wait(apiserver, deadline, self._ready["kube-apiserver"])

        if self.controllers:
            # These two exit, rather than retry, when the API server has not yet bootstrapped their RBAC roles.
            kcm = spawn_as(
                "system:kube-controller-manager", [], "kube-controller-manager",
                *_component_flags(kcm_port),
                # Each controller acts as its own service account, bound by the bootstrap RBAC policy, as kubeadm
                # runs it; the controller manager's own identity is only allowed to mint their tokens.
                "--use-service-account-credentials=true",
                f"--service-account-private-key-file={pki / 'sa.key'}",
                f"--root-ca-file={pki / 'ca.crt'}",
                f"--cluster-signing-cert-file={pki / 'ca.crt'}",
                f"--cluster-signing-key-file={pki / 'ca.key'}",
                kubeconfig_flags=_COMPONENT_KUBECONFIG_FLAGS,
            )
            scheduler = spawn_as(
                "system:kube-scheduler", [], "kube-scheduler", *_component_flags(scheduler_port),
                kubeconfig_flags=_COMPONENT_KUBECONFIG_FLAGS,
            )
        if self.kwok:
            status, body = api.request("POST", "/api/v1/nodes", _gpu_node())
            if status != 201:
                raise ClusterStartError(f"creating the fake node {GPU_NODE} failed with HTTP {status}: {body}")
            self._wait(kwok, deadline, lambda: _node_ready(api, GPU_NODE))
        if self.controllers:
            # Healthy is not yet working: the controllers start only after the manager has minted their
            # credentials. The `default` service account, which pods need, is the first thing they make.
            default_account = "/api/v1/namespaces/default/serviceaccounts/default"
            self._wait(kcm, deadline, lambda: api.request("GET", default_account)[0] == 200)
            self._ready["kube-scheduler"] = lambda: _component_healthy(scheduler_port)
            self._ready["kube-controller-manager"] = lambda: _component_healthy(kcm_port)
            self._wait(scheduler, deadline, self._ready["kube-scheduler"])

    def _wait(self, process: processes.ManagedProcess, deadline: float, ready: Callable[[], bool]) -> None:
        while True:
            for p in self.processes:
                code = p.exit_code()
                if code is not None:
                    raise ClusterStartError(
                        f"{p.name} exited with status {code} during start-up; the end of {p.log}:\n{p.log_tail()}"
                    )
            if ready():
                return
            if time.monotonic() > deadline:
                raise ClusterStartError(
                    f"{process.name} was not ready within {self.startup_timeout:.0f}s; the end of {process.log}:\n"
                    f"{process.log_tail()}"
                )
            time.sleep(_POLL)

    def _write_state(self) -> None:
        state = {
            "api_url": self.api_url,
            "kubeconfig": str(self.kubeconfig),
            "controllers": self.controllers,
            "kwok": self.kwok,
            "detach": self.detach,
            "startup_seconds": self.startup_seconds,
            "processes": [p.to_json() for p in self.processes],
        }
        (self.workdir / _STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")


def _write_pki(pki: Path) -> CertificateAuthority:
    """Writes the CA, the API server's serving certificate and the service-account key pair; returns the CA."""
    ca = CertificateAuthority()
    ca.pair.write(pki, "ca")
    ca.issue_server(
        "kube-apiserver",
        ["localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
         "kubernetes.default.svc.cluster.local"],
        ["127.0.0.1", KUBERNETES_SERVICE_IP],
    ).write(pki, "apiserver")
    private, public = service_account_key()
    (pki / "sa.key").touch(mode=0o600)
    (pki / "sa.key").write_bytes(private)
    (pki / "sa.pub").write_bytes(public)
    return ca


def _write_kubeconfig(path: Path, server: str, ca: CertificateAuthority, user: str, pair: KeyPair) -> None:
    """Writes a self-contained kubeconfig (certificates embedded) for ``user`` authenticated by ``pair``."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "kaizen-local", "cluster": {
            "server": server, "certificate-authority-data": _b64(ca.pair.cert_pem),
        }}],
        "users": [{"name": user, "user": {
            "client-certificate-data": _b64(pair.cert_pem), "client-key-data": _b64(pair.key_pem),
        }}],
        "contexts": [{"name": "kaizen-local", "context": {"cluster": "kaizen-local", "user": user}}],
        "current-context": "kaizen-local",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.write_text(yaml.safe_dump(config, sort_keys=False))


# kube-controller-manager and kube-scheduler also check the credentials of requests to their own port with the API
# server, as whom these flags say.
_COMPONENT_KUBECONFIG_FLAGS = ("--kubeconfig", "--authentication-kubeconfig", "--authorization-kubeconfig")


def _component_flags(port: int) -> list[str]:
    """Flags shared by kube-controller-manager and kube-scheduler, besides their kubeconfigs."""
    return [
        "--bind-address=127.0.0.1",
        f"--secure-port={port}",
        # One replica: electing a leader would only delay start-up.
        "--leader-elect=false",
        # The default client rate limit (20/s for the controller manager) throttles its start-up, in which it
        # creates a service account and a token for each of its ~40 controllers, to five seconds.
        "--kube-api-qps=1000",
        "--kube-api-burst=1000",
        "--profiling=false",
    ]


#: GPUs the fake node advertises. Generous: a pod the dev node agent held Running can stay Terminating after its test
#: ended (its agent is gone), and keeps its GPUs until the session's cluster goes; eight ran out in one suite.
GPU_COUNT = 64


def _gpu_node() -> dict[str, object]:
    resources = {"cpu": "32", "memory": "256Gi", "pods": "110", "nvidia.com/gpu": str(GPU_COUNT)}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": GPU_NODE,
            "annotations": {KWOK_NODE_ANNOTATION[0]: KWOK_NODE_ANNOTATION[1]},
            "labels": {
                "kubernetes.io/hostname": GPU_NODE,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "type": "kwok",
                "nvidia.com/gpu.present": "true",
            },
        },
        # The API server keeps a new Node's status, as a kubelet registering itself relies on.
        "status": {"capacity": resources, "allocatable": resources},
    }


def _node_ready(api: _AdminClient, name: str) -> bool:
    status, node = api.request("GET", f"/api/v1/nodes/{name}")
    conditions = node.get("status", {}).get("conditions", []) if status == 200 else []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def free_ports(count: int) -> list[int]:
    """``count`` distinct free loopback ports (the sockets are held together, so no port is picked twice)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]


def raw_json(response: object) -> Any:
    """The API's JSON of a call made with ``_preload_content=False`` (the client's models are slow to build, and
    reformat timestamps): the client types such a call as returning its model, but it returns the HTTP response."""
    return json.loads(cast(urllib3.BaseHTTPResponse, response).data)


def _component_healthy(port: int) -> bool:
    # The component's serving certificate is self-signed (it made it itself) and only its health is read here.
    context = ssl._create_unverified_context()
    return _ok(http.client.HTTPSConnection("127.0.0.1", port, timeout=1, context=context), "/healthz")


def _ok(connection: http.client.HTTPConnection, path: str) -> bool:
    """Whether GET ``path`` answers 200 OK."""
    try:
        connection.request("GET", path)
        return connection.getresponse().status == 200
    except OSError:
        return False
    finally:
        connection.close()


class _AdminClient:
    """The API server as its administrator, over plain http.client: start-up polls want short timeouts and no
    retries, where the official client retries refused connections on its own."""

    def __init__(self, port: int, pki: Path) -> None:
        self.port = port
        self.context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        self.context.load_cert_chain(pki / "admin.crt", pki / "admin.key")

    def request(self, method: str, path: str, body: object = None) -> tuple[int | None, dict[str, Any]]:
        """The status and JSON body of a request, or ``(None, {})`` while nothing answers."""
        connection = http.client.HTTPSConnection("127.0.0.1", self.port, timeout=2, context=self.context)
        try:
            data = None if body is None else json.dumps(body)
            connection.request(method, path, data, {"Content-Type": "application/json"})
            response = connection.getresponse()
            payload = response.read()
            try:
                return response.status, json.loads(payload) if payload else {}
            except ValueError:
                return response.status, {"body": payload.decode(errors="replace")}
        except OSError:
            return None, {}
        finally:
            connection.close()
