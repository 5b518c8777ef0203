"""bench/loop's pure parts: the ledger's queries (what the collector and Prometheus would answer), the recovery and
worse-promotion measurements, the cron timetable, and the four policies' decisions driven tick by tick on made-up
feedback, with the trainer replaced by a function of the data it is given (the one edge faked here)."""

from __future__ import annotations

import json
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench" / "loop"))

from kaizen.api.common import ModelRef  # noqa: E402
from kaizen.api.improvementloop import ImprovementLoopSpec  # noqa: E402
from kaizen.api.trainer import TrainerConfig, TrainerResult  # noqa: E402
from ledger import FeedbackItem, Ledger  # noqa: E402
from measure import Promotion, Tally, recovery_ticks, targets, timetable, worse_promotions  # noqa: E402
from policies import Drift, Kaizen, Oracle, Scheduled, Training  # noqa: E402

START = datetime(2026, 1, 5, tzinfo=timezone.utc)
TICK = timedelta(minutes=15)
V1 = ModelRef(version="v1", uri="/models/v1/model")
INIT = ModelRef(version="v0", uri="/models/init")


def item(n: int, when: datetime, *, rating: str = "down", version: str = "v1", track: str = "stable",
         consent: bool = True, subject: str | None = None, scenario: str = "refund", cohort: str = "free",
         category: str | None = "incorrect") -> FeedbackItem:
    return FeedbackItem(id=f"fb-{n}", trace_id=f"tr-{n}", time=when, model="support-bot", version=version,
                        track=track, subject=subject or f"user-{n}", consent=consent, rating=rating,
                        category=category if rating == "down" else None, cohort=cohort, scenario=scenario,
                        input=f"return my order {n}", output="within 30 days",
                        correction="within 14 days" if rating == "down" else None)


# ---------------------------------------------------------------------------------------------------- ledger


def test_ledger_evaluates_ratio_and_difference_queries_over_its_window():
    ledger = Ledger(TICK, START)
    now = START + timedelta(hours=2)
    ledger.served(START + timedelta(minutes=5), "support-bot", "v1", "stable", 100)  # outside a 1h window
    ledger.served(now - timedelta(minutes=20), "support-bot", "v1", "stable", 40)
    ledger.served(now - timedelta(minutes=20), "support-bot", "v2", "canary", 10)
    for n in range(6):
        ledger.add(item(n, now - timedelta(minutes=10)))
    ledger.add(item(9, now - timedelta(minutes=10), rating="up"))
    rate = ('sum(increase(kaizen_feedback_total{model="support-bot",rating="down"}[1h])) '
            '/ sum(increase(kaizen_server_requests_total{model="support-bot"}[1h]))')
    assert ledger.query(rate, now) == pytest.approx(6 / 50)
    good = ('sum(increase(kaizen_server_requests_total{track="stable",model_version="v1"}[3h])) - '
            'sum(increase(kaizen_feedback_total{track="stable",model_version="v1",rating="down"}[3h]))')
    assert ledger.query(good, now) == 140 - 6
    assert ledger.query('sum(increase(kaizen_feedback_total{rating="down"}[1h])) / '
                        'sum(increase(kaizen_server_requests_total{model="other"}[1h]))', now) is None


def test_ledger_rejects_queries_it_cannot_evaluate():
    ledger = Ledger(TICK, START)
    with pytest.raises(ValueError, match="no label"):
        ledger.query('sum(increase(kaizen_feedback_total{cohort="free"}[1h]))', START)
    with pytest.raises(ValueError, match="unsupported query term"):
        ledger.query('rate(kaizen_feedback_total[5m])', START)
    with pytest.raises(ValueError, match="unknown metric"):
        ledger.query('sum(increase(http_requests_total{code="500"}[5m]))', START)


