"""Prometheus queries through prometheus-api-client, with errors that say what went wrong.

Synchronous, like the client it wraps: call it from kopf's sync handlers (they run in its thread pool) or through
``asyncio.to_thread``. "No data" (an empty result, or NaN such as 0/0) is ``None``, never an exception, because the
callers treat it differently from an error: both hold a rollout, but only errors say Prometheus is unwell.
"""

from __future__ import annotations

import ast
import functools
import json
import math
import os
from datetime import datetime, timezone
from collections.abc import Sequence
from typing import Any, cast

import requests
from prometheus_api_client import PrometheusApiClientException, PrometheusConnect
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry


class PrometheusError(RuntimeError):
    """A query failed: Prometheus unreachable, an HTTP error, or a query it rejected (``rejected``). The message
    says which."""

    def __init__(self, message: str, rejected: bool = False) -> None:
        super().__init__(message)
        self.rejected = rejected


#: The label :meth:`PrometheusClient.scalars` tags each query's series with, to tell them apart in one answer.
QUERY_LABEL = "kaizen_query"


class PrometheusClient:
    """Instant queries against one Prometheus, over one session: its connections are kept and reused (up to
    ``connections`` at once, one per thread that queries it), so a query costs no new TCP connection."""

    def __init__(self, url: str, bearer_token: str | None = None, insecure_skip_verify: bool = False,
                 timeout: float = 10, connections: int = 10) -> None:
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {bearer_token}"} if bearer_token else None
        session = requests.Session()
        # The environment (proxies, a CA bundle) read once, here: with trust_env requests reads it again at every
        # request (environment lookups, no_proxy matching, ~/.netrc), a cost paid 200 times a second at scale.
        session.trust_env = False
        session.proxies = requests.utils.get_environ_proxies(self.url)
        bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
        session.verify = False if insecure_skip_verify else bundle or True
        # One quick retry: a reconcile that cannot reach Prometheus should say so within its interval, not back off
        # for tens of seconds as the client's default retries do.
        retry = Retry(total=1, backoff_factor=0.1, status_forcelist=(502, 503, 504))
        self._connection = PrometheusConnect(url=self.url, headers=headers, timeout=timeout, retry=retry,
                                             session=session)
        session.mount(self.url, HTTPAdapter(max_retries=retry, pool_connections=1, pool_maxsize=connections))

    def query(self, query: str) -> list[dict[str, Any]] | list[Any]:
        """The raw instant-query result (a vector's series, or a scalar's ``[time, value]``)."""
        try:
            return self._connection.custom_query(query)
        except PrometheusApiClientException as error:
            raise PrometheusError(f"Prometheus at {self.url} rejected {query!r}: {_reason(error)}",
                                  rejected=True) from None
        except requests.RequestException as error:
            raise PrometheusError(f"Prometheus at {self.url} is unreachable: {type(error).__name__}: "
                                  f"{_first_line(error)}") from None
        except ValueError as error:  # A body that is not Prometheus' JSON (a proxy's error page).
            raise PrometheusError(f"Prometheus at {self.url} answered {query!r} with something that is not its "
                                  f"API's JSON: {error}") from None

    def series(self, query: str, start: datetime, end: datetime, step: float) -> list[tuple[datetime, float]]:
        """The query's values from ``start`` to ``end`` every ``step`` seconds (a range query; rounded to whole
        seconds, as Prometheus' durations are), NaN left out; [] when there is no data. A result of several series
        is an error, as for :meth:`scalar`."""
        try:
            result = self._connection.custom_query_range(query, start_time=start, end_time=end,
                                                         step=f"{max(round(step), 1)}s")
        except PrometheusApiClientException as error:
            raise PrometheusError(f"Prometheus at {self.url} rejected {query!r}: {_reason(error)}") from None
        except requests.RequestException as error:
            raise PrometheusError(f"Prometheus at {self.url} is unreachable: {type(error).__name__}: "
                                  f"{_first_line(error)}") from None
        if not result:
            return []
        if len(result) > 1:
            raise PrometheusError(f"{query!r} returned {len(result)} series, not one: aggregate it, e.g. with sum(...)")
        points = [(datetime.fromtimestamp(float(t), timezone.utc), float(v)) for t, v in result[0]["values"]]
        return [(t, v) for t, v in points if not math.isnan(v)]

    def scalar(self, query: str) -> float | None:
        """The query's single value; None when there is no data. A result of several series is an error."""
        result = self.query(query)
        if result and not isinstance(result[0], dict):  # A scalar result: [time, value].
            number = float(cast(str, result[1]))
            return None if math.isnan(number) else number
        return _single(query, cast(list[dict[str, Any]], result))

    def scalars(self, queries: Sequence[str]) -> list[float | None | PrometheusError]:
        """Each query's :meth:`scalar` (or the error it would raise), asked in one request evaluated at one instant:
        each query's series tagged with its index (``label_replace``) and joined by ``or``. A Rollout's look asks
        good and total of both tracks: one request instead of four, both tracks at the same instant.

        When Prometheus rejects the joined query (a query is invalid, or a scalar, which ``label_replace`` cannot
        take), each query is asked alone, so that each error names its own query; when it is unreachable, every
        query has that error."""
        if len(queries) < 2:
            return [self._scalar_or_error(query) for query in queries]
        joined = " or ".join(f'label_replace(({query}), "{QUERY_LABEL}", "{i}", "", "")'
                             for i, query in enumerate(queries))
        try:
            result = self.query(joined)
        except PrometheusError as error:
            if error.rejected:
                return [self._scalar_or_error(query) for query in queries]
            return [error for _ in queries]
        tagged: dict[str, list[dict[str, Any]]] = {}
        for series in result:
            if isinstance(series, dict):
                metric = dict(series.get("metric") or {})
                tagged.setdefault(metric.pop(QUERY_LABEL, ""), []).append({**series, "metric": metric})
        answers: list[float | None | PrometheusError] = []
        for i, query in enumerate(queries):
            try:
                answers.append(_single(query, tagged.get(str(i), [])))
            except PrometheusError as error:
                answers.append(error)
        return answers

    def _scalar_or_error(self, query: str) -> float | None | PrometheusError:
        try:
            return self.scalar(query)
        except PrometheusError as error:
            return error


