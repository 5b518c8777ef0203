"""What the local Prometheus scrapes: the targets set from Python and the dev node agent's pods, each pod described as
Kubernetes service discovery describes it."""

from __future__ import annotations


from kaizen.dev.prometheus import RELABEL_CONFIGS, LocalPrometheus, kubernetes_pod_target


def test_the_agents_pods_are_a_job_of_their_own_that_honours_the_servers_labels(tmp_path):
    prometheus = LocalPrometheus(tmp_path / "p", pod_targets=[tmp_path / "agent" / "targets.json"])
    kaizen, pods = prometheus.config()["scrape_configs"]
    assert kaizen["job_name"] == "kaizen" and "honor_labels" not in kaizen
    assert kaizen["file_sd_configs"][0]["files"] == [str(prometheus.targets_file)]
    assert pods["job_name"] == "kubernetes-pods" and pods["honor_labels"] is True
    assert pods["file_sd_configs"][0]["files"] == [str((tmp_path / "agent" / "targets.json").resolve())]
    assert pods["relabel_configs"] == kaizen["relabel_configs"] == RELABEL_CONFIGS


def test_without_pod_targets_there_is_one_job(tmp_path):
    assert [j["job_name"] for j in LocalPrometheus(tmp_path)
            .config()["scrape_configs"]] == ["kaizen"]


def test_a_pod_is_described_as_kubernetes_sd_describes_its_container_port():
    pod = {"metadata": {"name": "bot-1", "namespace": "demo", "uid": "u1",
                        "labels": {"app": "bot", "kaizen.dev/track": "stable", "kaizen.dev/model-version": "v1"},
                        "annotations": {"prometheus.io/scrape": "true"},
                        "ownerReferences": [{"kind": "ReplicaSet", "name": "bot-7d9", "controller": True}]},
           "spec": {"nodeName": "kaizen-gpu-0"},
           "status": {"phase": "Running", "podIP": "10.245.0.1", "hostIP": "127.0.0.1",
                      "conditions": [{"type": "Ready", "status": "True"}]}}
    container = {"name": "server", "image": "ghcr.io/kaizen-dev/kaizen-server:0.1"}
    target = kubernetes_pod_target(pod, container, {"name": "http", "containerPort": 8080}, "127.245.0.1:8080")
    assert target.address == "127.245.0.1:8080"
    assert target.labels == {
        "__meta_kubernetes_namespace": "demo", "__meta_kubernetes_pod_name": "bot-1",
        "__meta_kubernetes_pod_uid": "u1", "__meta_kubernetes_pod_ip": "10.245.0.1",
        "__meta_kubernetes_pod_host_ip": "127.0.0.1", "__meta_kubernetes_pod_node_name": "kaizen-gpu-0",
        "__meta_kubernetes_pod_phase": "Running", "__meta_kubernetes_pod_ready": "true",
        "__meta_kubernetes_pod_label_app": "bot", "__meta_kubernetes_pod_label_kaizen_dev_track": "stable",
        "__meta_kubernetes_pod_label_kaizen_dev_model_version": "v1",
        "__meta_kubernetes_pod_labelpresent_app": "true", "__meta_kubernetes_pod_labelpresent_kaizen_dev_track": "true",
        "__meta_kubernetes_pod_labelpresent_kaizen_dev_model_version": "true",
        "__meta_kubernetes_pod_annotation_prometheus_io_scrape": "true",
        "__meta_kubernetes_pod_controller_kind": "ReplicaSet", "__meta_kubernetes_pod_controller_name": "bot-7d9",
        "__meta_kubernetes_pod_container_name": "server",
        "__meta_kubernetes_pod_container_image": "ghcr.io/kaizen-dev/kaizen-server:0.1",
        "__meta_kubernetes_pod_container_init": "false", "__meta_kubernetes_pod_container_port_name": "http",
        "__meta_kubernetes_pod_container_port_number": "8080", "__meta_kubernetes_pod_container_port_protocol": "TCP",
    }


