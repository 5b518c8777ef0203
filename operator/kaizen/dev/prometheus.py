"""A real Prometheus on loopback, for tests and the demo: the pinned build that ``make setup`` makes, found by
:mod:`kaizen.dev.binaries` (``KAIZEN_PROMETHEUS`` overrides it).

The processes it scrapes are not pods of a cluster, so targets come from a ``file_sd_configs`` file that can be
rewritten at any time (Prometheus watches it). :func:`pod_target` describes a process the way Kubernetes service
discovery would describe a pod (``__meta_kubernetes_*`` labels), and :data:`RELABEL_CONFIGS` — the same rules a
user writes for in-cluster scraping — turn the pod's ``kaizen.dev/track`` and ``kaizen.dev/model-version`` labels
into the ``track`` and ``model_version`` labels analysis queries select on.

Pods that really run (the dev node agent's serving pods) come from the agent's own file_sd file, each described by
:func:`kubernetes_pod_target` as Kubernetes SD describes a pod's container port; ``LocalPrometheus(pod_targets=[FILE])``
scrapes them in a job of their own beside the targets set from Python (the collector).

It scrapes every second, keeps its data in a temporary directory (kept across :meth:`LocalPrometheus.stop` and
:meth:`LocalPrometheus.start`, so a test can take Prometheus away and bring it back on the same port), and runs in
its own process group (:mod:`kaizen.dev.processes`), so stopping it leaves no stray process.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

from kaizen.dev import processes
from kaizen.dev.binaries import find_binary
from kaizen.dev.cluster import free_ports

TRACK_LABEL = "kaizen.dev/track"
MODEL_VERSION_LABEL = "kaizen.dev/model-version"

#: Pod metadata to metric labels, as for kubernetes_sd_configs with role: pod.
RELABEL_CONFIGS: list[dict[str, Any]] = [
    {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
    {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
    {"source_labels": ["__meta_kubernetes_pod_label_kaizen_dev_track"], "target_label": "track"},
    {"source_labels": ["__meta_kubernetes_pod_label_kaizen_dev_model_version"], "target_label": "model_version"},
    {"source_labels": ["__meta_kubernetes_pod_label_app"], "target_label": "app"},
]


class PrometheusStartError(RuntimeError):
    """Prometheus did not become ready; the message carries the end of its log."""


@dataclass(frozen=True)
class Target:
    """One scrape target: ``host:port`` and the discovery labels it comes with."""

    address: str
    labels: dict[str, str] = field(default_factory=dict)


def _sanitize(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name)


def pod_target(address: str, *, namespace: str, pod: str, labels: dict[str, str]) -> Target:
    """A target described as Kubernetes service discovery describes a pod with these labels."""
    meta = {"__meta_kubernetes_namespace": namespace, "__meta_kubernetes_pod_name": pod}
    meta.update({f"__meta_kubernetes_pod_label_{_sanitize(k)}": v for k, v in labels.items()})
    return Target(address, meta)


def kubernetes_pod_target(pod: dict[str, Any], container: dict[str, Any], port: dict[str, Any],
                          address: str) -> Target:
    """A pod's container port as ``kubernetes_sd_configs`` (role ``pod``) describes it, scraped at ``address``
    (where this machine reaches the pod, which Kubernetes SD would take from the pod IP)."""
    meta, status = pod["metadata"], pod.get("status") or {}
    target = pod_target(address, namespace=meta["namespace"], pod=meta["name"], labels=meta.get("labels") or {})
    labels = dict(target.labels)
    labels.update({f"__meta_kubernetes_pod_labelpresent_{_sanitize(k)}": "true" for k in meta.get("labels") or {}})
    labels.update({f"__meta_kubernetes_pod_annotation_{_sanitize(k)}": v
                   for k, v in (meta.get("annotations") or {}).items()})
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])
    owner: dict[str, Any] = next((o for o in meta.get("ownerReferences") or [] if o.get("controller")), {})
    labels.update({
        "__meta_kubernetes_pod_uid": meta.get("uid", ""), "__meta_kubernetes_pod_ip": status.get("podIP", ""),
        "__meta_kubernetes_pod_host_ip": status.get("hostIP", ""),
        "__meta_kubernetes_pod_node_name": pod.get("spec", {}).get("nodeName", ""),
        "__meta_kubernetes_pod_phase": status.get("phase", ""), "__meta_kubernetes_pod_ready": str(ready).lower(),
        "__meta_kubernetes_pod_controller_kind": owner.get("kind", ""),
        "__meta_kubernetes_pod_controller_name": owner.get("name", ""),
        "__meta_kubernetes_pod_container_name": container["name"],
        "__meta_kubernetes_pod_container_image": container["image"],
        "__meta_kubernetes_pod_container_init": "false",
        "__meta_kubernetes_pod_container_port_name": port.get("name", ""),
        "__meta_kubernetes_pod_container_port_number": str(port["containerPort"]),
        "__meta_kubernetes_pod_container_port_protocol": port.get("protocol", "TCP"),
    })
    return Target(address, labels)


class LocalPrometheus:
    """``with LocalPrometheus() as prometheus: prometheus.set_targets([...]); prometheus.url``.

    Two scrape jobs: ``kaizen``, the targets of :meth:`set_targets` (the collector, emitters), and, with
    ``pod_targets``, ``kubernetes-pods``: the file_sd files that the dev node agent keeps of the pods it runs
    (``--prometheus-targets``). Both relabel pod metadata the same way (:data:`RELABEL_CONFIGS`); the pods' job
    honours the labels a server puts on its own metrics, so a model server's ``model_version`` and ``track`` (from
    its environment, fixed when it started) stand over the pod's labels, which may change after it started, rather
    than being renamed ``exported_*``.
    """

    def __init__(self, workdir: Path | None = None, scrape_interval: str = "1s",
                 pod_targets: Sequence[Path] = ()) -> None:
        self._owned = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="kaizen-prometheus-"))
        self.scrape_interval = scrape_interval
        self.pod_targets = [Path(p).resolve() for p in pod_targets]
        self.port = free_ports(1)[0]
        self._process: processes.ManagedProcess | None = None
        self._targets: list[Target] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def targets_file(self) -> Path:
        return self.workdir / "targets.json"

    def __enter__(self) -> LocalPrometheus:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
        if self._owned:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def running(self) -> bool:
        return self._process is not None and self._process.alive()

    def start(self, timeout: float = 30.0) -> LocalPrometheus:
        """Start (or start again, on the same port and data) and wait until it is ready.

        Raises :class:`~kaizen.dev.binaries.BinaryNotFoundError` when there is no Prometheus binary to run.
        """
        prometheus = find_binary("prometheus")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._write_targets()
        for path in self.pod_targets:
            path.parent.mkdir(parents=True, exist_ok=True)  # file_sd watches the folder; the file may come later
        config = self.workdir / "prometheus.yml"
        config.write_text(yaml.safe_dump(self.config()))
        self._process = processes.spawn("prometheus", [
            prometheus, f"--config.file={config}", f"--storage.tsdb.path={self.workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}", "--web.enable-lifecycle", "--log.level=warn",
        ], self.workdir / "prometheus.log", detach=False)
        deadline = time.monotonic() + timeout
        while not self._ready():
            if not self._process.alive():
                raise PrometheusStartError(f"Prometheus exited with status {self._process.exit_code()}:\n"
                                           f"{self._process.log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise PrometheusStartError(f"Prometheus was not ready after {timeout:g}s:\n"
                                           f"{self._process.log_tail()}")
            time.sleep(0.1)
        return self

    def config(self) -> dict[str, Any]:
        """The configuration it runs with."""
        def job(name: str, files: list[Path], **options: Any) -> dict[str, Any]:
            return {"job_name": name, "scrape_timeout": self.scrape_interval, **options,
                    "file_sd_configs": [{"files": [str(f) for f in files], "refresh_interval": "1s"}],
                    "relabel_configs": RELABEL_CONFIGS}

        jobs = [job("kaizen", [self.targets_file])]
        if self.pod_targets:
            jobs.append(job("kubernetes-pods", self.pod_targets, honor_labels=True))
        return {"global": {"scrape_interval": self.scrape_interval, "evaluation_interval": self.scrape_interval},
                "scrape_configs": jobs}

    def stop(self) -> None:
        """Stop Prometheus and everything in its process group; its data stays for a later :meth:`start`."""
        if self._process is not None:
            processes.stop([self._process])
            self._process = None

    def set_targets(self, targets: list[Target]) -> None:
        """Replace the scrape targets; Prometheus picks the change up within a second."""
        self._targets = list(targets)
        self._write_targets()

    def _write_targets(self) -> None:
        groups = [{"targets": [t.address], "labels": t.labels} for t in self._targets]
        # Written whole and renamed, so Prometheus never reads a half-written file.
        partial = self.targets_file.with_suffix(".tmp")
        partial.write_text(json.dumps(groups))
        partial.replace(self.targets_file)

    def query(self, promql: str, at: float | None = None) -> list[dict[str, Any]]:
        """An instant query (at ``at``, Unix seconds; default now), for tests that wait for data to arrive and for
        the demo's own figures (the operator uses kaizen.metrics)."""
        params = {"query": promql, **({"time": f"{at:.3f}"} if at is not None else {})}
        with urllib.request.urlopen(f"{self.url}/api/v1/query?{urllib.parse.urlencode(params)}",
                                    timeout=5) as response:
            return json.load(response)["data"]["result"]

    def query_range(self, promql: str, start: float, end: float, step: float = 1.0) -> list[dict[str, Any]]:
        """A range query from ``start`` to ``end`` (Unix seconds), as a dashboard's time series panel runs it."""
        params = urllib.parse.urlencode({"query": promql, "start": start, "end": end, "step": step})
        with urllib.request.urlopen(f"{self.url}/api/v1/query_range?{params}", timeout=10) as response:
            return json.load(response)["data"]["result"]

    def queries_answered(self) -> float:
        """How many queries this Prometheus has answered (:func:`queries_answered`)."""
        return queries_answered(self.url)

    def wait_for_data(self, promql: str, timeout: float = 30.0) -> list[dict[str, Any]]:
        """Wait until ``promql`` returns something (targets discovered and scraped) and return it."""
        deadline = time.monotonic() + timeout
        while not (result := self.query(promql)):
            if time.monotonic() > deadline:
                raise TimeoutError(f"Prometheus at {self.url} returned nothing for {promql!r} within {timeout:g}s; "
                                   f"targets: {self.targets_file.read_text()}")
            time.sleep(0.2)
        return result

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as response:
                return response.status == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False


def queries_answered(url: str) -> float:
    """How many queries (instant and range) the Prometheus at ``url`` has answered so far, from its own /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as response:
        text = response.read().decode()
    return sum(sample.value for family in text_string_to_metric_families(text) for sample in family.samples
               if sample.name == "prometheus_http_requests_total"
               and sample.labels.get("handler") in ("/api/v1/query", "/api/v1/query_range"))
