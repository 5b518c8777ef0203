"""Generated corpora for the redaction tests: PII in varied real-world formats, and ordinary text full of numbers.

Deterministic (a fixed seed), so a failure names the same string every run. The PII values are synthetic but
valid where validity is checkable (Luhn for cards, mod-97 for IBANs), because the redactor checks them.
"""

from __future__ import annotations

import random

_CONTEXTS = (
    "{}",
    "Please contact me at {} tomorrow.",
    "my details: {}.",
    "Send it to {}, thanks!",
    "The customer ({}) complained about the answer.",
    "Wrong again -- {} -- fix it",
    "ok so {} is what I typed",
    "Rückfrage bitte an {} senden.",
)


def _luhn_complete(prefix: str, length: int, rng: random.Random) -> str:
    body = prefix + "".join(str(rng.randrange(10)) for _ in range(length - len(prefix) - 1))
    for check in "0123456789":
        digits = body + check
        total = 0
        for i, ch in enumerate(reversed(digits)):
            d = int(ch) * (2 if i % 2 else 1)
            total += d - 9 if d > 9 else d
        if total % 10 == 0:
            return digits
    raise AssertionError("unreachable: one check digit always completes a Luhn number")


def _iban(country: str, bban: str) -> str:
    numeric = "".join(str(int(c, 36)) for c in bban + country + "00")
    return f"{country}{98 - int(numeric) % 97:02d}{bban}"


def _group(text: str, size: int, sep: str) -> str:
    return sep.join(text[i:i + size] for i in range(0, len(text), size))


def _emails(rng: random.Random) -> list[str]:
    users = ["jane.doe", "j.smith+kaizen", "BOB", "maria_garcia-lopez", "x1", "li.wei.2024", "oneil"]
    domains = ["example.com", "mail.example.co.uk", "EXAMPLE.ORG", "uni-heidelberg.de", "corp.io", "xn--bcher-kva.ch"]
    return [f"{rng.choice(users)}{rng.randrange(100)}@{rng.choice(domains)}" for _ in range(40)]


def _phones(rng: random.Random) -> list[str]:
    def d(n: int) -> str:
        return "".join(str(rng.randrange(10)) for _ in range(n))

    shapes = [
        lambda: f"+1 {rng.randrange(200, 999)} {d(3)} {d(4)}",
        lambda: f"({rng.randrange(200, 999)}) {d(3)}-{d(4)}",
        lambda: f"{rng.randrange(200, 999)}-{d(3)}-{d(4)}",
        lambda: f"{rng.randrange(200, 999)}.{d(3)}.{d(4)}",
        lambda: f"+44 20 {d(4)} {d(4)}",
        lambda: f"020 {d(4)} {d(4)}",
        lambda: f"+49 30 {d(7)}",
        lambda: f"0049 30 {d(8)}",
        lambda: f"030/{d(7)}",
        lambda: f"+33 1 {d(2)} {d(2)} {d(2)} {d(2)}",
        lambda: f"01 {d(2)} {d(2)} {d(2)} {d(2)}",
        lambda: f"+91-{d(5)}-{d(5)}",
        lambda: f"+81 3-{d(4)}-{d(4)}",
        lambda: f"+1-{rng.randrange(200, 999)}-{d(3)}-{d(4)}",
    ]
    return [rng.choice(shapes)() for _ in range(42)]


def _cards(rng: random.Random) -> list[str]:
    out = []
    for i in range(36):
        if i % 3 == 0:
            number = _luhn_complete(rng.choice(["34", "37"]), 15, rng)
            out.append(number if i % 2 else f"{number[:4]} {number[4:10]} {number[10:]}")
        else:
            number = _luhn_complete(rng.choice(["4", "51", "55", "6011"]), 16, rng)
            out.append([number, _group(number, 4, " "), _group(number, 4, "-")][i % 3])
    return out


def _ips(rng: random.Random) -> list[str]:
    v4 = [".".join(str(rng.randrange(1, 255)) for _ in range(4)) for _ in range(20)]
    v6 = [
        ":".join(f"{rng.randrange(65536):x}" for _ in range(8)) for _ in range(8)
    ] + ["2001:db8::1", "fe80::1ff:fe23:4567:890a", "::1", "2001:DB8:0:0:8:800:200C:417A", "2a00:1450:4001:82b::200e"]
    return v4 + v6


