"""The Helm chart (``charts/kaizen``): lint, rendering, least-privilege RBAC, the collector, and a server-side dry run.

``helm`` is the pinned binary that ``hack/build-binaries.sh`` builds; the dry run and the install that checks
generated tokens survive an upgrade go to the local API server of the session fixture ``cluster``
(``tests/conftest.py``).
"""

from __future__ import annotations

import argparse
import base64
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
    ("", "services"): {"get", "create"},
    ("trainer.kubeflow.org", "trainjobs"): {"get", "create"},
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


def helm_error(*args: str) -> str:
    """The error of a helm command that must fail."""
    result = subprocess.run([str(find_binary("helm")), *args], capture_output=True, text=True, check=False)
    assert result.returncode != 0, f"helm {' '.join(args)} succeeded:\n{result.stdout}"
    return result.stderr


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


def component(objects: list[dict], kind: str, name: str) -> dict:
    """The one object of this kind that belongs to the component (operator or collector)."""
    matching = [
        obj for obj in objects
        if obj["kind"] == kind and obj["metadata"]["labels"]["app.kubernetes.io/component"] == name
    ]
    assert len(matching) == 1, f"expected one {name} {kind}, got {len(matching)}"
    return matching[0]


def operator_container(objects: list[dict]) -> dict:
    containers = component(objects, "Deployment", "operator")["spec"]["template"]["spec"]["containers"]
    assert [container["name"] for container in containers] == ["operator"]
    return containers[0]


def collector_container(objects: list[dict]) -> dict:
    containers = component(objects, "Deployment", "collector")["spec"]["template"]["spec"]["containers"]
    assert [container["name"] for container in containers] == ["collector"]
    return containers[0]


def parse_args(container: dict, command: str) -> argparse.Namespace:
    """Parses the container's command line with the real ``kaizen`` CLI, as the image's entrypoint would."""
    # Imported here, so that a broken CLI fails the tests that run it, not the collection of this module.
    from kaizen.cli import build_parser

    assert container["command"] == ["kaizen"]
    arguments = build_parser().parse_args(container["args"])
    assert arguments.command == command
    return arguments


def parse_operator_args(container: dict) -> argparse.Namespace:
    return parse_args(container, "operator")


def leader_election(objects: list[dict], kind: str) -> dict:
    """The Role or RoleBinding of the operator's leader election (in the release namespace)."""
    return only([obj for obj in objects if obj["metadata"]["name"].endswith("-leader-election")], kind)


def secret_data(secret: dict) -> dict[str, str]:
    return {key: base64.b64decode(value).decode() for key, value in secret["data"].items()}


def secrets_named(objects: list[dict], name: str) -> list[dict]:
    return [obj for obj in objects if obj["kind"] == "Secret" and obj["metadata"]["name"] == name]


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return selector.items() <= labels.items()


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
        # Leader election: the Lease's Role and its binding; and the operator's PodDisruptionBudget.
        "Role": 1,
        "RoleBinding": 1,
        "PodDisruptionBudget": 1,
        "Deployment": 2,
        # The collector: its Service, its SQLite volume, its tokens file and the operator's token; and the operator's
        # metrics Service.
        "Service": 2,
        "PersistentVolumeClaim": 1,
        "Secret": 2,
        # The Grafana dashboard.
        "ConfigMap": 1,
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
    roles = [obj for obj in objects if obj["kind"] == "Role" and obj != leader_election(objects, "Role")]
    bindings = [obj for obj in objects
                if obj["kind"] == "RoleBinding" and obj != leader_election(objects, "RoleBinding")]
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
    pod = component(objects, "Deployment", "operator")["spec"]["template"]["spec"]
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


