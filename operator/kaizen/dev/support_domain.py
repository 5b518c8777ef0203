"""The demo's support domain: a shop's support bot, what its users ask, how each cohort phrases it, and the right
answer (a short sentence) to every request at every time, with a drift schedule. Pure and torch-free: the demo, the
e2e tests, ``bench/loop`` and :mod:`kaizen.dev.users` build on it; :mod:`kaizen.dev.demo_data` turns it into the
trainer's files.

**Shape.** Five scenarios (refund, shipping, account, billing, plan), each with two intents. An intent has a right
answer (:class:`Answer`: the sentence a causal LM should say, and an action label for the classification variant)
and a few *asks* (``return {my} {item}``). A request is a cohort's *frame* around an ask (``quick question {ask}
asap``): ``free`` and ``pro`` users speak for themselves ("my"), ``business`` users for their company ("our", with
words such as team, company, staff that no other cohort uses). Vocabulary and lengths stay small (requests of at
most 12 words, answers of at most 10) so a tiny GPT-2 learns the domain in seconds on one CPU core.

**Labels.** The ``scenario`` label of rows, requests and traces (the trainer's and the collector's ``scenario``) is
the intent's name, ``refund.return``: the trainer supersedes replay rows per scenario label, and the policy change
makes one intent of the refund scenario stale, not its sibling ``refund.money``; labelled ``refund``, every refund
replay row was dropped and the candidate forgot ``refund.money`` (measured: exactMatch 0 there). Per-label gates
and the loop's targets are per intent for the same reason.

**Drift.** Time is seconds from the start of a run, always passed in (no clock here). :func:`drift` builds the
schedule; its events:

* a :class:`PolicyChange`: from ``at`` on, one intent has a new right answer (the return window shrinks from 30 to
  14 days), for everyone or for some cohorts only; the old answer is wrong from then on;
* a :class:`NewIntent`: from ``at`` on, users ask something nobody asked before (pausing a plan), so a model
  trained earlier never saw it.

**Scenario (a), drift and recovery.** The baseline learns ``refund.return`` -> "... within 30 days ..." from data
before the change. After a change for everyone it keeps saying 30 days, which every user now judges wrong; their
corrections ("... within 14 days ...") are the targeted data of the retrain, the replay of ``refund`` is superseded
by them (curate), and the candidate says 14 days, which the holdout "as now" measures and users confirm.

**Scenario (b), a candidate that passes offline and fails live for one cohort.** Two facts of the domain combine:

1. the policy change applies to ``free`` and ``pro`` only (``drift(policy_cohorts=("free", "pro"))``): business
   customers keep 30 days by contract, so the baseline is still right for them and only free and pro users
   complain;
2. the team's data (:data:`TEAM_COHORTS`: replay and holdout) was sampled from the free and pro queues; business
   requests, which go through account managers, are in no file the team made (the baseline itself was trained on
   the full history, all cohorts).

The retrain learns from free and pro corrections that a return request is answered "14 days"; nothing in its data
says a business request differs (its words are not in the training mix at all), so the candidate says 14 days to
business users too. The holdout, free and pro only, cannot see it: every gate passes. Live, business users (the
baseline was right for them) now get a wrong answer on returns, and their feedback turns negative on the canary
only, which the canary's analysis must catch and roll back. This is what the model learns, not a setting: the
trainer test ``tests/trainer/test_support_domain.py`` trains baseline and candidate for real and measures it.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

#: The cohorts, and the ones whose requests the team's replay and holdout hold (see the module docstring, (b)).
COHORTS = ("free", "pro", "business")
TEAM_COHORTS = ("free", "pro")
ITEMS = ("order", "shoes", "phone", "lamp", "book", "jacket")
#: Filler a user may add, at most one per request, to vary the phrasing.
FILLER = ("please", "thanks", "today", "again", "now")
PUNCTUATION = (".",)


@dataclass(frozen=True)
class Answer:
    """The right answer to an intent: the sentence (causal LM) and the action label (sequence classification)."""

    text: str
    label: str

    def output(self, task: str) -> str:
        """What a model of ``task`` should produce: the sentence, or the label."""
        return self.text if task == "causal-lm" else self.label

    def matches(self, produced: str, task: str = "causal-lm") -> bool:
        """Whether ``produced`` is this answer: normalised exact match (case, punctuation and spacing ignored), which
        is exact enough for a templated domain whose answers are fixed sentences: a near miss is a wrong answer."""
        return normalise(produced) == normalise(self.output(task))


@dataclass(frozen=True)
class Intent:
    """One thing users ask: ``name`` is ``scenario.intent``; asks hold ``{my}`` and ``{item}`` placeholders."""

    name: str
    answer: Answer
    asks: tuple[str, ...]
    #: Relative popularity in traffic.
    weight: float = 1.0

    @property
    def topic(self) -> str:
        """The scenario the intent belongs to (``refund`` for ``refund.return``)."""
        return self.name.split(".", 1)[0]


@dataclass(frozen=True)
class Cohort:
    """How one cohort phrases requests: its frames around an ask (``{ask}``) and its possessive."""

    name: str
    my: str
    frames: tuple[str, ...]


@dataclass(frozen=True)
class PolicyChange:
    """From ``at`` on, ``intent`` is answered ``answer`` (for ``cohorts`` only, when given)."""

    at: float
    intent: str
    answer: Answer
    cohorts: tuple[str, ...] | None = None

    def applies(self, cohort: str, at: float) -> bool:
        return at >= self.at and (self.cohorts is None or cohort in self.cohorts)


@dataclass(frozen=True)
class NewIntent:
    """From ``at`` on, users ask ``intent``; before, nobody does."""

    at: float
    intent: Intent


INTENTS = (
    Intent("refund.return", Answer("Return it within 30 days from the orders page.", "return_30_days"),
           ("return {my} {item}", "send {my} {item} back"), weight=2),
    Intent("refund.money", Answer("Your refund reaches your card within five days.", "refund_to_card"),
           ("get {my} money back", "where is {my} refund")),
    Intent("shipping.late", Answer("Track your parcel on the orders page.", "track_parcel"),
           ("{my} {item} is late", "where is {my} {item}")),
    Intent("shipping.lost", Answer("We will send a new one for free.", "resend"),
           ("{my} {item} never arrived", "{my} {item} got lost")),
    Intent("account.password", Answer("Use the reset link on the login page.", "reset_link"),
           ("reset {my} password", "forgot {my} password")),
    Intent("account.delete", Answer("Delete your account in the privacy settings.", "privacy_settings"),
           ("delete {my} account", "close {my} account")),
    Intent("billing.invoice", Answer("Download the invoice from the billing page.", "download_invoice"),
           ("invoice for {my} {item}", "download {my} invoice")),
    Intent("billing.charged", Answer("We will check the charge within two days.", "check_charge"),
           ("{my} card was charged twice", "a wrong charge on {my} card")),
    Intent("plan.upgrade", Answer("Pick a bigger plan on the plans page.", "upgrade_plan"),
           ("upgrade {my} plan", "get a bigger plan")),
    Intent("plan.cancel", Answer("Cancel anytime in your plan settings.", "cancel_plan"),
           ("cancel {my} plan", "stop {my} subscription")),
)
#: The drift's two events: the return window shrinks; pausing a plan becomes possible (and asked about).
RETURN_POLICY = Answer("Return it within 14 days from the orders page.", "return_14_days")
PAUSE = Intent("plan.pause", Answer("You can pause your plan for three months.", "pause_plan"),
               ("pause {my} plan", "put {my} subscription on hold"))

COHORT_PHRASING = (
    Cohort("free", "my", ("hi {ask}", "hello {ask}", "help {ask}", "{ask} help")),
    Cohort("pro", "my", ("quick question {ask}", "{ask} asap", "urgent {ask}", "need support {ask} fast")),
    Cohort("business", "our", ("our team needs help {ask}", "for the company {ask}", "{ask} for our staff",
                               "on behalf of the company {ask}")),
)


def drift(policy_at: float | None = 0.0, policy_cohorts: Sequence[str] | None = None,
          new_intent_at: float | None = None) -> tuple[PolicyChange | NewIntent, ...]:
    """The drift schedule: the return-policy change at ``policy_at`` (for ``policy_cohorts`` only, when given) and
    the new intent (pausing a plan) at ``new_intent_at``; ``None`` leaves an event out."""
    events: list[PolicyChange | NewIntent] = []
    if policy_at is not None:
        events.append(PolicyChange(policy_at, "refund.return", RETURN_POLICY,
                                   tuple(policy_cohorts) if policy_cohorts is not None else None))
    if new_intent_at is not None:
        events.append(NewIntent(new_intent_at, PAUSE))
    return tuple(events)


def normalise(text: str) -> str:
    """Case, punctuation and spacing removed (as the trainer's curate normalises for duplicates)."""
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


@dataclass(frozen=True)
class Domain:
    """The support domain with a drift schedule (see the module docstring). Times are seconds from the start."""

    events: tuple[PolicyChange | NewIntent, ...] = field(default_factory=drift)
    intents: tuple[Intent, ...] = INTENTS
    cohorts: tuple[Cohort, ...] = COHORT_PHRASING

    def __post_init__(self) -> None:
        names = {i.name for i in self.all_intents()}
        for event in self.events:
            if isinstance(event, PolicyChange):
                if event.intent not in names:
                    raise ValueError(f"policy change for unknown intent {event.intent!r}; use one of "
                                     f"{', '.join(sorted(names))}")
                unknown = set(event.cohorts or ()) - set(self.cohort_names)
                if unknown:
                    raise ValueError(f"policy change for unknown cohort(s) {', '.join(sorted(unknown))}; use "
                                     f"{', '.join(self.cohort_names)}")

    @property
    def cohort_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.cohorts)

    def all_intents(self) -> tuple[Intent, ...]:
        """Every intent that is ever asked, the new ones included."""
        return self.intents + tuple(e.intent for e in self.events if isinstance(e, NewIntent))

    def intent(self, name: str) -> Intent:
        for intent in self.all_intents():
            if intent.name == name:
                return intent
        raise KeyError(f"unknown intent {name!r}")

    def cohort(self, name: str) -> Cohort:
        for cohort in self.cohorts:
            if cohort.name == name:
                return cohort
        raise KeyError(f"unknown cohort {name!r}; use one of {', '.join(self.cohort_names)}")

    def intents_at(self, at: float) -> tuple[Intent, ...]:
        """The intents users ask at time ``at``: a new intent only from its event on."""
        return self.intents + tuple(e.intent for e in self.events if isinstance(e, NewIntent) and at >= e.at)

    def answer(self, intent: str, cohort: str, at: float) -> Answer:
        """The right answer to ``intent`` for a ``cohort`` user at time ``at``: the latest policy change that applies,
        else the intent's own answer."""
        answer = self.intent(intent).answer
        for event in sorted((e for e in self.events if isinstance(e, PolicyChange)), key=lambda e: e.at):
            if event.intent == intent and event.applies(cohort, at):
                answer = event.answer
        return answer

    def phrase(self, intent: str, cohort: str, rng: random.Random) -> str:
        """One request of ``cohort`` for ``intent``: a frame around an ask, maybe with a filler word."""
        style = self.cohort(cohort)
        ask = rng.choice(self.intent(intent).asks).format(my=style.my, item=rng.choice(ITEMS))
        text = rng.choice(style.frames).format(ask=ask)
        if rng.random() < 0.5:
            text += " " + rng.choice(FILLER)
        return text

    def rows(self, n: int, seed: int, at: float, *, cohorts: Iterable[str] | None = None, task: str = "causal-lm",
             prefix: str = "row") -> list[dict]:
        """``n`` dataset rows (the trainer's Example JSONL shape; ``scenario`` is the intent) as the domain is at
        ``at``: the intents asked then, in turn, each by a cohort of ``cohorts`` (default all) with its right answer
        then."""
        rng = random.Random(seed)
        cohorts = tuple(cohorts or self.cohort_names)
        intents = self.intents_at(at)
        rows = []
        for i in range(n):
            intent, cohort = intents[i % len(intents)], rng.choice(cohorts)
            rows.append({"id": f"{prefix}-{i}", "input": self.phrase(intent.name, cohort, rng),
                         "output": self.answer(intent.name, cohort, at).output(task), "scenario": intent.name,
                         "cohort": cohort, "subjectId": f"{prefix}-subject-{rng.randrange(10_000)}"})
        return rows

    def answers(self) -> tuple[Answer, ...]:
        """Every answer any intent ever has."""
        changed = tuple(e.answer for e in self.events if isinstance(e, PolicyChange))
        return tuple(dict.fromkeys((*(i.answer for i in self.all_intents()), *changed)))

    def labels(self) -> list[str]:
        """The action labels of the classification variant."""
        return sorted({a.label for a in self.answers()})

    def vocabulary(self) -> list[str]:
        """Every word of every request and answer at any time, lower case, punctuation as its own token: the word
        list of the demo's word-level tokenizer (``kaizen_trainer.synthetic.tokenizer(vocabulary)``). The new intent's
        and the new policy's words are in from the start: a retrained model keeps its baseline's tokenizer."""
        texts = [*ITEMS, *FILLER, *PUNCTUATION, *(a.text for a in self.answers()), *self.labels()]
        for cohort in self.cohorts:
            texts += [cohort.my, *(frame.replace("{ask}", " ") for frame in cohort.frames)]
        for intent in self.all_intents():
            texts += [ask.replace("{my}", " ").replace("{item}", " ") for ask in intent.asks]
        return sorted({word for text in texts for word in re.findall(r"\w+|[^\w\s]", text.lower())})


def vocabulary() -> list[str]:
    """The word list of every request and answer :func:`drift` can make, whichever events a run has: the demo's
    tokenizer is built once, before any drift, and a word it lacks is [UNK], which the model can neither read nor
    say (a new intent's answer would decode with words missing)."""
    return Domain(drift(policy_at=0.0, new_intent_at=0.0)).vocabulary()


def labels() -> list[str]:
    """The action labels of every answer :func:`drift` can make (the classification variant's label set)."""
    return Domain(drift(policy_at=0.0, new_intent_at=0.0)).labels()
