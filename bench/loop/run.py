"""Loop benchmark: what the loop buys, in one run. A simulated fortnight of a support bot's traffic with two drift
events, compressed into minutes, served by four policies on the same users and the same drift.

The world is the demo's (:mod:`kaizen.dev.support_domain`): from the first drift on, a return is answered "within 14
days", not 30 (for everyone, or for ``--policy-cohorts`` only); from the second, users ask to pause their plan, which
no model has seen. The users are :class:`kaizen.dev.users.Population`: cohorts, consent, opt-outs, and feedback on
a share of the answers (wrong ones rated down with the right answer as the correction). Time is simulated in ticks
of 15 minutes; in every tick every policy's served model(s) answer the very same requests (same seed), with the
real model: ``kaizen_server.engine.Engine``, batched, greedy (so answers are cached per model and prompt). Each
policy's users judge its answers and leave feedback in its own ledger (collector and Prometheus, see
:mod:`ledger`). Training is real: the trainer's pipeline in this process (as ``kaizen.dev.demo_data.train`` runs
it), and its compute is the CPU time it took. Policies (:mod:`policies`): ``static``, ``scheduled`` (a nightly full
retrain from the initial weights on replay + every consented correction, promoted without a canary), ``kaizen``
(Kaizen's own loop, gate and rollout logic on the manifest ``support-bot.yaml``) and ``oracle`` (knows each drift's
onset; retrains as Kaizen would, targeted, once the loop's minNewItems corrections are in; promotes at once).

Reports per policy: bad answers served (total, per cohort), time from each drift to recovery, training CPU-seconds,
rollbacks, bad answers served by canaries, worse promotions (a promoted model answering the evaluation of the world
at that time worse than the model it replaced); prints the table with the machine, and writes
``bench/results/loop.json``.

    .venv/bin/python bench/loop/run.py [--quick] [--out FILE] [--seed N] [--policy-cohorts free,pro]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
for path in (ROOT / "operator", ROOT / "trainer-image", HERE):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import torch  # noqa: E402
import transformers  # noqa: E402
import yaml  # noqa: E402

from kaizen.api.common import ModelRef  # noqa: E402
from kaizen.api.improvementloop import ImprovementLoopSpec  # noqa: E402
from kaizen.api.trainer import TrainerConfig, TrainerResult  # noqa: E402
from kaizen.collector.models import ExportManifest, ExportRow  # noqa: E402
from kaizen.dev import demo_data  # noqa: E402
from kaizen.dev import support_domain as sd  # noqa: E402
from kaizen.dev.users import Population, Request  # noqa: E402
from kaizen_server.engine import Engine  # noqa: E402
from kaizen_trainer import pipeline  # noqa: E402
from kaizen_trainer.errors import TrainerError  # noqa: E402
from kaizen_trainer.report import compact  # noqa: E402
from ledger import FeedbackItem, Ledger  # noqa: E402
from measure import Promotion, Tally, recovery_ticks, targets, timetable, worse_promotions  # noqa: E402
from policies import Drift, Kaizen, Oracle, Policy, Scheduled, Static, Training  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "loop.json"
MANIFEST = HERE / "support-bot.yaml"
MODEL = "support-bot"
NAMESPACE = "bench"
START = datetime(2026, 1, 5, tzinfo=timezone.utc)  # a Monday, 00:00
STABLE_REPLICAS = 4
#: Every right answer is at most 10 words and a full stop (support_domain); room for a few more.
MAX_TOKENS = 16
EVAL_REQUESTS = 600
BATCH = 256
#: Ticks of upcoming requests the stable model answers in the same batches as this tick's.
LOOKAHEAD = 8


@dataclass(frozen=True)
class Scenario:
    """The simulated period: its length, clock, traffic and drift."""

    days: float
    tick_minutes: int
    requests_per_hour: int
    drift_hours: tuple[float, float]
    users: int
    recovery_window_hours: float
    reference_hours: float
    tolerance: float
    cron_every_hours: float
    cron_first_hours: float
    policy_cohorts: tuple[str, ...] | None = None

    @property
    def tick(self) -> timedelta:
        return timedelta(minutes=self.tick_minutes)

    @property
    def ticks(self) -> int:
        return int(timedelta(days=self.days) / self.tick)

    @property
    def requests_per_tick(self) -> int:
        return round(self.requests_per_hour * self.tick_minutes / 60)

    def to_ticks(self, hours: float) -> int:
        return round(timedelta(hours=hours) / self.tick)


FULL = Scenario(days=14, tick_minutes=15, requests_per_hour=240, drift_hours=(3 * 24 + 10, 9 * 24 + 14), users=1000,
                recovery_window_hours=2, reference_hours=24, tolerance=0.02, cron_every_hours=24,
                cron_first_hours=2)
QUICK = Scenario(days=1, tick_minutes=15, requests_per_hour=160, drift_hours=(5, 14), users=400,
                 recovery_window_hours=2, reference_hours=5, tolerance=0.03, cron_every_hours=12,
                 cron_first_hours=9)


# ------------------------------------------------------------------------------------------------------ models


class Models:
    """Served models, loaded once, with their answers cached per prompt (decoding is greedy: same prompt, same
    answer)."""

    def __init__(self) -> None:
        self.engines: dict[str, Engine] = {}
        self.cache: dict[tuple[str, str], str] = {}
        self.generated = 0
        self.seconds = 0.0

    def answers(self, model: ModelRef, prompts: list[str], upcoming: list[str] = ()) -> list[str]:
        """The model's answers to ``prompts``; ``upcoming`` prompts (the next ticks' requests) are answered in the
        same batches when missing, since small batches cost the engine about as much per prompt as large ones."""
        missing = list(dict.fromkeys(p for p in (*prompts, *upcoming) if (model.version, p) not in self.cache))
        if missing and any((model.version, p) not in self.cache for p in prompts):
            began = time.perf_counter()
            engine = self.engines.get(model.version)
            if engine is None:
                engine = self.engines[model.version] = Engine.load(model.uri, "causal-lm")
            for start in range(0, len(missing), BATCH):
                chunk = missing[start: start + BATCH]
                for prompt, completion in zip(chunk, engine.complete(chunk, max_tokens=MAX_TOKENS), strict=True):
                    self.cache[(model.version, prompt)] = completion.text
            self.generated += len(missing)
            self.seconds += time.perf_counter() - began
        return [self.cache[(model.version, p)] for p in prompts]


# ---------------------------------------------------------------------------------------------------- services


class Bench:
    """The simulated world, the real models and trainer, and what each policy served."""

    def __init__(self, scenario: Scenario, work: Path, seed: int):
        self.scenario, self.work, self.seed = scenario, work, seed
        hours = scenario.drift_hours
        self.domain = sd.Domain(sd.drift(policy_at=hours[0] * 3600, policy_cohorts=scenario.policy_cohorts,
                                         new_intent_at=hours[1] * 3600))
        horizon = scenario.days * 86400
        self.population = Population(self.domain, size=scenario.users, seed=seed, opt_out=0.05,
                                     opt_out_between=(0.0, horizon))
        self.models = Models()
        self.tallies: dict[str, Tally] = {}
        self.promotions: dict[str, list[Promotion]] = {}
        self.during_canary_bad: dict[str, int] = {}

    def at(self, when: datetime) -> float:
        return (when - START).total_seconds()

    # The data a team has at the start, and the model it serves: the demo's, made by the demo's own functions.
    def prepare(self) -> tuple[ModelRef, ModelRef, dict[str, Any]]:
        data = self.work / "data"
        before = -1.0  # domain time before every drift event
        history = demo_data.write_jsonl(data / "history.jsonl",
                                        self.domain.rows(1500, seed=1, at=before, prefix="history"))
        init = demo_data.initial_model(self.work / "models" / "init", self.domain)
        began = time.process_time()
        result = demo_data.train(self.work / "build" / "v1", self.work / "models" / "v1", task="causal-lm",
                                 baseline=("v0", str(init)), candidate_version="v1", replay=[history],
                                 hyperparameters=demo_data.BASELINE_HYPERPARAMETERS)
        baseline = {"steps": result.get("steps"), "cpuSeconds": round(time.process_time() - began, 2),
                    "holdoutExactMatch": result["metrics"]["candidate"].get("holdout.exactMatch")}
        return (ModelRef(version="v0", uri=str(init)), ModelRef(version="v1", uri=str(self.work / "models" / "v1" /
                                                                                     "model")), baseline)

    def train(self, config: TrainerConfig) -> Training:
        """One real trainer run in this process; its compute is the CPU time this process spent in it."""
        cpu, wall = time.process_time(), time.perf_counter()
        try:
            result = compact(pipeline.run(config), config)
        except TrainerError as error:
            result = TrainerResult(phase="Failed", reason=error.reason, message=str(error)[:1024])
        training = Training(config, result, time.process_time() - cpu, time.perf_counter() - wall)
        shutil.rmtree(config.checkpoint_dir, ignore_errors=True)
        return training

    def evaluate(self, model: ModelRef, now: datetime) -> float:
        """The share of right answers on a large fixed sample of the world at ``now`` (the same requests for every
        model judged at that time)."""
        at = self.at(now)
        requests = [r for r in (self.population.request(10**9 + i, at) for i in range(EVAL_REQUESTS)) if r]
        answers = self.models.answers(model, [r.text for r in requests])
        return sum(self.population.judge(r, a, at).correct for r, a in zip(requests, answers, strict=True)) / \
            len(requests)


class PolicyServices:
    """The :class:`policies.Services` of one policy."""

    def __init__(self, bench: Bench, name: str):
        self.bench, self.name = bench, name
        self.exports = bench.work / "exports" / name
        self.exports.mkdir(parents=True, exist_ok=True)

    def train(self, config: TrainerConfig) -> Training:
        return self.bench.train(config)

    def write_export(self, name: str, items: list[FeedbackItem], filters: dict[str, Any], now: datetime) -> str:
        """The collector's export, line for line (ExportRow, then the ExportManifest)."""
        lines = [ExportRow(
            id=i.id, trace_id=i.trace_id, model=i.model, model_version=i.version, track=i.track, cohort=i.cohort,
            scenario=i.scenario, input=i.input, output=i.output, target=i.correction, rating=i.rating,
            sentiment="negative" if i.negative else "positive", category=i.category, comment=None, redacted=False,
            created_at=i.time,
        ).model_dump_json(by_alias=True) + "\n" for i in items]
        digest = hashlib.sha256("".join(lines).encode()).hexdigest()
        manifest = ExportManifest(model=MODEL, generated_at=now, filters=filters, rows=len(lines),
                                  with_target=sum(1 for i in items if i.correction), sha256=digest, excluded={},
                                  subjects_opted_out=0)
        path = self.exports / f"{name}.jsonl"
        path.write_text("".join(lines) + manifest.model_dump_json(by_alias=True) + "\n")
        return str(path)

    def write_dataset(self, name: str, items: list[FeedbackItem]) -> str:
        """Corrections as dataset rows (the labelled data a cron pipeline trains on)."""
        path = self.exports / f"{name}-corrections.jsonl"
        demo_data.write_jsonl(path, [{"id": i.id, "input": i.input, "output": i.correction, "cohort": i.cohort,
                                      "scenario": i.scenario, "subjectId": i.subject} for i in items])
        return str(path)

    def promote(self, policy: Policy, now: datetime, model: ModelRef, how: str) -> None:
        replaced = policy.served.stable
        self.bench.promotions[self.name].append(Promotion(
            now, replaced.version, model.version, self.bench.evaluate(replaced, now), self.bench.evaluate(model, now),
            how))