def _single(query: str, series: list[dict[str, Any]]) -> float | None:
    """The one value of a vector's series; None for none (or NaN); several are an error."""
    if not series:
        return None
    if len(series) > 1:
        labels = ", ".join(str(one.get("metric", {})) for one in series[:3])
        raise PrometheusError(f"{query!r} returned {len(series)} series ({labels}, ...), not one value: "
                              "aggregate it, e.g. with sum(...)")
    number = float(series[0]["value"][1])
    return None if math.isnan(number) else number


@functools.lru_cache(maxsize=64)
def shared(url: str, bearer_token: str | None = None, insecure_skip_verify: bool = False,
           connections: int = 10) -> PrometheusClient:
    """One client per Prometheus (and token), kept for every look that queries it: a client per look opened a new
    connection for each, and 1,000 objects looking meant 1,000 connections opened and closed per round. A rotated
    token makes a new client; the least recently used of 64 are let go."""
    return PrometheusClient(url, bearer_token=bearer_token, insecure_skip_verify=insecure_skip_verify,
                            connections=connections)


def _reason(error: PrometheusApiClientException) -> str:
    # The client's message is "HTTP Status Code 400 (b'{...}')": the repr of Prometheus' JSON error body, whose
    # errorType and error say what was wrong with the query.
    text = str(error)
    start = text.find("(b")
    if start != -1 and text.endswith(")"):
        try:
            body = json.loads(ast.literal_eval(text[start + 1:-1]))
            return f"{body.get('errorType', 'error')}: {body['error']}"
        except (ValueError, SyntaxError, KeyError, TypeError):
            pass
    return text


def _first_line(error: Exception) -> str:
    return str(error).splitlines()[0][:300] if str(error) else "no details"
