"""The four policies the bench compares, each deciding what its users are served after every simulated tick.

* :class:`Static`: the model of day one, for ever.
* :class:`Scheduled`: the cron-style pipeline: at fixed times a full retrain, from the initial weights, on all the
  data there is (the replay data and every consented correction so far), promoted straight away, no canary.
* :class:`Oracle`: the limit. It knows when each drift began and which answers it changed, and as soon as the loop's
  ``minNewItems`` consented corrections have arrived since then, runs the retrain Kaizen would run (same template,
  same trainer), targeted at every slice a drift has changed so far, and promotes the candidate at once.
* :class:`Kaizen`: Kaizen's own decisions. The ImprovementLoop is a manifest a team would apply; every interval this
  adapter does what ``kaizen.controllers.improvementloop`` does around the pure logic (``observe_signals``,
  ``fold_outcomes``, ``decide``, ``record``), and every tick what ``kaizen.controllers.rollout`` does around
  ``look_due`` / ``judge_look`` / ``next_action``. RetrainJobs become trainer configs through
  ``kaizen.logic.retrain.plan`` and are judged by ``kaizen.logic.gates.judge`` on the trainer's compact result, as
  the RetrainJob controller does.

What is the bench's own (small adapters, no decisions): children are records here, not Kubernetes objects; the
collector and Prometheus are :class:`~ledger.Ledger`; a training Job ends after the trainer's measured wall time; a
canary's pods are available one tick after they are asked for, and a promoted stable serves from the next tick;
replica-ratio routing sends a canary the share of requests its replicas have.

Side effects (training, writing an export, evaluating a promotion) go through :class:`Services`, injected, so the
policies are tested without torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol
from urllib.parse import parse_qs, urlparse

from kaizen.api.common import ModelRef, parse_duration
from kaizen.api.improvementloop import ImprovementLoopSpec, ImprovementLoopStatus
from kaizen.api.retrainjob import DataSource, RetrainJobSpec
from kaizen.api.rollout import RolloutSpec, RolloutStatus
from kaizen.api.trainer import FeedbackExport, TrainerConfig, TrainerResult
from kaizen.logic import retrain
from kaizen.logic.gates import judge
from kaizen.logic.loop import Child, Feedback, Observed, Reading, decide, fold_outcomes, observe_signals, record
from kaizen.logic.promql import fill
from kaizen.logic.rollout import TERMINAL, MetricSample, Observation, analysis_window, judge_look, look_due, \
    next_action

from ledger import FeedbackItem, Ledger  # bench/loop is on sys.path: run.py puts it there, and so do its tests


@dataclass(frozen=True)
class Training:
    """One real trainer run: its result as the operator reads it, and what it cost."""

    config: TrainerConfig
    result: TrainerResult
    cpu_seconds: float
    wall_seconds: float


class Services(Protocol):
    """The side effects a policy needs; the bench's runner implements them with the real trainer and models."""

    def train(self, config: TrainerConfig) -> Training: ...

    def write_export(self, name: str, items: list[FeedbackItem], filters: dict[str, Any], now: datetime) -> str: ...

    def write_dataset(self, name: str, items: list[FeedbackItem]) -> str: ...

    def promote(self, policy: Policy, now: datetime, model: ModelRef, how: str) -> None: ...


@dataclass
class Served:
    """What the policy's Deployment serves: the stable model and, during a canary, the canary and its share."""

    stable: ModelRef
    canary: ModelRef | None = None
    canary_share: float = 0.0


class Policy:
    """Base: a served model, a ledger of its users' feedback, and the record of what the policy did."""

    name = "policy"

    def __init__(self, model: ModelRef, ledger: Ledger, services: Services):
        self.served = Served(stable=model)
        self.ledger = ledger
        self.services = services
        self.trainings: list[Training] = []
        self.events: list[dict[str, Any]] = []
        self.canary_rollbacks = 0
        self.model_rollbacks = 0

    def step(self, now: datetime) -> None:
        """Act at ``now``, the end of a tick; the next tick is served as :attr:`served` says."""

    def log(self, now: datetime, what: str, **details: Any) -> None:
        self.events.append({"time": _iso(now), "event": what, **details})

    def _train(self, config: TrainerConfig, now: datetime) -> Training:
        run = self.services.train(config)
        self.trainings.append(run)
        self.log(now, "Trained", candidate=config.candidate_version, phase=run.result.phase,
                 message=run.result.message[:200], cpuSeconds=round(run.cpu_seconds, 2),
                 rows=(run.result.dataset.rows if run.result.dataset else None))
        return run

    def _promote(self, now: datetime, model: ModelRef, how: str) -> None:
        self.services.promote(self, now, model, how)
        self.served.stable = model


