"""The operator's ``/metrics``: what its looks do and what they write, for Prometheus to scrape.

The query side of Prometheus is :mod:`kaizen.metrics.prometheus`; this is the serving side, the same edge. One hook
feeds it: :func:`kaizen.controllers.reconcile.schedule` wraps every kind's look in :meth:`Exporter.instrumented`,
which times the look (``kaizen_reconcile_*``, by kind and result) and hands the status patch that
:func:`kaizen.controllers.reconcile.apply` made of the look's Effects to :mod:`kaizen.logic.operator_metrics`,
pure, for the samples. Nothing in the controllers calls a metric.

Per-object series are rebuilt at each scrape from the last status seen, so an object's series leave with it: an
object is forgotten once its scheduler no longer runs it (deleted, or this replica stopped leading). Counters are
kept per (namespace, loop) while some object of that loop is alive, then dropped (a loop created again starts
from 0, which ``rate()`` reads as a reset). Served by prometheus-client's own HTTP server thread
(:func:`serve`), apart from the event loop kopf's handlers share, and by standbys too.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from kaizen.logic import operator_metrics as om

#: A look (as :func:`kaizen.controllers.reconcile.schedule` runs it): object, patch, logger, retry -> next due.
Look = Callable[[dict[str, Any], Any, Any, int], Any]
#: Whether the scheduler of a kind still runs the object (namespace, name).
Live = Callable[[str, str], bool]
#: How long an object is kept after a look although its scheduler does not know it (yet): the scheduler records
#: an object only once its first look has returned.
GRACE_SECONDS = 5.0
#: How often looks also forget the objects gone, for a process whose metrics nobody scrapes.
PRUNE_SECONDS = 60.0

HELP = {
    "kaizen_loop_phase": "1 for the ImprovementLoop's current phase, 0 for the others.",
    "kaizen_loop_signal_value": "A loop's signal as last observed (absent when Prometheus returned no data).",
    "kaizen_loop_signal_state": "1 for the signal's current state (Healthy, Breached, Unknown), 0 for the others.",
    "kaizen_loop_signal_threshold": "A signal's bound from the spec (bound: min or max).",
    "kaizen_loop_budget_used": "Use of a weekly budget over the last seven days (budget: retrains, gpu_hours).",
    "kaizen_loop_budget_limit": "A weekly budget's limit from spec.policy (budget: retrains, gpu_hours).",
    "kaizen_loop_model_info": "1 for the model version a loop serves (role served) and its candidate (role candidate).",
    "kaizen_retrainjob_phase": "1 for the RetrainJob's current phase, 0 for the others.",
    "kaizen_retrainjob_gpu_seconds": "GPU time a RetrainJob's training pods used (GPUs x seconds).",
    "kaizen_rollout_phase": "1 for the Rollout's current phase, 0 for the others.",
    "kaizen_rollout_step": "Index of the Rollout's current step (the number of steps while promoting).",
    "kaizen_rollout_steps": "Steps in the Rollout's spec.",
    "kaizen_rollout_canary_weight": "Traffic percentage the current step asks for the canary.",
    "kaizen_rollout_achieved_weight": "Traffic percentage the routing gives the canary.",
    "kaizen_rollout_analysis_value": "A metric's value per track (stable, canary) at the Rollout's newest analysis.",
    "kaizen_rollout_analysis_delta": "Canary minus stable at the Rollout's newest analysis.",
    "kaizen_rollout_analysis_ci_low": "Lower end of the always-valid confidence interval of the delta.",
    "kaizen_rollout_analysis_ci_high": "Upper end of the always-valid confidence interval of the delta.",
    "kaizen_loop_decisions": "Decisions recorded by ImprovementLoops, by action.",
    "kaizen_retrains": "RetrainJobs finished, by outcome (Passed, GatesFailed, Failed).",
    "kaizen_retrain_gpu_seconds": "GPU-seconds used by RetrainJobs' training pods.",
    "kaizen_rollouts": "Rollouts ended, by outcome (Promoted, RolledBack, Aborted).",
    "kaizen_rollout_analysis_verdicts": "Analysis verdicts of Rollouts, by metric and verdict.",
}


@dataclass
class Seen:
    """What the exporter keeps of one object: its namespace, name and labels, its spec and status after its last
    look (as JSON text: a sixth of the memory of the dicts, which the operator held a second copy of for every
    object, beside kopf's; a scrape decodes them), what of it has been counted, the scheduler that runs it, and
    when it was last looked at (monotonic)."""

    uid: str
    meta: dict[str, Any]
    spec_and_status: str
    counted: om.Progress
    live: Live
    at: float

    def gauges(self, kind: str) -> list[om.Sample]:
        spec, status = json.loads(self.spec_and_status)
        return om.gauges(kind, self.meta, spec, status)


class Exporter(Collector):
    """The operator's metrics, in ``registry`` (the process's default one: the process and GC metrics beside)."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self._lock = threading.Lock()
        self._objects: dict[tuple[str, str, str], Seen] = {}
        self._counters: dict[tuple[str, om.Labels], float] = {}
        self._pruned = time.monotonic()
        self.reconciles = Counter("kaizen_reconcile", "Looks taken, by kind and result (success, error).",
                                  ["kind", "result"], registry=registry)
        self.errors = Counter("kaizen_reconcile_errors", "Looks that failed, by kind and error (the failure's "
                              "class; a retried failure is counted at each try).", ["kind", "error"],
                              registry=registry)
        self.duration = Histogram("kaizen_reconcile_duration_seconds", "Time a look took, by kind and result.",
                                  ["kind", "result"], registry=registry,
                                  buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
        registry.register(self)

    def instrumented(self, kind: str, look: Look, live: Live) -> Look:
        """``look``, timed and counted, with the status it writes turned into samples."""
        for result in ("success", "error"):  # at 0 from the start, so that increase() sees the first
            self.reconciles.labels(kind, result)
            self.duration.labels(kind, result)

        def observed(obj: dict[str, Any], patch: Any, logger: Any, retry: int) -> Any:
            started, result = time.perf_counter(), "error"
            try:
                due = look(obj, patch, logger, retry)
                result = "success"
                return due
            except Exception as error:
                cause = error.__cause__ if error.__cause__ is not None else error
                self.errors.labels(kind, type(cause).__name__).inc()
                raise
            finally:
                self.reconciles.labels(kind, result).inc()
                self.duration.labels(kind, result).observe(time.perf_counter() - started)
                # Written even when the look raised: the scheduler writes whatever status the look patched.
                try:
                    self.wrote(kind, obj, dict((patch.get("status") if patch else None) or {}), live)
                except Exception:  # noqa: BLE001  (a bug of the metrics must never stop a look)
                    if logger is not None:
                        logger.exception(f"Failed to derive metrics kind={kind}; the look went on")

        return observed

    def wrote(self, kind: str, obj: dict[str, Any], fields: dict[str, Any], live: Live) -> None:
        """An object's look is done and ``fields`` of its status are written: update its samples and counters."""
        meta = obj.get("metadata") or {}
        status = dict(obj.get("status") or {})
        for field, value in fields.items():
            if value is None:
                status.pop(field, None)
            else:
                status[field] = value
        key = (kind, str(meta.get("namespace") or ""), str(meta.get("name") or ""))
        with self._lock:
            seen = self._objects.get(key)
            if seen is None or seen.uid != meta.get("uid"):
                # First seen (or created again under the same name): what it already holds is not counted.
                counted = om.progress(kind, dict(obj.get("status") or {}))
                seen = self._objects[key] = Seen(str(meta.get("uid")), {}, "", counted, live, 0.0)
                for zero in om.zeros(kind, meta, dict(obj.get("spec") or {})):
                    self._counters.setdefault((zero.name, zero.labels), 0.0)
            added, seen.counted = om.increments(kind, meta, seen.counted, status)
            for increment in added:
                series = (increment.name, increment.labels)
                self._counters[series] = self._counters.get(series, 0.0) + increment.value
            seen.meta = {k: meta.get(k) for k in ("namespace", "name", "labels")}
            seen.spec_and_status = json.dumps([obj.get("spec") or {}, status], separators=(",", ":"))
            seen.at = time.monotonic()
            if seen.at - self._pruned > PRUNE_SECONDS:
                self._forget_the_gone(seen.at)

    def _forget_the_gone(self, now: float) -> None:
        """Drop the objects no scheduler runs any more, and the counters of loops none of whose objects is left.
        (At each scrape, and every :data:`PRUNE_SECONDS` of looks, so that memory stays bounded unscraped too.)"""
        self._pruned = now
        for key, seen in list(self._objects.items()):
            if now - seen.at > GRACE_SECONDS and not seen.live(key[1], key[2]):
                del self._objects[key]
        loops = {(seen.meta["namespace"] or "", om.loop_of(key[0], seen.meta)) for key, seen in self._objects.items()}
        for series in [s for s in self._counters if _loop_key(s[1]) not in loops]:
            del self._counters[series]

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            self._forget_the_gone(time.monotonic())
            samples = [s for key, seen in self._objects.items() for s in seen.gauges(key[0])]
            counters = dict(self._counters)
        families: dict[str, Any] = {}
        for s in samples:
            family = families.get(s.name)
            if family is None:
                family = families[s.name] = GaugeMetricFamily(s.name, HELP.get(s.name, s.name),
                                                              labels=[k for k, _ in s.labels])
            family.add_metric([v for _, v in s.labels], s.value)
        for (name, labels), value in sorted(counters.items()):
            family = families.get(name)
            if family is None:
                family = families[name] = CounterMetricFamily(name, HELP.get(name, name), labels=[k for k, _ in labels])
            family.add_metric([v for _, v in labels], value)
        yield from families.values()

    def describe(self) -> Iterator[Metric]:
        return iter(())  # the families depend on the objects seen: nothing to check at registration


def _loop_key(labels: om.Labels) -> tuple[str, str]:
    found = dict(labels)
    return found.get("namespace", ""), found.get("loop", "")


#: The process's exporter: the controllers' looks feed it, ``kaizen operator --metrics-bind-address`` serves it.
EXPORTER = Exporter()


def serve(host: str, port: int) -> None:
    """Serve ``/metrics`` of the process's default registry on ``host:port``, from a thread of its own."""
    start_http_server(port, addr=host, registry=REGISTRY)


def bind_address(value: str) -> tuple[str, int]:
    """``HOST:PORT`` (``:PORT`` for every interface) as (host, port); ValueError says what is wrong."""
    host, colon, port = value.rpartition(":")
    if not colon or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{value!r} is not HOST:PORT (e.g. :8081, or 127.0.0.1:8081) with a port from 1 to 65535")
    return host.strip("[]") or "0.0.0.0", int(port)
