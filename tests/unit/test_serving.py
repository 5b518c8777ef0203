"""The dev node agent's serving pods, without a cluster: addresses, the environment a pod's container gets, readiness
probes, restarts with back-off, and the status it reports, as a kubelet would."""

from __future__ import annotations

import http.server
import ipaddress
import sys
import threading
import time
from pathlib import Path

import pytest

from kaizen.dev import serving
from kaizen.dev.serving import (
    ConfigError,
    Container,
    Probe,
    Readiness,
    ServingPods,
    allocate_ip,
    backoff,
    container_env,
    container_port,
    field_value,
    local_address,
    local_path,
    pod_status,
    restarts_after_exit,
)

POD = {
    "metadata": {"name": "bot-7d9-abcde", "namespace": "demo", "uid": "u-1",
                 "labels": {"app": "bot", "kaizen.dev/track": "canary", "kaizen.dev/model-version": "v2"},
                 "annotations": {"note": "hi"}},
    "spec": {"nodeName": "kaizen-gpu-0", "serviceAccountName": "default",
             "containers": [{"name": "server", "image": "ghcr.io/kaizen-dev/kaizen-server:0.1"}]},
    "status": {"podIP": "10.245.0.7", "podIPs": [{"ip": "10.245.0.7"}], "hostIP": "127.0.0.1"},
}


# --- addresses -------------------------------------------------------------------------------------------------


def test_pod_ips_are_allocated_in_order_skipping_taken_and_non_host_addresses():
    assert allocate_ip(set()) == "10.245.0.1"
    assert allocate_ip({"10.245.0.1", "10.245.0.2"}) == "10.245.0.3"
    # Moves on from the last one handed out, so a released address is not reused at once.
    assert allocate_ip(set(), after="10.245.0.3") == "10.245.0.4"
    assert allocate_ip(set(), after="10.245.0.254") == "10.245.1.1"  # neither .255 nor .0
    assert allocate_ip(set(), after="10.245.255.254") == "10.245.0.1"  # wraps around


def test_allocation_fails_clearly_when_every_address_is_taken():
    everything = {str(ip) for ip in serving.POD_CIDR if int(ip) & 0xFF not in (0, 0xFF)}
    with pytest.raises(RuntimeError, match="every address of 10.245.0.0/16 is taken"):
        allocate_ip(everything)


def test_a_pod_ip_listens_on_the_loopback_address_with_the_same_host_bytes():
    assert local_address("10.245.0.7") == "127.245.0.7"
    assert local_address("10.245.3.200") == "127.245.3.200"
    # kwok's fake pod IPs, and anything that is not an IPv4 address, are not served here.
    assert local_address("10.244.0.7") is None
    assert local_address("fd00::1") is None
    assert local_address("") is None


# --- environment -----------------------------------------------------------------------------------------------


def test_downward_api_fields():
    assert field_value(POD, "metadata.name") == "bot-7d9-abcde"
    assert field_value(POD, "metadata.namespace") == "demo"
    assert field_value(POD, "metadata.uid") == "u-1"
    assert field_value(POD, "metadata.labels['kaizen.dev/model-version']") == "v2"
    assert field_value(POD, "metadata.labels['missing']") == ""
    assert field_value(POD, "metadata.annotations['note']") == "hi"
    assert field_value(POD, "spec.nodeName") == "kaizen-gpu-0"
    assert field_value(POD, "status.podIP") == "10.245.0.7"
    assert field_value(POD, "status.podIPs") == "10.245.0.7"
    assert field_value(POD, "status.hostIP") == "127.0.0.1"
    with pytest.raises(ConfigError, match="unsupported fieldRef fieldPath 'metadata.labels'"):
        field_value(POD, "metadata.labels")


def lookup(kind, name):
    return {("ConfigMap", "settings"): {"MODE": "fast", "LEVEL": "3"},
            ("Secret", "collector"): {"token": "s3cret"}}.get((kind, name))


