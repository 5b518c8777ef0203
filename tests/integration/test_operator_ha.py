"""Two ``kaizen operator --leader-elect`` processes on the real API server, as the chart runs two replicas: exactly
one leads (the Lease says which) and acts; when it is SIGKILLed the other takes over within the failover target
and takes no action twice; a leader that could not renew (SIGSTOPped) stops the moment it runs again.

(Its own module, so that no in-process operator of another test module reconciles for these processes.)
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass
from urllib.parse import urlsplit
from datetime import datetime
from pathlib import Path

import kubernetes.client
import pytest
import yaml
from kubernetes.client.exceptions import ApiException

from tests.integration.kube import apply, wait_for
from tests.integration.rollouts import deployment, kubectl_apply, reasons, rollout, stable_manifest

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).parents[2] / "examples"
LEASE = "kaizen-operator"
#: The chart's defaults: a lease of 8 s, given up after 5 s without renewal, renewed or looked at every 2 s.
TIMING = ["--leader-elect-lease-duration=8s", "--leader-elect-renew-deadline=5s", "--leader-elect-retry-period=2s"]
#: From the leader's SIGKILL to the new leader's first action on an object (issue 13).
FAILOVER_TARGET_SECONDS = 15.0


@dataclass
class Replica:
    identity: str
    process: subprocess.Popen
    log: Path
    health: str

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def healthz(self) -> dict:
        with urllib.request.urlopen(self.health, timeout=5) as response:
            return json.loads(response.read())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_replica(kubeconfig: Path, namespace: str, suffix: str, tmp_path: Path) -> Replica:
    """``kaizen operator --leader-elect`` watching ``namespace``, electing on the Lease ``namespace/kaizen-operator``.
    """
    identity, log, port = f"{namespace}-{suffix}", tmp_path / f"operator-{suffix}.log", free_port()
    command = [sys.executable, "-m", "kaizen", "operator", "--namespace", namespace, "--leader-elect",
               f"--leader-elect-resource-namespace={namespace}", f"--leader-elect-identity={identity}", *TIMING,
               f"--liveness=http://127.0.0.1:{port}/healthz"]
    with log.open("w") as out:
        process = subprocess.Popen(command, env={**os.environ, "KUBECONFIG": str(kubeconfig)}, stdout=out,
                                   stderr=subprocess.STDOUT)
    return Replica(identity, process, log, f"http://127.0.0.1:{port}/healthz")


def stop_all(replicas: list[Replica]) -> None:
    for replica in replicas:
        if replica.process.poll() is None:
            replica.process.send_signal(signal.SIGCONT)
            replica.process.kill()
        replica.process.wait(timeout=30)


def campaigning(replicas: list[Replica]) -> None:
    # Both campaigning: a standby still importing when the leader dies would measure its start-up, not failover.
    wait_until(lambda: all("Started campaigning" in r.output() for r in replicas), 120, "the replicas campaign",
               replicas)


@pytest.fixture
def replicas(crds, namespace, tmp_path):
    """Two operator processes electing a leader, both campaigning."""
    started = [start_replica(crds.kubeconfig, namespace, suffix, tmp_path) for suffix in ("a", "b")]
    try:
        campaigning(started)
        yield started
    finally:
        stop_all(started)


class Link:
    """A TCP forwarder to the API server that a test can cut, as a network partition cuts one replica off."""

    def __init__(self, target: tuple[str, int]):
        self.target, self.connections = target, []
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
                upstream = socket.create_connection(self.target)
            except OSError:
                return
            self.connections += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                sink.shutdown(socket.SHUT_WR)

    def cut(self) -> None:
        """Refuse new connections and break the open ones."""
        with contextlib.suppress(OSError):
            self.server.shutdown(socket.SHUT_RDWR)
        self.server.close()
        for connection in self.connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
            connection.close()


def wait_until(predicate, timeout, what, replicas=()):
    deadline = time.monotonic() + timeout
    while not (result := predicate()):
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- {r.identity}\n{r.output()[-4000:]}" for r in replicas)
            pytest.fail(f"timed out after {timeout}s waiting until {what}\n{logs}")
        time.sleep(0.1)
    return result


def logged_at(output: str, message: str) -> datetime:
    """When the first log line with ``message`` was written (kopf's log format, local time)."""
    line = next(line for line in output.splitlines() if message in line)
    return datetime.strptime(line[1:24], "%Y-%m-%d %H:%M:%S,%f")


def lease_spec(api, namespace) -> dict:
    try:
        lease = kubernetes.client.CoordinationV1Api(api).read_namespaced_lease(LEASE, namespace)
    except ApiException as error:
        if error.status == 404:
            return {}
        raise
    return {"holder": lease.spec.holder_identity, "transitions": lease.spec.lease_transitions or 0,
            "duration": lease.spec.lease_duration_seconds}


def retrain_job(name: str) -> dict:
    doc = copy.deepcopy(yaml.safe_load((EXAMPLES / "retrainjob.yaml").read_text()))
    doc["metadata"]["name"] = name
    return doc


def training_job(api, namespace, name):
    """The Kubernetes Job the operator created for RetrainJob ``name``, or None."""
    try:
        return kubernetes.client.BatchV1Api(api).read_namespaced_job(f"{name}-trainer", namespace)
    except ApiException as error:
        if error.status == 404:
            return None
        raise


def leader_and_standby(api, namespace, replicas):
    holder = wait_until(lambda: lease_spec(api, namespace).get("holder"), 60, "a replica holds the lease", replicas)
    leader = next(r for r in replicas if r.identity == holder)
    standby = next(r for r in replicas if r.identity != holder)
    return leader, standby


def test_one_replica_leads_and_the_other_takes_over_within_the_target_after_a_sigkill(crds, namespace, replicas):
    api = crds.api_client()
    leader, standby = leader_and_standby(api, namespace, replicas)
    assert lease_spec(api, namespace) == {"holder": leader.identity, "transitions": 0, "duration": 8}
    assert leader.output().count("Became the leader") == 1 and "Became the leader" not in standby.output()
    assert leader.healthz()["leading"] is True
    # The standby reads the lease every retry period: it knows who leads.
    health = wait_until(lambda: (h := standby.healthz())["holder"] and h, 10, "the standby sees the leader", replicas)
    assert health == {"identity": standby.identity, "lease": f"{namespace}/{LEASE}", "leading": False,
                      "holder": leader.identity}

    # Only the leader acts: a training Job, and a Rollout's first step (then a pause that outlasts the failover).
    kubectl_apply(crds, namespace, stable_manifest())
    served = wait_until(lambda: deployment(crds, namespace, "bot"), 30, "the served Deployment exists", replicas)
    apply(crds, namespace, rollout("bot-v2", [{"setWeight": 10}, {"pause": {"duration": "15s"}}, {"setWeight": 50},
                                              {"pause": {"duration": "1s"}}, {"setWeight": 100}]))
    wait_for(crds, "rollout", "bot-v2", namespace, lambda o: o.get("status", {}).get("currentStep") == 1, timeout=60)
    apply(crds, namespace, retrain_job("before"))
    before = wait_until(lambda: training_job(api, namespace, "before"), 60, "the leader creates the Job", replicas)
    wait_until(lambda: "Created training Job job=before-trainer" in leader.output(), 10, "the leader logs it", replicas)
    assert "Handler" not in standby.output() and "Created training Job" not in standby.output()

    leader.process.send_signal(signal.SIGKILL)
    killed, killed_at = time.monotonic(), datetime.now()
    apply(crds, namespace, retrain_job("after"))
    wait_until(lambda: training_job(api, namespace, "after"), 60, "the new leader creates the Job", replicas)
    failover = time.monotonic() - killed
    took_over = logged_at(standby.output(), "Became the leader") - killed_at
    print(f"\nFailover: {failover:.1f}s from the leader's SIGKILL to the new leader's next action (a training Job "
          f"created), of which {took_over.total_seconds():.1f}s until it took the lease; lease 8s, renew deadline "
          "5s, retry period 2s")

    assert lease_spec(api, namespace) == {"holder": standby.identity, "transitions": 1, "duration": 8}
    assert standby.healthz()["leading"] is True
    assert failover <= FAILOVER_TARGET_SECONDS, f"failover took {failover:.1f}s"

    # The new leader handled the RetrainJob the old one had started (resumed it, or handled its creation again when
    # the old leader died before recording it), and did not start it again. (kopf's log lines do not name objects:
    # one "... is processed" for each of the two.)
    wait_until(lambda: standby.output().count(" is processed: ") >= 2, 60, "the new leader handles 'before'", replicas)
    assert training_job(api, namespace, "before").metadata.uid == before.metadata.uid
    assert "Created training Job job=before-trainer" not in standby.output()
    assert "Created training Job job=after-trainer" in standby.output()
    names = [job.metadata.name for job in kubernetes.client.BatchV1Api(api).list_namespaced_job(namespace).items]
    assert sorted(names) == ["after-trainer", "before-trainer"]

    # The new leader carried the Rollout on from the step the old one was at: each step applied once.
    wait_for(crds, "rollout", "bot-v2", namespace, lambda o: o.get("status", {}).get("phase") == "Promoted",
             timeout=90)
    seen = reasons(crds, namespace, "bot-v2")
    assert seen.count("Started") == 1 and seen.count("WeightSet") == 3, seen
    assert seen.count("Promoting") == 1 and seen.count("Promoted") == 1, seen
    assert deployment(crds, namespace, "bot")["metadata"]["generation"] == served["metadata"]["generation"] + 1


def test_writes_are_refused_before_they_are_sent_once_the_replica_may_not_act(crds, namespace, monkeypatch):
    from kaizen.k8s import client
    from kaizen.k8s.errors import ApiError

    monkeypatch.setenv("KUBECONFIG", str(crds.kubeconfig))
    client.reset()
    leading = True
    client.fence(lambda: leading)
    core = kubernetes.client.CoreV1Api(client.api_client())
    try:
        core.create_namespaced_config_map(namespace, {"metadata": {"name": "while-leading"}})
        leading = False
        with pytest.raises(ApiError) as refused:
            core.create_namespaced_config_map(namespace, {"metadata": {"name": "after-losing"}})
        assert refused.value.reason == "NotLeader" and refused.value.transient
        assert "no longer holds the leader lease" in str(refused.value)
        assert core.read_namespaced_config_map("while-leading", namespace).metadata.name == "while-leading"
    finally:
        client.fence(None)
        client.reset()
    names = {item.metadata.name for item in kubernetes.client.CoreV1Api(crds.api_client()).list_namespaced_config_map(
        namespace).items}
    assert "while-leading" in names and "after-losing" not in names


def test_a_leader_that_could_not_renew_stops_when_it_runs_again_and_a_clean_stop_hands_over(
        crds, namespace, replicas):
    api = crds.api_client()
    leader, standby = leader_and_standby(api, namespace, replicas)

    # Frozen, the leader cannot renew: the standby takes over once the lease expires, and acts.
    leader.process.send_signal(signal.SIGSTOP)
    wait_until(lambda: lease_spec(api, namespace).get("holder") == standby.identity, 60,
               "the standby takes the lease", replicas)
    apply(crds, namespace, retrain_job("while-frozen"))
    wait_until(lambda: training_job(api, namespace, "while-frozen"), 60, "the new leader acts", replicas)

    # Thawed, the old leader's watch delivers the new RetrainJob: it must not act on it, but stop at once.
    seen = len(leader.output())
    leader.process.send_signal(signal.SIGCONT)
    assert leader.process.wait(timeout=30) == 1
    after = leader.output()[seen:]
    assert "Lost the lease" in after, after
    assert "Handler" not in after and "Created training Job" not in after, after
    assert lease_spec(api, namespace)["holder"] == standby.identity

    # A leader stopped cleanly (SIGTERM, as on a rolling update) releases the lease: no one waits for it to expire.
    standby.process.terminate()
    assert standby.process.wait(timeout=60) == 0, standby.output()[-4000:]
    assert "Released the lease" in standby.output()
    assert lease_spec(api, namespace) == {"holder": None, "transitions": 1, "duration": 1}


def test_a_leader_cut_off_from_the_api_server_stops_acting_before_its_lease_can_be_taken(crds, namespace, tmp_path):
    # The first replica reaches the API server through a link the test cuts; the second directly.
    config = yaml.safe_load(crds.kubeconfig.read_text())
    server = urlsplit(config["clusters"][0]["cluster"]["server"])
    link = Link((server.hostname, server.port))
    config["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{link.port}"
    linked = tmp_path / "linked.kubeconfig"
    linked.write_text(yaml.safe_dump(config))
    api = crds.api_client()
    started = [start_replica(linked, namespace, "a", tmp_path)]
    try:
        leader = started[0]
        wait_until(lambda: lease_spec(api, namespace).get("holder") == leader.identity, 120, "the first one leads",
                   started)
        started.append(start_replica(crds.kubeconfig, namespace, "b", tmp_path))
        standby = started[1]
        campaigning(started)
        wait_until(lambda: standby.healthz()["holder"] == leader.identity, 10, "the standby sees the leader", started)

        link.cut()
        # Alive but unable to renew: it gives up at its renew deadline, before the standby may take the lease.
        assert leader.process.wait(timeout=30) == 1
        wait_until(lambda: lease_spec(api, namespace).get("holder") == standby.identity, 30, "the standby takes over",
                   started)
        assert "not renewed within the renew deadline" in leader.output()
        stopped, took_over = logged_at(leader.output(), "Lost the lease"), logged_at(standby.output(),
                                                                                    "Became the leader")
        margin = (took_over - stopped).total_seconds()
        print(f"\nPartitioned leader stopped {margin:.1f}s before the standby took the lease over")
        assert margin > 0
    finally:
        stop_all(started)