@pytest.mark.parametrize("values", [[], ["watchNamespaces={team-a}"]], ids=["all", "some"])
def test_replicas_elect_a_leader_on_a_lease_only_the_operator_may_renew(values: list[str]) -> None:
    from kaizen.cli.operator_cmd import build_elector

    objects = render(*values)
    deployment = component(objects, "Deployment", "operator")
    assert deployment["spec"]["replicas"] == 2
    # Every new pod starts (as a standby) before an old one stops: the stopped leader hands the lease over at once.
    assert deployment["spec"]["strategy"] == {"type": "RollingUpdate",
                                              "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    container = operator_container(objects)
    arguments = parse_operator_args(container)
    assert arguments.leader_elect
    # The replica's name and the Lease's namespace come from the pod (downward API).
    env = {variable["name"]: variable["valueFrom"]["fieldRef"]["fieldPath"]
           for variable in container["env"] if "valueFrom" in variable}
    assert (env["POD_NAME"], env["POD_NAMESPACE"]) == ("metadata.name", "metadata.namespace")
    assert arguments.leader_elect_identity is None and arguments.leader_elect_resource_namespace is None
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("POD_NAME", "kaizen-7d9f-abcde")
        patch.setenv("POD_NAMESPACE", RELEASE_NAMESPACE)
        elector = build_elector(arguments)  # also checks that the chart's durations are a valid combination
    assert (elector.identity, elector.namespace) == ("kaizen-7d9f-abcde", RELEASE_NAMESPACE)
    timing = elector.timing
    assert (timing.lease_duration, timing.renew_deadline, timing.retry_period) == (8, 5, 2)

    # RBAC: create a Lease in the release namespace, read and update only this one; nothing else, nowhere else.
    role, binding = leader_election(objects, "Role"), leader_election(objects, "RoleBinding")
    assert role["metadata"]["namespace"] == binding["metadata"]["namespace"] == RELEASE_NAMESPACE
    assert [(rule.get("resourceNames", []), rule["verbs"]) for rule in role["rules"]
            if rule["apiGroups"] == ["coordination.k8s.io"] and rule["resources"] == ["leases"]] == [
        ([], ["create"]), ([elector.name], ["get", "update"])]
    assert len(role["rules"]) == 2
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": role["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": only(objects, "ServiceAccount")["metadata"][
        "name"], "namespace": RELEASE_NAMESPACE}]
    other_rules = [rule for obj in objects if obj["kind"] in ("ClusterRole", "Role") and obj is not role
                   for rule in obj["rules"]]
    assert not [rule for rule in other_rules if "coordination.k8s.io" in rule["apiGroups"]]

    # Preferably on different nodes, unless the user set affinity.
    anti = deployment["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    term = anti["preferredDuringSchedulingIgnoredDuringExecution"][0]["podAffinityTerm"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert selects(term["labelSelector"]["matchLabels"], deployment["spec"]["template"]["metadata"]["labels"])
    custom = render(*values, "affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution"
                    ".nodeSelectorTerms[0].matchExpressions[0].key=pool",
                    "affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution"
                    ".nodeSelectorTerms[0].matchExpressions[0].operator=Exists")
    assert list(component(custom, "Deployment", "operator")["spec"]["template"]["spec"]["affinity"]) == [
        "nodeAffinity"]


def test_leader_election_rbac_lets_the_service_account_hold_its_lease_and_no_other(cluster, namespace: str) -> None:
    import kubernetes.client
    import kubernetes.config

    from kaizen.k8s.errors import ApiError
    from kaizen.k8s.lease import LeaderElector
    from kaizen.logic.leader import Timing

    objects = render(namespace=namespace)
    rbac = [obj for obj in objects if obj["kind"] == "ServiceAccount"]
    rbac += [leader_election(objects, "Role"), leader_election(objects, "RoleBinding")]
    cluster.kubectl("apply", "-f", "-", input=as_list(rbac))
    account = rbac[0]["metadata"]["name"]
    token = cluster.kubectl("create", "token", account, f"--namespace={namespace}", "--duration=10m").stdout.strip()
    # The operator's own credentials, as its pod has them: the ServiceAccount's token, nothing of the admin's.
    config = kubernetes.client.Configuration()
    kubernetes.config.load_kube_config(config_file=str(cluster.kubeconfig), client_configuration=config)
    config.cert_file = config.key_file = None
    config.api_key = {"authorization": f"Bearer {token}"}
    arguments = parse_operator_args(operator_container(objects))
    timing = Timing(arguments.leader_elect_lease_duration, arguments.leader_elect_renew_deadline,
                    arguments.leader_elect_retry_period)

    def elector(name: str) -> LeaderElector:
        return LeaderElector(name, namespace, "kaizen-0", timing, api=kubernetes.client.ApiClient(config))

    mine = elector(arguments.leader_elect_resource_name)
    assert mine.try_acquire_or_renew() and mine.try_acquire_or_renew()  # create, then get and update
    mine.stop(release=True)
    lease = json.loads(cluster.kubectl("get", "lease", mine.name, f"--namespace={namespace}", "-o", "json").stdout)
    assert lease["spec"]["leaseDurationSeconds"] == 1 and "holderIdentity" not in lease["spec"]
    # Any other Lease (another controller's) cannot even be read, let alone taken over.
    with pytest.raises(ApiError) as refused:
        elector("someone-elses").try_acquire_or_renew()
    assert refused.value.forbidden


def test_pod_disruption_budget_keeps_a_standby_through_drains_only_with_several_replicas() -> None:
    objects = render()
    budget = only(objects, "PodDisruptionBudget")
    assert budget["apiVersion"] == "policy/v1"
    assert budget["metadata"]["namespace"] == RELEASE_NAMESPACE
    assert budget["spec"]["minAvailable"] == 1
    operator = component(objects, "Deployment", "operator")
    collector = component(objects, "Deployment", "collector")
    assert budget["spec"]["selector"]["matchLabels"] == operator["spec"]["selector"]["matchLabels"]
    assert selects(budget["spec"]["selector"]["matchLabels"], operator["spec"]["template"]["metadata"]["labels"])
    assert not selects(budget["spec"]["selector"]["matchLabels"], collector["spec"]["template"]["metadata"]["labels"])
    assert only(render("replicaCount=3"), "PodDisruptionBudget")["spec"]["minAvailable"] == 1
    # One replica: minAvailable 1 of 1 would block every drain of its node.
    for replicas in ("1", "0"):
        objects = render(f"replicaCount={replicas}")
        assert not [obj for obj in objects if obj["kind"] == "PodDisruptionBudget"]
        assert component(objects, "Deployment", "operator")["spec"]["replicas"] == int(replicas)


def test_collector_runs_from_the_operator_image_probed_with_its_tokens_mounted() -> None:
    objects = render()
    deployment = component(objects, "Deployment", "collector")
    pod = deployment["spec"]["template"]["spec"]
    container = collector_container(objects)
    operator = operator_container(objects)
    assert container["image"] == operator["image"]
    assert container["securityContext"] == operator["securityContext"]
    assert pod["securityContext"] == component(objects, "Deployment", "operator")["spec"]["template"]["spec"][
        "securityContext"]
    assert pod["automountServiceAccountToken"] is False
    assert container["resources"]["requests"] and container["resources"]["limits"]

    arguments = parse_args(container, "collector")
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"http": arguments.port} and arguments.port == 8090
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        assert container[probe]["httpGet"] == {"path": path, "port": "http"}

    # The tokens file the collector reads is the generated Secret's "tokens" key, mounted as a directory (a subPath
    # mount would never see a rotated Secret).
    mounts = {mount["name"]: mount for mount in container["volumeMounts"]}
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    tokens_path = Path(arguments.tokens_file)
    tokens_mount = next(mount for mount in mounts.values() if mount["mountPath"] == str(tokens_path.parent))
    assert tokens_mount["readOnly"] is True and "subPath" not in tokens_mount
    tokens_volume = volumes[tokens_mount["name"]]["secret"]
    assert tokens_volume["items"] == [{"key": "tokens", "path": tokens_path.name}]
    assert secrets_named(objects, tokens_volume["secretName"])

    # SQLite, on the chart's claim: one replica, replaced rather than rolled.
    database = Path(arguments.db.removeprefix("sqlite:///"))
    assert arguments.db.startswith("sqlite:////")
    data_mount = next(mount for mount in mounts.values() if mount["mountPath"] == str(database.parent))
    claim = only(objects, "PersistentVolumeClaim")
    assert volumes[data_mount["name"]]["persistentVolumeClaim"] == {"claimName": claim["metadata"]["name"]}
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert (deployment["spec"]["replicas"], deployment["spec"]["strategy"]) == (1, {"type": "Recreate"})
    tmp_volume = next(mount["name"] for mount in container["volumeMounts"] if mount["mountPath"] == "/tmp")
    assert "emptyDir" in volumes[tmp_volume]

    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert (annotations["prometheus.io/port"], annotations["prometheus.io/path"]) == ("8090", "/metrics")