def test_the_environment_resolves_values_references_and_the_downward_api_in_order():
    container = {
        "envFrom": [{"configMapRef": {"name": "settings"}, "prefix": "APP_"},
                    {"secretRef": {"name": "absent", "optional": True}}],
        "env": [
            {"name": "MODEL_URI", "value": "/models/bot/v2/model"},
            {"name": "APP_MODE", "value": "slow"},  # env overrides envFrom
            {"name": "KAIZEN_MODEL_VERSION",
             "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['kaizen.dev/model-version']"}}},
            {"name": "KAIZEN_TRACK", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['kaizen.dev/track']"}}},
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "LABEL", "value": "$(POD_NAME)@$(KAIZEN_TRACK) costs $$(NOT) $(UNKNOWN)"},
            {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "collector", "key": "token"}}},
            {"name": "LEVEL", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "LEVEL"}}},
            {"name": "OPTIONAL", "valueFrom": {"secretKeyRef": {"name": "collector", "key": "x", "optional": True}}},
        ],
    }
    assert container_env(POD, container, lookup) == {
        "APP_MODE": "slow", "APP_LEVEL": "3", "MODEL_URI": "/models/bot/v2/model", "KAIZEN_MODEL_VERSION": "v2",
        "KAIZEN_TRACK": "canary", "POD_NAME": "bot-7d9-abcde",
        "LABEL": "bot-7d9-abcde@canary costs $(NOT) $(UNKNOWN)", "TOKEN": "s3cret", "LEVEL": "3",
    }


@pytest.mark.parametrize("env, message", [
    ([{"name": "T", "valueFrom": {"secretKeyRef": {"name": "absent", "key": "token"}}}],
     'secret "absent" not found in namespace demo'),
    ([{"name": "T", "valueFrom": {"secretKeyRef": {"name": "collector", "key": "other"}}}],
     "couldn't find key other in Secret demo/collector"),
    ([{"name": "T", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "other"}}}],
     "couldn't find key other in ConfigMap demo/settings"),
    ([{"name": "T", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}}],
     "env T: the dev node agent resolves valueFrom.fieldRef, configMapKeyRef and secretKeyRef, not resourceFieldRef"),
])
def test_an_environment_that_cannot_be_made_says_why(env, message):
    with pytest.raises(ConfigError) as error:
        container_env(POD, {"env": env}, lookup)
    assert str(error.value) == message


def test_file_values_map_to_the_nodes_storage_and_claims():
    def host(path):
        return "/node" + path

    def claim(name):
        return Path("/claims/demo") / name

    assert local_path("/models/bot/v2/model", host, claim) == "/node/models/bot/v2/model"
    assert local_path("file:///models/bot/v2", host, claim) == "file:///node/models/bot/v2"
    assert local_path("pvc://models/bot/v2", host, claim) == "/claims/demo/models/bot/v2"
    for value in ("http://collector:8090", "v2", "s3://bucket/model", ""):
        assert local_path(value, host, claim) == value


def test_a_containers_threads_follow_its_cpu_request():
    def requesting(cpu):
        return {"resources": {"requests": {"cpu": cpu}}}

    assert [serving.threads(requesting(cpu)) for cpu in ("500m", "1", "1500m", "4", 2)] == [1, 1, 2, 4, 2]
    assert serving.threads({}) == 1


def test_the_serving_port_is_the_one_named_http_else_the_first():
    assert container_port({"ports": [{"containerPort": 9090, "name": "metrics"},
                                     {"containerPort": 8080, "name": "http"}]})["containerPort"] == 8080
    assert container_port({"ports": [{"containerPort": 9000}, {"containerPort": 9001}]})["containerPort"] == 9000
    assert container_port({}) is None


# --- probes ----------------------------------------------------------------------------------------------------


