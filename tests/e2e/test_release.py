"""End to end on any cluster, given only a kubeconfig: what a user does with kubectl and the kaizen CLI.

The CRDs installed with `kubectl apply --server-side`, `kaizen operator` run out-of-cluster as its own process,
a model server's Deployment whose pods really get scheduled and become Ready, a canary Rollout that walks its
setWeight and pause steps and is promoted, a second one aborted with `kaizen abort`, and an ImprovementLoop whose
Prometheus does not exist, which must say its signals are Unknown and launch no retrain. Then everything is deleted
and the operator stopped. No Prometheus, no node agent: it runs on the local control plane (kwok plays the kubelet
of its node) and on kind (a real kubelet runs the pause image, which kind's nodes hold).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from kaizen.api import KINDS
from kaizen.dev.cluster import free_ports
from kaizen.dev.demo import operator_process
from tests.e2e.test_demo import processes_mentioning
from tests.integration.kube import condition, reconciled, wait_for
from tests.integration.rollouts import deployment, env, reasons

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).parents[2]
# Generous for a real kubelet (kind may pull the image once); the local stack takes a second or two.
TIMEOUT = 120
# Long enough to be seen by polling through kubectl on a loaded machine, short enough to keep the test fast.
PAUSE = "4s"
V1 = {"version": "v1", "uri": "s3://models/bot/v1"}
V2 = {"version": "v2", "uri": "s3://models/bot/v2"}
V3 = {"version": "v3", "uri": "s3://models/bot/v3"}

# kind preloads, on every node, the pause image its kubeadm pins (the pod sandbox), so a model server made of it
# needs no pull; which one depends on the Kubernetes version. kwok's node reports no images and takes any name.
FALLBACK_IMAGE = "registry.k8s.io/pause:3.10"


def stable_manifest(image: str) -> str:
    """The model server as a team keeps it in git, serving v1; the model variable (MODEL_URI) is left to Kaizen.

    The toleration lets its pods onto a kwok node that carries kwok's customary taint; the local stack's node has
    none, nor has a single-node kind cluster (kind removes the control plane's taint when it has no workers)."""
    return f"""
apiVersion: apps/v1
kind: Deployment
metadata:
  name: bot
  labels:
    app: bot
spec:
  replicas: 4
  selector:
    matchLabels:
      app: bot
  template:
    metadata:
      labels:
        app: bot
    spec:
      nodeSelector:
        kubernetes.io/os: linux
      tolerations:
        - key: kwok.x-k8s.io/node
          operator: Exists
          effect: NoSchedule
      terminationGracePeriodSeconds: 1
      containers:
        - name: server
          image: {image}
          imagePullPolicy: IfNotPresent
"""


def pause_image(cluster) -> str:
    """A pause image the nodes already hold, or the fallback when they report none (kwok)."""
    nodes = json.loads(cluster.kubectl("get", "nodes", "-o", "json").stdout)["items"]
    held = sorted({name for node in nodes for image in node.get("status", {}).get("images") or []
                   for name in image.get("names") or [] if re.fullmatch(r"registry\.k8s\.io/pause:[0-9.]+", name)})
    return held[0] if held else FALLBACK_IMAGE


def canary_rollout(name: str, stable: dict, canary: dict, steps: list[dict]) -> dict:
    """A Rollout without analysis metrics: it needs no Prometheus, its steps are timed."""
    return {"apiVersion": "kaizen.dev/v1alpha1", "kind": "Rollout", "metadata": {"name": name},
            "spec": {"target": {"deployment": "bot", "container": "server"}, "stableModel": stable,
                     "canaryModel": canary, "steps": steps}}


def kubectl_apply(cluster, namespace: str, manifest: str) -> None:
    cluster.kubectl("apply", "--server-side", "-n", namespace, "-f", "-", input=manifest)


def kaizen(cluster, *args: str) -> subprocess.CompletedProcess[str]:
    """The kaizen CLI as a user runs it, against the cluster's kubeconfig."""
    return subprocess.run([sys.executable, "-m", "kaizen", *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "KUBECONFIG": str(cluster.kubeconfig)})


def install_crds(cluster) -> None:
    """`kubectl apply --server-side -f crds/`, unless the cluster has them already (a Kaizen installed by Helm, or
    an earlier test of this session): those are left as they are."""
    names = [f"crd/{kind.crd_name}" for kind in KINDS]
    if cluster.kubectl("get", *names, check=False).returncode != 0:
        cluster.kubectl("apply", "--server-side", "-f", str(REPO_ROOT / "crds"))
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", *names)


@contextmanager
def operator(cluster, namespace: str, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`kaizen operator --namespace NS` out-of-cluster, pointed at the kubeconfig.

    On the way out, the Kaizen objects in the namespace are deleted while it still runs -- kopf holds a finalizer on
    each (for its timers) that only a running operator lets go of -- and then it is stopped with SIGTERM. On a
    failure the end of its log is printed, so that pytest shows it beside the failed assertion."""
    with operator_process(cluster, log, "--namespace", namespace) as process:
        try:
            yield process
        except BaseException:
            print(f"--- the end of {log} ---\n{log.read_text()[-6000:]}")
            raise
        finally:
            cluster.kubectl("delete", "improvementloops.kaizen.dev,rollouts.kaizen.dev", "--all", "-n", namespace,
                            f"--timeout={TIMEOUT}s", check=False, timeout=TIMEOUT + 10)


def status(obj: dict) -> dict:
    return obj.get("status", {})


def phase(name: str):
    return lambda obj: status(obj).get("phase") == name


def pods(cluster, namespace: str) -> list[dict]:
    """The namespace's pods that are not on their way out."""
    listed = json.loads(cluster.kubectl("get", "pods", "-n", namespace, "-o", "json").stdout)["items"]
    return [p for p in listed if "deletionTimestamp" not in p["metadata"]]


def ready(pod: dict) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in pod.get("status", {}).get("conditions", []))


def serving(cluster, namespace: str) -> dict[str | None, int]:
    """Ready pods per model, as their containers are configured (None: no MODEL_URI, the server's own v1)."""
    counts: dict[str | None, int] = {}
    for pod in pods(cluster, namespace):
        if ready(pod) and pod["spec"].get("nodeName"):
            uri = next((e["value"] for e in pod["spec"]["containers"][0].get("env", []) if e["name"] == "MODEL_URI"),
                       None)
            counts[uri] = counts.get(uri, 0) + 1
    return counts


def serve(cluster, namespace: str) -> dict:
    """The stable Deployment, applied and rolled out: four Ready pods serving v1."""
    kubectl_apply(cluster, namespace, stable_manifest(pause_image(cluster)))
    cluster.kubectl("rollout", "status", "deployment/bot", "-n", namespace, f"--timeout={TIMEOUT}s",
                    timeout=TIMEOUT + 10)
    assert serving(cluster, namespace) == {None: 4}
    return deployment(cluster, namespace, "bot")


def canary_gone(cluster, namespace: str) -> None:
    """The canary Deployment deleted, and its pods with it (the garbage collector removes them a moment later)."""
    cluster.kubectl("wait", "--for=delete", "deployments,pods", "-l", "kaizen.dev/track=canary", "-n", namespace,
                    f"--timeout={TIMEOUT}s", timeout=TIMEOUT + 10)


def at_step(cluster, namespace: str, name: str, step: int) -> dict:
    return wait_for(cluster, "rollout", name, namespace,
                    lambda o: status(o).get("currentStep") == step and status(o).get("phase") == "Progressing",
                    timeout=TIMEOUT)


def release_and_promote(cluster, namespace: str) -> None:
    """v2 at 20 %, 50 % and 100 % of the pods, a timed pause at each, then promoted into the stable Deployment."""
    steps = [{"setWeight": 20}, {"pause": {"duration": PAUSE}}, {"setWeight": 50}, {"pause": {"duration": PAUSE}},
             {"setWeight": 100}, {"pause": {"duration": PAUSE}}]
    kubectl_apply(cluster, namespace, yaml.safe_dump(canary_rollout("bot-v2", V1, V2, steps)))
    accepted = wait_for(cluster, "rollout", "bot-v2", namespace, reconciled, timeout=TIMEOUT)
    assert condition(accepted, "Ready")["status"] == "True", status(accepted)

    # Each pause holds the weight its setWeight reached: the canary's pods are Ready beside the untouched stable's.
    # Replica-ratio routing: 1 of 5 pods is 20 %, 4 of 8 is 50 %; at 100 % the canary matches the stable's size.
    for pause, weight, replicas in ((1, 20, 1), (3, 50, 4), (5, 100, 4)):
        rollout = at_step(cluster, namespace, "bot-v2", pause)
        assert (status(rollout)["canaryWeight"], status(rollout)["canaryReplicas"]) == (weight, replicas)
        canary = deployment(cluster, namespace, "bot-canary")
        assert canary["spec"]["replicas"] == replicas and canary["status"].get("readyReplicas") == replicas
        assert canary["metadata"]["labels"]["kaizen.dev/model-version"] == "v2"
        assert env(canary)["MODEL_URI"] == V2["uri"]
        assert deployment(cluster, namespace, "bot")["spec"]["replicas"] == 4
        assert serving(cluster, namespace) == {None: 4, V2["uri"]: replicas}

    promoted = wait_for(cluster, "rollout", "bot-v2", namespace, phase("Promoted"), timeout=TIMEOUT)
    assert status(promoted)["message"] == f"Promoted v2: the stable Deployment serves {V2['uri']}."
    assert condition(promoted, "Progressing")["status"] == "False"
    stable = deployment(cluster, namespace, "bot")
    assert env(stable)["MODEL_URI"] == V2["uri"] and stable["spec"]["replicas"] == 4
    assert stable["spec"]["template"]["metadata"]["labels"]["kaizen.dev/model-version"] == "v2"
    cluster.kubectl("rollout", "status", "deployment/bot", "-n", namespace, f"--timeout={TIMEOUT}s",
                    timeout=TIMEOUT + 10)
    canary_gone(cluster, namespace)
    assert serving(cluster, namespace) == {V2["uri"]: 4}
    story = reasons(cluster, namespace, "bot-v2")
    assert story.count("WeightSet") == 3 and {"Started", "Promoting", "Promoted"} <= set(story), story


def release_and_abort(cluster, namespace: str, user: str) -> None:
    """v3 beside the promoted v2, held at 50 % by a long pause, aborted by the user: the stable stays on v2."""
    steps = [{"setWeight": 50}, {"pause": {"duration": "10m"}}, {"setWeight": 100}]
    kubectl_apply(cluster, namespace, yaml.safe_dump(canary_rollout("bot-v3", V2, V3, steps)))
    at_step(cluster, namespace, "bot-v3", 1)
    assert serving(cluster, namespace) == {V2["uri"]: 4, V3["uri"]: 4}
    before = deployment(cluster, namespace, "bot")

    result = kaizen(cluster, "abort", "bot-v3", "-n", namespace)
    assert result.returncode == 0, result.stderr
    assert f"Rollout {namespace}/bot-v3: abort requested by {user}" in result.stdout
    aborted = wait_for(cluster, "rollout", "bot-v3", namespace, phase("Aborted"), timeout=TIMEOUT)
    last = status(aborted)["lastAction"]
    assert (last["action"], last["by"], last["outcome"]) == ("abort", user, "aborted: canary removed, stable untouched")
    assert status(aborted)["message"].endswith("; stable untouched.")
    canary_gone(cluster, namespace)
    after = deployment(cluster, namespace, "bot")
    assert after["metadata"]["generation"] == before["metadata"]["generation"]
    assert after["spec"]["template"] == before["spec"]["template"]
    assert serving(cluster, namespace) == {V2["uri"]: 4}
    assert {"UserAction", "Aborted"} <= set(reasons(cluster, namespace, "bot-v3"))


def observe_without_prometheus(cluster, namespace: str) -> None:
    """The minimal example loop, its Prometheus absent: accepted, signals Unknown, and no retrain, twice over."""
    doc = yaml.safe_load((REPO_ROOT / "examples" / "improvementloop-minimal.yaml").read_text())
    [port] = free_ports(1)  # nothing listens there
    doc["metadata"]["name"] = "bot"
    doc["spec"].update(target={"deployment": "bot"}, prometheus={"url": f"http://127.0.0.1:{port}"}, interval="2s")
    kubectl_apply(cluster, namespace, yaml.safe_dump(doc))

    first = wait_for(cluster, "improvementloop", "bot", namespace,
                     lambda o: reconciled(o) and status(o).get("lastObserved"), timeout=TIMEOUT)
    second = wait_for(cluster, "improvementloop", "bot", namespace,
                      lambda o: status(o).get("lastObserved") != status(first)["lastObserved"], timeout=TIMEOUT)
    for loop in (first, second):
        assert condition(loop, "Ready")["status"] == "True"
        assert condition(loop, "Degraded") is None or condition(loop, "Degraded")["status"] != "True"
        assert status(loop)["phase"] == "Observing" and "candidate" not in status(loop)
        [signal] = status(loop)["signals"]
        assert signal["name"] == "accuracy" and signal["state"] == "Unknown" and "value" not in signal
        [decision] = status(loop)["decisions"]  # one decision, not one per observation
        assert decision["action"] == "Wait" and "child" not in decision
        assert "accuracy" in decision["reason"] and "missing data is never taken as healthy" in decision["reason"]
    assert cluster.kubectl("get", "retrainjobs.kaizen.dev,jobs", "-n", namespace, "-o", "name").stdout == ""
    assert "Wait" in reasons(cluster, namespace, "bot")


def test_a_user_releases_aborts_and_observes_on_any_cluster(cluster, namespace, tmp_path):
    install_crds(cluster)
    user = cluster.kubectl("auth", "whoami", "-o", "jsonpath={.status.userInfo.username}").stdout
    with operator(cluster, namespace, tmp_path / "operator.log") as process:
        serve(cluster, namespace)
        release_and_promote(cluster, namespace)
        release_and_abort(cluster, namespace, user)
        observe_without_prometheus(cluster, namespace)
    assert process.returncode == 0, "the operator did not stop cleanly on SIGTERM"
    assert processes_mentioning(namespace) == []
    # Nothing is left that only the operator could have let go of: the namespace goes, with its Deployments.
    cluster.kubectl("delete", "namespace", namespace, f"--timeout={TIMEOUT}s", timeout=TIMEOUT + 10)
