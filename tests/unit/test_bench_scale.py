"""bench/scale's pure parts: percentiles, counters read from a Prometheus text exposition, CPU time and RSS from
/proc, the due time of a breach and of a failing look, growth with N, and the targets."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
# Loaded by path under its own name: bench/loop has a `measure` module too, which another test imports first.
_spec = importlib.util.spec_from_file_location("bench_scale_measure", ROOT / "bench" / "scale" / "measure.py")
measure = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = measure
_spec.loader.exec_module(measure)

EXPOSITION = """\
# HELP apiserver_flowcontrol_dispatched_requests_total Number of requests executed by API Priority and Fairness
# TYPE apiserver_flowcontrol_dispatched_requests_total counter
apiserver_flowcontrol_dispatched_requests_total{flow_schema="kaizen-bench-operator",priority_level="workload-high"} 120
apiserver_flowcontrol_dispatched_requests_total{flow_schema="global-default",priority_level="global-default"} 7
apiserver_flowcontrol_dispatched_requests_total{flow_schema="kube-controller-manager",priority_level="workload-high"} 30
# HELP prometheus_http_requests_total Counter of HTTP requests.
# TYPE prometheus_http_requests_total counter
prometheus_http_requests_total{code="200",handler="/api/v1/query"} 41
prometheus_http_requests_total{code="400",handler="/api/v1/query"} 2
prometheus_http_requests_total{code="200",handler="/api/v1/query_range"} 5
prometheus_http_requests_total{code="200",handler="/metrics"} 1000
# TYPE go_goroutines gauge
go_goroutines 12
"""


def test_percentile_interpolates_between_ranks_as_numpy_does():
    values = [5.0, 1.0, 4.0, 2.0, 3.0]
    assert measure.percentile(values, 50) == 3.0
    assert measure.percentile(values, 0) == 1.0
    assert measure.percentile(values, 100) == 5.0
    assert measure.percentile(values, 99) == pytest.approx(4.96)
    assert measure.percentile([1.0, 2.0], 25) == pytest.approx(1.25)
    assert measure.percentile([7.0], 99) == 7.0
    assert measure.percentile([], 50) is None
    with pytest.raises(ValueError, match="0..100"):
        measure.percentile(values, 101)


def test_counter_sum_selects_by_name_and_labels():
    name = "apiserver_flowcontrol_dispatched_requests_total"
    assert measure.counter_sum(EXPOSITION, name, {"flow_schema": "kaizen-bench-operator"}) == 120
    assert measure.counter_sum(EXPOSITION, name) == 157
    assert measure.counter_sum(EXPOSITION, name, {"priority_level": "workload-high"}) == 150
    queries = measure.counter_sum(EXPOSITION, "prometheus_http_requests_total",
                                  {"handler": ["/api/v1/query", "/api/v1/query_range"]})
    assert queries == 48  # the failed query counts (it was asked), the scrapes of /metrics do not
    assert measure.counter_sum(EXPOSITION, name, {"flow_schema": "absent"}) == 0
    assert measure.counter_sum(EXPOSITION, "go_goroutines") == 12


def test_requests_are_broken_down_by_verb_and_resource_and_turned_into_rates():
    before = """\
