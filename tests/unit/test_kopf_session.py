"""kopf logs in as its default does, with the same credentials, but through a bounded connection pool (kopf's own
has no limit: at start-up it opened one TLS connection per object handled, and the operator kept their memory)."""

from __future__ import annotations

import asyncio
import logging

import kopf

from kaizen.k8s.client import CONCURRENCY, kopf_session

KUBECONFIG = """apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:6443", insecure-skip-tls-verify: true}}]
users: [{name: u, user: {token: the-token}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
"""


def test_kopf_logs_in_with_the_kubeconfig_s_credentials_through_a_bounded_pool(tmp_path, monkeypatch):
    (tmp_path / "kubeconfig").write_text(KUBECONFIG)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "kubeconfig"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)

    async def login() -> tuple[object, int | None, dict[str, str]]:
        context = await kopf_session(logger=logging.getLogger("test"), settings=kopf.OperatorSettings())
        assert isinstance(context, kopf.AiohttpSession)
        session = context.aiohttp_session
        try:
            return context, session.connector.limit if session.connector else None, dict(session.headers)
        finally:
            await session.close()

    context, limit, headers = asyncio.run(login())
    assert limit == CONCURRENCY  # kopf's default: 0, no limit
    assert headers["Authorization"] == "Bearer the-token"
    assert context.server == "https://127.0.0.1:6443"