def test_probes_from_the_spec_with_the_kubelets_defaults_and_named_ports():
    container = {"ports": [{"containerPort": 8080, "name": "http"}]}
    assert Probe.of({"httpGet": {"path": "/health", "port": "http"}}, container) == Probe(
        port=8080, path="/health", initial_delay=0, period=10, timeout=1, success_threshold=1, failure_threshold=3)
    assert Probe.of({"tcpSocket": {"port": 8080}, "periodSeconds": 2, "failureThreshold": 1,
                     "initialDelaySeconds": 5}, container) == Probe(port=8080, path=None, initial_delay=5, period=2,
                                                                    failure_threshold=1)
    assert Probe.of(None, container) is None
    with pytest.raises(ConfigError, match="names port 'web', which the container does not declare"):
        Probe.of({"httpGet": {"path": "/", "port": "web"}}, container)
    with pytest.raises(ConfigError, match="runs httpGet and tcpSocket probes, not exec"):
        Probe.of({"exec": {"command": ["true"]}}, container)


def test_readiness_follows_the_probe_thresholds():
    probe = Probe(port=1, path="/", initial_delay=3, period=1, success_threshold=2, failure_threshold=2)
    readiness = Readiness(probe, started=100.0)
    assert not readiness.ready and not readiness.due(102.9) and readiness.due(103.0)
    readiness.record(True, 103.0)
    assert not readiness.ready and not readiness.due(103.5) and readiness.due(104.0)  # one success of two
    readiness.record(True, 104.0)
    assert readiness.ready
    readiness.record(False, 105.0)
    assert readiness.ready  # one failure of two
    readiness.record(True, 106.0)
    readiness.record(False, 107.0)
    assert readiness.ready  # failures must be in a row
    readiness.record(False, 108.0)
    assert not readiness.ready
    readiness.record(True, 109.0)
    assert not readiness.ready  # and successes too


def test_without_a_probe_a_running_container_is_ready():
    readiness = Readiness(None, started=0.0)
    assert readiness.ready and not readiness.due(1e9)


def test_a_probe_checks_the_http_status_and_tcp_connections():
    statuses = {"/ok": 200, "/moved": 302, "/down": 503}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(statuses[self.path])
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *_):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    try:
        assert Probe(port=port, path="/ok").run("127.0.0.1")
        assert Probe(port=port, path="/moved").run("127.0.0.1")
        assert not Probe(port=port, path="/down").run("127.0.0.1")
        assert Probe(port=port).run("127.0.0.1")  # TCP
    finally:
        server.shutdown()
        server.server_close()
    assert not Probe(port=port, path="/ok").run("127.0.0.1")  # nothing listens any more
    assert not Probe(port=port).run("127.0.0.1")


# --- restarts --------------------------------------------------------------------------------------------------


def test_restart_policy_and_the_crash_loop_back_off():
    assert restarts_after_exit("Always", 0) and restarts_after_exit("Always", 1)
    assert restarts_after_exit("OnFailure", 1) and not restarts_after_exit("OnFailure", 0)
    assert not restarts_after_exit("Never", 1)
    assert [backoff(n) for n in range(1, 9)] == [0, 10, 20, 40, 80, 160, 300, 300]
    assert serving.exit_code_of(-15) == 143 and serving.exit_code_of(2) == 2 and serving.exit_code_of(None) == 0


# --- status ----------------------------------------------------------------------------------------------------

T0, T1 = "2026-12-01T10:00:00Z", "2026-12-01T10:00:05Z"


def conditions_of(status):
    return {c["type"]: (c["status"], c.get("reason"), c["lastTransitionTime"]) for c in status["conditions"]}


