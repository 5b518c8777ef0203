"""PII redaction on generated corpora: recall on PII in varied formats, and ordinary text left alone."""

from __future__ import annotations

import random
import string
from collections import Counter

from kaizen.collector.redact import KINDS, redact
from tests.collector.corpus import clean_corpus, pii_corpus


def test_the_pii_corpus_is_large_and_varied() -> None:
    corpus = pii_corpus()
    assert len(corpus) >= 200
    kinds = Counter(kind for kind, _, _ in corpus)
    assert set(kinds) == set(KINDS) and min(kinds.values()) >= 25


def test_recall_on_pii_is_at_least_99_percent() -> None:
    corpus = pii_corpus()
    missed = []
    for kind, value, text in corpus:
        redacted, found = redact(text)
        if value in redacted or not found:
            missed.append((kind, text, redacted))
    assert len(missed) / len(corpus) <= 0.01, missed


def test_each_kind_is_recorded_under_its_own_name() -> None:
    wrong = []
    for kind, value, text in pii_corpus():
        _, found = redact(text)
        if kind not in found:
            wrong.append((kind, value, found))
    assert len(wrong) / len(pii_corpus()) <= 0.01, wrong


def test_false_positives_on_ordinary_text_are_at_most_1_percent() -> None:
    corpus = clean_corpus()
    assert len(corpus) >= 200
    changed = [(text, redact(text)[0]) for text in corpus if redact(text)[0] != text]
    assert len(changed) / len(corpus) <= 0.01, changed


def test_checksums_decide_cards_and_ibans() -> None:
    assert redact("card 4111 1111 1111 1111")[0] == "card [CARD]"
    assert "4111 1111 1111 1112" in redact("card 4111 1111 1111 1112")[0]  # fails Luhn
    assert redact("IBAN DE89 3704 0044 0532 0130 00.")[0] == "IBAN [IBAN]."
    assert "[IBAN]" not in redact("IBAN DE88 3704 0044 0532 0130 00")[0]  # fails mod 97


def test_counts_of_several_fields_add_up() -> None:
    counts: dict[str, int] = {}
    redact("a@example.com and b@example.org", counts)
    redact("call +1 415 555 2671", counts)
    assert counts == {"email": 2, "phone": 1}


def test_text_without_digits_at_signs_or_colons_is_never_a_finding() -> None:
    """``redact`` skips the patterns for such text; no pattern may match it, whatever else it holds."""
    from kaizen.collector.redact import _RULES

    rng = random.Random(7)
    alphabet = string.ascii_letters + " .,;-+_/()[]%'\"!?#&*=\n\téüßçø" + "ABCDEFabcdef" * 4
    for _ in range(3000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 80)))
        assert not any(pattern.search(text) for _, pattern, _ in _RULES), text
    assert redact("the total is wrong, sorry!") == ("the total is wrong, sorry!", {})
    assert redact("host fe::ab is down") == ("host [IP] is down", {"ip": 1})  # an IPv6 address with no digit
