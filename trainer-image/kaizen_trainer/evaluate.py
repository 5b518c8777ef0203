"""Stage 4, evaluate: measure a model on an evaluation set, overall and per cohort, the same way for the candidate
and the baseline, so their numbers compare.

Metrics (keys ``<dataset>.<metric>[.<label>]``, where a label is a row's cohort or scenario):

* ``accuracy`` -- sequence classification: predicted label is right; causal LM: share of response tokens predicted
  right under teacher forcing;
* ``exactMatch`` (causal LM) -- greedy decoding reproduces the whole response and stops: computed exactly in one
  forward pass, since greedy decoding yields the reference iff every next-token argmax along it is the reference;
* ``loss`` and ``perplexity`` (causal LM) -- mean token negative log-likelihood of the responses, and its exp;
* ``cohortGap`` -- largest difference in the primary metric (accuracy, exactMatch for causal LM) between cohorts;
* ``safetyViolationRate`` -- share of the safety probes (rows marked ``safety``: the red-team prompts of
  ``data.safety``, whose target is the safe answer) the model does not answer safely: sequence classification, the
  predicted label is not the safe label; causal LM, greedy decoding does not reproduce the safe response (the
  ``exactMatch`` test above). Any other answer counts, a harmless paraphrase included, so the rate is an upper bound
  on unsafe answers. Measured only on sets holding probes (the holdout and the stress set, when ``data.safety`` is
  given); elsewhere it is absent, and a gate on it fails as not measured rather than pass on no evidence. Probes are
  holdout rows like the others, so they count in the holdout's other metrics too;
* ``latencyP50Ms`` / ``latencyP95Ms`` -- one example per forward pass, on up to :data:`LATENCY_SAMPLE` holdout
  examples (not safety probes, unless the holdout holds nothing else).
* ``rougeL``, ``chrF``, ``bleu`` (causal LM) -- the greedy answers, generated as the model server generates them
  (:mod:`kaizen_trainer.generation`), against the references: the mean ROUGE-L F1 of rouge-score, and
  sacrebleu's corpus chrF and BLEU over the group, divided by 100 so that every score is in [0, 1]
  (:mod:`kaizen.logic.textmetrics`, which the collector scores live answers with too);
* ``winRate`` (holdout, with a judge, :func:`win_rates`) -- the candidate's share of pairwise wins over the baseline's
  answers to the same prompts, ties counting half; the baseline's value is its own share, ``1 - winRate``.

The stress set is the holdout with perturbed inputs (case, whitespace, a typo), one perturbation per row chosen by
its id, so candidate and baseline see the very same perturbations -- of the safety probes too, so a model that
refuses a red-team prompt only when it is spelled exactly as in the probe shows violations there.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from kaizen.logic import textmetrics

from kaizen_trainer import generation, modeling
from kaizen_trainer.curate import Row
from kaizen_trainer.errors import TrainerError, invalid_config
from kaizen_trainer.modeling import IGNORE, Device, Encoder

LATENCY_SAMPLE = 32
EVAL_BATCH = 32
#: The labels a judge model answers with: which answer is better, A or B, or (optionally) neither.
JUDGE_LABELS = frozenset({"A", "B"})
TIE = "tie"


@dataclass(frozen=True)
class Scored:
    row: Row
    correct: float
    exact: float
    nll: float
    tokens: int


def perturb(row: Row) -> Row:
    """A stress variant of a row: upper case, doubled whitespace, or two adjacent letters swapped."""
    pick = int.from_bytes(hashlib.sha256(row.id.encode()).digest()[:4], "big")
    text = row.input
    kind = pick % 3
    if kind == 0:
        text = text.upper()
    elif kind == 1:
        text = "  " + "  ".join(text.split()) + " "
    else:
        letters = [i for i in range(len(text) - 1) if text[i].isalpha() and text[i + 1].isalpha()]
        if letters:
            i = letters[(pick // 3) % len(letters)]
            text = text[:i] + text[i + 1] + text[i] + text[i + 2:]
    return replace(row, input=text)


@torch.no_grad()
def score(model: PreTrainedModel, encoder: Encoder, rows: Sequence[Row], device: Device) -> list[Scored]:
    modeling.to_device(model, device.device).eval()
    scored = []
    for start in range(0, len(rows), EVAL_BATCH):
        chunk = rows[start: start + EVAL_BATCH]
        batch = encoder.batch(encoder.encode_all(chunk), device.device)
        with _autocast(device):
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
        if encoder.task == "sequence-classification":
            nll = torch.nn.functional.cross_entropy(logits, batch["labels"], reduction="none")
            correct = (logits.argmax(-1) == batch["labels"]).float()
            scored += [Scored(r, float(c), float(c), float(n), 1) for r, c, n in zip(chunk, correct, nll)]
            continue
        labels = batch["labels"][:, 1:]
        logits = logits[:, :-1]
        mask = labels != IGNORE
        nll = torch.nn.functional.cross_entropy(
            logits.transpose(1, 2), labels.clamp(min=0), reduction="none") * mask
        hits = (logits.argmax(-1) == labels) & mask
        counts = mask.sum(1)
        for i, row in enumerate(chunk):
            n = int(counts[i])
            right = int(hits[i].sum())
            scored.append(Scored(row, right / n, float(right == n), float(nll[i].sum()), n))
    return scored


def latencies_ms(model: PreTrainedModel, encoder: Encoder, rows: Sequence[Row], device: Device) -> list[float]:
    modeling.to_device(model, device.device).eval()
    times = []
    with torch.no_grad():
        for row in rows[:LATENCY_SAMPLE]:
            batch = encoder.batch([encoder.encode(row)], device.device)
            began = time.perf_counter()
            with _autocast(device):
                model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            if device.device.type == "cuda":
                torch.cuda.synchronize()
            times.append((time.perf_counter() - began) * 1000)
    return times


def _autocast(device: Device):
    return torch.autocast(device_type=device.device.type, dtype=device.autocast, enabled=device.autocast is not None)


def _percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


def summarise(dataset: str, scored: Sequence[Scored], causal: bool) -> dict[str, float]:
    """Aggregate scores into ``<dataset>.<metric>[.<label>]`` metrics."""
    def aggregate(items: Sequence[Scored], suffix: str) -> dict[str, float]:
        out = {f"{dataset}.accuracy{suffix}": sum(s.correct for s in items) / len(items)}
        if causal:
            loss = sum(s.nll for s in items) / sum(s.tokens for s in items)
            out[f"{dataset}.exactMatch{suffix}"] = sum(s.exact for s in items) / len(items)
            out[f"{dataset}.loss{suffix}"] = loss
            out[f"{dataset}.perplexity{suffix}"] = math.exp(min(loss, 50.0))
        else:
            out[f"{dataset}.loss{suffix}"] = sum(s.nll for s in items) / len(items)
        probes = [s for s in items if s.row.safety]
        if probes:
            # ``exact`` is the label's correctness for classification, so one expression serves both tasks.
            out[f"{dataset}.safetyViolationRate{suffix}"] = sum(1 - s.exact for s in probes) / len(probes)
        return out

    if not scored:
        return {}
    metrics = aggregate(scored, "")
    groups: dict[str, list[Scored]] = defaultdict(list)
    cohorts: dict[str, list[Scored]] = defaultdict(list)
    for s in scored:
        for label in s.row.labels:
            groups[label].append(s)
        if s.row.cohort:
            cohorts[s.row.cohort].append(s)
    for label, items in sorted(groups.items()):
        metrics.update(aggregate(items, f".{label}"))
    if len(cohorts) >= 2:
        values = [sum(getattr(s, "exact" if causal else "correct") for s in items) / len(items)
                  for items in cohorts.values()]
        metrics[f"{dataset}.cohortGap"] = max(values) - min(values)
    return metrics


def _groups(rows: Sequence[Row]) -> dict[str, list[int]]:
    """Row indices of every group a metric is reported for: "" (all rows), then each cohort and scenario label."""
    groups: dict[str, list[int]] = {"": list(range(len(rows)))}
    for i, row in enumerate(rows):
        for label in row.labels:
            groups.setdefault(f".{label}", []).append(i)
    return dict(sorted(groups.items()))


def generate(model: PreTrainedModel, encoder: Encoder, rows: Sequence[Row], device: Device) -> list[str]:
    """The model's greedy answers to the rows' prompts, as the model server answers them, up to the longest response
    the trainer trains on (half of maxLength, then eos)."""
    modeling.to_device(model, device.device).eval()
    limit = generation.positions(model, encoder.max_length)
    prompts = [r.input for r in rows]
    return [c.text for start in range(0, len(rows), EVAL_BATCH)
            for c in generation.complete(model, encoder.tokenizer, device, prompts[start: start + EVAL_BATCH],
                                         encoder.max_length // 2 + 1, limit)]


def generative(dataset: str, rows: Sequence[Row], answers: Sequence[str]) -> dict[str, float]:
    """``<dataset>.rougeL|chrF|bleu[.<label>]`` of generated answers against the rows' references."""
    metrics: dict[str, float] = {}
    for suffix, members in _groups(rows).items():
        hypotheses, references = [answers[i] for i in members], [rows[i].target for i in members]
        metrics[f"{dataset}.rougeL{suffix}"] = sum(
            textmetrics.rouge_l(r, h) for r, h in zip(references, hypotheses, strict=True)) / len(members)
        metrics[f"{dataset}.chrF{suffix}"] = textmetrics.chrf(hypotheses, references)
        metrics[f"{dataset}.bleu{suffix}"] = textmetrics.bleu(hypotheses, references)
    return metrics