def test_a_running_ready_pod_reports_its_ip_and_conditions():
    container = Container("server", "img:1", running_since=T0, container_id="local://42", waiting=None, ready=True)
    scheduled = {"type": "PodScheduled", "status": "True", "lastTransitionTime": "2026-12-01T09:59:59Z"}
    previous = {"conditions": [scheduled]}
    status = pod_status(previous, container, pod_ip="10.245.0.7", host_ip="127.0.0.1", start_time=T0, now=T0)
    assert status["phase"] == "Running"
    assert (status["podIP"], status["podIPs"], status["hostIP"]) == ("10.245.0.7", [{"ip": "10.245.0.7"}], "127.0.0.1")
    assert conditions_of(status) == {
        "PodReadyToStartContainers": ("True", None, T0), "Initialized": ("True", None, T0),
        "Ready": ("True", None, T0), "ContainersReady": ("True", None, T0),
        "PodScheduled": ("True", None, "2026-12-01T09:59:59Z")}
    assert status["containerStatuses"] == [{
        "name": "server", "image": "img:1", "imageID": "", "containerID": "local://42", "ready": True,
        "restartCount": 0, "started": True, "state": {"running": {"startedAt": T0}}, "lastState": {}}]


def test_conditions_keep_their_transition_time_until_they_change():
    container = Container("server", "img:1", running_since=T0, waiting=None, ready=False)
    unready = pod_status({}, container, pod_ip="10.245.0.7", host_ip="127.0.0.1", start_time=T0, now=T0)
    assert conditions_of(unready)["Ready"] == ("False", "ContainersNotReady", T0)
    assert [c.get("message") for c in unready["conditions"] if c["type"] == "Ready"] == [
        "containers with unready status: [server]"]
    # The same state later: the same status, so nothing to patch.
    assert pod_status(unready, container, pod_ip="10.245.0.7", host_ip="127.0.0.1", start_time=T0,
                      now=T1) == unready
    container.ready = True
    ready = pod_status(unready, container, pod_ip="10.245.0.7", host_ip="127.0.0.1", start_time=T0, now=T1)
    assert conditions_of(ready)["Ready"] == ("True", None, T1)
    assert conditions_of(ready)["Initialized"] == ("True", None, T0)


def test_a_crash_looping_container_waits_with_its_last_termination():
    last = {"exitCode": 1, "reason": "Error", "startedAt": T0, "finishedAt": T1}
    container = Container("server", "img:1", restart_count=2, last_terminated=last,
                          waiting=("CrashLoopBackOff", "back-off 20s restarting failed container=server pod=p"))
    status = pod_status({}, container, pod_ip="10.245.0.7", host_ip="127.0.0.1", start_time=T0, now=T1)
    assert status["phase"] == "Running"  # as the kubelet keeps it between restarts
    [entry] = status["containerStatuses"]
    assert entry["state"] == {"waiting": {"reason": "CrashLoopBackOff",
                                          "message": "back-off 20s restarting failed container=server pod=p"}}
    assert entry["lastState"] == {"terminated": last}
    assert (entry["ready"], entry["started"], entry["restartCount"]) == (False, False, 2)
    assert conditions_of(status)["Ready"][:2] == ("False", "ContainersNotReady")


def test_a_container_that_is_not_restarted_ends_the_pod():
    for code, phase in ((0, "Succeeded"), (3, "Failed")):
        container = Container("server", "img:1", waiting=None,
                              terminated={"exitCode": code, "reason": "Error", "startedAt": T0, "finishedAt": T1})
        status = pod_status({}, container, pod_ip="10.245.0.7", host_ip="127.0.0.1", start_time=T0, now=T1)
        assert status["phase"] == phase
        assert conditions_of(status)["Ready"][:2] == ("False", "PodCompleted")


def test_a_container_that_cannot_be_configured_keeps_the_pod_pending():
    container = Container("server", "img:1", waiting=("CreateContainerConfigError", 'secret "x" not found'))
    status = pod_status({}, container, pod_ip="10.245.0.7", host_ip="127.0.0.1", start_time=T0, now=T0)
    assert status["phase"] == "Pending"
    assert status["containerStatuses"][0]["state"] == {
        "waiting": {"reason": "CreateContainerConfigError", "message": 'secret "x" not found'}}


# --- the runtime, with real processes and a driven clock ---------------------------------------------------------


