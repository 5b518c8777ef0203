"""The demo's simulated users: a seeded population of a :class:`~kaizen.dev.support_domain.Domain`'s cohorts that
makes requests and judges the answers against its own ground truth. Pure: time is passed in, every draw comes
from the seed (and the request's index), so a run is reproduced exactly; :mod:`kaizen.dev.traffic` does the I/O.

* **Consent.** A share of users (``no_consent``) never consents to training use: their feedback is sent with
  ``consent.training = false`` and the collector never exports it for training.
* **Opt-out.** A share (``opt_out``) deletes their data after a while (at a time drawn in ``opt_out_between``):
  the driver calls the collector's ``DELETE /v1/subjects/{id}``; they make no requests after that.
* **Feedback.** Users judge every answer (:meth:`Population.judge`): right when it matches the domain's right
  answer for their cohort at that time (normalised exact sentence match: the domain's answers are fixed
  sentences, so a near miss is a wrong answer). A share of answers get feedback, wrong ones more often
  (``feedback_wrong``) than right ones (``feedback_right``): a wrong answer gets ``down``, category ``incorrect`` and
  the right answer as the correction (or, for a share ``1 - corrections``, ``unhelpful`` without one); a right
  answer gets ``up``.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Mapping
from dataclasses import dataclass

from kaizen.dev.support_domain import Answer, Domain


@dataclass(frozen=True)
class User:
    subject_id: str
    cohort: str
    #: Consents to training use of their feedback.
    consent: bool
    #: When they opt out (delete their data); None: never.
    opts_out_at: float | None = None

    def active(self, at: float) -> bool:
        return self.opts_out_at is None or at < self.opts_out_at


@dataclass(frozen=True)
class Request:
    """One request a user makes at ``at``; ``index`` is its position in the run (what its draws are keyed on)."""

    index: int
    user: User
    intent: str
    text: str
    at: float

    @property
    def scenario(self) -> str:
        """The request's ``scenario`` label: its intent (see :mod:`kaizen.dev.support_domain`)."""
        return self.intent

    @property
    def id(self) -> str:
        return f"{self.user.subject_id}-r{self.index}"

    def metadata(self) -> dict[str, str]:
        """The ``metadata`` of the serving request (what the model server puts on the trace)."""
        return {"cohort": self.user.cohort, "scenario": self.scenario,
                "consent_training": "true" if self.user.consent else "false"}


@dataclass(frozen=True)
class Feedback:
    """What a user sends about one answer (the fields of ``FeedbackRecorder.feedback``)."""

    rating: str
    category: str | None = None
    correction: str | None = None


@dataclass(frozen=True)
class Judgement:
    correct: bool
    #: The right answer for this user at that time.
    expected: Answer
    #: The feedback the user gives, if any.
    feedback: Feedback | None


class Population:
    """``size`` users with cohorts drawn by ``cohorts`` (name -> share), seeded by ``seed``; ``task`` says what the
    served model answers (sentences for causal-lm, action labels for sequence-classification)."""

    def __init__(
        self, domain: Domain, size: int = 200, seed: int = 0, *,
        cohorts: Mapping[str, float] | None = None, no_consent: float = 0.2, opt_out: float = 0.05,
        opt_out_between: tuple[float, float] = (30.0, 300.0), feedback_wrong: float = 0.6,
        feedback_right: float = 0.1, corrections: float = 0.9, task: str = "causal-lm",
    ) -> None:
        shares = dict(cohorts or {"free": 0.5, "pro": 0.3, "business": 0.2})
        unknown = set(shares) - set(domain.cohort_names)
        if unknown:
            raise ValueError(f"unknown cohort(s) {', '.join(sorted(unknown))}; the domain has "
                             f"{', '.join(domain.cohort_names)}")
        for name, value in (("no_consent", no_consent), ("opt_out", opt_out), ("feedback_wrong", feedback_wrong),
                            ("feedback_right", feedback_right), ("corrections", corrections)):
            if not 0 <= value <= 1:
                raise ValueError(f"{name} is a share and must be within 0..1, not {value}")
        if size < 1:
            raise ValueError(f"a population needs at least one user, not {size}")
        self.domain, self.seed, self.task = domain, seed, task
        self.feedback_wrong, self.feedback_right, self.corrections = feedback_wrong, feedback_right, corrections
        rng = random.Random(seed)
        names, weights = zip(*sorted(shares.items()))
        users = []
        for i in range(size):
            leaves = rng.random() < opt_out
            users.append(User(
                subject_id=f"user-{seed}-{i:04d}", cohort=rng.choices(names, weights)[0],
                consent=rng.random() >= no_consent,
                opts_out_at=round(rng.uniform(*opt_out_between), 3) if leaves else None,
            ))
        self.users: tuple[User, ...] = tuple(users)

    def active(self, at: float) -> list[User]:
        return [u for u in self.users if u.active(at)]

    def opt_outs(self, after: float, until: float) -> list[User]:
        """Users who opt out in ``(after, until]``, in order: what a driver does between two looks at the clock."""
        return sorted((u for u in self.users if u.opts_out_at is not None and after < u.opts_out_at <= until),
                      key=lambda u: (u.opts_out_at, u.subject_id))

    def request(self, index: int, at: float) -> Request | None:
        """The ``index``-th request of the run, made at ``at`` by an active user (None when everyone left): an intent
        asked at that time, by popularity, phrased as the user's cohort does."""
        users = self.active(at)
        if not users:
            return None
        rng = self._rng("request", index)
        user = rng.choice(users)
        intents = self.domain.intents_at(at)
        intent = rng.choices(intents, [i.weight for i in intents])[0]
        return Request(index, user, intent.name, self.domain.phrase(intent.name, user.cohort, rng), at)

    def judge(self, request: Request, answer: str, at: float | None = None) -> Judgement:
        """Judge ``answer`` to ``request`` against the right answer at ``at`` (default: when it was asked), and the
        feedback the user gives (drawn from the request's index, so the same answer always gets the same)."""
        expected = self.domain.answer(request.intent, request.user.cohort, request.at if at is None else at)
        correct = expected.matches(answer, self.task)
        rng = self._rng("feedback", request.index)
        gives, corrects = rng.random(), rng.random()
        feedback = None
        if correct and gives < self.feedback_right:
            feedback = Feedback("up")
        elif not correct and gives < self.feedback_wrong:
            feedback = Feedback("down", "incorrect", expected.output(self.task)) if corrects < self.corrections \
                else Feedback("down", "unhelpful")
        return Judgement(correct, expected, feedback)

    def _rng(self, what: str, index: int) -> random.Random:
        return random.Random(hashlib.sha256(f"{self.seed}:{what}:{index}".encode()).digest())
