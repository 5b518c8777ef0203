"""Error classification: the API server's errors typed (kaizen.k8s.errors) and what each means for a controller
(kaizen.controllers.reconcile), without a cluster: errors are built as the client raises them."""

from __future__ import annotations

import json
import logging

import kopf
import pytest
from kubernetes.client.exceptions import ApiException

from kaizen.controllers.reconcile import BUG_RETRY_SECONDS, classified, classify
from kaizen.k8s.errors import ApiError, NotOwned, from_exception, typed


def client_error(status, reason, message):
    error = ApiException(status=status, reason=reason)
    error.body = json.dumps({"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message,
                             "reason": reason, "code": status})
    return error


def test_the_api_servers_status_is_parsed_into_a_typed_error():
    error = from_exception(client_error(422, "Invalid", 'Job.batch "x" is invalid: metadata.labels: Invalid value'))
    assert (error.status, error.reason, error.invalid, error.transient) == (422, "Invalid", True, False)
    assert error.message == 'Job.batch "x" is invalid: metadata.labels: Invalid value'
    assert isinstance(error, ApiException)  # callers written against the client keep working
    assert str(from_exception(ApiException(status=503, reason="Service Unavailable"))).startswith("HTTP 503")

    @typed
    def unreachable():
        raise ConnectionRefusedError("connection refused")

    with pytest.raises(ApiError) as caught:
        unreachable()
    assert caught.value.status == 0 and caught.value.transient


@pytest.mark.parametrize("error, reason, final", [
    (NotOwned("ConfigMap", "ns", "x-trainer", "RetrainJob x"), "NameConflict", False),
    (ApiError(422, "Invalid", "bad label"), "ChildRejected", True),
    (ApiError(400, "BadRequest", "bad body"), "ChildRejected", True),
    (ApiError(403, "Forbidden", "exceeded quota: jobs"), "ChildForbidden", False),
    (ApiError(503, "ServiceUnavailable", "down"), None, None),
    (ApiError(0, "Unavailable", "refused"), None, None),
    (ApiError(429, "TooManyRequests", "slow down"), None, None),
])
def test_a_childs_failure_is_classified(error, reason, final):
    failure = classify(error, "Job ns/x-trainer")
    if reason is None:
        assert failure is None  # transient: a retry with backoff, no condition
    else:
        assert (failure.reason, failure.final) == (reason, final)
    if reason == "ChildRejected":
        assert failure.message.startswith("The API server refused Job ns/x-trainer: ")
    if reason == "NameConflict":
        assert failure.message == ("ConfigMap ns/x-trainer exists and is not owned by RetrainJob x; Kaizen will not "
                                   "take it over: delete or rename it")


def test_a_bug_is_not_a_child_failure():
    with pytest.raises(KeyError):
        classify(KeyError("spec"), "Job ns/x")


def test_handlers_retry_an_unavailable_api_server_with_backoff_and_report_a_bug_once(caplog):
    calls = []

    @classified
    def handler(error, **_):
        calls.append(error)
        raise error

    logger = logging.getLogger("test-classified")
    meta = {"uid": "u-1", "namespace": "ns", "name": "loop"}
    with pytest.raises(kopf.TemporaryError) as caught:
        handler(ApiError(503, "ServiceUnavailable", "down"), meta=meta, logger=logger, retry=3)
    assert caught.value.delay == 8
    with caplog.at_level(logging.ERROR, logger="test-classified"):
        for _ in range(3):
            with pytest.raises(kopf.TemporaryError) as caught:
                handler(ZeroDivisionError("division by zero"), meta=meta, logger=logger, retry=0)
            assert caught.value.delay == BUG_RETRY_SECONDS
    reported = [r for r in caplog.records if r.exc_info]
    assert len(reported) == 1 and "name=loop" in reported[0].getMessage()
