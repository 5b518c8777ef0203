"""The Prometheus edge (kaizen.metrics.prometheus) against a real Prometheus scraping a real emitter: values, "no
data", and errors that say what went wrong."""

from __future__ import annotations

import pytest

from kaizen.metrics.prometheus import PrometheusClient, PrometheusError
from tests.fixtures.prometheus import emit, prometheus  # noqa: F401

pytestmark = pytest.mark.integration


def test_scalar_values_no_data_and_errors(prometheus, emit):
    emitter = emit(namespace="edge", pod="bot-0", labels={"kaizen.dev/track": "canary"}, rate=100, error_rate=0.25)
    prometheus.wait_for_data('http_requests_total{track="canary",code="500"} > 0')
    client = PrometheusClient(prometheus.url, timeout=5)

    errors = client.scalar('sum(http_requests_total{track="canary",code="500"})')
    assert errors is not None and 0 < errors <= emitter.counts()["errors"]
    assert client.scalar('sum(http_requests_total{track="stable"})') is None  # no such series: no data
    assert client.scalar("vector(0) / vector(0)") is None  # NaN: no data either
    assert client.scalar("scalar(vector(3))") == 3.0

    with pytest.raises(PrometheusError, match=r"not one value: aggregate it"):
        client.scalar('http_requests_total{track="canary"}')
    with pytest.raises(PrometheusError, match=r"rejected 'sum\(rate\(x\[5m\]\)': bad_data: .*parse error"):
        client.scalar("sum(rate(x[5m])")

    emitter.set(error_rate=0.0)
    assert emitter.counts()["errorRate"] == 0.0
    prometheus.stop()
    with pytest.raises(PrometheusError, match=r"is unreachable: ConnectionError"):
        client.scalar("up")
