"""The support domain and its simulated users: the right answer at each time (the drift), the rows the demo's
files are made of, the tokenizer's word list, and a population that is reproducible, keeps its consent and
opt-out shares, and judges answers the way the module docstrings say."""

from __future__ import annotations

import random
import re
from collections import Counter

import pytest

from kaizen.dev import support_domain as sd
from kaizen.dev.users import Population

RETURN = "refund.return"
OLD, NEW = sd.INTENTS[0].answer, sd.RETURN_POLICY


def test_a_policy_change_makes_the_old_answer_wrong_from_its_time_on():
    domain = sd.Domain(sd.drift(policy_at=60))
    assert domain.answer(RETURN, "free", 59.9) == OLD
    for cohort in sd.COHORTS:
        assert domain.answer(RETURN, cohort, 60) == NEW
    assert domain.answer("shipping.late", "free", 1e6) == sd.INTENTS[2].answer  # other intents never change
    assert not OLD.matches(domain.answer(RETURN, "pro", 61).text)


def test_a_policy_change_for_some_cohorts_leaves_the_others_right_with_the_old_answer():
    domain = sd.Domain(sd.drift(policy_at=10, policy_cohorts=("free", "pro")))
    assert [domain.answer(RETURN, c, 20) for c in ("free", "pro", "business")] == [NEW, NEW, OLD]


def test_a_new_intent_is_asked_only_after_it_appears():
    domain = sd.Domain(sd.drift(policy_at=None, new_intent_at=30))
    assert "plan.pause" not in {i.name for i in domain.intents_at(29)}
    assert "plan.pause" in {i.name for i in domain.intents_at(30)}
    before = domain.rows(200, seed=1, at=0)
    after = domain.rows(220, seed=1, at=30)
    assert not any(r["scenario"] == "plan.pause" for r in before)
    assert sum(r["scenario"] == "plan.pause" for r in after) == 20
    assert domain.answer("plan.pause", "business", 30) == sd.PAUSE.answer


def test_bad_drift_is_refused_with_what_to_use():
    with pytest.raises(ValueError, match="unknown cohort.*enterprise.*use free, pro, business"):
        sd.Domain(sd.drift(policy_cohorts=("enterprise",)))
    with pytest.raises(ValueError, match="unknown intent 'refund.nope'"):
        sd.Domain((sd.PolicyChange(0, "refund.nope", NEW),))


def test_rows_are_trainer_examples_phrased_by_cohort_with_the_answer_of_their_time():
    domain = sd.Domain(sd.drift(policy_at=100))
    rows = domain.rows(300, seed=5, at=0, cohorts=sd.TEAM_COHORTS, prefix="replay")
    assert rows == domain.rows(300, seed=5, at=0, cohorts=sd.TEAM_COHORTS, prefix="replay")  # seeded
    assert {r["cohort"] for r in rows} == set(sd.TEAM_COHORTS)
    assert len({r["id"] for r in rows}) == 300 and rows[0]["id"] == "replay-0"
    assert all(domain.answer(r["scenario"], r["cohort"], 0).text == r["output"] for r in rows)
    assert {r["scenario"] for r in rows} == {i.name for i in sd.INTENTS}
    assert {i.topic for i in sd.INTENTS} == {"refund", "shipping", "account", "billing", "plan"}
    now = domain.rows(300, seed=5, at=100, task="sequence-classification")
    assert {r["output"] for r in now if r["scenario"] == RETURN} == {NEW.label}
    # Business users speak for their company: their words are in no other cohort's requests.
    words = {c: {w for r in domain.rows(600, seed=2, at=0, cohorts=[c]) for w in r["input"].split()}
             for c in sd.COHORTS}
    assert {"our", "company"} <= words["business"] - words["free"] - words["pro"]
    assert "our" not in words["free"] | words["pro"]


def test_requests_and_answers_are_short_and_in_the_vocabulary():
    domain = sd.Domain(sd.drift(policy_at=0, new_intent_at=0))
    vocabulary = set(domain.vocabulary())
    rng = random.Random(0)
    for intent in domain.all_intents():
        for cohort in sd.COHORTS:
            for _ in range(40):
                words = domain.phrase(intent.name, cohort, rng).split()
                assert len(words) <= 12, words
                assert set(words) <= vocabulary
    for answer in domain.answers():
        assert len(answer.text.split()) <= 10
        assert set(re.findall(r"\w+|[^\w\s]", answer.text.lower())) <= vocabulary
        assert answer.label in vocabulary
    assert len(vocabulary) < 150


def test_answers_match_by_normalised_exact_sentence():
    assert OLD.matches("return it within 30 days from the orders page .")
    assert OLD.matches("  Return it within 30 days from the orders page")
    assert not OLD.matches("Return it within 14 days from the orders page.")
    assert not OLD.matches("Return it within 30 days")
    assert OLD.matches("return_30_days", "sequence-classification")


def test_a_population_is_reproducible_from_its_seed():
    domain = sd.Domain(sd.drift(policy_at=50, new_intent_at=50))
    one, two = Population(domain, 300, seed=4), Population(domain, 300, seed=4)
    assert one.users == two.users
    assert [one.request(i, 70) for i in range(50)] == [two.request(i, 70) for i in range(50)]
    assert one.users != Population(domain, 300, seed=5).users
    request = one.request(7, 70)
    assert one.judge(request, "nonsense") == two.judge(request, "nonsense")