# ------------------------------------------------------------------------------------------------------ the run


def load_manifest(work: Path) -> ImprovementLoopSpec:
    text = MANIFEST.read_text().replace("$WORK", str(work))
    return ImprovementLoopSpec.model_validate(yaml.safe_load(text)["spec"])


def build_policies(bench: Bench, init: ModelRef, v1: ModelRef, loop: ImprovementLoopSpec) -> list[Policy]:
    scenario = bench.scenario
    horizon = timedelta(days=scenario.days)
    ledgers = {name: Ledger(scenario.tick, START) for name in ("static", "scheduled", "kaizen", "oracle")}
    services = {name: PolicyServices(bench, name) for name in ledgers}
    # The cron pipeline: the recipe that made v1 (from the initial weights, the baseline's steps), on all data.
    full = TrainerConfig(
        job="bench/full", decision_id="cron", task="causal-lm", baseline=init, candidate_version="full",
        data={"replay": [s.model_dump() for s in loop.retrain.data.replay], "targetedRatio": 0, "maxSliceShare": 1},
        hyperparameters=demo_data.BASELINE_HYPERPARAMETERS, gates=[g.model_dump() for g in loop.gates],
        output_dir=str(bench.work / "runs" / "scheduled"), checkpoint_dir=str(bench.work / "runs" / "checkpoints"),
    )
    times = timetable(START, horizon, timedelta(hours=scenario.cron_every_hours),
                      timedelta(hours=scenario.cron_first_hours))
    # What the oracle knows: when each event of the domain's drift begins, and the slice it changes.
    # (The domain's scenario label of a request is its intent.)
    drifts = [Drift(START + timedelta(seconds=e.at), (e.intent,), tuple(e.cohorts or ()))
              if isinstance(e, sd.PolicyChange) else Drift(START + timedelta(seconds=e.at), (e.intent.name,))
              for e in bench.domain.events]
    return [
        Static(v1, ledgers["static"], services["static"]),
        Scheduled(v1, ledgers["scheduled"], services["scheduled"], times=times, template=full, init=init,
                  target=MODEL),
        Kaizen(loop, ledgers["kaizen"], services["kaizen"], namespace=NAMESPACE, stable_replicas=STABLE_REPLICAS,
               loop=MODEL),
        Oracle(v1, ledgers["oracle"], services["oracle"], drifts=drifts, loop=loop, namespace=NAMESPACE),
    ]