def test_ledger_collector_queries_honour_consent_opt_out_since_and_categories():
    ledger = Ledger(TICK, START)
    t = START + timedelta(hours=1)
    ledger.add(item(1, t))
    ledger.add(item(2, t, consent=False))
    ledger.add(item(3, t, subject="leaver"))
    ledger.add(item(4, t, category="unhelpful"))
    ledger.add(item(5, t + timedelta(hours=1), scenario="plan", cohort="pro"))
    ledger.add(item(6, t, rating="up"))
    ledger.opt_out("leaver", t + timedelta(minutes=30))
    ledger.add(item(7, t + timedelta(hours=2), subject="leaver"))  # dropped at ingestion
    assert ledger.negative_count("support-bot", None, ["incorrect"]) == 2  # 1 and 5
    assert ledger.negative_count("support-bot", t, ["incorrect"]) == 1  # strictly after: only 5
    assert ledger.negative_count("support-bot", None, ["incorrect"], consented_only=False) == 3
    assert {(b.scenario, b.cohort, b.count) for b in ledger.backlog("support-bot", None, ["incorrect"])} == {
        ("refund", "free", 1), ("plan", "pro", 1)}
    assert [i.id for i in ledger.export("support-bot")] == ["fb-1", "fb-4", "fb-5", "fb-6"]
    assert [i.id for i in ledger.export("support-bot", scenarios=["plan"])] == ["fb-5"]
    assert [i.id for i in ledger.corrections("support-bot")] == ["fb-1", "fb-4", "fb-5"]
    # Prometheus counters count what was stored: the opt-out does not lower them.
    assert ledger.query('sum(increase(kaizen_feedback_total{rating="down"}[24h]))', START + timedelta(days=1)) == 5


# ------------------------------------------------------------------------------------------------- measures


def test_recovery_is_the_start_of_the_final_run_of_good_windows():
    total = [10] * 40
    bad = [0] * 10 + [5] * 10 + [0] * 20  # drift at 10, fixed at 20
    assert recovery_ticks(total, bad, [10], window=2, reference=5, tolerance=0.05) == [10]
    lucky = bad[:]
    lucky[12] = lucky[13] = 0  # one good window in the middle of the drift does not count
    assert recovery_ticks(total, lucky, [10], window=2, reference=5, tolerance=0.05) == [10]
    never = [0] * 10 + [5] * 30
    assert recovery_ticks(total, never, [10], window=2, reference=5, tolerance=0.05) == [None]
    assert recovery_ticks(total, [0] * 40, [10], window=2, reference=5, tolerance=0.05) == [0]


def test_recovery_of_a_drift_must_come_before_the_next_one():
    total = [10] * 40
    # Never back before the second drift; the second drift's reference is the day before it, degraded already.
    assert recovery_ticks(total, [0] * 10 + [5] * 15 + [0] * 15, [10, 20], window=2, reference=5,
                          tolerance=0.05) == [None, 0]
    bad = [0] * 10 + [5] * 5 + [0] * 5 + [5] * 5 + [0] * 15
    assert recovery_ticks(total, bad, [10, 20], window=2, reference=5, tolerance=0.05) == [5, 5]


def test_worse_promotion_is_a_lower_quality_on_the_same_evaluation():
    when = START
    promotions = [Promotion(when, "v1", "v2", 0.8, 0.95, "canary"), Promotion(when, "v2", "v3", 0.95, 0.94, "direct"),
                  Promotion(when, "v3", "v2", 0.94, 0.95, "rollback"), Promotion(when, "v2", "v4", 0.95, 0.95, "x")]
    assert [p.worse for p in promotions] == [False, True, False, False]
    assert worse_promotions(promotions) == 1


def test_tally_counts_per_cohort_and_canary():
    tally = Tally(3)
    tally.record(0, "free", True, False)
    tally.record(0, "pro", False, True)
    tally.record(2, "free", False, False)
    assert (tally.bad_answers, tally.bad_by_cohort(), tally.canary_total, tally.canary_bad) == (
        2, {"free": 1, "pro": 1}, 1, 1)
    assert tally.total == [2, 0, 1]


def test_timetable_and_targets():
    times = timetable(START, timedelta(days=3), timedelta(hours=24), timedelta(hours=2))
    assert times == [START + timedelta(hours=2 + 24 * d) for d in range(3)]
    with pytest.raises(ValueError, match="positive"):
        timetable(START, timedelta(days=1), timedelta(0), timedelta(0))
    policies = {"kaizen": {"badAnswers": 100, "trainingSeconds": 30, "worsePromotions": 0},
                "scheduled": {"badAnswers": 250, "trainingSeconds": 100},
                "oracle": {"badAnswers": 60}}
    met = targets(policies)
    assert {k: v["met"] for k, v in met.items()} == {
        "badAnswersAtMostHalfOfScheduled": True, "trainingComputeAtMost30PercentOfScheduled": True,
        "badAnswersAtMost1.5xOracle": False, "neverPromotesAWorseModel": True}
    assert met["badAnswersAtMost1.5xOracle"]["ratio"] == pytest.approx(1.6667, abs=1e-4)