class Static(Policy):
    name = "static"


class Scheduled(Policy):
    """A full retrain at each time of ``times``, from ``init`` on replay + all consented corrections so far."""

    name = "scheduled"

    def __init__(self, model: ModelRef, ledger: Ledger, services: Services, *, times: list[datetime],
                 template: TrainerConfig, init: ModelRef, target: str):
        super().__init__(model, ledger, services)
        self.times, self.template, self.init, self.target = list(times), template, init, target
        self.runs = 0

    def step(self, now: datetime) -> None:
        while self.times and self.times[0] <= now:
            self.times.pop(0)
            self.runs += 1
            version = f"sched-{self.runs}"
            # "All data": the corrections a team's labelling pipeline collected, first (so that where a correction
            # and a stale replay row share an input, the correction is the one kept), then the replay data.
            corrections = self.services.write_dataset(version, self.ledger.corrections(self.target))
            data = self.template.data.model_copy(
                update={"replay": [DataSource(uri=corrections), *self.template.data.replay]})
            config = self.template.model_copy(update={
                "job": f"bench/{version}", "decision_id": f"cron-{self.runs}", "baseline": self.init,
                "candidate_version": version, "data": data,
                "output_dir": f"{self.template.output_dir}/{version}",
                "checkpoint_dir": f"{self.template.output_dir}/{version}/checkpoints",
            })
            run = self._train(config, now)
            if run.result.phase == "Succeeded" and run.result.candidate is not None:
                self._promote(now + timedelta(seconds=run.wall_seconds), run.result.candidate, "direct")


@dataclass(frozen=True)
class Drift:
    """A drift as the oracle knows it: when it began and which slice it changed."""

    onset: datetime
    scenarios: tuple[str, ...]
    cohorts: tuple[str, ...] = ()


class Oracle(Policy):
    """Retrains at once when enough corrections followed a drift's onset; promotes without a canary."""

    name = "oracle"

    def __init__(self, model: ModelRef, ledger: Ledger, services: Services, *, drifts: list[Drift],
                 loop: ImprovementLoopSpec, namespace: str):
        super().__init__(model, ledger, services)
        self.pending = sorted(drifts, key=lambda d: d.onset)
        self.begun: list[Drift] = []
        self.loop, self.namespace = loop, namespace
        self.runs = 0

    def step(self, now: datetime) -> None:
        feedback = self.loop.feedback
        assert feedback is not None, "the oracle needs the loop's feedback spec (minNewItems, categories)"
        while self.pending and self.pending[0].onset <= now:
            drift = self.pending[0]
            count = self.ledger.negative_count(self.loop.target.deployment, since=drift.onset,
                                               categories=feedback.categories,
                                               consented_only=feedback.require_consent)
            if count < feedback.min_new_items:
                return
            self.begun.append(self.pending.pop(0))
            self.runs += 1
            name = f"oracle-{self.runs}"
            spec = RetrainJobSpec.model_validate({
                **self.loop.retrain.model_dump(mode="json", by_alias=True, exclude_none=True,
                                               exclude={"base_model"}),
                "reason": {"decisionId": name, "summary": f"Drift at {_iso(drift.onset)}: {count} corrections."},
                "baseline": self.served.stable.model_dump(mode="json"),
                # Every slice a drift so far has changed: the replay data predates them all, and a retrain that
                # did not supersede an earlier drift's replay rows would teach its old answer again.
                "targets": {"scenarios": sorted({s for d in self.begun for s in d.scenarios}),
                            "cohorts": sorted({c for d in self.begun for c in d.cohorts}),
                            "categories": list(feedback.categories)},
                "gates": [g.to_wire() for g in self.loop.gates],
                "feedback": {"collectorURL": feedback.collector_url, "model": self.loop.target.deployment},
            })
            config = export_feedback(retrain.plan(spec, name, self.namespace, "oracle").config, self.ledger,
                                     self.services, name, now)
            run = self._train(config, now)
            if run.result.phase == "Succeeded" and run.result.candidate is not None:
                self._promote(now + timedelta(seconds=run.wall_seconds), run.result.candidate, "direct")