def share_draw(seed: int, index: int) -> float:
    """A uniform draw per request, the same for every policy: which requests a canary of a given share gets."""
    return int.from_bytes(hashlib.sha256(f"{seed}:route:{index}".encode()).digest()[:8], "big") / 2**64


def serve_tick(bench: Bench, policy: Policy, tick: int, now: datetime, requests: list[Request],
               upcoming: list[str]) -> None:
    served = policy.served
    tally = bench.tallies[policy.name]
    step = bench.scenario.tick / max(1, len(requests))
    routes = [served.canary is not None and share_draw(bench.seed, r.index) < served.canary_share for r in requests]
    answers: list[str] = [""] * len(requests)
    for model, track in ((served.stable, False), (served.canary, True)):
        if model is None:
            continue
        chosen = [i for i, canary in enumerate(routes) if canary == track]
        texts = bench.models.answers(model, [requests[i].text for i in chosen], () if track else upcoming)
        for i, text in zip(chosen, texts, strict=True):
            answers[i] = text
    canary_running = served.canary is not None
    for i, (request, answer, canary) in enumerate(zip(requests, answers, routes, strict=True)):
        model = served.canary if canary else served.stable
        assert model is not None
        when = now + step * (i + 0.5)
        judgement = bench.population.judge(request, answer)
        tally.record(tick, request.user.cohort, judgement.correct, canary)
        if canary_running and not judgement.correct:
            bench.during_canary_bad[policy.name] += 1
        track = "canary" if canary else "stable"
        policy.ledger.served(when, MODEL, model.version, track)
        feedback = judgement.feedback
        if feedback is not None:
            policy.ledger.add(FeedbackItem(
                id=f"fb-{request.index}", trace_id=f"tr-{policy.name}-{request.index}", time=when, model=MODEL,
                version=model.version, track=track, subject=request.user.subject_id, consent=request.user.consent,
                rating=feedback.rating, category=feedback.category, cohort=request.user.cohort,
                scenario=request.scenario, input=request.text, output=answer, correction=feedback.correction))


