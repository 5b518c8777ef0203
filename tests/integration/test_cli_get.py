"""``kaizen get LOOP -w`` in a real terminal (tmux) during a real rollout: the operator on a real API server with
kube-controller-manager and kwok, a real Prometheus scraping stable and canary emitters. The loop breaches, retrains
(the test plays the training pod's kubelet, as test_retrainjob does), and rolls the candidate out; the tree shows
it live, redrawn in place, and plainly when piped."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid

import pytest

from tests.fixtures.prerequisites import missing
from tests.fixtures.prometheus import emit, prometheus  # noqa: F401
from tests.integration.kube import apply, get, wait_for
from tests.integration.rollouts import SUCCESS_RATE, kubectl_apply, running_operator, stable_manifest
from tests.integration.test_retrainjob import result, running_pods, terminate

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def operator(crds):
    with running_operator(crds):
        yield crds


@pytest.fixture
def tmux():
    """A tmux server of the test's own (its own socket), killed at the end."""
    if shutil.which("tmux") is None:
        missing("tmux is missing: install it (sudo apt-get install tmux) to run the live `kaizen get` test")
    socket = f"kaizen-test-{uuid.uuid4().hex[:8]}"

    def run(*args: str) -> str:
        return subprocess.run(["tmux", "-L", socket, *args], check=True, capture_output=True, text=True).stdout

    yield run
    subprocess.run(["tmux", "-L", socket, "kill-server"], capture_output=True)


ERROR_RATIO = ('sum(rate(http_requests_total{namespace="{{namespace}}",code=~"5.."}[10s])) / '
               'sum(rate(http_requests_total{namespace="{{namespace}}"}[10s]))')


def serve(operator, namespace: str, emit) -> None:
    """The stable Deployment `bot`, and telemetry of a stable track failing 10 % of requests and a canary 1 %."""
    labels = {"app": "bot"}
    emit(namespace=namespace, pod="bot-stable", rate=200, error_rate=0.1,
         labels={**labels, "kaizen.dev/track": "stable", "kaizen.dev/model-version": "v1"})
    emit(namespace=namespace, pod="bot-canary", rate=100, error_rate=0.01,
         labels={**labels, "kaizen.dev/track": "canary", "kaizen.dev/model-version": "v4"})
    kubectl_apply(operator, namespace, stable_manifest())
    operator.kubectl("rollout", "status", "deployment/bot", "-n", namespace, "--timeout=60s")


def train(operator, namespace: str) -> None:
    """Play the kubelet of the loop's training pod: it succeeds with a candidate that passes the gates."""
    job = eventually(lambda: next((d["child"].split("/")[1] for d in get(
        operator, "improvementloop", "bot", namespace).get("status", {}).get("decisions", [])
        if d.get("child", "").startswith("RetrainJob/")), None))
    training = wait_for(operator, "retrainjob", job, namespace, lambda o: o.get("status", {}).get("jobName"))
    (pod,) = running_pods(operator, namespace, training["status"]["jobName"])
    terminate(operator, pod, exit_code=0, reason="Completed", message=result(refund_candidate=0.95))


def eventually(check, timeout: float = 90):
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.3)
    return value


def loop(prometheus_url: str) -> dict:
    return {
        "apiVersion": "kaizen.dev/v1alpha1", "kind": "ImprovementLoop", "metadata": {"name": "bot"},
        "spec": {
            "target": {"deployment": "bot", "container": "server"},
            "model": {"version": "v1", "uri": "s3://models/bot/v1"},
            "prometheus": {"url": prometheus_url},
            "interval": "1s",
            "signals": [{"name": "error-rate", "query": ERROR_RATIO, "max": 0.05, "for": "2s"}],
            "policy": {"cooldown": "0s"},
            "retrain": {"image": "kaizen.invalid/trainer:test", "outputURI": "s3://models/bot",
                        "resources": {"gpus": 1}},
            "gates": [{"metric": "accuracy", "minDelta": 0}],
            "rollout": {"steps": [{"setWeight": 50}, {"analysis": {"duration": "2s"}}, {"pause": {}},
                                  {"setWeight": 100}],
                        "analysis": {"interval": "1s", "metrics": [SUCCESS_RATE],
                                     "failurePolicy": {"inconclusiveLimit": 30}}},
        },
    }


def test_kaizen_get_watch_draws_the_live_tree_in_place_during_a_rollout(operator, namespace, prometheus, emit,
                                                                         tmux):
    serve(operator, namespace, emit)

    env = f"KUBECONFIG={operator.kubeconfig} PYTHONPATH={os.environ['PYTHONPATH']}"
    tmux("new-session", "-d", "-s", "get", "-x", "220", "-y", "60",
         f"env {env} {sys.executable} -m kaizen get bot -n {namespace} -w; sleep 600")
    tmux("set-option", "-t", "get", "remain-on-exit", "on")

    def screen() -> str:
        return tmux("capture-pane", "-p", "-t", "get")

    def shows(*texts: str, timeout: float = 90) -> str:
        deadline = time.monotonic() + timeout
        while True:
            seen = screen()
            if all(t in seen for t in texts):
                return seen
            if time.monotonic() > deadline:
                pytest.fail(f"the pane never showed {texts}; it shows:\n{seen}")
            time.sleep(0.3)

    # The loop does not exist yet: kaizen get says so and exits.
    shows("kaizen get: ImprovementLoop", "not found", timeout=30)
    tmux("respawn-pane", "-k", "-t", "get", f"env {env} {sys.executable} -m kaizen get bot -n {namespace} -w")
    apply(operator, namespace, loop(prometheus.url))
    shows(f"ImprovementLoop {namespace}/bot  Retraining", "(max 0.05) Breached", "RetrainJob bot-")
    train(operator, namespace)

    paused = shows("RollingOut", "Succeeded  Passed  candidate v4", "gate holdout.accuracy: candidate 0.91 vs "
                   "baseline 0.9 (delta >= 0) passed", "v1 -> v4", "step 3/4 pause (until approved)", "weight 50%",
                   "awaiting approval", "success-rate: Pass  canary", "CI [")
    # Redrawn in place: one tree on the screen and in the scrollback, however many times it was drawn.
    history = tmux("capture-pane", "-p", "-S", "-", "-t", "get")
    assert history.count("ImprovementLoop ") == 1 and paused.count("ImprovementLoop ") == 1, history
    assert "decisions (newest first" in paused and "RollOut: Candidate v4" in paused

    rollout = next(line for line in paused.splitlines() if "Rollout bot-" in line).split("Rollout ")[1].split()[0]
    subprocess.run([sys.executable, "-m", "kaizen", "approve", f"rollout/{rollout}", "-n", namespace], check=True,
                   capture_output=True, env={**os.environ, "KUBECONFIG": str(operator.kubeconfig)})
    done = shows(f"Rollout {rollout}  Promoted", "serving v4")
    assert "last action: approve by" in done
    tmux("send-keys", "-t", "get", "C-c")

    # Not a terminal: the same tree, plainly, without escape codes.
    piped = subprocess.run([sys.executable, "-m", "kaizen", "get", "bot", "-n", namespace], capture_output=True,
                           text=True, env={**os.environ, "KUBECONFIG": str(operator.kubeconfig)}, check=True).stdout
    assert "\x1b" not in piped and f"Rollout {rollout}  Promoted" in piped and piped.startswith("ImprovementLoop ")