def test_collector_options_reach_its_command_line() -> None:
    default = parse_args(collector_container(render()), "collector")
    assert (default.cors_origin, default.no_raw_text, default.retention_days) == ([], False, None)
    assert (default.max_body_bytes, default.verbose) == (1 << 20, False)
    objects = render(
        "collector.corsOrigins={https://app.example.com,https://admin.example.com}", "collector.storeRawText=false",
        "collector.retentionDays=7", "collector.maxBodyBytes=4194304", "collector.verbose=true",
    )
    arguments = parse_args(collector_container(objects), "collector")
    assert arguments.cors_origin == ["https://app.example.com", "https://admin.example.com"]
    assert (arguments.no_raw_text, arguments.retention_days, arguments.verbose) == (True, 7, True)
    assert arguments.max_body_bytes == 4194304


def test_collector_service_selects_only_the_collector_pods() -> None:
    objects = render()
    service = component(objects, "Service", "collector")
    assert service["spec"]["ports"] == [{"name": "http", "port": 8090, "targetPort": "http", "protocol": "TCP"}]
    collector = component(objects, "Deployment", "collector")
    operator = component(objects, "Deployment", "operator")
    collector_pods = collector["spec"]["template"]["metadata"]["labels"]
    operator_pods = operator["spec"]["template"]["metadata"]["labels"]
    assert selects(service["spec"]["selector"], collector_pods)
    assert not selects(service["spec"]["selector"], operator_pods)
    # Overlapping Deployment selectors would make each Deployment count the other's pods as its own.
    assert selects(collector["spec"]["selector"]["matchLabels"], collector_pods)
    assert not selects(collector["spec"]["selector"]["matchLabels"], operator_pods)
    assert not selects(operator["spec"]["selector"]["matchLabels"], collector_pods)