# ------------------------------------------------------------------------------------------------- policies


class FakeServices:
    """The side effects, recorded: training returns a candidate whose exactMatch the test chooses."""

    def __init__(self, tmp: Path, candidate_exact: float = 0.95, baseline_exact: float = 0.8):
        self.tmp, self.candidate_exact, self.baseline_exact = tmp, candidate_exact, baseline_exact
        self.configs: list[TrainerConfig] = []
        self.exports: dict[str, list[FeedbackItem]] = {}
        self.datasets: dict[str, list[FeedbackItem]] = {}
        self.promoted: list[tuple[datetime, str, str]] = []

    def train(self, config: TrainerConfig) -> Training:
        self.configs.append(config)
        metrics = {"candidate": {"holdout.exactMatch": self.candidate_exact},
                   "baseline": {"holdout.exactMatch": self.baseline_exact}}
        result = TrainerResult(phase="Succeeded", reason="Completed", metrics=metrics,
                               candidate=ModelRef(version=config.candidate_version, uri=f"{config.output_dir}/model"))
        return Training(config, result, cpu_seconds=2.5, wall_seconds=4.0)

    def write_export(self, name, items, filters, now):
        self.exports[name] = items
        return str(self.tmp / f"{name}.jsonl")

    def write_dataset(self, name, items):
        self.datasets[name] = items
        return str(self.tmp / f"{name}-corrections.jsonl")

    def promote(self, policy, now, model, how):
        self.promoted.append((now, model.version, how))


def manifest(tmp: Path) -> ImprovementLoopSpec:
    text = (ROOT / "bench" / "loop" / "support-bot.yaml").read_text().replace("$WORK", str(tmp))
    return ImprovementLoopSpec.model_validate(yaml.safe_load(text)["spec"])


def traffic(policy, tick: int, *, wrong: dict[str, float], per_tick: int = 60, counter: list[int]) -> None:
    """One tick of made-up traffic: each served version answers a share ``wrong[version]`` wrongly, and every wrong
    answer is rated down with a correction (the bench's users give feedback on a share only; the logic does not
    care)."""
    now = START + tick * TICK
    served = policy.served
    canary_n = round(per_tick * served.canary_share) if served.canary else 0
    for version, track, n in ((served.stable.version, "stable", per_tick - canary_n),
                              (served.canary.version if served.canary else "", "canary", canary_n)):
        if not n:
            continue
        policy.ledger.served(now, "support-bot", version, track, n)
        for _ in range(round(n * wrong.get(version, wrong.get("*", 0.0)))):
            counter[0] += 1
            policy.ledger.add(item(counter[0], now + timedelta(seconds=1 + counter[0] % 800), version=version,
                                   track=track))


def run_ticks(policy, ticks: range, wrong, counter):
    for tick in ticks:
        traffic(policy, tick, wrong=wrong, counter=counter)
        policy.step(START + (tick + 1) * TICK)


def test_kaizen_retrains_after_a_sustained_breach_canaries_and_promotes(tmp_path):
    services = FakeServices(tmp_path)
    loop = manifest(tmp_path)
    kaizen = Kaizen(loop, Ledger(TICK, START), services, namespace="bench", stable_replicas=4)
    counter = [0]
    run_ticks(kaizen, range(0, 8), {"v1": 0.0}, counter)  # healthy: nothing happens
    assert services.configs == [] and kaizen.served.canary is None
    run_ticks(kaizen, range(8, 12), {"v1": 0.2}, counter)  # a drift: 12 complaints per tick
    assert len(services.configs) == 1
    config = services.configs[0]
    assert config.baseline == V1.model_copy(update={"uri": f"{tmp_path}/models/v1/model"})
    assert config.targets.scenarios == ["refund"] and config.targets.categories == ["incorrect"]
    assert config.feedback is not None and config.feedback.url.endswith(".jsonl")
    assert all(i.consent and i.scenario == "refund" for items in services.exports.values() for i in items)
    # The candidate answers right: it is canaried at 4 replicas beside 4, then promoted.
    candidate = config.candidate_version
    shares = []
    for tick in range(12, 30):
        run_ticks(kaizen, range(tick, tick + 1), {"v1": 0.2, candidate: 0.0}, counter)
        shares.append(round(kaizen.served.canary_share, 3))
        if kaizen.served.stable.version == candidate and kaizen.served.canary is None:
            break
    assert kaizen.served.stable.version == candidate
    assert 0.5 in shares
    assert [(v, how) for _, v, how in services.promoted] == [(candidate, "canary")]
    assert kaizen.canary_rollbacks == 0
    assert any(d["action"] == "RollOut" for d in kaizen.decisions)


