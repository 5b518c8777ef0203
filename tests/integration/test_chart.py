"""The Helm chart (``charts/kaizen``): lint, rendering, least-privilege RBAC, and a server-side dry run.

``helm`` is the pinned binary that ``hack/build-binaries.sh`` builds; the dry run goes to the local API server of the
session fixture ``cluster`` (``tests/conftest.py``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tomllib
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from kaizen.dev.binaries import find_binary, versions

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART = REPO_ROOT / "charts" / "kaizen"
RELEASE = "kaizen"
RELEASE_NAMESPACE = "kaizen-system"

KAIZEN_PLURALS = ("improvementloops", "retrainjobs", "rollouts")
READ = {"get", "list", "watch"}
READ_WRITE = READ | {"create", "update", "patch", "delete"}
# Everything the operator may do, by (API group, resource): the chart must grant exactly this, and no more.
CLUSTER_GRANTS = {
    ("apiextensions.k8s.io", "customresourcedefinitions"): READ,
    ("", "namespaces"): READ,
}
NAMESPACED_GRANTS = {
    **{("kaizen.dev", plural): READ_WRITE for plural in KAIZEN_PLURALS},
    **{("kaizen.dev", f"{plural}/status"): {"get", "update", "patch"} for plural in KAIZEN_PLURALS},
    ("batch", "jobs"): READ | {"create", "delete", "patch"},
    ("", "configmaps"): READ_WRITE,
    ("", "pods"): READ,
    ("", "pods/log"): {"get"},
    ("apps", "deployments"): READ_WRITE,
    ("", "secrets"): {"get"},
    ("", "events"): {"create", "patch"},
    ("events.k8s.io", "events"): {"create", "patch"},
}


def helm(*args: str) -> str:
    result = subprocess.run([str(find_binary("helm")), *args], capture_output=True, text=True, check=False)
    assert result.returncode == 0, f"helm {' '.join(args)} failed:\n{result.stdout}{result.stderr}"
    return result.stdout


def kube_version_flag() -> str:
    # The chart declares a kubeVersion range; without this flag helm checks it against a built-in default version,
    # not against the Kubernetes version the project pins and tests with.
    return f"--kube-version={versions()['kubernetes']}"


def render(*values: str, namespace: str = RELEASE_NAMESPACE, include_crds: bool = False) -> list[dict]:
    """The chart's objects as ``helm template`` renders them, with ``--set`` values such as ``verbose=true``."""
    args = ["template", RELEASE, str(CHART), f"--namespace={namespace}", kube_version_flag()]
    args += [f"--set={value}" for value in values]
    if include_crds:
        args.append("--include-crds")
    return [document for document in yaml.safe_load_all(helm(*args)) if document]


def only(objects: list[dict], kind: str) -> dict:
    matching = [obj for obj in objects if obj["kind"] == kind]
    assert len(matching) == 1, f"expected one {kind}, got {len(matching)}"
    return matching[0]


def grants(rules: list[dict]) -> dict[tuple[str, str], set[str]]:
    """The verbs granted on each (API group, resource) by a list of RBAC rules."""
    granted: dict[tuple[str, str], set[str]] = {}
    for rule in rules:
        assert not rule.get("nonResourceURLs"), f"unexpected non-resource rule {rule}"
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                granted.setdefault((group, resource), set()).update(rule["verbs"])
    return granted