def test_generated_tokens_are_a_valid_tokens_file_and_the_loops_token_secret() -> None:
    from kaizen.api.improvementloop import FeedbackSpec
    from kaizen.collector.auth import parse_tokens

    objects = render("watchNamespaces={team-a,team-b}", "collector.auth.operatorTokenNamespaces={team-c,team-a}")
    tokens_secret = secret_data(only(secrets_named(objects, f"{RELEASE}-collector-tokens"), "Secret"))
    tokens = tokens_secret["tokens"]
    principals = parse_tokens(tokens)
    by_name = {principal.name: principal.scopes for principal in principals.values()}
    assert by_name == {"operator": {"read", "audit"}, "ingest": {"ingest"}, "admin": {"admin"}}
    lines = {line.split()[2]: line.split()[0] for line in tokens.splitlines() if line}
    assert {name: tokens_secret[f"{name}-token"] for name in ("operator", "ingest", "admin")} == lines
    assert len(set(lines.values())) == 3

    # The operator's token alone, under "token", in every namespace a loop may live in, as the loop's spec names it.
    copies = secrets_named(objects, f"{RELEASE}-collector-token")
    assert sorted(copy["metadata"]["namespace"] for copy in copies) == sorted(
        [RELEASE_NAMESPACE, "team-a", "team-b", "team-c"]
    )
    assert all(secret_data(copy) == {"token": lines["operator"]} for copy in copies)
    service = component(objects, "Service", "collector")
    port = service["spec"]["ports"][0]["port"]
    spec = FeedbackSpec.model_validate({
        "collectorURL": f"http://{service['metadata']['name']}.{RELEASE_NAMESPACE}.svc:{port}",
        "tokenSecretRef": {"name": copies[0]["metadata"]["name"], "key": "token"},
    })
    assert spec.token_secret_ref is not None


def test_long_release_names_keep_the_token_secret_name_a_dns_label() -> None:
    from kaizen.api.improvementloop import FeedbackSpec

    objects = render(f"fullnameOverride={'x' * 63}")
    names = {obj["metadata"]["name"] for obj in objects if obj["kind"] in ("Secret", "Service", "Deployment")}
    assert all(len(name) <= 63 for name in names), names
    token_secret = next(obj for obj in objects if obj["kind"] == "Secret" and "token" in obj["data"])
    FeedbackSpec.model_validate({
        "collectorURL": "http://collector:8090",
        "tokenSecretRef": {"name": token_secret["metadata"]["name"], "key": "token"},
    })


