"""Notifications on real parts: a real API server, a real Prometheus scraping an emitter whose error rate the test
sets, two operator replicas that elect a leader (`kaizen operator --leader-elect`, as the chart runs them) and whose
leader is SIGKILLed twice, and a real HTTP receiver on 127.0.0.1 that verifies every request with standardwebhooks'
own Webhook.verify. The test plays the RetrainJob and Rollout controllers by writing their status, as
test_improvementloop does."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from standardwebhooks import Webhook

from tests.integration.test_improvementloop import (
    Telemetry, apply, children, eventually, loop_manifest, loop_status, set_status, signal_state,
)

pytestmark = pytest.mark.integration

SECRET = "whsec_" + base64.b64encode(b"kaizen-notifications-test-secret").decode()


class Receiver:
    """Records every POST: path, webhook-id, body, whether the signature verified, and the status answered. The
    first ``fail`` requests to /standard are answered 500."""

    def __init__(self, fail: int, hold: str) -> None:
        self.requests: list[dict] = []
        self.fail = fail
        # The first request to /standard for an event of type ``hold`` is kept unanswered until ``release``: the
        # test kills the operator while it waits, between sending and recording.
        self.hold, self.held, self.release = hold, threading.Event(), threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers["content-length"])).decode()
                try:
                    Webhook(SECRET).verify(body, dict(self.headers))
                    verified = True
                except Exception:  # noqa: BLE001 (recorded, and asserted on)
                    verified = False
                code = 200
                if self.path == "/standard" and receiver.fail > 0:
                    receiver.fail, code = receiver.fail - 1, 500
                if self.path == "/standard" and self.headers["webhook-id"].endswith(receiver.hold) \
                        and not receiver.held.is_set():
                    receiver.held.set()
                    receiver.release.wait(30)
                receiver.requests.append({"path": self.path, "id": self.headers["webhook-id"], "body": json.loads(body),
                                          "verified": verified, "code": code, "at": time.monotonic()})
                try:
                    self.send_response(code)
                    self.end_headers()
                except OSError:
                    pass  # the sender was killed while its request was held

            def log_message(self, *_: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def delivered(self, path: str) -> list[dict]:
        return [r for r in self.requests if r["path"] == path and r["code"] == 200]

    def types(self, path: str) -> set[str]:
        return {r["id"].rsplit(".", 1)[1] for r in self.delivered(path)}


class Replicas:
    """`kaizen operator --leader-elect` replicas, as the chart runs two: only the leader acts (and notifies)."""

    def __init__(self, kubeconfig, namespace, workdir) -> None:
        self.kubeconfig, self.namespace, self.workdir = kubeconfig, namespace, workdir
        self.processes: dict[str, subprocess.Popen] = {}

    def start(self, identity: str) -> None:
        self.processes[identity] = subprocess.Popen(
            [sys.executable, "-m", "kaizen", "operator", "--namespace", self.namespace, "--controllers",
             "improvementloop", "--leader-elect", f"--leader-elect-resource-namespace={self.namespace}",
             f"--leader-elect-identity={identity}"],
            env={**os.environ, "KUBECONFIG": str(self.kubeconfig)},
            stdout=(self.workdir / f"operator-{identity}.log").open("ab"), stderr=subprocess.STDOUT)

    def leader(self, cluster) -> str:
        lease = json.loads(cluster.kubectl("get", "lease", "kaizen-operator", "-n", self.namespace, "-o",
                                           "json", check=False).stdout or "{}")
        return lease.get("spec", {}).get("holderIdentity", "")

    def kill(self, identity: str) -> None:
        self.processes[identity].send_signal(signal.SIGKILL)
        self.processes[identity].wait(timeout=30)

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
                process.wait(timeout=30)


@pytest.fixture
def telemetry(tmp_path):
    telemetry = Telemetry(tmp_path / "telemetry")
    yield telemetry
    telemetry.stop()


@pytest.fixture
def replicas(crds, namespace, tmp_path):
    replicas = Replicas(crds.kubeconfig, namespace, tmp_path)
    replicas.start("a")
    replicas.start("b")
    yield replicas
    replicas.stop()


def test_each_event_is_delivered_once_signed_retried_and_survives_sigkills_of_the_leader(crds, replicas, telemetry,
                                                                                       namespace):
    receiver = Receiver(fail=2, hold=".CanaryPromoted")
    crds.kubectl("create", "secret", "generic", "hook", "-n", namespace, f"--from-literal=secret={SECRET}")
    manifest = loop_manifest(telemetry.prometheus.url)
    manifest["spec"]["notifications"] = {"webhooks": [
        {"url": f"{receiver.url}/standard", "secretRef": {"name": "hook", "key": "secret"}},
        {"url": f"{receiver.url}/slack", "format": "slack", "secretRef": {"name": "hook", "key": "secret"}},
    ]}
    emitter = telemetry.emitter(namespace, error_rate=0.3)
    apply(crds, namespace, manifest)

    # A breach starts a retrain: told to both webhooks; /standard answered 500 twice first, then delivered once.
    [job] = eventually(lambda: children(crds, namespace, "retrainjob"), what="a RetrainJob")
    eventually(lambda: receiver.types("/standard") == {"RetrainStarted"} == receiver.types("/slack"),
               what="RetrainStarted at both webhooks")
    started = [r for r in receiver.requests if r["path"] == "/standard"]
    assert [r["code"] for r in started] == [500, 500, 200], started  # retried with backoff, then one delivery
    assert len({r["id"] for r in started}) == 1  # every retry carried the same webhook-id
    gaps = [b["at"] - a["at"] for a, b in zip(started, started[1:])]
    assert gaps[0] >= 0.9 and gaps[1] >= 1.9, gaps  # the backoff: 1s, then 2s
    decision = next(d for d in loop_status(crds, namespace)["decisions"] if d["action"] == "Retrain")
    body = receiver.delivered("/standard")[0]["body"]
    assert body["type"] == "RetrainStarted" and body["data"]["id"] == f"{decision['id']}.RetrainStarted"
    assert body["data"]["decision"]["reason"] == decision["reason"]
    assert body["data"]["decision"]["evidence"]["signals"][0]["name"] == "error-rate"
    assert decision["id"] in receiver.delivered("/slack")[0]["body"]["blocks"][2]["elements"][0]["text"]
    eventually(lambda: len(loop_status(crds, namespace).get("notifications", {}).get("delivered", [])) == 2
               and not loop_status(crds, namespace)["notifications"].get("pending"), what="the cursor to record both")

    # The leader dies; the candidate passes meanwhile; the standby takes over from the cursor, and the killed
    # replica comes back as the new standby.
    first = replicas.leader(crds)
    replicas.kill(first)
    emitter.set(error_rate=0.0)
    set_status(crds, namespace, "retrainjob", job["metadata"]["name"], {
        "phase": "Succeeded", "verdict": "Passed", "candidate": {"version": "v2", "uri": "/models/v2"},
        "completionTime": "2026-11-28T00:00:00Z"})
    replicas.start(f"{first}2")
    [rollout] = eventually(lambda: children(crds, namespace, "rollout"), what="a Rollout", timeout=60)
    eventually(lambda: signal_state(crds, namespace) == "Healthy", what="the signal to clear")
    set_status(crds, namespace, "rollout", rollout["metadata"]["name"], {"phase": "Promoted"})

    # The leader dies again, this time between sending CanaryPromoted and recording it: the receiver holds the
    # request while the test SIGKILLs the sender, then answers. The standby, leading now, sends it again with the
    # same webhook-id.
    assert receiver.held.wait(60), "CanaryPromoted was never sent"
    second = replicas.leader(crds)
    assert second != first
    replicas.kill(second)
    receiver.release.set()
    recorded = loop_status(crds, namespace)["notifications"]["delivered"]
    assert not [k for k in recorded if ".CanaryPromoted@" in k], recorded  # sent, never recorded
    eventually(lambda: "CanaryPromoted" in receiver.types("/slack"), what="CanaryPromoted at /slack", timeout=60)
    eventually(lambda: len(loop_status(crds, namespace)["notifications"]["delivered"]) == 4, what="4 recorded")
    eventually(lambda: loop_status(crds, namespace).get("model", {}).get("version") == "v2", what="v2 served")

    # Distinct deliveries and duplicates, counted explicitly. Every request verified. The first SIGKILL (after the
    # cursor recorded RetrainStarted) caused no duplicate; the second (between sending and recording) caused exactly
    # one, with the same webhook-id and the same body: at least once on the wire, and exactly one per event once the
    # receiver drops a webhook-id it has seen.
    assert all(r["verified"] for r in receiver.requests), [r for r in receiver.requests if not r["verified"]]
    expected = {"RetrainStarted", "CanaryPromoted"}
    standard = Counter(r["id"] for r in receiver.delivered("/standard"))
    slack = Counter(r["id"] for r in receiver.delivered("/slack"))
    assert {i.rsplit(".", 1)[1] for i in standard} == expected == {i.rsplit(".", 1)[1] for i in slack}
    assert sum(c - 1 for c in slack.values()) == 0, slack
    assert {i.rsplit(".", 1)[1]: c - 1 for i, c in standard.items()} == {"RetrainStarted": 0, "CanaryPromoted": 1}
    again = [r for r in receiver.delivered("/standard") if r["id"].endswith(".CanaryPromoted")]
    assert again[0]["body"] == again[1]["body"]
    assert len({r["id"] for r in receiver.delivered("/standard")}) == 2  # after dedupe: one per event
    promoted = next(r for r in receiver.delivered("/standard") if r["id"].endswith(".CanaryPromoted"))["body"]
    roll_out = next(d for d in loop_status(crds, namespace)["decisions"] if d["action"] == "RollOut")
    assert promoted["data"]["decision"]["id"] == roll_out["id"]
    assert promoted["data"]["decision"]["outcome"].startswith(f"Rollout {rollout['metadata']['name']} promoted")
    receiver.server.shutdown()
