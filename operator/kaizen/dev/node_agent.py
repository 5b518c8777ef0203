"""The dev node agent: the kubelet of kwok's fake GPU node for the pods whose image it can run here, as local
processes, so the local stack trains and serves for real.

kwok plays the rest of the node: it makes other bound pods Running (with a fake IP), completes other Jobs' pods at
once, and holds two kinds of pod for this agent (see ``kwok-stages.yaml``):

- a RetrainJob's training pod (label ``kaizen.dev/retrainjob``), which kwok makes Running and keeps so. The agent
  runs its container with the local entry point of its image (:data:`IMAGES`), then patches the pod's status to
  terminated with the exit code, the reason and the termination message the container wrote;
- a serving pod: any pod not owned by a Job whose image is in :data:`IMAGES` (``kaizen-server``), which kwok leaves
  Pending. The agent runs it as a kubelet would, on an address of its own, with probes, restarts and status, so
  kube-controller-manager publishes it in its Services' EndpointSlices (:mod:`kaizen.dev.serving`, which says how
  addresses work; :mod:`kaizen.dev.service_proxy` reaches a Service from this machine).

A pod deleted while it runs has its process stopped. The agent polls the pods bound to its node.

A training pod whose container command is ``torchrun ... -m MODULE`` or ``python -m LAUNCHER ... -m MODULE`` (a
RetrainJob of more than one process; LAUNCHER one of :data:`LAUNCHERS`, the trainer's ``kaizen_trainer.launch`` being
torchrun with its exit codes) runs as ``python -m torch.distributed.run|LAUNCHER ... -m MODULE`` with this
interpreter, MODULE being its image's entry point (with the entry point's own arguments after it). The pods of a
multi-node RetrainJob meet at the rendezvous ``<job>-0.<service>:29500``, a name only a cluster's DNS resolves. Here
every pod is a process on this machine, so the agent rewrites the rendezvous of the pods that name the same one
(``--master-addr``/``--master-port``, or ``PET_MASTER_ADDR``/``PET_MASTER_PORT`` as Kubeflow Trainer sets them) to
``127.0.0.1`` and one free port, picked when the first of them starts (and ``--local-addr=127.0.0.1``, so that rank 0
tells the others a loopback address to meet its workers on); the node rank stays the pod's completion index, from its
environment. ``$(VAR)`` references in the command and arguments are expanded from the container's environment, as a
kubelet does.

The pod's filesystem is mapped onto folders under ``--dir``: each volume (ConfigMap, Secret, emptyDir,
PersistentVolumeClaim) is a folder of its own, written from the API for ConfigMaps and Secrets (and written again
while a serving pod runs, as a kubelet updates those volumes in place; a missing ``optional`` one is an empty
folder); every other absolute
path is under ``--root``, the node's shared storage (where the demo puts its data and models). Pod paths in the
container's arguments and in JSON files of its ConfigMaps are rewritten to those folders, and folders in the
termination message back to pod paths, so what the operator reads is what a pod in a cluster would report.

Serving pods' environment variables naming files (absolute paths such as ``MODEL_URI=/models/bot/v1/model``,
``file://`` and ``pvc://CLAIM/PATH`` URIs) are mapped the same way.

Run as ``python -m kaizen.dev.node_agent --kubeconfig FILE --dir DIR --root DIR [--node NODE]
[--prometheus-targets FILE]`` (or :func:`spawn` it from Python); with ``--prometheus-targets``, the agent keeps that
file_sd file of its running serving pods for :class:`kaizen.dev.prometheus.LocalPrometheus` (``pod_targets=[FILE]``).
Dev-stack code: never imported by the operator.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import kubernetes.client
import kubernetes.config
from kubernetes.client.exceptions import ApiException

from kaizen.dev import processes
from kaizen.dev.cluster import GPU_NODE, free_ports, raw_json
from kaizen.dev.serving import ConfigError, Lookup, ServingPods, container_env, expand, threads

log = logging.getLogger("kaizen.dev.node_agent")

REPO_ROOT = Path(__file__).resolve().parents[3]
#: The training pods this agent runs: those kwok holds Running for it.
POD_LABEL = "kaizen.dev/retrainjob"
#: Image (without tag) -> its entry point here; ``{terminationMessagePath}`` is the container's, mapped. kwok's
#: pod-ready stage names the same images: it leaves their pods that no Job owns to this agent.
IMAGES = {
    "ghcr.io/kaizen-dev/kaizen-trainer": [sys.executable, "-m", "kaizen_trainer", "--result",
                                          "{terminationMessagePath}"],
    "ghcr.io/kaizen-dev/kaizen-server": [sys.executable, "-m", "kaizen_server"],
}
#: As the trainer image sets them (trainer-image/Dockerfile): its package and the kaizen package it depends on.
IMAGE_PYTHONPATH = os.pathsep.join([str(REPO_ROOT / "trainer-image"), str(REPO_ROOT / "operator")])
#: What a kubelet keeps of a failed container's log as its message (FallbackToLogsOnError).
LOG_TAIL_BYTES, LOG_TAIL_LINES = 2048, 80
POLL_SECONDS = 0.5


#: torchrun's options that name the rendezvous, and the environment variables that do the same (torchrun reads
#: ``PET_<OPTION>``).
MASTER_ADDR, MASTER_PORT, LOCAL_ADDR = "--master-addr", "--master-port", "--local-addr"
ENV_MASTER_ADDR, ENV_MASTER_PORT = "PET_MASTER_ADDR", "PET_MASTER_PORT"
LOOPBACK = "127.0.0.1"
#: Modules that launch processes as torchrun does, with its options: torch's own, and the trainer's wrapper of it.
LAUNCHERS = ("torch.distributed.run", "kaizen_trainer.launch")


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def image_name(image: str) -> str:
    """The image without its tag or digest."""
    name = image.split("@", 1)[0]
    return name.rsplit(":", 1)[0] if ":" in name.rsplit("/", 1)[-1] else name


def is_serving_pod(pod: dict[str, Any]) -> bool:
    """Whether this agent serves the pod: its (first) container's image has a local entry point and no Job owns it,
    the rule kwok's pod-ready stage applies too."""
    containers = pod.get("spec", {}).get("containers") or [{}]
    owners = pod["metadata"].get("ownerReferences") or []
    return image_name(containers[0].get("image", "")) in IMAGES and not any(o.get("kind") == "Job" for o in owners)