def test_existing_tokens_secret_is_mounted_and_nothing_is_generated() -> None:
    objects = render("collector.auth.existingSecret=my-tokens", "collector.auth.existingSecretKey=lines")
    assert not [obj for obj in objects if obj["kind"] == "Secret"]
    volumes = component(objects, "Deployment", "collector")["spec"]["template"]["spec"]["volumes"]
    tokens = next(volume["secret"] for volume in volumes if "secret" in volume)
    assert tokens["secretName"] == "my-tokens"
    assert tokens["items"] == [{"key": "lines", "path": "tokens"}]


def test_disabled_collector_renders_nothing_of_it() -> None:
    objects = render("collector.enabled=false", "collector.serviceMonitor.enabled=true")
    assert Counter(obj["kind"] for obj in objects) == {
        "ServiceAccount": 1,
        "ClusterRole": 1,
        "ClusterRoleBinding": 1,
        "Role": 1,
        "RoleBinding": 1,
        "PodDisruptionBudget": 1,
        "Deployment": 1,
        "Service": 1,
        "ConfigMap": 1,
    }
    assert not [obj for obj in objects
                if obj["metadata"]["labels"]["app.kubernetes.io/component"] not in ("operator", "dashboard")]


@pytest.mark.parametrize("source", ["url", "existingSecret"])
def test_postgresql_collector_has_no_volume_and_may_scale(source: str) -> None:
    url = "postgresql://kaizen:secret@postgres.db:5432/kaizen"
    values = {
        "url": [f"collector.database.url={url}"],
        "existingSecret": ["collector.database.existingSecret=pg", "collector.database.existingSecretKey=dsn"],
    }[source]
    objects = render(*values, "collector.replicaCount=3")
    assert not [obj for obj in objects if obj["kind"] == "PersistentVolumeClaim"]
    deployment = component(objects, "Deployment", "collector")
    assert deployment["spec"]["replicas"] == 3
    assert deployment["spec"]["strategy"] == {"type": "RollingUpdate"}
    container = collector_container(objects)
    pod = deployment["spec"]["template"]["spec"]
    assert not [volume for volume in pod["volumes"] if "persistentVolumeClaim" in volume]
    assert not [mount for mount in container["volumeMounts"] if mount["mountPath"] == "/var/lib/kaizen"]
    # The URL holds a password: it comes from a Secret through $KAIZEN_COLLECTOR_DB, never on the command line.
    assert not [arg for arg in container["args"] if arg.startswith("--db")]
    assert parse_args(container, "collector").tokens_file
    env = {variable["name"]: variable for variable in container["env"]}
    ref = env["KAIZEN_COLLECTOR_DB"]["valueFrom"]["secretKeyRef"]
    if source == "url":
        assert secret_data(only(secrets_named(objects, ref["name"]), "Secret"))[ref["key"]] == url
        assert "checksum/database" in deployment["spec"]["template"]["metadata"]["annotations"]
    else:
        assert ref == {"name": "pg", "key": "dsn"}
        assert not secrets_named(objects, "pg")


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            ["collector.replicaCount=2"],
            "collector.replicaCount is 2, but with SQLite only one pod may write the database",
        ),
        (
            ["collector.database.url=sqlite:////data/collector.db"],
            "collector.database.url must be a postgresql:// URL",
        ),
        (
            ["collector.database.url=postgresql://kaizen@postgres/kaizen", "collector.database.existingSecret=pg"],
            "collector.database.url and collector.database.existingSecret are both set",
        ),
    ],
    ids=["sqlite-replicas", "sqlite-url", "two-urls"],
)
def test_collector_values_that_cannot_work_fail_with_what_to_change(values: list[str], message: str) -> None:
    args = ["template", RELEASE, str(CHART), kube_version_flag(), *(f"--set={value}" for value in values)]
    assert message in helm_error(*args)