def _ibans(rng: random.Random) -> list[str]:
    def d(n: int) -> str:
        return "".join(str(rng.randrange(10)) for _ in range(n))

    out = []
    for i in range(30):
        country, bban = rng.choice([
            ("DE", d(18)), ("GB", "NWBK" + d(14)), ("FR", d(10) + "ABCDE" + d(8)[:8]), ("NL", "ABNA" + d(10)),
            ("ES", d(20)), ("CH", d(5) + "X" + d(11)),
        ])
        iban = _iban(country, bban)
        out.append(iban if i % 2 else _group(iban, 4, " "))
    return out


def _national_ids(rng: random.Random) -> list[str]:
    def d(n: int) -> str:
        return "".join(str(rng.randrange(10)) for _ in range(n))

    shapes = [
        lambda: f"{rng.randrange(100, 899)}-{d(2)}-{d(4)}",
        lambda: f"AB {d(2)} {d(2)} {d(2)} C",
        lambda: f"QQ{d(6)}A",
        lambda: f"{rng.randrange(10, 31)}{rng.randrange(10, 12)}{d(2)}-{d(4)}",
        lambda: f"{rng.randrange(1, 9)}{d(10)}",
        lambda: f"{rng.randrange(1, 9)}{d(8)}",
    ]
    return [rng.choice(shapes)() for _ in range(36)]


def pii_corpus(seed: int = 4) -> list[tuple[str, str, str]]:
    """(kind, value, text containing it): at least 200 items across all kinds and many formats."""
    rng = random.Random(seed)
    items = []
    for kind, values in (
        ("email", _emails(rng)), ("phone", _phones(rng)), ("card", _cards(rng)), ("ip", _ips(rng)),
        ("iban", _ibans(rng)), ("national_id", _national_ids(rng)),
    ):
        for value in values:
            items.append((kind, value, rng.choice(_CONTEXTS).format(value)))
    return items


CLEAN_CORPUS = (
    "The meeting is at 10:30 on 2024-05-01.",
    "It costs $1,299.99 plus 19% VAT.",
    "Version 3.11.2 fixed the crash, 3.12 is next.",
    "Order #48213 arrived two days late.",
    "I have 3 cats and 2 dogs.",
    "Room 404 is on the 4th floor.",
    "See chapter 12, pages 345-350.",
    "The screen has a 16:9 ratio at 1920x1080.",
    "It was 21.5 degrees at 07:45 this morning.",
    "The city has 8,336,817 inhabitants.",
    "Flight LH 454 leaves from gate B22.",
    "Set the learning rate to 1e-5 and warmup to 0.1.",
    "The probability is 0.25, not 0.5.",
    "We shipped on 05/12/2024 and again on 17.06.2024.",
    "Use port 8080 or 443.",
    "The year 1999 was special; so was 2001.",
    "Answer with a number between 1 and 100.",
    "Kubernetes 1.36 and Python 3.11 are required.",
    "Batch size 32, 3 epochs, seed 42.",
    "The answer should have been 42, not 24.",
    "Score: 4 out of 5 stars.",
    "My zip code area is 94103 but that is fine.",
    "He ran 10 km in 48:12.",
    "Turn left after 200 m, then 1.5 km straight.",
    "Invoice total: EUR 12.345,67.",
    "Sales grew 12.5% in Q3 2025.",
    "The model answered in 350 ms, usually 120 ms.",
    "Step 1: open the app. Step 2: log in.",
    "Coordinates 52.5200, 13.4050 are Berlin.",
    "The recipe needs 250 g flour and 2 eggs.",
    "Patch 2.4.1-rc3 broke the build.",
    "I waited 45 minutes on hold.",
    "Windows 11 23H2 build 22631 crashed.",
    "Call me maybe? No number needed.",
    "The train at 18:05 was cancelled, the 18:35 too.",
    "The answer lists 7 items but there are 8.",
    "Rate limit: 5000 requests per hour.",
    "Temperature went from -3 to +4 overnight.",
    "Model gpt-4o-mini vs llama-3.1-8b.",
    "The file is 1.2 GB, the other 512 MB.",
)


def clean_corpus() -> list[str]:
    """Ordinary sentences (at least 200), numbers and all, that must come back unchanged."""
    rng = random.Random(5)
    fillers = ["Honestly,", "Also", "FYI:", "Again:", "Note -", "PS", "Well,", "Hmm."]
    out = list(CLEAN_CORPUS)
    while len(out) < 240:
        a, b = rng.sample(CLEAN_CORPUS, 2)
        out.append(f"{rng.choice(fillers)} {a} {b}")
    return out