# TYPE apiserver_request_total counter
apiserver_request_total{verb="LIST",resource="rollouts",subresource="",code="200"} 10
apiserver_request_total{verb="PATCH",resource="rollouts",subresource="status",code="200"} 4
apiserver_request_total{verb="PATCH",resource="rollouts",subresource="status",code="409"} 1
"""
    after = before.replace("} 10", "} 70").replace("} 4", "} 34") + (
        'apiserver_request_total{verb="GET",resource="secrets",subresource="",code="200"} 1\n')
    by = ("verb", "resource", "subresource")
    assert measure.counters_by(before, "apiserver_request_total", by) == {"LIST rollouts -": 10,
                                                                         "PATCH rollouts status": 5}
    assert measure.rates(measure.counters_by(before, "apiserver_request_total", by),
                         measure.counters_by(after, "apiserver_request_total", by), 30.0) == {
        "LIST rollouts -": 2.0, "PATCH rollouts status": 1.0}  # the Secret's 1 in 30 s is under 0.05/s


def test_cpu_seconds_counts_fields_after_the_command_name_even_with_spaces_and_parentheses():
    # pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime ...
    stat = "4242 (python (kaizen) x) S 1 4242 4242 0 -1 4194560 2000 0 3 0 250 50 0 0 20 0 9 0 100 0 0\n"
    assert measure.cpu_seconds(stat, 100) == 3.0


def test_rss_mib_reads_vmrss_and_says_when_the_process_is_gone():
    status = "Name:\tpython\nVmPeak:\t  300000 kB\nVmRSS:\t  102400 kB\nThreads:\t9\n"
    assert measure.rss_mib(status) == 100.0
    with pytest.raises(ValueError, match="exited"):
        measure.rss_mib("Name:\tpython\nState:\tZ (zombie)\n")


def test_a_breach_is_due_at_the_first_scheduled_look_after_it_became_visible():
    looks = [100.0, 130.0, 160.0]
    # Visible at 140: the look at 130 could not see it; the next was due at 160.
    assert measure.breach_due(looks, 140.0, 30.0) == 160.0
    # A look that ran late does not move the due time: due at 160 even if the bench only saw a look at 175.
    assert measure.breach_due([100.0, 130.0, 175.0], 140.0, 30.0) == 160.0
    # Looks that change nothing are not recorded, but keep to the grid of the last recorded one: due at 160.
    assert measure.breach_due([100.0], 140.0, 30.0) == 160.0
    assert measure.breach_due([100.0], 250.0, 30.0) == 250.0  # on a grid point
    assert measure.breach_due([], 140.0, 30.0) == 140.0


def test_the_failing_look_is_the_earliest_fail_whatever_the_order_of_the_records():
    newest_first = [(30.0, "Fail"), (25.0, "Fail"), (20.0, "Pass"), (15.0, "Inconclusive")]
    assert measure.failing_look(newest_first) == 25.0
    assert measure.failing_look([(20.0, "Pass")]) is None


def test_latency_summary_rounds_and_counts_misses():
    summary = measure.latency_summary([0.1, 0.2, 0.3, 1.5], missed=1)
    assert summary == {"p50": 0.25, "p99": pytest.approx(1.464), "max": 1.5, "samples": 4, "missed": 1}
    assert measure.latency_summary([])["p99"] is None


def test_growth_fits_the_exponent_of_a_power_law():
    linear = measure.growth([(10, 1.0), (100, 10.0), (1000, 100.0)])
    assert linear == {"exponent": 1.0, "costRatio": 100.0, "nRatio": 100.0}
    assert measure.growth([(10, 5.0), (100, 5.0)])["exponent"] == 0.0
    assert measure.growth([(10, 1.0), (100, 100.0)])["exponent"] == 2.0
    assert measure.growth([(10, 1.0)]) is None
    assert measure.growth([(10, 0.0), (100, 3.0)]) is None  # a zero cost has no logarithm: not a fit


def test_judge_compares_at_n_1000_and_a_missed_action_fails_the_latency_target():
    within = {"N": 1000, "apiRequestsPerSecondAtRest": 12.0, "operatorRssMiB": 250.0, "operatorCpuCores": 0.4,
              "p99CauseToActionSeconds": 1.2, "causes": {"annotationToEffect": {"missed": 0}}}
    assert measure.judge([within])["all"] is True
    over = {**within, "operatorCpuCores": 0.7}
    assert measure.judge([over]) == {"apiRequestsPerSecondAtRest": True, "operatorRssMiB": True,
                                     "operatorCpuCores": False, "p99CauseToActionSeconds": True, "all": False}
    missed = {**within, "causes": {"annotationToEffect": {"missed": 1}}}
    assert measure.judge([missed])["p99CauseToActionSeconds"] is False
    assert measure.judge([{**within, "N": 100}])["all"] is None  # not measured at 1,000: not met, not failed


def test_log_errors_counts_each_tracebacks_exception_and_error_lines_across_interleaved_logging():
    log = "\n".join([
        "[2026-12-01 20:52:03,943] kopf.objects         [ERROR   ] Failed with an unexpected error name=a",
        "Traceback (most recent call last):",
        '  File "stats.py", line 98, in value',
        "[2026-12-01 20:52:03,950] kopf.objects         [INFO    ] Analysed step=1",  # another thread's line
        "    return math.exp(top)",
        "OverflowError: math range error",
        "[2026-12-01 20:52:04,001] kopf.objects         [INFO    ] Analysed step=1",
        "Traceback (most recent call last):",
        '  File "stats.py", line 98, in value',
        "OverflowError: math range error",
        "[2026-12-01 20:42:16,405] kopf.objects         [ERROR   ] Request attempt #1/9 failed; will retry: PATCH "
        "https://127.0.0.1:56341/apis/kaizen.dev/v1alpha1/namespaces/bench/rollouts/rest-0124 -> 429",
        "[2026-12-01 20:42:16,406] kopf.objects         [ERROR   ] Request attempt #1/9 failed; will retry: PATCH "
        "https://127.0.0.1:56341/apis/kaizen.dev/v1alpha1/namespaces/bench/rollouts/rest-0125 -> 429",
    ])
    assert measure.log_errors(log) == {"OverflowError: math range error": 2,
                                       "Request attempt #N/N failed; will retry: PATCH URL -> N": 2,
                                       "Failed with an unexpected error name=a": 1}
    assert measure.log_errors("[2026-12-01 20:52:04,001] kopf.objects [INFO    ] fine") == {}
