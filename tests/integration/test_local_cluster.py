"""The local control plane (``kaizen.dev``) is a real cluster: pinned versions, RBAC, controllers, a scheduler
that honours GPU capacity, kwok running pods, clean start and stop, and ``kaizen dev cluster up``/``down``."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import kubernetes.client
import pytest
from kubernetes.client.exceptions import ApiException

from kaizen.dev.binaries import find_binary, versions
from kaizen.dev.cluster import GPU_COUNT, GPU_NODE, ClusterAccess, ClusterStartError, LocalCluster
from kaizen.dev.processes import process_alive

pytestmark = pytest.mark.integration


@pytest.fixture
def local(cluster: ClusterAccess) -> LocalCluster:
    """The session cluster, for tests of the local control plane itself."""
    if not isinstance(cluster, LocalCluster):
        pytest.skip("tests the local control plane, not the cluster named by KAIZEN_TEST_KUBECONFIG")
    return cluster


@pytest.fixture
def core(cluster: ClusterAccess) -> Iterator[kubernetes.client.CoreV1Api]:
    with cluster.api_client() as client:
        yield kubernetes.client.CoreV1Api(client)


def wait_for(condition: str, resource: str, namespace: str, cluster: ClusterAccess, timeout: int = 60) -> None:
    cluster.kubectl("wait", f"--for={condition}", resource, f"--namespace={namespace}", f"--timeout={timeout}s",
                    timeout=timeout + 10)


def assert_all_gone(pids: list[int], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while any(process_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [pid for pid in pids if process_alive(pid)] == []


def test_every_component_runs_its_pinned_version(local: LocalCluster) -> None:
    kubernetes_version = versions()["kubernetes"]
    with local.api_client() as client:
        assert kubernetes.client.VersionApi(client).get_code().git_version == kubernetes_version
    client_version = json.loads(local.kubectl("version", "--client", "--output=json").stdout)["clientVersion"]
    assert client_version["gitVersion"] == kubernetes_version
    for name in ("kube-controller-manager", "kube-scheduler"):
        assert version_output(name).split() == ["Kubernetes", kubernetes_version]
    assert f"etcd Version: {versions()['etcd'].removeprefix('v')}" in version_output("etcd")
    assert version_output("kwok").startswith(f"kwok version {versions()['kwok']} ")


def version_output(binary: str) -> str:
    return subprocess.run([find_binary(binary), "--version"], capture_output=True, text=True, timeout=30).stdout


def test_rbac_is_enforced(local: LocalCluster, namespace: str, core: kubernetes.client.CoreV1Api) -> None:
    nobody = ClusterAccess(local.kubeconfig_for("kaizen-test-nobody"))
    with nobody.api_client() as client, pytest.raises(ApiException) as denied:
        kubernetes.client.CoreV1Api(client).list_namespaced_secret(namespace)
    assert denied.value.status == 403
    assert 'User "kaizen-test-nobody" cannot list resource "secrets"' in json.loads(denied.value.body)["message"]

    assert core.list_namespaced_secret(namespace).items == []  # The administrator may.


def test_a_deployment_gets_a_replicaset_and_running_pods(cluster: ClusterAccess, namespace: str) -> None:
    cluster.kubectl("apply", f"--namespace={namespace}", "--filename=-", input=textwrap.dedent("""
        apiVersion: apps/v1
        kind: Deployment
        metadata: {name: web}
        spec:
          replicas: 2
          selector: {matchLabels: {app: web}}
          template:
            metadata: {labels: {app: web}}
            spec:
              containers: [{name: web, image: registry.invalid/kaizen/web:1}]
    """))
    wait_for("condition=Available", "deployment/web", namespace, cluster)

    replicasets = json.loads(cluster.kubectl("get", "replicasets", f"--namespace={namespace}", "-o=json").stdout)
    assert [rs["metadata"]["ownerReferences"][0]["name"] for rs in replicasets["items"]] == ["web"]
    pods = json.loads(cluster.kubectl("get", "pods", f"--namespace={namespace}", "-o=json").stdout)["items"]
    assert [p["status"]["phase"] for p in pods] == ["Running", "Running"]


def test_a_gpu_pod_is_scheduled_onto_the_gpu_node_and_runs(
    local: LocalCluster, namespace: str, core: kubernetes.client.CoreV1Api
) -> None:
    def gpu_pod(name: str, gpus: int) -> str:
        return textwrap.dedent(f"""
            apiVersion: v1
            kind: Pod
            metadata: {{name: {name}}}
            spec:
              containers:
              - name: train
                image: registry.invalid/kaizen/trainer:1
                resources: {{limits: {{nvidia.com/gpu: {gpus}}}}}
        """)

    local.kubectl("apply", f"--namespace={namespace}", "--filename=-", input=gpu_pod("train", 1))
    local.kubectl("apply", f"--namespace={namespace}", "--filename=-", input=gpu_pod("too-big", GPU_COUNT + 1))
    wait_for("jsonpath={.status.phase}=Running", "pod/train", namespace, local)
    wait_for(
        "jsonpath={.status.conditions[?(@.type=='PodScheduled')].reason}=Unschedulable", "pod/too-big", namespace,
        local,
    )

    assert core.read_namespaced_pod("train", namespace).spec.node_name == GPU_NODE
    too_big = core.read_namespaced_pod("too-big", namespace)
    assert too_big.status.phase == "Pending"
    assert "Insufficient nvidia.com/gpu" in too_big.status.conditions[0].message


def test_a_second_cluster_starts_and_stops_without_strays(capsys: pytest.CaptureFixture[str]) -> None:
    with LocalCluster() as second:
        assert second.running()
        assert second.startup_seconds is not None and 0 < second.startup_seconds < second.startup_timeout
        assert second.kubectl("get", "--raw=/readyz").stdout == "ok"
        pids = [p.pid for p in second.processes]
        assert len(pids) == len(second.components) == 2
    assert_all_gone(pids, within=0)
    assert not second.workdir.exists()
    reported = f"Local control plane ready in {second.startup_seconds:.1f}s (etcd, kube-apiserver)"
    assert reported in capsys.readouterr().err


def test_a_component_that_fails_is_named_with_the_end_of_its_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assets = tmp_path / "assets"  # As setup-envtest lays them out, with an API server that refuses to start.
    assets.mkdir()
    (assets / "etcd").symlink_to(find_binary("etcd"))
    (assets / "kube-apiserver").write_text("#!/bin/sh\necho 'Error: unknown flag: --frobnicate' >&2\nexit 3\n")
    (assets / "kube-apiserver").chmod(0o755)
    monkeypatch.setenv("KUBEBUILDER_ASSETS", str(assets))

    cluster = LocalCluster(tmp_path / "cluster")
    with pytest.raises(ClusterStartError, match=r"kube-apiserver exited with status 3") as failed:
        cluster.start()
    assert "Error: unknown flag: --frobnicate" in str(failed.value)
    assert cluster.processes == []
    assert (tmp_path / "cluster" / "logs" / "etcd.log").exists()  # Kept for diagnosis.
    assert not (tmp_path / "cluster" / "state.json").exists()


def test_the_cluster_dies_with_the_python_process_that_started_it(tmp_path: Path) -> None:
    pids_file = tmp_path / "pids.json"
    starter = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import json, pathlib, time
        from kaizen.dev.cluster import LocalCluster
        cluster = LocalCluster({str(tmp_path / 'cluster')!r}).start()
        pathlib.Path({str(pids_file)!r}).write_text(json.dumps([p.pid for p in cluster.processes]))
        time.sleep(120)
    """)], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 90
        while not pids_file.exists():
            assert starter.poll() is None, starter.communicate()[1]
            assert time.monotonic() < deadline, "the cluster did not start within 90s"
            time.sleep(0.1)
        pids = json.loads(pids_file.read_text())
        assert all(process_alive(pid) for pid in pids)
    finally:
        starter.kill()  # SIGKILL: no Python code of the starter runs any more, no stop(), no atexit.
        starter.communicate(timeout=30)
    assert_all_gone(pids)


def test_dev_cluster_up_and_down(tmp_path: Path) -> None:
    workdir = tmp_path / "cluster"

    def kaizen(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "kaizen", "dev", "cluster", *args, f"--dir={workdir}"],
            capture_output=True, text=True, timeout=120,
        )

    up = kaizen("up")
    try:
        assert up.returncode == 0, up.stderr
        kubeconfig = workdir / "kubeconfig"
        assert f"export KUBECONFIG={kubeconfig}" in up.stdout.splitlines()
        assert "Local control plane ready in " in up.stderr
        pids = [p["pid"] for p in json.loads((workdir / "state.json").read_text())["processes"]]
        assert pids and all(process_alive(pid) for pid in pids)  # They outlived `up`.

        namespaces = ClusterAccess(kubeconfig).kubectl("get", "namespaces", "-o=name").stdout.split()
        assert "namespace/default" in namespaces

        again = kaizen("up")
        assert again.returncode == 0, again.stderr
        assert "already running" in again.stdout
    finally:
        down = kaizen("down")
    assert down.returncode == 0, down.stderr
    assert_all_gone(pids, within=0)
    assert not workdir.exists()