@dataclass
class Judge:
    """A loaded judge model (:func:`load_judge`)."""

    uri: str
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase


def load_judge(uri: str) -> Judge:
    """The judge model at ``uri`` (a sequence classifier with the labels A and B, optionally tie), left on the CPU
    until :func:`win_rates` needs it; loaded before training, so a wrong judge fails the job at once."""
    try:
        model, tokenizer = modeling.load("sequence-classification", uri)
    except TrainerError as error:
        raise invalid_config(f"judge: {str(error).replace('baseline ', '')}") from None
    labels = {str(v) for v in (model.config.id2label or {}).values()}
    if not JUDGE_LABELS <= labels or labels - JUDGE_LABELS - {TIE}:
        raise invalid_config(f"judge {uri} answers with the labels {', '.join(sorted(labels))}; a judge needs the "
                             "labels A and B (which answer is better) and optionally tie")
    return Judge(uri, model.eval(), tokenizer)


def win_rates(judge: Judge, rows: Sequence[Row], candidate: Sequence[str], baseline: Sequence[str], seed: int,
              device: Device) -> dict[str, float]:
    """``holdout.winRate[.<label>]``: the candidate's share of the judge's verdicts, ties half. The candidate is
    answer A or B by a coin seeded with ``seed`` and the row id, so the judge's position bias cancels out on average
    and a rerun is judged the same; identical answers tie without asking."""
    tok = judge.tokenizer
    sep = tok.sep_token or tok.eos_token or "\n"
    first = [hashlib.sha256(f"{seed}:{r.id}".encode()).digest()[0] % 2 == 0 for r in rows]
    asked = [i for i in range(len(rows)) if candidate[i] != baseline[i]]
    texts = [f"{rows[i].input} {sep} {candidate[i] if first[i] else baseline[i]} {sep} "
             f"{baseline[i] if first[i] else candidate[i]}" for i in asked]
    modeling.to_device(judge.model, device.device)
    limit = generation.positions(judge.model, 1024)
    verdicts = [label.label for start in range(0, len(texts), EVAL_BATCH)
                for label in generation.classify(judge.model, tok, device, texts[start: start + EVAL_BATCH], limit)]
    judge.model.cpu()
    score = [0.5] * len(rows)
    for i, verdict in zip(asked, verdicts, strict=True):
        score[i] = 0.5 if verdict == TIE else float((verdict == "A") == first[i])
    return {f"holdout.winRate{suffix}": sum(score[i] for i in members) / len(members)
            for suffix, members in _groups(rows).items()}


def evaluate(model: PreTrainedModel, encoder: Encoder, sets: Mapping[str, Sequence[Row]],
             device: Device, answers: dict[str, list[str]] | None = None) -> dict[str, float]:
    """All metrics of one model on every non-empty evaluation set, latency measured on the holdout. A causal LM's
    generated answers are scored too, and left in ``answers`` (by set) when it is given, for a judge."""
    causal = encoder.task == "causal-lm"
    metrics: dict[str, float] = {}
    for name, rows in sets.items():
        if rows:
            metrics.update(summarise(name, score(model, encoder, rows, device), causal))
            if causal:
                generated = generate(model, encoder, rows, device)
                metrics.update(generative(name, rows, generated))
                if answers is not None:
                    answers[name] = generated
    if sets.get("holdout"):
        # Timed on the requests the holdout holds like traffic's; the probes come first in it and would crowd them out.
        holdout = sets["holdout"]
        times = latencies_ms(model, encoder, [r for r in holdout if not r.safety] or holdout, device)
        metrics["holdout.latencyP50Ms"] = _percentile(times, 0.5)
        metrics["holdout.latencyP95Ms"] = _percentile(times, 0.95)
    return metrics
