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


def test_scalars_asks_many_queries_in_one_request_with_each_answer_as_alone(prometheus, emit):
    emit(namespace="edge", pod="bot-0", labels={"kaizen.dev/track": "canary"}, rate=100, error_rate=0.25)
    prometheus.wait_for_data('http_requests_total{track="canary",code="500"} > 0')
    client = PrometheusClient(prometheus.url, timeout=5)
    queries = ['sum(http_requests_total{track="canary",code="500"}) > 0', 'sum(http_requests_total{track="stable"})',
               "vector(0) / vector(0)", 'http_requests_total{track="canary"}', "vector(2)",
               'sum by (code) (http_requests_total{track="canary",code="200"})']
    before = prometheus.queries_answered()
    errors, missing, nan, several, two, by_code = client.scalars(queries)
    assert prometheus.queries_answered() - before == 1  # one request for all six
    assert isinstance(errors, float) and errors > 0
    assert missing is None and nan is None  # no data, as scalar() says it
    assert isinstance(several, PrometheusError) and "not one value: aggregate it" in str(several)
    assert two == 2.0 and isinstance(by_code, float)  # a query's own labels do not mix with the tag
    assert client.scalars(["vector(5)"]) == [5.0]

    # One query Prometheus cannot join (a scalar; an invalid one): each is then asked alone, and names its error.
    before = prometheus.queries_answered()
    three, broken, five = client.scalars(["scalar(vector(3))", "sum(rate(x[5m])", "vector(5)"])
    assert (three, five) == (3.0, 5.0)
    assert isinstance(broken, PrometheusError) and "rejected 'sum(rate(x[5m])'" in str(broken)
    assert prometheus.queries_answered() - before == 4  # the joined query, then the three alone

    prometheus.stop()
    answers = client.scalars(["up", "vector(1)"])
    assert all(isinstance(a, PrometheusError) and "is unreachable" in str(a) for a in answers)


def test_series_over_a_range(prometheus, emit):
    from datetime import datetime, timedelta, timezone

    emit(namespace="edge", pod="bot-0", labels={"kaizen.dev/track": "canary"}, rate=100)
    prometheus.wait_for_data('count_over_time(http_requests_total{track="canary",code="200"}[1m]) >= 3')
    client = PrometheusClient(prometheus.url, timeout=5)
    end = datetime.now(timezone.utc)
    points = client.series('sum(http_requests_total{track="canary"})', end - timedelta(seconds=30), end, 1)
    assert points and all(t <= end + timedelta(seconds=1) for t, _ in points) and points[-1][1] > 0
    assert [t for t, _ in points] == sorted(t for t, _ in points)
    assert client.series('sum(http_requests_total{track="canary"})', end - timedelta(seconds=30), end, 1.6)
    assert client.series('sum(http_requests_total{track="stable"})', end - timedelta(seconds=30), end, 1) == []
    with pytest.raises(PrometheusError, match=r"returned \d+ series, not one"):
        client.series('http_requests_total{track="canary"}', end - timedelta(seconds=30), end, 1)
    prometheus.stop()
    with pytest.raises(PrometheusError, match=r"is unreachable"):
        client.series("up", end - timedelta(seconds=30), end, 1)
