"""``kaizen dev demo``: Kaizen's main job on the local stack, from nothing to a reconciled ImprovementLoop.

It starts a local control plane (or uses ``--kubeconfig``), installs the CRDs, runs the operator as
``kaizen operator`` would run in the cluster, applies ``examples/improvementloop.yaml`` and shows what the operator
made of it. Each stage prints how long it took. With ``--keep`` everything stays up until Ctrl-C.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from kaizen.api import IMPROVEMENT_LOOP, KINDS
from kaizen.dev.cluster import ClusterAccess, LocalCluster

REPO_ROOT = Path(__file__).resolve().parents[3]
NAMESPACE = "kaizen-demo"
EXAMPLE = REPO_ROOT / "examples" / "improvementloop.yaml"


def say(message: str) -> None:
    print(f"==> {message}", flush=True)


@contextlib.contextmanager
def stage(title: str) -> Iterator[None]:
    started = time.monotonic()
    say(f"{title} ...")
    yield
    say(f"{title}: done in {time.monotonic() - started:.1f}s")


@contextlib.contextmanager
def cluster_for(kubeconfig: Path | None, workdir: Path) -> Iterator[ClusterAccess]:
    if kubeconfig:
        say(f"Using the cluster of {kubeconfig}")
        yield ClusterAccess(kubeconfig)
        return
    with stage("Starting the local control plane (etcd, kube-apiserver)"):
        local = LocalCluster(workdir).start()
    try:
        yield local
    finally:
        with stage("Stopping the local control plane"):
            local.stop()


@contextlib.contextmanager
def operator_process(cluster: ClusterAccess, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``kaizen operator -A`` in a child process, as the chart's Deployment runs it."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "kaizen", "operator", "--all-namespaces"],
            env={**os.environ, "KUBECONFIG": str(cluster.kubeconfig)}, stdout=out, stderr=subprocess.STDOUT,
        )
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_reconciled(cluster: ClusterAccess, name: str, timeout: float, operator: subprocess.Popen[bytes],
                    log: Path) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        obj = json.loads(cluster.kubectl("get", f"{IMPROVEMENT_LOOP.plural}.kaizen.dev", name, "-n", NAMESPACE,
                                         "-o", "json").stdout)
        status = obj.get("status", {})
        if status.get("observedGeneration") == obj["metadata"]["generation"] and status.get("conditions"):
            return obj
        if operator.poll() is not None:
            raise RuntimeError(f"the operator exited with status {operator.returncode}; see {log}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"the operator did not reconcile {name} within {timeout:.0f}s; see {log}")
        time.sleep(0.2)


def run(kubeconfig: Path | None = None, workdir: Path = Path(".kaizen/demo"), keep: bool = False) -> int:
    workdir = workdir.resolve()
    log = workdir / "operator.log"
    with contextlib.ExitStack() as stack:
        cluster = stack.enter_context(cluster_for(kubeconfig, workdir))
        with stage("Installing the Kaizen CRDs"):
            cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO_ROOT / "crds"))
            cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                            *(f"crd/{kind.crd_name}" for kind in KINDS))
        with stage(f"Starting the operator (kaizen operator --all-namespaces; log: {log})"):
            operator = stack.enter_context(operator_process(cluster, log))
        with stage(f"Applying {EXAMPLE.relative_to(REPO_ROOT)} in namespace {NAMESPACE}"):
            cluster.kubectl("apply", "--server-side", "-f", "-",
                            input=json.dumps({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}))
            cluster.kubectl("apply", "--server-side", "-n", NAMESPACE, "-f", str(EXAMPLE))
        with stage("Waiting for the operator to reconcile the loop"):
            obj = wait_reconciled(cluster, "support-bot", 60, operator, log)
        print(cluster.kubectl("get", "kaizen", "-n", NAMESPACE).stdout, flush=True)
        for condition in obj["status"]["conditions"]:
            say(f"{condition['type']}={condition['status']} ({condition['reason']}): {condition['message']}")
        if keep:
            say(f"Kaizen is running. export KUBECONFIG={cluster.kubeconfig}; Ctrl-C stops everything.")
            with contextlib.suppress(KeyboardInterrupt):
                operator.wait()
    ready = next(c for c in obj["status"]["conditions"] if c["type"] == "Ready")
    return 0 if ready["status"] == "True" else 1