def test_service_monitor_only_when_enabled() -> None:
    assert not [obj for obj in render() if obj["kind"] == "ServiceMonitor"]
    assert not [obj for obj in render("collector.serviceMonitor.enabled=false") if obj["kind"] == "ServiceMonitor"]
    objects = render("collector.serviceMonitor.enabled=true", "collector.serviceMonitor.labels.release=prometheus")
    monitor = only(objects, "ServiceMonitor")
    service = component(objects, "Service", "collector")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert selects(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [RELEASE_NAMESPACE]}
    assert [(endpoint["port"], endpoint["path"]) for endpoint in monitor["spec"]["endpoints"]] == [("http", "/metrics")]
    assert service["spec"]["ports"][0]["name"] == "http"


def test_operator_metrics_service_reaches_the_port_the_operator_serves_metrics_on() -> None:
    objects = render("metrics.port=9100", "metrics.service.port=9200", "metrics.service.annotations.team=ml")
    service = component(objects, "Service", "operator")
    operator = component(objects, "Deployment", "operator")
    collector = component(objects, "Deployment", "collector")
    assert service["spec"]["ports"] == [{"name": "metrics", "port": 9200, "targetPort": "metrics", "protocol": "TCP"}]
    assert service["metadata"]["annotations"] == {"team": "ml"}
    # Every operator replica (standbys serve metrics too), none of the collector's pods.
    assert selects(service["spec"]["selector"], operator["spec"]["template"]["metadata"]["labels"])
    assert not selects(service["spec"]["selector"], collector["spec"]["template"]["metadata"]["labels"])
    container = operator_container(objects)
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert parse_operator_args(container).metrics_bind_address == ("0.0.0.0", ports["metrics"]) == ("0.0.0.0", 9100)
    assert ports["health"] != ports["metrics"]


def test_operator_service_monitor_only_when_enabled_and_it_keeps_the_objects_namespace() -> None:
    assert not [obj for obj in render() if obj["kind"] == "ServiceMonitor"]
    objects = render("metrics.serviceMonitor.enabled=true", "metrics.serviceMonitor.labels.release=prometheus",
                     "metrics.serviceMonitor.interval=15s")
    monitor = only(objects, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    services = [obj for obj in objects if obj["kind"] == "Service"
                and selects(monitor["spec"]["selector"]["matchLabels"], obj["metadata"]["labels"])]
    assert services == [component(objects, "Service", "operator")]
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [RELEASE_NAMESPACE]}
    # honorLabels: a series' namespace is its loop's, not overwritten by the operator pod's (exported_namespace).
    assert monitor["spec"]["endpoints"] == [{"port": "metrics", "path": "/metrics", "interval": "15s",
                                             "scrapeTimeout": "10s", "honorLabels": True}]
    both = render("metrics.serviceMonitor.enabled=true", "collector.serviceMonitor.enabled=true")
    assert len({obj["metadata"]["name"] for obj in both if obj["kind"] == "ServiceMonitor"}) == 2


def test_the_dashboard_is_a_configmap_the_grafana_sidecar_loads() -> None:
    shipped = json.loads((CHART / "dashboards" / "kaizen.json").read_text())
    configmap = only(render(), "ConfigMap")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert configmap["metadata"]["namespace"] == RELEASE_NAMESPACE
    assert json.loads(configmap["data"]["kaizen.json"]) == shipped
    moved = only(render("dashboards.namespace=monitoring", "dashboards.label=dashboards",
                        "dashboards.labelValue=kaizen", "dashboards.annotations.grafana_folder=Kaizen"), "ConfigMap")
    assert moved["metadata"]["namespace"] == "monitoring"
    assert moved["metadata"]["labels"]["dashboards"] == "kaizen" and "grafana_dashboard" not in moved["metadata"][
        "labels"]
    assert moved["metadata"]["annotations"] == {"grafana_folder": "Kaizen"}
    assert not [obj for obj in render("dashboards.enabled=false") if obj["kind"] == "ConfigMap"]