def _option(argv: list[str], name: str) -> tuple[int, str] | None:
    """Where ``--name=value`` or ``--name value`` is in ``argv`` (torchrun also spells it with underscores), and its
    value."""
    spellings = {name, name.replace("-", "_").replace("__", "--")}
    for i, arg in enumerate(argv):
        key, sep, value = arg.partition("=")
        if key in spellings:
            return (i, value) if sep else (i, argv[i + 1] if i + 1 < len(argv) else "")
    return None


def _set_option(argv: list[str], name: str, value: str) -> list[str]:
    found = _option(argv, name)
    if found is None:
        return argv
    i, _ = found
    if "=" in argv[i]:
        return [*argv[:i], f"{argv[i].partition('=')[0]}={value}", *argv[i + 1:]]
    return [*argv[:i + 1], value, *argv[i + 2:]]


def torchrun_argv(command: list[str], entry: list[str]) -> list[str]:
    """A ``torchrun ... -m MODULE`` command (or ``python -m LAUNCHER ... -m MODULE``, a launcher of
    :data:`LAUNCHERS`) as this machine runs it: the launcher with this interpreter, MODULE with the arguments of the
    image's entry point ``entry`` (``[python, -m, MODULE, ARGS...]``). ConfigError for any other command, which the
    agent cannot run."""
    module = entry[2] if len(entry) > 2 and entry[1] == "-m" else "MODULE"
    if Path(command[0]).name == "torchrun":
        launcher, options = "torch.distributed.run", command[1:]
    elif Path(command[0]).name.startswith("python") and command[1:2] == ["-m"] and command[2:3] \
            and command[2] in LAUNCHERS:
        launcher, options = command[2], command[3:]
    else:
        raise ConfigError(f"the dev node agent runs a training container's command only as torchrun ... -m {module}"
                          f" (or python -m {' or '.join(LAUNCHERS)}), not {' '.join(command)}")
    if module == "MODULE" or "-m" not in options or options[options.index("-m") + 1:] != [module]:
        raise ConfigError(f"torchrun must run the image's module {module} as its last argument (-m {module}), "
                          f"not {' '.join(command)}")
    return [sys.executable, "-m", launcher, *options[:options.index("-m")], *entry[1:]]


