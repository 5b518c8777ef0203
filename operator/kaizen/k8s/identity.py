"""Who is calling: the username the API server authenticated this client as (SelfSubjectReview)."""

from __future__ import annotations

import kubernetes.client
import kubernetes.config
from kubernetes.client.exceptions import ApiException

from kaizen.k8s.client import api_client


def whoami() -> str:
    """The authenticated username; the kubeconfig's user name if the API server does not answer the review (or
    answers it without a username)."""
    try:
        review = kubernetes.client.AuthenticationV1Api(api_client()).create_self_subject_review(
            kubernetes.client.V1SelfSubjectReview(api_version="authentication.k8s.io/v1", kind="SelfSubjectReview")
        )
        user = review.status.user_info if review.status else None
        if user is not None and user.username:
            return user.username
    except ApiException:
        pass
    _, context = kubernetes.config.list_kube_config_contexts()
    return context["context"].get("user", "unknown")


def current_namespace() -> str:
    """The namespace of the kubeconfig's current context, as kubectl would use it."""
    try:
        _, context = kubernetes.config.list_kube_config_contexts()
        return context["context"].get("namespace") or "default"
    except (kubernetes.config.ConfigException, FileNotFoundError):
        return "default"
