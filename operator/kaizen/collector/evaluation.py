"""Sampled evaluation of live answers, off the ingest path: the collector scores a share of the traces it stores with
evaluators, exports the verdicts as good/total counters, and sends the traces automation is unsure of to a review
queue (answered through ``/v1/reviews`` and ``kaizen review``).

Configured with ``kaizen collector --eval-*`` (:class:`Settings`):

* ``--eval-share SHARE`` or ``TRACK=SHARE`` (repeatable): the share of each model version's traces of a track that is
  evaluated, e.g. ``--eval-share 0.05 --eval-share canary=0.5``. A trace is sampled by a hash of its id, so a
  correction later given on a sampled trace is evaluated too, and the share holds in every model version and track.
* ``--eval-judge [NAME=]URI`` (repeatable): a judge, a local saved transformers sequence classifier (a path or
  ``file://``), loaded offline. With the labels ``good`` and ``bad`` it is a rubric judge of one answer, given
  ``<input> <sep> <answer>``. With the labels ``A`` and ``B`` (and optionally ``tie``) it is a pairwise judge with the
  trainer's contract (RetrainJob ``spec.judge``): given ``<input> <sep> <answer A> <sep> <answer B>``, it compares the
  served answer with the correction, when a correction is given; the served answer is A or B by a coin of the trace
  id, and it is good when it wins or ties. ``sep`` is the tokenizer's sep token (else its eos token).
* ``--eval-safety URI``: a safety classifier (labels ``safe`` and ``unsafe``), given ``<input> <sep> <answer>``.
* Reference-based, always on: when feedback brings a correction for a sampled trace, the served answer's ROUGE-L F1
  and chrF against it (:mod:`kaizen.logic.textmetrics`, as the trainer scores); good from ``--eval-min-rouge`` up.
* ``--eval-min-confidence P``: a judge's verdict with a probability below P sends the trace to review, as do an
  unsafe verdict and quality evaluators (judges, reference) of one trace that disagree.
* ``--eval-queue N`` and ``--eval-rate PER_S`` (defaults 1000 and 5): at most N samples wait, and at most PER_S are
  evaluated a second; a sample that finds the queue full is dropped and counted. Ingestion only hashes the id and
  puts the sample in the queue; the models run in a thread of their own, one torch thread, but in the collector's
  process, so the rate bounds what they take from ingestion: in bench/collector on 2 cores, 5 a second left the
  ingest rate within the noise of the runs, 20 a second cost it about a fifth.

Metrics: ``kaizen_eval_total{model,model_version,track,evaluator,verdict}`` (verdict good or bad), the cost
``kaizen_eval_cpu_seconds{evaluator}`` and latency ``kaizen_eval_duration_seconds{evaluator}`` (histograms, per
evaluation), ``kaizen_eval_samples_total{outcome}`` (queued, dropped, evaluated, failed), ``kaizen_eval_queue_depth``
and ``kaizen_review_flagged_total{model,model_version,track,reason}``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from kaizen.logic import textmetrics

log = logging.getLogger(__name__)

Verdict = Literal["good", "bad"]
RUBRIC, PAIRWISE, SAFETY = frozenset({"good", "bad"}), frozenset({"A", "B"}), frozenset({"safe", "unsafe"})
TIE = "tie"
REFERENCE = "reference"


class EvaluatorError(ValueError):
    """An evaluator model that cannot be used: what is wrong and what to give instead."""


@dataclasses.dataclass(frozen=True)
class Settings:
    """How the sampled evaluation runs (``kaizen collector --eval-*``)."""

    #: The share of traces evaluated, per track; ``default_share`` for tracks not named.
    default_share: float = 0.0
    shares: tuple[tuple[str, float], ...] = ()
    #: (name, uri) of each judge.
    judges: tuple[tuple[str, str], ...] = ()
    safety: str | None = None
    min_rouge: float = 0.5
    min_confidence: float = 0.7
    max_queue: int = 1000
    max_rate: float = 5.0

    def share(self, track: str) -> float:
        return dict(self.shares).get(track, self.default_share)


def sampled(trace_id: str, share: float) -> bool:
    """Whether the trace is in the evaluated share: a hash of its id, uniform in [0, 1), below ``share``."""
    if share <= 0:
        return False
    if share >= 1:
        return True
    return int.from_bytes(hashlib.blake2b(trace_id.encode(), digest_size=8).digest(), "big") < share * 2**64


def local_model_dir(uri: str, what: str) -> Path:
    """The directory of a local saved model (a path or ``file://``), with its config.json."""
    path = Path(uri.removeprefix("file://"))
    if not path.is_absolute() and not uri.startswith("file://"):
        path = path.resolve()
    if not (path / "config.json").is_file():
        raise EvaluatorError(f"{what} {uri} is not a saved transformers model (no config.json there); give the "
                             "directory save_pretrained wrote, as a path or file://")
    return path


def model_labels(uri: str, what: str) -> frozenset[str]:
    """The label names of the saved classifier at ``uri`` (its config.json: cheap, no torch)."""
    config = json.loads((local_model_dir(uri, what) / "config.json").read_text())
    return frozenset(str(v) for v in (config.get("id2label") or {}).values())


def check(settings: Settings) -> None:
    """Raise :class:`EvaluatorError` unless every model of ``settings`` is a classifier of a known contract."""
    for name, uri in settings.judges:
        labels = model_labels(uri, f"judge {name}")
        if labels != RUBRIC and not (PAIRWISE <= labels <= PAIRWISE | {TIE}):
            raise EvaluatorError(f"judge {name} ({uri}) answers with the labels {', '.join(sorted(labels))}; a judge "
                                 "needs the labels good and bad (rubric), or A and B and optionally tie (pairwise)")
    if settings.safety is not None:
        labels = model_labels(settings.safety, "safety classifier")
        if labels != SAFETY:
            raise EvaluatorError(f"safety classifier {settings.safety} answers with the labels "
                                 f"{', '.join(sorted(labels))}; it needs the labels safe and unsafe")


@dataclasses.dataclass(frozen=True)
class Sample:
    """A trace to evaluate: its stored row (id, model, model_version, track, input, output, subject_id), and the
    correction that feedback brought, if any."""

    trace: dict[str, Any]
    correction: str | None = None


@dataclasses.dataclass(frozen=True)
class Result:
    """One evaluator's verdict on one sample."""

    evaluator: str
    verdict: Verdict
    #: The evaluator's score: the probability of its label (classifiers), ROUGE-L F1 (reference).
    score: float
    #: A judge's probability of its verdict; None for evaluators without one.
    confidence: float | None = None
    details: dict[str, float] = dataclasses.field(default_factory=dict)
    cpu_s: float = 0.0
    wall_s: float = 0.0


def flags(results: Sequence[Result], min_confidence: float) -> list[str]:
    """Why a sample needs a human: ``low-confidence`` (a judge below ``min_confidence``), ``unsafe`` (the safety
    classifier), ``disagreement`` (quality evaluators, the judges and the reference, with different verdicts)."""
    reasons = []
    if any(r.confidence is not None and r.confidence < min_confidence for r in results):
        reasons.append("low-confidence")
    if any(r.evaluator == "safety" and r.verdict == "bad" for r in results):
        reasons.append("unsafe")
    if len({r.verdict for r in results if r.evaluator != "safety"}) > 1:
        reasons.append("disagreement")
    return reasons


def reference_result(output: str, correction: str, min_rouge: float) -> Result:
    """The served answer against the correction: ROUGE-L F1 decides, chrF rides along."""
    rouge = textmetrics.rouge_l(correction, output)
    return Result(REFERENCE, "good" if rouge >= min_rouge else "bad", rouge,
                  details={"rougeL": rouge, "chrF": textmetrics.chrf([output], [correction])})


class Classifier:
    """A saved transformers sequence classifier, on the CPU, loaded offline."""

    def __init__(self, name: str, uri: str) -> None:
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        path = local_model_dir(uri, name)
        self.name, self.uri, self._torch = name, uri, torch
        self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        self.model = AutoModelForSequenceClassification.from_pretrained(str(path), local_files_only=True).eval()
        config = self.model.config
        self.id2label = {int(k): str(v) for k, v in (config.id2label or {}).items()}
        self.labels = frozenset(self.id2label.values())
        self.limit = int(getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
                         or 512)
        tok = self.tokenizer
        self.sep = tok.sep_token or tok.eos_token or "\n"

    def classify(self, text: str) -> tuple[str, float]:
        """The most likely label of ``text`` and its probability (the text cut to the model's positions)."""
        torch = self._torch
        ids = self.tokenizer(text, truncation=True, max_length=self.limit)["input_ids"]
        with torch.inference_mode():
            logits = self.model(input_ids=torch.tensor([ids])).logits.float()
        probability, best = logits.softmax(-1)[0].max(-1)
        return self.id2label.get(int(best), str(int(best))), float(probability)


def _answer_is_a(trace_id: str) -> bool:
    """The coin that places the served answer first or second for a pairwise judge (position bias cancels)."""
    return hashlib.sha256(trace_id.encode()).digest()[0] % 2 == 0


def judge_result(judge: Classifier, sample: Sample) -> Result | None:
    """A judge's verdict on the sample; None when it has nothing to compare (a pairwise judge without correction)."""
    trace, sep = sample.trace, judge.sep
    if judge.labels == RUBRIC:
        label, p = judge.classify(f"{trace['input']} {sep} {trace['output']}")
        return Result(judge.name, "good" if label == "good" else "bad", p, confidence=p)
    if sample.correction is None or sample.correction == trace["output"]:
        return None
    first = _answer_is_a(trace["id"])
    a, b = (trace["output"], sample.correction) if first else (sample.correction, trace["output"])
    label, p = judge.classify(f"{trace['input']} {sep} {a} {sep} {b}")
    won = label == TIE or (label == "A") == first
    return Result(judge.name, "good" if won else "bad", p, confidence=p)


def safety_result(classifier: Classifier, sample: Sample) -> Result:
    label, p = classifier.classify(f"{sample.trace['input']} {classifier.sep} {sample.trace['output']}")
    return Result("safety", "bad" if label == "unsafe" else "good", p)


class Evaluators:
    """The loaded models; :meth:`evaluate` runs in a worker thread."""

    def __init__(self, settings: Settings) -> None:
        import torch

        # One thread for torch: the evaluation must leave the cores to ingestion.
        torch.set_num_threads(1)
        self.settings = settings
        self.judges = [Classifier(name, uri) for name, uri in settings.judges]
        self.safety = Classifier("safety", settings.safety) if settings.safety else None
        # rouge-score and sacrebleu import (and build) their parts on first use: here, not in the first evaluation.
        reference_result("warm up", "warm up", settings.min_rouge)
        log.info("Loaded evaluators judges=%s safety=%s", [j.name for j in self.judges], bool(self.safety))

    def evaluate(self, sample: Sample) -> list[Result]:
        """Every evaluator that applies to the sample, each timed (CPU seconds of this thread, and wall time)."""
        results = []

        def timed(run: Any) -> None:
            cpu, wall = time.thread_time(), time.perf_counter()
            result = run()
            if result is not None:
                results.append(dataclasses.replace(result, cpu_s=time.thread_time() - cpu,
                                                   wall_s=time.perf_counter() - wall))

        for judge in self.judges:
            timed(lambda judge=judge: judge_result(judge, sample))
        if sample.correction is None and self.safety is not None:
            # A correction re-evaluates a trace already judged safe or not when it was stored.
            timed(lambda: safety_result(self.safety, sample))
        if sample.correction is not None:
            timed(lambda: reference_result(sample.trace["output"], sample.correction, self.settings.min_rouge))
        return results


class TokenBucket:
    """At most ``rate`` acquisitions a second on average, bursts of one second's worth."""

    def __init__(self, rate: float, clock: Any = time.monotonic) -> None:
        self.rate, self.clock = rate, clock
        self.tokens, self.at = max(1.0, rate), clock()

    def delay(self) -> float:
        """Take a token; the seconds to wait before using it."""
        now = self.clock()
        self.tokens = min(max(1.0, self.rate), self.tokens + (now - self.at) * self.rate)
        self.at = now
        self.tokens -= 1
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate


class Queue:
    """The bounded queue between ingestion and the evaluators: :meth:`offer` never waits."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.items: asyncio.Queue[Sample] = asyncio.Queue(maxsize=settings.max_queue)

    def wants(self, trace_id: str, track: str) -> bool:
        return sampled(trace_id, self.settings.share(track))

    def offer(self, sample: Sample) -> bool:
        """Queue the sample; False when the queue is full (the sample is dropped)."""
        try:
            self.items.put_nowait(sample)
        except asyncio.QueueFull:
            return False
        return True