def local_rendezvous(ports: dict[tuple[str, str, str], str], namespace: str, argv: list[str],
                     env: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    """The torchrun rendezvous a pod names (by option or by ``PET_`` variable), moved onto loopback: every pod of
    the namespace that names the same address and port meets on the same free local port, remembered in ``ports``
    ((namespace, address, port) -> local port)."""
    option, port_option = _option(argv, MASTER_ADDR), _option(argv, MASTER_PORT)
    address = option[1] if option else env.get(ENV_MASTER_ADDR)
    if argv[1] != "-m" or argv[2] not in LAUNCHERS or not address or address in (LOOPBACK, "localhost"):
        return argv, env
    port = port_option[1] if port_option else env.get(ENV_MASTER_PORT, "29500")
    key = (namespace, address, port)
    if key not in ports:
        ports[key] = str(free_ports(1)[0])
        log.info(f"Moved rendezvous onto loopback namespace={namespace} endpoint={address}:{port} "
                 f"local={LOOPBACK}:{ports[key]}")
    local = ports[key]
    if _option(argv, LOCAL_ADDR) is None:
        # Rank 0 tells the others where its workers meet: this address, not the machine's name.
        argv = [*argv[:3], f"{LOCAL_ADDR}={LOOPBACK}", *argv[3:]]
    if option:
        argv = _set_option(argv, MASTER_ADDR, LOOPBACK)
        # Without the option torchrun takes its default port, which two jobs' rendezvous would share.
        argv = _set_option(argv, MASTER_PORT, local) if port_option else [*argv[:3], f"{MASTER_PORT}={local}",
                                                                           *argv[3:]]
    if ENV_MASTER_ADDR in env:
        env = {**env, ENV_MASTER_ADDR: LOOPBACK, ENV_MASTER_PORT: local}
    return argv, env


@dataclass(frozen=True)
class Filesystem:
    """A pod's filesystem on this machine: its volume mounts (pod path -> folder) and the node's root for the rest."""

    mounts: tuple[tuple[str, Path], ...]
    root: Path

    def host(self, path: str) -> str:
        """The local path of an absolute pod path."""
        for mount, folder in sorted(self.mounts, key=lambda m: -len(m[0])):
            if path == mount or path.startswith(mount.rstrip("/") + "/"):
                return str(folder) + path[len(mount.rstrip("/")):]
        return str(self.root) + path

    def pod(self, text: str) -> str:
        """``text`` with local folders written back as the pod's paths."""
        folders = [(str(folder), mount.rstrip("/")) for mount, folder in self.mounts] + [(str(self.root), "")]
        for folder, mount in sorted(folders, key=lambda f: -len(f[0])):
            text = text.replace(folder, mount)
        return text

    def rewrite(self, value: Any) -> Any:
        """Pod paths (absolute path strings) in a JSON value, mapped to local paths."""
        if isinstance(value, str):
            return self.host(value) if value.startswith("/") else value
        if isinstance(value, list):
            return [self.rewrite(v) for v in value]
        if isinstance(value, dict):
            return {k: self.rewrite(v) for k, v in value.items()}
        return value


@dataclass
class Running:
    """A container this agent started."""

    process: processes.ManagedProcess
    pod: dict[str, Any]
    container: dict[str, Any]
    filesystem: Filesystem
    started_at: str


class NodeAgent:
    def __init__(self, api: kubernetes.client.ApiClient, workdir: Path, root: Path, node: str = GPU_NODE,
                 prometheus_targets: Path | None = None) -> None:
        self.api, self.core = api, kubernetes.client.CoreV1Api(api)
        self.workdir, self.root, self.node = workdir, root, node
        self.running: dict[str, Running] = {}  # by pod uid
        self.finished: set[str] = set()
        #: Rendezvous named by training pods (namespace, address, port) -> the local port they meet on instead.
        self.rendezvous: dict[tuple[str, str, str], str] = {}
        self.serving = ServingPods(
            workdir, host_ip=self.host_ip(), base_env={**os.environ, "PYTHONPATH": IMAGE_PYTHONPATH,
                                                       "PYTHONUNBUFFERED": "1"},
            entry=lambda image: IMAGES.get(image_name(image)), volumes=self.volumes,
            claim=lambda namespace, name: self.workdir / "claims" / namespace / name, lookup=self.lookup,
            patch_status=self.patch_status, targets_file=prometheus_targets)

    def host_ip(self) -> str:
        """The node's InternalIP, which a kubelet reports as its pods' hostIP."""
        try:
            node = raw_json(self.core.read_node(self.node, _preload_content=False))
        except ApiException as error:
            if error.status != 404:
                raise
            return "127.0.0.1"  # no such node yet: no pod is bound to it either
        addresses = {a["type"]: a["address"] for a in node.get("status", {}).get("addresses") or []}
        return addresses.get("InternalIP", "127.0.0.1")

    def pods(self) -> list[dict[str, Any]]:
        """The pods bound to the node, as the API's JSON (the client's models are slow to build, and reformat
        timestamps)."""
        listed = self.core.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={self.node}",
                                                      _preload_content=False)
        return raw_json(listed)["items"]

    def sync(self) -> None:
        """One pass: start what is held and not yet run, report what ended, stop what was deleted."""
        listed = self.pods()
        self.serving.sync([p for p in listed if is_serving_pod(p)])
        pods = {p["metadata"]["uid"]: p for p in listed if POD_LABEL in (p["metadata"].get("labels") or {})}
        for uid, pod in pods.items():
            if uid in self.running or uid in self.finished or pod["metadata"].get("deletionTimestamp"):
                continue
            if pod.get("status", {}).get("phase") == "Running":
                self.start(pod)
        for uid, run in list(self.running.items()):
            seen = pods.get(uid)
            if seen is None or seen["metadata"].get("deletionTimestamp"):
                log.info(f"Stopped container of deleted pod pod={_key(run.pod)}")
                processes.stop([run.process])
                del self.running[uid]
            elif not run.process.alive():
                self.report(run)
                del self.running[uid]
                self.finished.add(uid)

    def start(self, pod: dict[str, Any]) -> None:
        container = pod["spec"]["containers"][0]
        directory = self.workdir / "pods" / f"{pod['metadata']['namespace']}_{pod['metadata']['name']}"
        try:
            filesystem = self.volumes(pod, container, directory)
        except ConfigError as error:  # tried again on the next pass, as a kubelet retries a pod's volumes
            log.warning(f"Failed to set up volumes pod={_key(pod)} error={error}")
            return
        entry = IMAGES.get(image_name(container["image"]))
        if entry is None:
            self.terminate(pod, container, exit_code=128, reason="ContainerCannotRun", started_at=_now(),
                           message=f"the dev node agent has no local entry point for image {container['image']}; "
                           f"it runs {', '.join(IMAGES)}")
            self.finished.add(pod["metadata"]["uid"])
            return
        message_path = container.get("terminationMessagePath") or "/dev/termination-log"
        termination_log = directory / "termination-log"
        termination_log.unlink(missing_ok=True)
        filesystem = Filesystem(((message_path, termination_log), *filesystem.mounts), filesystem.root)
        entry = [a.format(terminationMessagePath=termination_log) for a in entry]
        try:
            declared = container_env(pod, container, self.lookup(pod["metadata"]["namespace"]))
            command = [expand(a, declared) for a in container.get("command") or []]
            argv = torchrun_argv(command, entry) if command else entry
            argv, declared = local_rendezvous(self.rendezvous, pod["metadata"]["namespace"], argv, declared)
        except ConfigError as error:
            self.terminate(pod, container, exit_code=128, reason="ContainerCannotRun", started_at=_now(),
                           message=str(error))
            self.finished.add(pod["metadata"]["uid"])
            return
        argv += [filesystem.host(a) if a.startswith("/") else a
                 for a in (expand(a, declared) for a in container.get("args") or [])]
        env = {
            **os.environ, "PYTHONPATH": IMAGE_PYTHONPATH, "PYTHONUNBUFFERED": "1",
            # The image's HOME is its writable workspace, so caches land there.
            "HOME": filesystem.host("/workspace"), "HF_HOME": filesystem.host("/workspace/.cache/huggingface"),
            # As a CPU limit would: the trainer's threads fit the pod's CPU request.
            "OMP_NUM_THREADS": str(threads(container)),
            **declared,
        }
        started_at = _now()
        workspace = Path(filesystem.host("/workspace"))
        workspace.mkdir(parents=True, exist_ok=True)
        process = processes.spawn(f"{pod['metadata']['name']}/{container['name']}", argv, directory / "container.log",
                                  detach=False, env=env, cwd=workspace)
        self.running[pod["metadata"]["uid"]] = Running(process, pod, container, filesystem, started_at)
        log.info(f"Started container pod={_key(pod)} container={container['name']} image={container['image']} "
                 f"log={directory / 'container.log'} argv={' '.join(argv)}")

    def volumes(self, pod: dict[str, Any], container: dict[str, Any], directory: Path) -> Filesystem:
        """Make a folder for each of the container's volume mounts, filled as the kubelet fills the volume."""
        namespace = pod["metadata"]["namespace"]
        volumes = {v["name"]: v for v in pod["spec"].get("volumes") or []}
        mounts = []
        for mount in container.get("volumeMounts") or []:
            volume = volumes[mount["name"]]
            folder = directory / "volumes" / mount["name"]
            if "persistentVolumeClaim" in volume:
                folder = self.workdir / "claims" / namespace / volume["persistentVolumeClaim"]["claimName"]
            folder.mkdir(parents=True, exist_ok=True)
            mounts.append((mount["mountPath"], folder))
        filesystem = Filesystem(tuple(mounts), self.root)
        for mount in container.get("volumeMounts") or []:
            volume, folder = volumes[mount["name"]], filesystem.host(mount["mountPath"])
            if "configMap" in volume:
                data = self._source("ConfigMap", volume["configMap"]["name"], namespace, volume["configMap"])
                self.project(Path(folder), data, volume["configMap"].get("items"), filesystem)
            elif "secret" in volume:
                data = self._source("Secret", volume["secret"]["secretName"], namespace, volume["secret"])
                self.project(Path(folder), data, volume["secret"].get("items"), None)
        return filesystem

    def _source(self, kind: str, name: str, namespace: str, volume: dict[str, Any]) -> Mapping[str, str]:
        """A ConfigMap's or Secret's data for a volume; empty for a missing ``optional`` one, and a
        :class:`~kaizen.dev.serving.ConfigError` for a missing one that is not (the pod waits, as with a kubelet)."""
        data = self.lookup(namespace)(kind, name)
        if data is None:
            if volume.get("optional"):
                return {}
            raise ConfigError(f"{kind.lower()} {name!r} not found (a volume of the pod needs it)")
        return data

    @staticmethod
    def project(folder: Path, data: Mapping[str, str], items: list[dict[str, str]] | None,
                filesystem: Filesystem | None) -> None:
        """Write a ConfigMap's or Secret's keys as files (``items`` picks and renames them), each whole (written
        aside, then renamed, as the kubelet swaps a volume's content at once), and remove the files of keys that
        are gone; pod paths in JSON files of a ConfigMap become local paths."""
        wanted = {path: data[key] for key, path in (((i["key"], i["path"]) for i in items) if items
                                                     else ((k, k) for k in data)) if key in data}
        for path, text in wanted.items():
            if filesystem is not None and path.endswith(".json"):
                try:
                    text = json.dumps(filesystem.rewrite(json.loads(text)), indent=2)
                except ValueError:
                    pass  # not JSON after all: the container reads it as it is, and says what is wrong with it
            target = folder / path
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.is_file() and target.read_text() == text:
                continue
            partial = target.with_name(f".{target.name}.tmp")
            partial.write_text(text)
            partial.replace(target)
        for stale in folder.iterdir():
            if stale.is_file() and not stale.name.startswith(".") and stale.name not in wanted:
                stale.unlink()

    def lookup(self, namespace: str) -> Lookup:
        """The ConfigMaps and Secrets of a namespace, read as a pod's environment names them."""
        def read(kind: str, name: str) -> dict[str, str] | None:
            try:
                if kind == "ConfigMap":
                    return self.core.read_namespaced_config_map(name, namespace).data or {}
                data = self.core.read_namespaced_secret(name, namespace).data or {}
                return {k: base64.b64decode(v).decode() for k, v in data.items()}
            except ApiException as error:
                if error.status == 404:
                    return None
                raise
        return read

    def patch_status(self, pod: dict[str, Any], status: dict[str, Any]) -> bool:
        """Write a pod's status as its kubelet; False when the pod is gone."""
        try:
            self.core.patch_namespaced_pod_status(pod["metadata"]["name"], pod["metadata"]["namespace"],
                                                  {"status": status}, _content_type="application/merge-patch+json")
        except ApiException as error:
            if error.status != 404:
                raise
            return False
        return True

    def report(self, run: Running) -> None:
        """Patch the pod's status as the kubelet does when its container ends."""
        code = run.process.exit_code()
        code = 128 - code if code is not None and code < 0 else code  # killed by a signal: 128 + its number
        termination_log = Path(run.filesystem.host(run.container.get("terminationMessagePath")
                                                    or "/dev/termination-log"))
        message = termination_log.read_text() if termination_log.is_file() else ""
        if not message and code and run.container.get("terminationMessagePolicy") == "FallbackToLogsOnError":
            tail = run.process.log.read_bytes()[-LOG_TAIL_BYTES:].decode(errors="replace")
            message = "\n".join(tail.splitlines()[-LOG_TAIL_LINES:])
        self.terminate(run.pod, run.container, exit_code=code or 0, reason="Completed" if code == 0 else "Error",
                       started_at=run.started_at, message=run.filesystem.pod(message))

    def terminate(self, pod: dict[str, Any], container: dict[str, Any], *, exit_code: int, reason: str,
                  started_at: str, message: str) -> None:
        terminated = {"exitCode": exit_code, "reason": reason, "startedAt": started_at, "finishedAt": _now()}
        if message:
            terminated["message"] = message
        now = _now()
        # A merge patch replaces the whole list: keep the other conditions, the pod is no longer ready.
        conditions = [{**c, "status": "False", "lastTransitionTime": now, "reason": "PodCompleted"}
                      if c.get("type") in ("Ready", "ContainersReady") else c
                      for c in pod.get("status", {}).get("conditions") or []]
        status = {
            "phase": "Succeeded" if exit_code == 0 else "Failed",
            "conditions": conditions,
            "containerStatuses": [{"name": container["name"], "image": container["image"], "imageID": "",
                                   "ready": False, "restartCount": 0, "started": False,
                                   "state": {"terminated": terminated}}],
        }
        if not self.patch_status(pod, status):
            return  # deleted meanwhile: nobody is left to tell
        log.info(f"Container terminated pod={_key(pod)} exitCode={exit_code} reason={reason}")

    def stop(self) -> None:
        self.serving.stop()
        processes.stop([run.process for run in self.running.values()])
        self.running.clear()