def export_feedback(config: TrainerConfig, ledger: Ledger, services: Services, name: str,
                    now: datetime) -> TrainerConfig:
    """The trainer config with its collector export URL replaced by a file holding exactly what that export returns
    (the same filters: model, categories, scenarios, cohorts, since)."""
    if config.feedback is None:
        return config
    query = {k: v[-1] for k, v in parse_qs(urlparse(config.feedback.url).query).items()}
    split = {k: [x for x in query.get(k, "").split(",") if x] for k in ("categories", "scenarios", "cohorts")}
    since = datetime.fromisoformat(query["since"].replace("Z", "+00:00")) if "since" in query else None
    items = ledger.export(query["model"], since=since, **split)
    path = services.write_export(name, items, query, now)
    return config.model_copy(update={"feedback": FeedbackExport(url=path)})


# ------------------------------------------------------------------------------------------------------ Kaizen


@dataclass
class Job:
    """A RetrainJob the loop created, and its (real) training run."""

    name: str
    created: datetime
    spec: RetrainJobSpec
    training: Training
    decision_id: str

    @property
    def finished(self) -> datetime:
        return self.created + timedelta(seconds=self.training.wall_seconds)

    @property
    def verdict(self) -> str | None:
        result = self.training.result
        if result.phase != "Succeeded":
            return None
        return judge(self.spec.gates, result.metrics.get("candidate", {}), result.metrics.get("baseline", {}))[1]

    def child(self, now: datetime) -> Child:
        done = now >= self.finished
        result = self.training.result
        return Child(kind="RetrainJob", name=self.name, created=self.created,
                     phase=result.phase if done else "Training", verdict=self.verdict if done else None,
                     finished=self.finished if done else None,
                     gpu_seconds=self.spec.resources.gpus * min(self.training.wall_seconds,
                                                                (now - self.created).total_seconds()),
                     candidate=result.candidate if done and result.phase == "Succeeded" else None,
                     loop_generation=1, decision_id=self.decision_id, message=result.message if done else None)


@dataclass
class Release:
    """A Rollout the loop created: its spec, the status the step machine keeps, and what the bench applied."""

    name: str
    created: datetime
    spec: RolloutSpec
    rollback: bool
    status: RolloutStatus = field(default_factory=RolloutStatus)
    replicas: int = 0  # canary replicas applied at the last step (available from the next one)
    promoted: bool = False  # the stable Deployment was patched to the canary's model
    finished: datetime | None = None

    def child(self) -> Child:
        return Child(kind="Rollout", name=self.name, created=self.created, phase=self.status.phase,
                     finished=self.finished, candidate=self.spec.canary_model, retrain_job=self.spec.retrain_job_ref,
                     rollback=self.rollback, loop_generation=1, message=self.status.message)