def operator_container(objects: list[dict]) -> dict:
    containers = only(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert [container["name"] for container in containers] == ["operator"]
    return containers[0]


def parse_operator_args(container: dict) -> argparse.Namespace:
    """Parses the container's command line with the real ``kaizen`` CLI, as the image's entrypoint would."""
    # Imported here, so that a broken CLI fails the tests that run it, not the collection of this module.
    from kaizen.cli import build_parser

    assert container["command"] == ["kaizen"]
    arguments = build_parser().parse_args(container["args"])
    assert arguments.command == "operator"
    return arguments


@pytest.mark.parametrize("strict", [False, True], ids=["lint", "lint-strict"])
@pytest.mark.parametrize("values", [[], ["watchNamespaces={team-a,team-b}", "verbose=true"]], ids=["all", "some"])
def test_chart_lints(strict: bool, values: list[str]) -> None:
    args = ["lint", str(CHART), kube_version_flag(), *(f"--set={value}" for value in values)]
    output = helm(*args, "--strict") if strict else helm(*args)
    assert "0 chart(s) failed" in output


def test_chart_versions_follow_the_package() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    package_version = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert (chart["name"], chart["apiVersion"]) == ("kaizen", "v2")
    assert chart["appVersion"] == package_version, "the image tag defaults to appVersion: keep it the package version"


def test_chart_crds_are_the_generated_crds() -> None:
    generated = {path.name: path.read_bytes() for path in (REPO_ROOT / "crds").glob("*.yaml")}
    in_chart = {path.name: path.read_bytes() for path in (CHART / "crds").glob("*.yaml")}
    assert generated, "crds/ has no generated CRDs"
    assert sorted(in_chart) == sorted(generated), "charts/kaizen/crds/ should hold exactly the files of crds/"
    stale = [name for name in generated if in_chart[name] != generated[name]]
    assert not stale, f"charts/kaizen/crds/ differs from crds/ in {stale}: regenerate the CRDs"


def test_default_render_watches_all_namespaces_with_a_cluster_role() -> None:
    objects = render()
    assert Counter(obj["kind"] for obj in objects) == {
        "ServiceAccount": 1,
        "ClusterRole": 1,
        "ClusterRoleBinding": 1,
        "Deployment": 1,
    }
    assert grants(only(objects, "ClusterRole")["rules"]) == CLUSTER_GRANTS | NAMESPACED_GRANTS
    binding = only(objects, "ClusterRoleBinding")
    service_account = only(objects, "ServiceAccount")["metadata"]
    assert binding["roleRef"]["name"] == only(objects, "ClusterRole")["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": service_account["name"], "namespace": RELEASE_NAMESPACE}
    ]
    container = operator_container(objects)
    parse_operator_args(container)
    assert "--all-namespaces" in container["args"]
    assert not [arg for arg in container["args"] if arg.startswith("--namespace")]


def test_watched_namespaces_get_roles_instead_of_a_cluster_role() -> None:
    objects = render("watchNamespaces={team-a,team-b}")
    roles = [obj for obj in objects if obj["kind"] == "Role"]
    bindings = [obj for obj in objects if obj["kind"] == "RoleBinding"]
    assert sorted(role["metadata"]["namespace"] for role in roles) == ["team-a", "team-b"]
    assert sorted(binding["metadata"]["namespace"] for binding in bindings) == ["team-a", "team-b"]
    for role in roles:
        assert grants(role["rules"]) == NAMESPACED_GRANTS
    service_account = only(objects, "ServiceAccount")["metadata"]["name"]
    for binding in bindings:
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": roles[0]["metadata"]["name"],
        }
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": service_account, "namespace": RELEASE_NAMESPACE}
        ]
    # kopf still reads CRDs and namespaces, which are cluster-scoped, but nothing namespaced cluster-wide.
    assert grants(only(objects, "ClusterRole")["rules"]) == CLUSTER_GRANTS
    container = operator_container(objects)
    parse_operator_args(container)
    assert "--all-namespaces" not in container["args"]
    assert [arg for arg in container["args"] if arg.startswith("--namespace")] == [
        "--namespace=team-a",
        "--namespace=team-b",
    ]


@pytest.mark.parametrize("values", [[], ["watchNamespaces={team-a}"]], ids=["all", "some"])
def test_rbac_has_no_wildcards_and_reads_secrets_only_by_name(values: list[str]) -> None:
    rules = [rule for obj in render(*values) if obj["kind"] in ("ClusterRole", "Role") for rule in obj["rules"]]
    for rule in rules:
        for key in ("apiGroups", "resources", "verbs"):
            assert not any("*" in item for item in rule.get(key, [])), f"wildcard in {rule}"
        if "secrets" in rule["resources"]:
            assert rule["verbs"] == ["get"], f"secrets are read by name only (the tokens a loop names): {rule}"