def _key(pod: dict[str, Any]) -> str:
    return f"{pod['metadata']['namespace']}/{pod['metadata']['name']}"


def spawn(kubeconfig: Path, workdir: Path, root: Path, *, prometheus_targets: Path | None = None,
          log: Path | None = None, node: str = GPU_NODE) -> processes.ManagedProcess:
    """Start the agent as a child process that dies with this one, running this checkout's code; its log is
    ``log`` (default ``workdir/node-agent.log``). Stop it with :func:`kaizen.dev.processes.stop`."""
    argv = [sys.executable, "-m", "kaizen.dev.node_agent", "--kubeconfig", str(kubeconfig), "--dir", str(workdir),
            "--root", str(root), "--node", node]
    if prometheus_targets is not None:
        argv += ["--prometheus-targets", str(prometheus_targets)]
    return processes.spawn("node-agent", argv, log or workdir / "node-agent.log", detach=False,
                           env={**os.environ, "PYTHONPATH": IMAGE_PYTHONPATH})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kubeconfig", type=Path, required=True, help="the cluster to serve")
    parser.add_argument("--dir", type=Path, required=True, help="where pods' volumes, logs and claims go")
    parser.add_argument("--root", type=Path, required=True,
                        help="the node's shared storage: what absolute paths outside a pod's volumes refer to")
    parser.add_argument("--node", default=GPU_NODE, help=f"the node to serve (default {GPU_NODE})")
    parser.add_argument("--prometheus-targets", type=Path, metavar="FILE",
                        help="keep this Prometheus file_sd file of the running serving pods")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s")
    api = kubernetes.config.new_client_from_config(config_file=str(args.kubeconfig))
    agent = NodeAgent(api, args.dir.resolve(), args.root.resolve(), args.node,
                      args.prometheus_targets.resolve() if args.prometheus_targets else None)
    stopping = False

    def on_signal(*_: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log.info(f"Serving node node={args.node} dir={args.dir} root={args.root} "
             f"prometheusTargets={args.prometheus_targets or '-'}")
    try:
        while not stopping:
            try:
                agent.sync()
            except (ApiException, OSError) as error:  # the API server restarting, say: try again next pass
                log.warning(f"Sync failed error={error}")
            time.sleep(POLL_SECONDS)
    finally:
        agent.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