def test_upgrade_keeps_the_generated_tokens_and_notes_show_the_loops_reference(cluster, namespace: str) -> None:
    # Short, so that no name is truncated: "<release>-kaizen-collector...".
    release = f"r{namespace[-6:]}"
    kubeconfig = f"--kubeconfig={cluster.kubeconfig}"
    install = ["upgrade", "--install", release, str(CHART), f"--namespace={namespace}", "--skip-crds", kubeconfig]

    def tokens() -> dict[str, str]:
        secret = cluster.kubectl("get", "secret", f"{release}-kaizen-collector-tokens", f"--namespace={namespace}",
                                 "--output=json").stdout
        return secret_data(json.loads(secret))

    try:
        notes = helm(*install)
        first = tokens()
        helm(*install, "--set=collector.verbose=true")
        assert tokens() == first
    finally:
        helm("uninstall", release, f"--namespace={namespace}", kubeconfig)
    token_secret = f"{release}-kaizen-collector-token"
    url = f"http://{release}-kaizen-collector.{namespace}.svc:8090"
    assert f"collectorURL: {url}" in notes
    assert f"name: {token_secret}" in notes and "key: token" in notes
    assert f"get secret {release}-kaizen-collector-tokens --output jsonpath='{{.data.ingest-token}}'" in notes
    assert 'key "admin-token"' in notes and "DELETE /v1/subjects/" in notes


@pytest.mark.parametrize("variant", ["all", "some", "postgresql", "no-collector"])
def test_rendered_chart_passes_a_server_side_dry_run(cluster, namespace: str, variant: str) -> None:
    # Warn (enforcement only applies to pods) on anything the "restricted" Pod Security Standard forbids.
    cluster.kubectl(
        "label", "namespace", namespace,
        "pod-security.kubernetes.io/warn=restricted", "pod-security.kubernetes.io/warn-version=latest",
    )
    # The ServiceMonitor stays out: its CRD (the Prometheus Operator's) is not on the test API server.
    values = {
        "all": [],
        # The operator's token Secret goes to the release namespace and to the watched one: here, the same.
        "some": [f"watchNamespaces={{{namespace}}}"],
        "postgresql": [
            "collector.database.url=postgresql://kaizen:secret@postgres:5432/kaizen", "collector.replicaCount=2",
            "collector.auth.existingSecret=my-tokens", "collector.corsOrigins={https://app.example.com}",
            "collector.storeRawText=false", "collector.retentionDays=30",
        ],
        "no-collector": ["collector.enabled=false"],
    }[variant]
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

    # The check above is only worth something if the API server warns at all: a privileged variant must be flagged,
    # the operator's and the collector's pods alike (they share the security context).
    privileged = render(*values, "securityContext.allowPrivilegeEscalation=true", namespace=namespace)
    deployments = [obj for obj in privileged if obj["kind"] == "Deployment"]
    assert len(deployments) == (1 if variant == "no-collector" else 2)
    flagged = cluster.kubectl("apply", "--server-side", "--dry-run=server", "-f", "-", input=as_list(deployments))
    assert flagged.stderr.count("would violate PodSecurity") == len(deployments), flagged.stderr


def as_list(objects: list[dict]) -> str:
    """Objects as one kubectl input: a v1 List, in JSON, so nothing is lost converting YAML back to text."""
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": objects})


def test_the_notifications_default_reaches_the_operator_as_a_spec_it_accepts(monkeypatch) -> None:
    from kaizen.controllers.notifications import DEFAULT_ENV, check_default, spec_of

    assert DEFAULT_ENV not in {e["name"] for e in operator_container(render()).get("env", [])}  # off by default
    objects = render("notifications.webhooks[0].url=https://hooks.example/kaizen",
                     "notifications.webhooks[0].format=slack", "notifications.webhooks[0].secretRef.name=hook",
                     "notifications.webhooks[0].secretRef.key=secret", "notifications.events[0]=LoopDegraded")
    env = {e["name"]: e.get("value") for e in operator_container(objects)["env"]}
    monkeypatch.setenv(DEFAULT_ENV, env[DEFAULT_ENV])
    assert check_default() is None
    default = spec_of({"spec": {}})
    assert default.webhooks[0].format == "slack" and default.webhooks[0].secret_ref.name == "hook"
    assert default.events == ["LoopDegraded"]
    assert spec_of({"spec": {"notifications": {"webhooks": []}}}).webhooks == []  # a loop's own spec wins
    assert "value must be one of" in helm_error("template", str(CHART), kube_version_flag(),
                                                "--set=notifications.webhooks[0].url=http://x/",
                                                "--set=notifications.webhooks[0].format=teams")
    monkeypatch.setenv(DEFAULT_ENV, '{"webhooks": [{"url": "ftp://x"}]}')
    assert "webhooks.0.url" in check_default()
