"""Reference metrics of generated text: ROUGE-L F1 (rouge-score), chrF and BLEU (sacrebleu), each in [0, 1].

One implementation for every place that scores an answer against a reference: the collector's sampled evaluation of
live answers (:mod:`kaizen.collector.evaluation`) against a user's or a reviewer's correction, and the trainer's
generative metrics (``kaizen_trainer.evaluate``), so that a live answer and a holdout answer are scored alike. Pure;
rouge-score and sacrebleu are imported on first use, so importing this module costs nothing where they are absent.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any


@functools.cache
def _rouge() -> Any:
    # Built on first use, not at import: its constructor logs through logging.info, which configures the root logger
    # when it has no handler yet, and a later logging.basicConfig would then do nothing.
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"])


def rouge_l(reference: str, hypothesis: str) -> float:
    """ROUGE-L F1 of one hypothesis against one reference."""
    return float(_rouge().score(reference, hypothesis)["rougeL"].fmeasure)


def chrf(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """sacrebleu's corpus chrF of the hypotheses against their references, divided by 100."""
    import sacrebleu

    # min: sacrebleu's 100 can come back as 100.00000000000004
    return min(1.0, sacrebleu.corpus_chrf(list(hypotheses), [list(references)]).score / 100)


def bleu(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """sacrebleu's corpus BLEU of the hypotheses against their references, divided by 100."""
    import sacrebleu

    return min(1.0, sacrebleu.corpus_bleu(list(hypotheses), [list(references)]).score / 100)