def test_cohort_consent_and_opt_out_shares():
    domain = sd.Domain()
    population = Population(domain, 2000, seed=1, cohorts={"free": 0.5, "pro": 0.3, "business": 0.2},
                            no_consent=0.25, opt_out=0.1, opt_out_between=(30, 60))
    cohorts = Counter(u.cohort for u in population.users)
    assert abs(cohorts["free"] / 2000 - 0.5) < 0.04 and abs(cohorts["business"] / 2000 - 0.2) < 0.04
    assert abs(sum(not u.consent for u in population.users) / 2000 - 0.25) < 0.04
    leaving = [u for u in population.users if u.opts_out_at is not None]
    assert abs(len(leaving) / 2000 - 0.1) < 0.03
    assert all(30 <= u.opts_out_at <= 60 for u in leaving)
    # Users who opted out make no more requests; each opts out in exactly one window.
    assert len(population.active(61)) == 2000 - len(leaving)
    assert all(population.request(i, 61).user.opts_out_at is None for i in range(300))
    windows = population.opt_outs(0, 40) + population.opt_outs(40, 45) + population.opt_outs(45, 100)
    assert sorted(u.subject_id for u in windows) == sorted(u.subject_id for u in leaving)


def test_requests_follow_the_domain_at_their_time():
    domain = sd.Domain(sd.drift(policy_at=None, new_intent_at=100))
    population = Population(domain, 100, seed=2)
    before = Counter(population.request(i, 99).intent for i in range(2000))
    after = Counter(population.request(i, 100).intent for i in range(2000))
    assert "plan.pause" not in before and after["plan.pause"] > 100
    assert before[RETURN] > 1.5 * before["refund.money"]  # returns are the most asked
    request = population.request(3, 50)
    assert request.text and request.scenario == request.intent
    assert request.metadata() == {"cohort": request.user.cohort, "scenario": request.scenario,
                                  "consent_training": "true" if request.user.consent else "false"}


def test_judging_gives_feedback_more_often_on_wrong_answers_with_the_correction():
    domain = sd.Domain(sd.drift(policy_at=10))
    population = Population(domain, 100, seed=3, feedback_wrong=0.6, feedback_right=0.1, corrections=0.9)
    wrong, right = [], []
    for i in range(3000):
        request = population.request(i, 20)
        expected = domain.answer(request.intent, request.user.cohort, 20)
        right.append(population.judge(request, expected.text.lower()))
        wrong.append(population.judge(request, OLD.text if request.intent == RETURN else "no idea"))
    assert all(j.correct for j in right) and not any(j.correct for j in wrong)
    given_right = [j.feedback for j in right if j.feedback]
    given_wrong = [j.feedback for j in wrong if j.feedback]
    assert abs(len(given_right) / 3000 - 0.1) < 0.02 and abs(len(given_wrong) / 3000 - 0.6) < 0.03
    assert {f.rating for f in given_right} == {"up"} and {f.rating for f in given_wrong} == {"down"}
    incorrect = [f for f in given_wrong if f.category == "incorrect"]
    assert abs(len(incorrect) / len(given_wrong) - 0.9) < 0.03
    assert all(f.correction for f in incorrect)
    assert all(f.correction is None for f in given_wrong if f.category == "unhelpful")
    # The correction is the right answer of the user's cohort at that time.
    for i, judgement in enumerate(wrong[:200]):
        if judgement.feedback and judgement.feedback.correction:
            request = population.request(i, 20)
            assert judgement.feedback.correction == domain.answer(request.intent, request.user.cohort, 20).text
    # Judged at another time, the same answer may be right: the old return answer before the change.
    request = next(r for r in (population.request(i, 5) for i in range(100)) if r.intent == RETURN)
    assert population.judge(request, OLD.text).correct and not population.judge(request, OLD.text, at=10).correct


def test_the_classification_variant_judges_labels():
    population = Population(sd.Domain(sd.drift(policy_at=0)), 10, seed=1, task="sequence-classification")
    request = next(r for r in (population.request(i, 1) for i in range(100)) if r.intent == RETURN)
    assert population.judge(request, "return_14_days").correct
    wrong = population.judge(request, "return_30_days", at=1)
    assert not wrong.correct


@pytest.mark.parametrize("bad, message", [
    ({"cohorts": {"vip": 1.0}}, "unknown cohort"), ({"no_consent": 1.5}, "no_consent is a share"),
    ({"size": 0}, "at least one user"),
])
def test_bad_population_settings_are_refused(bad, message):
    with pytest.raises(ValueError, match=message):
        Population(sd.Domain(), **bad)


def test_the_tokenizer_word_list_covers_every_drift():
    # The tokenizer is made before any drift: the new intent's and the new policy's words must be in it anyway.
    words = set(sd.vocabulary())
    assert {"pause", "hold", "three", "months", "14"} <= words
    assert set(sd.Domain(sd.drift(policy_at=None)).vocabulary()) < words
    assert {"pause_plan", "return_14_days", "return_30_days"} <= set(sd.labels())