class FakeFilesystem:
    def host(self, path):
        return path


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def runtime(tmp_path, code, clock, policy="Always"):
    reported = []

    def patch(pod, status):
        reported.append(status)
        return True

    pods = ServingPods(tmp_path, host_ip="127.0.0.1", base_env={"PATH": "/usr/bin:/bin"},
                       entry=lambda image: [sys.executable, "-c", f"import sys; sys.exit({code})"],
                       volumes=lambda pod, container, directory: FakeFilesystem(),
                       claim=lambda namespace, name: tmp_path / name, lookup=lambda namespace: lookup,
                       patch_status=patch, targets_file=tmp_path / "targets.json", clock=clock)
    pod = {"metadata": {**POD["metadata"]}, "spec": {**POD["spec"], "restartPolicy": policy}, "status": {}}
    return pods, pod, reported


def wait_exited(pods):
    deadline = time.monotonic() + 20
    while any(p.process is not None and p.process.alive() for p in pods.pods.values()):
        assert time.monotonic() < deadline, "the container did not exit"
        time.sleep(0.02)


def test_a_crashing_container_is_restarted_with_back_off_and_reported_as_crash_looping(tmp_path):
    clock = Clock()
    pods, pod, reported = runtime(tmp_path, 3, clock)
    try:
        pods.sync([pod])
        # A free pod IP of the range (each agent starts at its own random point of it).
        assert reported[-1]["phase"] == "Running" and ipaddress.IPv4Address(reported[-1]["podIP"]) in serving.POD_CIDR
        wait_exited(pods)
        pods.sync([pod])  # first exit: restarted at once
        entry = reported[-1]["containerStatuses"][0]
        assert entry["restartCount"] == 1 and "running" in entry["state"]
        assert entry["lastState"]["terminated"]["exitCode"] == 3
        wait_exited(pods)
        clock.now += 1
        pods.sync([pod])  # second exit within the back-off: waits 10 s
        entry = reported[-1]["containerStatuses"][0]
        assert entry["restartCount"] == 2 and entry["state"]["waiting"]["reason"] == "CrashLoopBackOff"
        assert entry["state"]["waiting"]["message"].startswith("back-off 10s restarting failed container=server")
        count = len(reported)
        clock.now += 9
        pods.sync([pod])
        assert len(reported) == count  # still backing off, nothing changed: no patch
        clock.now += 1
        pods.sync([pod])
        assert "running" in reported[-1]["containerStatuses"][0]["state"]
        assert reported[-1]["containerStatuses"][0]["restartCount"] == 2
    finally:
        pods.stop()


def test_a_container_of_a_never_restarted_pod_ends_it_and_frees_its_address(tmp_path):
    clock = Clock()
    pods, pod, reported = runtime(tmp_path, 0, clock, policy="Never")
    try:
        pods.sync([pod])
        wait_exited(pods)
        pods.sync([pod])
        assert reported[-1]["phase"] == "Succeeded"
        assert reported[-1]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 0
        assert pods.taken() == set() and pods.pods == {}
        pods.sync([pod])  # a finished pod is not started again
        assert pods.pods == {}
    finally:
        pods.stop()


def test_a_missing_secret_keeps_the_container_waiting_until_it_appears(tmp_path):
    clock = Clock()
    pods, pod, reported = runtime(tmp_path, 0, clock)
    pod["spec"] = {**pod["spec"], "containers": [{
        **POD["spec"]["containers"][0],
        "env": [{"name": "T", "valueFrom": {"secretKeyRef": {"name": "later", "key": "token"}}}]}]}
    try:
        pods.sync([pod])
        assert reported[-1]["phase"] == "Pending"
        assert reported[-1]["containerStatuses"][0]["state"]["waiting"] == {
            "reason": "CreateContainerConfigError", "message": 'secret "later" not found in namespace demo'}
        assert next(iter(pods.pods.values())).process is None
    finally:
        pods.stop()