def simulate(bench: Bench, policies: list[Policy], progress: bool) -> None:
    scenario = bench.scenario
    per_tick = scenario.requests_per_tick
    for policy in policies:
        bench.tallies[policy.name] = Tally(scenario.ticks)
        bench.promotions[policy.name] = []
        bench.during_canary_bad[policy.name] = 0
    # The users' requests, the same for every policy (drawn from the seed and the request's index).
    requests = []
    for tick in range(scenario.ticks):
        at = bench.at(START + tick * scenario.tick)
        step = scenario.tick.total_seconds() / per_tick
        requests.append([r for r in (bench.population.request(tick * per_tick + i, at + step * i)
                                     for i in range(per_tick)) if r is not None])
    for tick in range(scenario.ticks):
        now = START + tick * scenario.tick
        at = bench.at(now)
        for user in bench.population.opt_outs(at - scenario.tick.total_seconds(), at):
            for policy in policies:  # the driver's DELETE /v1/subjects/{id}
                policy.ledger.opt_out(user.subject_id, now)
        upcoming = [r.text for later in requests[tick + 1: tick + 1 + LOOKAHEAD] for r in later]
        for policy in policies:
            serve_tick(bench, policy, tick, now, requests[tick], upcoming)
        for policy in policies:
            policy.step(now + scenario.tick)
        if progress and tick % max(1, scenario.ticks // 14) == 0:
            print(f"  simulated {now:%a %d %H:%M}: " + ", ".join(
                f"{p.name} {p.served.stable.version}" + (f"+{p.served.canary.version}" if p.served.canary else "")
                for p in policies), file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------------ report


def summarise(bench: Bench, policy: Policy) -> dict[str, Any]:
    scenario = bench.scenario
    tally = bench.tallies[policy.name]
    onsets = [scenario.to_ticks(h) for h in scenario.drift_hours]
    recovery = recovery_ticks(tally.total, tally.bad, onsets, window=scenario.to_ticks(scenario.recovery_window_hours),
                              reference=scenario.to_ticks(scenario.reference_hours), tolerance=scenario.tolerance)
    seconds = [None if r is None else r * scenario.tick.total_seconds() for r in recovery]
    promotions = bench.promotions[policy.name]
    every = scenario.to_ticks(6)
    return {
        "badAnswers": tally.bad_answers,
        "badAnswersByCohort": tally.bad_by_cohort(),
        "served": sum(tally.total),
        "recoverySeconds": seconds,
        "recoverySecondsSum": None if None in seconds else sum(seconds),
        "recoverySecondsMean": None if None in seconds else sum(seconds) / len(seconds),
        "trainingSeconds": round(sum(t.cpu_seconds for t in policy.trainings), 2),
        "trainingRuns": len(policy.trainings),
        "trainingWallSeconds": round(sum(t.wall_seconds for t in policy.trainings), 2),
        "worsePromotions": worse_promotions(promotions),
        "promotions": [p.to_json() for p in promotions],
        "rollbacks": policy.canary_rollbacks + policy.model_rollbacks,
        "canaryRollbacks": policy.canary_rollbacks,
        "modelRollbacks": policy.model_rollbacks,
        "canaryBadAnswers": tally.canary_bad,
        "canaryAnswers": tally.canary_total,
        "badAnswersWhileCanaryRan": bench.during_canary_bad[policy.name],
        "qualityEvery6h": [None if q is None else round(q, 4) for q in (
            _quality(tally, s, s + every) for s in range(0, scenario.ticks, every))],
        "events": policy.events,
        **({"decisions": [{k: d[k] for k in ("time", "action", "reason") if k in d} for d in policy.decisions]}
           if isinstance(policy, Kaizen) else {}),
    }


def _quality(tally: Tally, start: int, end: int) -> float | None:
    served = sum(tally.total[start:end])
    return None if not served else 1 - sum(tally.bad[start:end]) / served


def machine() -> dict[str, Any]:
    cpu = platform.processor() or "unknown"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": len(os.sched_getaffinity(0)), "torchThreads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
            "loadAverage1m": round(os.getloadavg()[0], 2)}


def hours(seconds: float | None) -> str:
    return "never" if seconds is None else f"{seconds / 3600:.2f}h"


def table(report: dict[str, Any]) -> str:
    policies = report["policies"]
    cohorts = sorted({c for p in policies.values() for c in p["badAnswersByCohort"]})
    header = (f"{'policy':<10}{'bad':>7} " + "".join(f"{c:>9}" for c in cohorts)
              + f"{'drift 1':>9}{'drift 2':>9}{'train CPU-s':>12}{'runs':>5}{'rollbacks':>10}{'canary bad':>11}"
              + f"{'worse prom.':>12}")
    lines = [header, "-" * len(header)]
    for name, p in policies.items():
        recovery = (p["recoverySeconds"] + [None, None])[:2]
        lines.append(f"{name:<10}{p['badAnswers']:>7} " + "".join(f"{p['badAnswersByCohort'].get(c, 0):>9}"
                                                                for c in cohorts)
                     + f"{hours(recovery[0]):>9}{hours(recovery[1]):>9}{p['trainingSeconds']:>12.1f}"
                     + f"{p['trainingRuns']:>5}{p['rollbacks']:>10}{p['canaryBadAnswers']:>11}"
                     + f"{p['worsePromotions']:>12}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a 24-hour period and lighter traffic (tests, CI)")
    parser.add_argument("--out", type=Path, default=None, help=f"results file (default {RESULTS}; none with --quick)")
    parser.add_argument("--seed", type=int, default=7, help="the users' seed (the same for every policy)")
    parser.add_argument("--policy-cohorts", default=None,
                        help="comma-separated cohorts the first drift (the return policy) applies to; default all")
    parser.add_argument("--work", type=Path, default=None, help="work directory to keep (default: a temporary one)")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    args = parser.parse_args(argv)
    scenario = QUICK if args.quick else FULL
    if args.policy_cohorts:
        cohorts = tuple(c for c in args.policy_cohorts.split(",") if c)
        unknown = set(cohorts) - set(sd.COHORTS)
        if unknown:
            parser.error(f"unknown cohort(s) {', '.join(sorted(unknown))}; use {', '.join(sd.COHORTS)}")
        scenario = Scenario(**{**scenario.__dict__, "policy_cohorts": cohorts})
    out = args.out or (None if args.quick else RESULTS)
    if len(os.sched_getaffinity(0)) <= 4:
        torch.set_num_threads(1)  # tiny models on a small, shared CPU: more threads only spin against each other
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    began = time.perf_counter()
    work = args.work or Path(tempfile.mkdtemp(prefix="kaizen-bench-loop-"))
    try:
        work.mkdir(parents=True, exist_ok=True)
        bench = Bench(scenario, work, args.seed)
        init, v1, baseline = bench.prepare()
        logging.getLogger("kaizen_trainer").setLevel(logging.WARNING)  # the trainer CLI made it log every stage
        loop = load_manifest(work)
        policies = build_policies(bench, init, v1, loop)
        simulate(bench, policies, progress=not args.quiet)
        results = {p.name: summarise(bench, p) for p in policies}
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    met = targets(results)
    report = {
        "benchmark": "loop",
        "generated_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": machine(),
        "seconds": round(time.perf_counter() - began, 1),
        "scenario": {
            **{k: v for k, v in scenario.__dict__.items()}, "ticks": scenario.ticks, "seed": args.seed,
            "start": START.isoformat().replace("+00:00", "Z"),
            "drifts": [{"onsetHours": scenario.drift_hours[0],
                        "event": "refund.return answered 'within 14 days' instead of 30"
                        + (f" for {', '.join(scenario.policy_cohorts)}" if scenario.policy_cohorts else "")},
                       {"onsetHours": scenario.drift_hours[1], "event": "a new intent: plan.pause"}],
            "kaizenManifest": str(MANIFEST.relative_to(ROOT)),
            "baseline": baseline,
            "answersGenerated": bench.models.generated,
            "generationSeconds": round(bench.models.seconds, 1),
        },
        "policies": results,
        "targets": met,
        "met": all(t["met"] for t in met.values()),
    }
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
    m = report["machine"]
    print(f"Loop benchmark: {scenario.days:g} simulated days in {scenario.ticks} ticks of {scenario.tick_minutes} min, "
          f"{scenario.requests_per_hour} requests/h, drifts at {', '.join(f'{h:g}h' for h in scenario.drift_hours)}; "
          f"{report['seconds']:.0f} s on {m['cpu']} ({m['cores']} cores), Python {m['python']}, torch {m['torch']}")
    print(table(report))
    print("recovery: time from a drift's onset until the served quality (2 h window) stays within "
          f"{scenario.tolerance:.0%} of the day before it; never = not before the next drift or the horizon")
    for name, verdict in met.items():
        print(f"{'met    ' if verdict['met'] else 'NOT MET'} {name}: "
              + ", ".join(f"{k} {v}" for k, v in verdict.items() if k != "met"))
    if out is not None:
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