class Kaizen(Policy):
    """Kaizen's ImprovementLoop, RetrainJob and Rollout logic driving the policy's model."""

    name = "kaizen"

    def __init__(self, spec: ImprovementLoopSpec, ledger: Ledger, services: Services, *, namespace: str,
                 stable_replicas: int, loop: str = "support-bot", uid: str = "bench-loop"):
        assert spec.model is not None, "the bench's loop names the model it starts from (spec.model)"
        super().__init__(spec.model, ledger, services)
        self.spec, self.namespace, self.loop, self.uid = spec, namespace, loop, uid
        self.stable_replicas = stable_replicas
        self.status = ImprovementLoopStatus()
        self.jobs: list[Job] = []
        self.releases: list[Release] = []
        self.decisions: list[dict[str, Any]] = []

    # The rollout controller: every tick, each unfinished Rollout.
    def _step_release(self, release: Release, now: datetime) -> None:
        spec, status = release.spec, release.status
        look = None
        if look_due(spec, status, now):
            window = analysis_window(status, now, parse_duration(spec.analysis.interval))
            samples = {}
            for metric in spec.analysis.metrics:
                pair = []
                for track, model in (("stable", spec.stable_model), ("canary", spec.canary_model)):
                    values = dict(track=track, version=model.version, namespace=self.namespace,
                                  target=spec.target.deployment, window=window)
                    if metric.ratio:
                        pair.append(MetricSample(good=self.ledger.query(fill(metric.ratio.good, **values), now),
                                                 total=self.ledger.query(fill(metric.ratio.total, **values), now)))
                    else:
                        assert metric.threshold is not None
                        pair.append(MetricSample(value=self.ledger.query(fill(metric.threshold.query, **values),
                                                                         now)))
                samples[metric.name] = (pair[0], pair[1])
            look = judge_look(spec.analysis, samples, step=status.current_step or 0,
                              weight=status.canary_weight or 0, now=now, evidence=status.evidence)
        observation = Observation(stable_replicas=self.stable_replicas, canary_available=release.replicas,
                                  stable_promoted=release.promoted, look=look)
        decision = next_action(spec, status, observation, now)
        release.status = decision.status
        release.replicas = decision.canary_replicas or 0
        if decision.promote and not release.promoted:
            self._promote(now, spec.canary_model, "rollback" if release.rollback else "canary")
            release.promoted = True
        if decision.status.phase in TERMINAL and release.finished is None:
            release.finished = now
            if decision.status.phase == "RolledBack":
                self.canary_rollbacks += 1
            elif decision.status.phase == "Promoted" and release.rollback:
                self.model_rollbacks += 1
            self.log(now, f"Rollout{decision.status.phase}", rollout=release.name,
                     canary=spec.canary_model.version, message=(decision.status.message or "")[:300])
        if release.replicas and decision.status.phase not in TERMINAL:
            self.served.canary = spec.canary_model
            self.served.canary_share = release.replicas / (self.stable_replicas + release.replicas)
        else:
            self.served.canary, self.served.canary_share = None, 0.0

    def children(self, now: datetime) -> tuple[Child, ...]:
        return tuple([j.child(now) for j in self.jobs] + [r.child() for r in self.releases])

    # The ImprovementLoop controller: every spec.interval.
    def _step_loop(self, now: datetime) -> list[Release]:
        spec = self.spec
        if self.status.last_observed and now - self.status.last_observed < parse_duration(spec.interval):
            return []
        children = self.children(now)
        outcomes = fold_outcomes(self.status, spec, children, None)
        version = outcomes.model.version if outcomes.model else ""
        readings = {}
        for signal in spec.signals:
            query = fill(signal.query, namespace=self.namespace, target=spec.target.deployment, version=version)
            readings[signal.name] = Reading(signal.name, self.ledger.query(query, now))
        feedback = None
        if spec.feedback is not None:
            jobs = sorted(self.jobs, key=lambda j: j.created)
            since = jobs[-1].created if jobs else None
            model = spec.target.deployment
            feedback = Feedback(
                new_items=self.ledger.negative_count(model, since, spec.feedback.categories,
                                                     spec.feedback.require_consent),
                backlog=self.ledger.backlog(model, since, spec.feedback.categories))
        observed = Observed(signals=observe_signals(spec.signals, readings, self.status.signals, now),
                            children=children, feedback=feedback)
        plan = decide(spec, observed, outcomes.model, outcomes.previous_model, outcomes.consecutive_failures, now,
                      loop=self.loop, uid=self.uid, generation=1)
        decisions = record(outcomes.decisions, plan, now, loop=self.loop)
        created: list[Release] = []
        if decisions is not outcomes.decisions:
            decision = decisions[0]
            self.decisions.append(decision.model_dump(mode="json", by_alias=True, exclude_none=True))
            if plan.create is not None:
                body = {**plan.create.spec, "reason": {"decisionId": decision.id, "summary": plan.reason[:1024],
                                                       "evidence": plan.evidence}}
                if plan.create.kind == "RetrainJob":
                    self._start_job(plan.create.name, RetrainJobSpec.model_validate(body), decision.id, now)
                else:
                    release = Release(plan.create.name, now, RolloutSpec.model_validate(body),
                                      rollback=plan.action == "Rollback")
                    self.releases.append(release)
                    created.append(release)
        self.status = ImprovementLoopStatus(
            phase=plan.phase, model=outcomes.model, previous_model=outcomes.previous_model,
            signals=list(observed.signals), last_observed=now,
            consecutive_failures=outcomes.consecutive_failures, decisions=decisions)
        return created

    def _start_job(self, name: str, spec: RetrainJobSpec, decision_id: str, now: datetime) -> None:
        config = export_feedback(retrain.plan(spec, name, self.namespace, self.uid).config, self.ledger,
                                 self.services, name, now)
        self.jobs.append(Job(name, now, spec, self._train(config, now), decision_id))

    def step(self, now: datetime) -> None:
        for release in self.releases:
            if release.finished is None:
                self._step_release(release, now)
        # A Rollout created now is picked up by the rollout controller's next 1 s tick: within this one.
        for release in self._step_loop(now):
            self._step_release(release, now)


def _iso(when: datetime) -> str:
    return when.replace(microsecond=0).isoformat().replace("+00:00", "Z")
