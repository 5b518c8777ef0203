"""The operator killed (SIGKILL) in the middle of a step: the next one resumes at the same step with the step's
start kept, and nothing is scaled, announced or promoted twice."""

from __future__ import annotations

import os
import signal
import sys
import time
from datetime import datetime, timedelta, timezone

import pytest

from kaizen.api.actions import parse_time
from kaizen.dev import processes
from tests.integration.kube import apply, get, wait_for
from tests.integration.rollouts import deployment, events, kubectl_apply, reasons, rollout, stable_manifest

pytestmark = pytest.mark.integration


@pytest.fixture
def start_operator(crds, tmp_path, monkeypatch):
    """Start `kaizen operator` (the Rollout controller) as a process of its own, so that it can really be killed."""
    monkeypatch.setenv("KUBECONFIG", str(crds.kubeconfig))
    started = []

    def start():
        process = processes.spawn(f"operator-{len(started)}", [
            sys.executable, "-m", "kaizen", "operator", "-A", "--controllers", "rollout",
        ], tmp_path / f"operator-{len(started)}.log", detach=False)
        started.append(process)
        return process

    yield start
    processes.stop(started)


def test_the_operator_killed_mid_step_resumes_without_duplicates(crds, namespace, start_operator):
    kubectl_apply(crds, namespace, stable_manifest())
    crds.kubectl("rollout", "status", "deployment/bot", "-n", namespace, "--timeout=60s")
    served = deployment(crds, namespace, "bot")
    steps = [{"setWeight": 10}, {"pause": {"duration": "20s"}}, {"setWeight": 50}, {"pause": {"duration": "1s"}},
             {"setWeight": 100}]
    first = start_operator()
    apply(crds, namespace, rollout("bot-v2", steps))
    before = wait_for(crds, "rollout", "bot-v2", namespace,
                      lambda o: o.get("status", {}).get("currentStep") == 1, timeout=60)["status"]

    os.killpg(first.pgid, signal.SIGKILL)
    time.sleep(4)  # the operator stays down for a while; the pause's clock must keep running meanwhile
    assert deployment(crds, namespace, "bot-canary")["spec"]["replicas"] == 1
    assert get(crds, "rollout", "bot-v2", namespace)["status"]["currentStep"] == 1

    restarted = datetime.now(timezone.utc)
    second = start_operator()
    obj = wait_for(crds, "rollout", "bot-v2", namespace, lambda o: o.get("status", {}).get("phase") == "Promoted",
                   timeout=60)
    assert second.alive(), second.log_tail()
    seen = reasons(crds, namespace, "bot-v2")
    assert seen.count("Started") == 1 and seen.count("WeightSet") == 3
    assert seen.count("Promoting") == 1 and seen.count("Promoted") == 1
    stable = deployment(crds, namespace, "bot")
    assert stable["metadata"]["generation"] == served["metadata"]["generation"] + 1  # promoted once
    assert obj["status"]["message"] == "Promoted v2: the stable Deployment serves s3://models/bot/v2."
    # The 20 s pause ended 20 s after it began (or once the new operator was up, on a loaded machine), not 20 s after
    # the restart, which came 4 s or more into it.
    step_2 = next(e for e in events(crds, namespace, "bot-v2") if e["message"].startswith("Step 2:"))
    ended = parse_time(step_2["firstTimestamp"])
    assert ended - parse_time(before["stepStartedAt"]) >= timedelta(seconds=19), step_2
    assert ended < restarted + timedelta(seconds=17), (ended, restarted)