def test_deployment_is_restricted_and_probed() -> None:
    objects = render("verbose=true")
    pod = only(objects, "Deployment")["spec"]["template"]["spec"]
    container = operator_container(objects)
    assert pod["automountServiceAccountToken"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True
    security = container["securityContext"]
    assert security["runAsUser"] == 10001 and security["runAsNonRoot"] is True
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    # The read-only root filesystem leaves /tmp as the only writable place; it must be a volume.
    tmp_volume = next(mount["name"] for mount in container["volumeMounts"] if mount["mountPath"] == "/tmp")
    assert {"name": tmp_volume, "emptyDir": {"sizeLimit": "64Mi"}} in pod["volumes"]
    env = {variable["name"]: variable for variable in container["env"]}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert env["KAIZEN_GPU_RESOURCE"]["value"] == "nvidia.com/gpu"

    parse_operator_args(container)
    assert "--verbose" in container["args"]
    liveness = urlsplit(next(arg.partition("=")[2] for arg in container["args"] if arg.startswith("--liveness=")))
    probe = container["livenessProbe"]["httpGet"]
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert (liveness.path, liveness.port) == (probe["path"], ports[probe["port"]])


@pytest.mark.parametrize("watch_own_namespace", [False, True], ids=["all", "some"])
def test_rendered_chart_passes_a_server_side_dry_run(cluster, namespace: str, watch_own_namespace: bool) -> None:
    # Warn (enforcement only applies to pods) on anything the "restricted" Pod Security Standard forbids.
    cluster.kubectl(
        "label", "namespace", namespace,
        "pod-security.kubernetes.io/warn=restricted", "pod-security.kubernetes.io/warn-version=latest",
    )
    values = [f"watchNamespaces={{{namespace}}}"] if watch_own_namespace else []
    objects = render(*values, namespace=namespace, include_crds=True)
    crds = [obj for obj in objects if obj["kind"] == "CustomResourceDefinition"]
    rest = [obj for obj in objects if obj["kind"] != "CustomResourceDefinition"]
    assert sorted(crd["metadata"]["name"] for crd in crds) == sorted(
        path.name.removesuffix(".yaml") for path in (CHART / "crds").glob("*.yaml")
    )

    # The CRDs for real, as Helm installs them before the templates (they are cluster-wide and identical for every
    # test, so applying them again is harmless), then the templates as a dry run: kubectl fails on any rejection.
    cluster.kubectl(
        "apply", "--server-side", "--force-conflicts", "--field-manager=kaizen-chart-test", "-f", "-",
        input=as_list(crds),
    )
    cluster.kubectl(
        "wait", "--for=condition=Established", "--timeout=60s",
        *(f"customresourcedefinition/{crd['metadata']['name']}" for crd in crds),
    )
    applied = cluster.kubectl(
        "apply", "--server-side", "--dry-run=server", "--field-manager=kaizen-chart-test", "-f", "-",
        input=as_list(rest),
    )
    assert applied.stdout.count("serverside-applied (server dry run)") == len(rest), applied.stdout
    assert "PodSecurity" not in applied.stderr, applied.stderr

    # The check above is only worth something if the API server warns at all: a privileged variant must be flagged.
    privileged = render(*values, "securityContext.allowPrivilegeEscalation=true", namespace=namespace)
    flagged = cluster.kubectl(
        "apply", "--server-side", "--dry-run=server", "-f", "-", input=as_list([only(privileged, "Deployment")])
    )
    assert "would violate PodSecurity" in flagged.stderr, flagged.stderr


def as_list(objects: list[dict]) -> str:
    """Objects as one kubectl input: a v1 List, in JSON, so nothing is lost converting YAML back to text."""
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": objects})
