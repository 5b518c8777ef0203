"""The demo's generative support domain with real training: the baseline v1 as ``kaizen.dev.demo_data`` trains it,
simulated users judging its greedy answers, and candidates trained by the trainer's command line on their
corrections, as a RetrainJob would. Shows the two scenarios the e2e tests and the demo run on served models:

(a) after a policy change for everyone, the baseline answers the changed intent wrongly; a candidate trained on the
    users' corrections answers it rightly, for every cohort, without losing the rest;
(b) after a policy change for free and pro only, a candidate trained on their corrections passes every holdout gate
    (the team's holdout has no business requests) but answers business users' returns wrongly, where the baseline
    was right: worse live for that one cohort.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pytest

from kaizen.dev import demo_data
from kaizen.dev import support_domain as sd
from kaizen.dev.users import Population
from kaizen_server.engine import Engine

RETURN, PAUSE = "refund.return", "plan.pause"
GATES = [{"metric": "exactMatch", "minDelta": 0}, {"metric": "exactMatch", "cohort": RETURN, "minDelta": 0.5},
         *({"metric": "exactMatch", "cohort": i.name, "minDelta": -0.05} for i in sd.INTENTS[1:]),
         {"metric": "cohortGap", "max": 0.1}]


class Model:
    """A saved model answering as the model server does (its engine: greedy, in the trainer's prompt format), each
    distinct prompt once."""

    def __init__(self, uri: str) -> None:
        self.engine = Engine.load(uri)
        self.answers: dict[str, str] = {}

    def answer_all(self, prompts: list[str]) -> list[str]:
        new = sorted(set(prompts) - set(self.answers))
        if new:
            self.answers.update(zip(new, (c.text for c in self.engine.complete(new, max_tokens=24)), strict=True))
        return [self.answers[p] for p in prompts]


def quality(model: Model, population: Population, at: float, n: int = 600, first: int = 100_000):
    """Share of right answers per (cohort, intent), per cohort and per intent, on ``n`` requests of the population
    at ``at`` (numbered from ``first``, apart from the requests whose feedback trained the candidate)."""
    requests = [population.request(i, at) for i in range(first, first + n)]
    counts: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    for request, answer in zip(requests, model.answer_all([r.text for r in requests])):
        right = population.judge(request, answer).correct
        for key in ((request.user.cohort, request.intent), (request.user.cohort, "*"), ("*", request.intent)):
            counts[key][0] += right
            counts[key][1] += 1
    return {key: right / total for key, (right, total) in counts.items()}


def feedback_rows(model: Model, population: Population, at: float, n: int) -> list[dict]:
    """The users' consented corrections of the model's answers to ``n`` requests at ``at``, as the collector's
    export gives them to the trainer."""
    requests = [population.request(i, at) for i in range(n)]
    rows = []
    for request, answer in zip(requests, model.answer_all([r.text for r in requests])):
        feedback = population.judge(request, answer).feedback
        if feedback is None or not request.user.consent or feedback.correction is None:
            continue
        rows.append({"id": f"fb-{request.id}", "input": request.text, "output": answer,
                     "target": feedback.correction, "category": feedback.category, "rating": feedback.rating,
                     "sentiment": "negative", "consent": True, "cohort": request.user.cohort,
                     "scenario": request.scenario, "subjectId": request.user.subject_id,
                     "traceId": f"trace-{request.id}", "modelVersion": "v1"})
    return rows


@pytest.fixture(scope="module")
def baseline(tmp_path_factory) -> tuple[Path, dict]:
    """The demo's files and baseline v1, built exactly as ``kaizen dev demo`` builds them."""
    root = tmp_path_factory.mktemp("demo")
    result = demo_data.build(root)
    return root, result


def retrain(root: Path, work: Path, dom: sd.Domain, rows: list[dict], cohorts: list[str],
            scenarios: list[str]) -> dict:
    write = demo_data.write_jsonl
    files = demo_data.write_data(work / "data", dom)
    return demo_data.train(
        work, work / "out", task="causal-lm", baseline=("v1", str(root / demo_data.BASELINE / "model")),
        candidate_version="v2", replay=[files["replay"]], holdout=files["holdout"],
        feedback=write(work / "feedback.jsonl", rows), targeted_ratio=demo_data.TARGETED_RATIO,
        targets={"categories": ["incorrect"], "scenarios": scenarios, "cohorts": cohorts},
        hyperparameters=demo_data.CANDIDATE_HYPERPARAMETERS,
        gates=GATES + [{"metric": "exactMatch", "cohort": s, "minDelta": 0.5} for s in scenarios if s != RETURN])


def test_the_baseline_learns_the_domain_before_the_drift(baseline):
    root, result = baseline
    metrics = result["metrics"]["candidate"]
    print(json.dumps({k: round(v, 3) for k, v in metrics.items() if "exactMatch" in k}))
    before = Population(sd.Domain(sd.drift(policy_at=1e9)), 300, seed=11)
    measured = quality(Model(str(root / demo_data.BASELINE / "model")), before, at=0)
    print({k: round(v, 2) for k, v in measured.items() if k[1] == "*" or k[0] == "*"})
    assert all(measured[(c, "*")] >= 0.97 for c in sd.COHORTS), measured


def test_a_drift_for_everyone_is_repaired_by_a_candidate_trained_on_the_corrections(baseline, tmp_path):
    root, _ = baseline
    dom = sd.Domain(sd.drift(policy_at=0, new_intent_at=0))
    users = Population(dom, 300, seed=21)
    v1 = Model(str(root / demo_data.BASELINE / "model"))
    before = quality(v1, users, at=1)
    print("v1", {k: round(v, 2) for k, v in before.items() if k[1] in ("*", RETURN)})
    rows = feedback_rows(v1, users, at=1, n=1500)
    print(len(rows), "corrections")
    result = retrain(root, tmp_path, dom, rows, list(sd.COHORTS), [RETURN, PAUSE])
    print(result["message"], [(g["metric"], g.get("cohort"), g["passed"]) for g in result["gates"]])
    print(json.loads((tmp_path / "out" / "metrics.json").read_text())["training"], result["dataset"])
    after = quality(Model(result["candidate"]["uri"]), users, at=1)
    print("v2", {k: round(v, 2) for k, v in after.items() if k[1] in ("*", RETURN)})
    print("v2 all", {k: round(v, 2) for k, v in after.items()})
    for cohort in sd.COHORTS:
        for intent in (RETURN, PAUSE):
            assert before[(cohort, intent)] == 0 and after[(cohort, intent)] >= 0.9, (cohort, intent)
        assert after[(cohort, "*")] >= 0.95
    assert result["message"].startswith("Passed")


def test_a_drift_for_some_cohorts_gives_a_candidate_that_passes_its_gates_and_fails_business(baseline, tmp_path):
    root, _ = baseline
    dom = sd.Domain(sd.drift(policy_at=0, policy_cohorts=sd.TEAM_COHORTS))
    users = Population(dom, 300, seed=31)
    v1 = Model(str(root / demo_data.BASELINE / "model"))
    before = quality(v1, users, at=1)
    print("v1", {k: round(v, 2) for k, v in before.items() if k[1] in ("*", RETURN)})
    rows = feedback_rows(v1, users, at=1, n=1500)
    assert {r["cohort"] for r in rows} == set(sd.TEAM_COHORTS)
    result = retrain(root, tmp_path, dom, rows, list(sd.TEAM_COHORTS), [RETURN])
    print(result["message"], [(g["metric"], g.get("cohort"), g["passed"]) for g in result["gates"]])
    print(json.loads((tmp_path / "out" / "metrics.json").read_text())["training"], result["dataset"])
    after = quality(Model(result["candidate"]["uri"]), users, at=1)
    print("v2", {k: round(v, 2) for k, v in after.items() if k[1] in ("*", RETURN)})
    print("v2 all", {k: round(v, 2) for k, v in after.items()})
    assert result["message"].startswith("Passed")
    assert before[("business", RETURN)] >= 0.9 and after[("business", RETURN)] <= 0.2
    assert after[("business", "*")] < before[("business", "*")]
