"""PII redaction, applied to every free-text field at ingestion, before anything is stored.

Pure functions: :func:`redact` returns the text with each finding replaced by a typed placeholder (``[EMAIL]``,
``[PHONE]``, ``[CARD]``, ``[IP]``, ``[IBAN]``, ``[NATIONAL_ID]``) and the count per kind, which the collector
stores with the item so that exports and dataset manifests can say redaction happened.

Patterns find candidates; checksums and structure decide (Luhn for cards, mod-97 for IBANs, :mod:`ipaddress` for
IPs, digit counts for phones), which keeps ordinary numbers - prices, dates, versions, order numbers - intact.
Kinds run most specific first, so a card number is not half-eaten by the phone pattern.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable

_EMAIL = re.compile(r"(?<![\w.+-])[A-Za-z0-9][A-Za-z0-9._%+-]{0,63}@(?:[A-Za-z0-9-]{1,63}\.)+[A-Za-z]{2,24}(?!\w)")
# Country code, check digits, then 11-30 alphanumerics, optionally in groups of four separated by spaces.
_IBAN = re.compile(r"(?<![A-Za-z0-9])[A-Z]{2}[0-9]{2}(?:[ ]?[A-Z0-9]){11,30}(?![A-Za-z0-9])")
# 13-19 digits, optionally grouped by single spaces or dashes.
_CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])")
_IPV4 = re.compile(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?!\d|\.\d)")
_IPV6 = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?:%\w+)?(?![\w:])")
_NATIONAL_ID = re.compile(
    "|".join((
        r"(?<![\w-])\d{3}-\d{2}-\d{4}(?![\w-])",  # US SSN
        r"(?<!\w)[A-Z]{2} ?\d{2} ?\d{2} ?\d{2} ?[A-D](?!\w)",  # UK National Insurance number
        r"(?<![\w-])\d{6}[-+]\d{4}(?![\w-])",  # Nordic personal numbers (DDMMYY-NNNN)
        r"(?<![\w.,-])\d{9,12}(?![\w-]|[.,]\d)",  # long bare digit runs: ids, account and tax numbers
    ))
)
_PHONE = re.compile(
    "|".join((
        r"(?<![\w+])(?:\+|00)[1-9]\d{0,2}(?:[ .-]?\(?\d{1,5}\)?){2,6}(?![\w])",  # international
        r"(?<!\w)(?:\(\d{3}\) ?|\d{3}[ .-])\d{3}[ .-]\d{4}(?!\w)",  # North American
        r"(?<![\w.,-])0\d{1,4}(?:[ ./-]?\d{2,8}){1,4}(?![\w-]|[.,]\d)",  # national, leading trunk zero
    ))
)
# 05/12/2024, 05.12.24, 2024-05-12: the shapes of dates the national phone pattern would otherwise take.
_DATE = re.compile(r"\d{1,2}([./-])\d{1,2}\1(?:\d{2}|\d{4})|\d{4}-\d{2}-\d{2}")

Replacer = Callable[[re.Match[str]], str | None]


def _luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _iban_valid(candidate: str) -> bool:
    compact = candidate.replace(" ", "")
    if not 15 <= len(compact) <= 34:
        return False
    rearranged = compact[4:] + compact[:4]
    return int("".join(str(int(c, 36)) for c in rearranged)) % 97 == 1


def _card(match: re.Match[str]) -> str | None:
    digits = re.sub(r"\D", "", match.group())
    return "[CARD]" if 13 <= len(digits) <= 19 and _luhn(digits) else None


def _iban(match: re.Match[str]) -> str | None:
    return "[IBAN]" if _iban_valid(match.group()) else None


def _ip(match: re.Match[str]) -> str | None:
    text = match.group()
    try:
        ipaddress.ip_address(text.split("%")[0])
    except ValueError:
        # Times (12:30:00) and versions (1.2.3.4000) have the shape but are not addresses.
        return None
    return "[IP]"


def _phone(match: re.Match[str]) -> str | None:
    if _DATE.fullmatch(match.group()):
        return None
    digits = sum(ch.isdigit() for ch in match.group())
    return "[PHONE]" if 7 <= digits <= 15 else None


def _always(token: str) -> Replacer:
    return lambda match: token


#: (kind, pattern, replacer) in the order they run.
_RULES: tuple[tuple[str, re.Pattern[str], Replacer], ...] = (
    ("email", _EMAIL, _always("[EMAIL]")),
    ("iban", _IBAN, _iban),
    ("card", _CARD, _card),
    ("ip", _IPV6, _ip),
    ("ip", _IPV4, _ip),
    ("national_id", _NATIONAL_ID, _always("[NATIONAL_ID]")),
    ("phone", _PHONE, _phone),
)

KINDS = ("email", "iban", "card", "ip", "national_id", "phone")

#: Every rule needs a digit, an ``@`` or a ``:`` (IPv6, even ``fe::ab``) to match; most comments have none, and one
#: search for them is far cheaper than running the seven patterns.
_MAY_HOLD_PII = re.compile(r"[\d@:]")


def redact(text: str, counts: dict[str, int] | None = None) -> tuple[str, dict[str, int]]:
    """Return ``text`` with PII replaced by placeholders, and the number of findings per kind.

    ``counts``, when given, is updated in place and returned, so the findings of several fields of one item add up.
    """
    found = counts if counts is not None else {}
    if not _MAY_HOLD_PII.search(text):
        return text, found
    for kind, pattern, replace in _RULES:
        def substitute(match: re.Match[str], kind: str = kind, replace: Replacer = replace) -> str:
            token = replace(match)
            if token is None:
                return match.group()
            found[kind] = found.get(kind, 0) + 1
            return token

        text = pattern.sub(substitute, text)
    return text, found