def test_kaizen_rolls_back_a_canary_that_answers_worse(tmp_path):
    services = FakeServices(tmp_path)
    kaizen = Kaizen(manifest(tmp_path), Ledger(TICK, START), services, namespace="bench", stable_replicas=4)
    counter = [0]
    run_ticks(kaizen, range(0, 24), {"v1": 0.1, "*": 0.6}, counter)  # every candidate answers worse than v1
    assert len(services.configs) == 1  # and the cooldown (6h) holds the next retrain
    assert kaizen.canary_rollbacks == 1
    assert kaizen.served.stable.version == "v1" and kaizen.served.canary is None
    assert services.promoted == []


def test_kaizen_does_not_roll_out_a_candidate_that_fails_its_gates(tmp_path):
    services = FakeServices(tmp_path, candidate_exact=0.7, baseline_exact=0.8)
    kaizen = Kaizen(manifest(tmp_path), Ledger(TICK, START), services, namespace="bench", stable_replicas=4)
    counter = [0]
    run_ticks(kaizen, range(0, 20), {"v1": 0.2}, counter)
    assert len(services.configs) == 1  # the cooldown (6h) holds the next retrain
    assert kaizen.served.canary is None and services.promoted == []
    assert any(d["action"] == "Wait" and "Cooldown" in json.dumps(d) for d in kaizen.decisions)


def test_oracle_retrains_targeted_once_enough_corrections_follow_the_onset(tmp_path):
    services = FakeServices(tmp_path)
    loop = manifest(tmp_path)
    onset = START + 4 * TICK
    oracle = Oracle(V1, Ledger(TICK, START), services, drifts=[Drift(onset, ("refund",))], loop=loop,
                    namespace="bench")
    counter = [0]
    run_ticks(oracle, range(0, 4), {"v1": 0.1}, counter)  # complaints before the onset do not count
    assert services.configs == []
    assert loop.feedback is not None and loop.feedback.min_new_items == 40
    run_ticks(oracle, range(4, 5), {"v1": 0.5}, counter)  # 30 corrections: fewer than minNewItems
    assert services.configs == []
    run_ticks(oracle, range(5, 6), {"v1": 0.5}, counter)
    assert len(services.configs) == 1
    assert services.configs[0].targets.scenarios == ["refund"]
    assert [(v, how) for _, v, how in services.promoted] == [("oracle-1", "direct")]
    assert oracle.served.stable.version == "oracle-1"
    run_ticks(oracle, range(6, 12), {"*": 0.2}, counter)
    assert len(services.configs) == 1  # once per drift


def test_scheduled_trains_from_the_initial_weights_on_corrections_and_replay_and_promotes(tmp_path):
    services = FakeServices(tmp_path)
    loop = manifest(tmp_path)
    template = TrainerConfig(job="bench/full", decision_id="cron", task="causal-lm", baseline=INIT,
                             candidate_version="full", data={"replay": [{"uri": "/data/history.jsonl"}],
                                                             "targetedRatio": 0},
                             output_dir=str(tmp_path / "runs"), checkpoint_dir=str(tmp_path / "ck"))
    times = timetable(START, timedelta(hours=12), timedelta(hours=4), timedelta(hours=2))
    scheduled = Scheduled(V1, Ledger(TICK, START), services, times=times, template=template, init=INIT,
                          target="support-bot")
    counter = [0]
    run_ticks(scheduled, range(0, 48), {"*": 0.1}, counter)
    assert [c.candidate_version for c in services.configs] == ["sched-1", "sched-2", "sched-3"]
    first = services.configs[0]
    assert first.baseline == INIT
    assert [s.uri for s in first.data.replay] == [str(tmp_path / "sched-1-corrections.jsonl"), "/data/history.jsonl"]
    assert len(services.datasets["sched-2"]) > len(services.datasets["sched-1"]) > 0
    assert [v for _, v, _ in services.promoted] == ["sched-1", "sched-2", "sched-3"]
    assert loop.feedback is not None  # the manifest is valid for the other policies too
