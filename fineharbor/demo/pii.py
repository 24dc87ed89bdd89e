"""Personal data planted in the demo's texts, hard negatives beside it, and the recall and
precision of the cleaning's PII detector on them.

A planted case is one sentence appended to a clean record's caption or last answer: a real-looking
email, phone number (national and international formats, valid for their region), IPv4/IPv6
address, Luhn-valid card number of a real network, valid IBAN or street address, in several
formats each; or a hard negative that looks like one of them and is not (version numbers,
dates, times, ISBNs, prices, order numbers that fail Luhn, product codes). The ground truth holds
each as a row: defect ``pii`` with the planted types in ``transform`` (comma separated), or
``pii_negative`` with the negative's kind.

Recall and precision are counted per (record, type): a type planted and found is a true
positive, planted and not found a miss, found but not planted (in a hard negative or in any
clean record of those sources) a false positive.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import phonenumbers
import pyarrow.parquet as pq
from stdnum import iban, luhn

from fineharbor.core.cleaning.pii import ADDRESS, CARD, EMAIL, IBAN, IP, PHONE, TYPES
from fineharbor.core.cleaning.reasons import PII_FOUND
from fineharbor.core.pipeline import CLEANED
from fineharbor.core.storage import REJECTS

PII = "pii"
PII_NEGATIVE = "pii_negative"


@dataclass(frozen=True)
class PiiCase:
    """One planted sentence: the types it holds (empty for a hard negative) and its kind."""

    sentence: str
    types: tuple[str, ...]
    kind: str


def _pick(rng: np.random.Generator, options: Iterable[str]) -> str:
    items = list(options)
    return items[int(rng.integers(len(items)))]


def _digits(rng: np.random.Generator, n: int) -> str:
    return "".join(str(int(d)) for d in rng.integers(0, 10, n))


# --------------------------------------------------------------------------- values

_FIRST = ("jane", "john", "maria", "wei", "amara", "lukas", "priya", "tom", "sofia", "omar")
_LAST = ("doe", "smith", "garcia", "chen", "okafor", "muller", "patel", "brown", "rossi", "haddad")
_DOMAINS = (
    "example.com",
    "mail.example.org",
    "example.co.uk",
    "studio-example.net",
    "uni.example.edu",
)


def email(rng: np.random.Generator) -> str:
    first, last, domain = _pick(rng, _FIRST), _pick(rng, _LAST), _pick(rng, _DOMAINS)
    style = int(rng.integers(4))
    local = (
        f"{first}.{last}",
        f"{first[0]}{last}{int(rng.integers(1, 99))}",
        f"{first}+photos",
        f"{first.capitalize()}.{last.capitalize()}",
    )[style]
    return f"{local}@{domain}"


# (region, national destination codes) whose numbers libphonenumber calls valid
_PHONE_PLANS = {
    "US": ("212", "415", "312", "617", "206", "303", "512", "702"),
    "GB": ("20", "161", "131", "117"),
    "DE": ("30", "89", "40", "221"),
    "FR": ("1", "4", "6"),
}
# digits of a national significant number (area code included)
_NATIONAL_DIGITS = {"US": 10, "GB": 10, "DE": 10, "FR": 9}


def phone(rng: np.random.Generator) -> str:
    """A valid number in one of several formats: US national ((415) 555-2671, 415-555-2671,
    415.555.2671) or international (+1 ..., +44 ..., +49 ..., +33 ...)."""
    region = _pick(rng, _PHONE_PLANS)
    for _ in range(100):
        code = _pick(rng, _PHONE_PLANS[region])
        rest = _NATIONAL_DIGITS[region] - len(code)
        subscriber = str(int(rng.integers(2, 10))) + _digits(rng, rest - 1)
        number = phonenumbers.parse(code + subscriber, region)
        if phonenumbers.is_valid_number(number):
            break
    else:  # pragma: no cover - the plans above are valid ranges
        raise RuntimeError(f"no valid {region} number drawn")
    if region == "US" and rng.random() < 0.6:
        national = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.NATIONAL)
        digits = "".join(c for c in national if c.isdigit())
        style = int(rng.integers(3))
        return (
            national,
            f"{digits[:3]}-{digits[3:6]}-{digits[6:]}",
            f"{digits[:3]}.{digits[3:6]}.{digits[6:]}",
        )[style]
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.INTERNATIONAL)


def ip_address(rng: np.random.Generator) -> str:
    if rng.random() < 0.6:
        first = _pick(rng, ("10", "172", "192", "203", "198", "84"))
        rest = ".".join(str(int(v)) for v in rng.integers(0, 256, 3))
        return f"{first}.{rest}"
    groups = [f"{int(v):x}" for v in rng.integers(0, 65536, 6)]
    full = ipaddress.IPv6Address("2001:db8:" + ":".join(groups))
    return str(full) if rng.random() < 0.5 else full.exploded


_CARD_PREFIXES = (
    ("4", 16),
    ("51", 16),
    ("55", 16),
    ("2221", 16),
    ("34", 15),
    ("37", 15),
    ("6011", 16),
)


def _luhn_complete(prefix: str, length: int, rng: np.random.Generator) -> str:
    body = prefix + _digits(rng, length - len(prefix) - 1)
    return body + luhn.calc_check_digit(body)


def _grouped(digits: str, rng: np.random.Generator) -> str:
    if len(digits) == 15:  # American Express: 4-6-5
        parts = [digits[:4], digits[4:10], digits[10:]]
    else:
        parts = [digits[i : i + 4] for i in range(0, len(digits), 4)]
    return _pick(rng, (" ", "-", "")).join(parts)


def card_number(rng: np.random.Generator) -> str:
    prefix, length = _CARD_PREFIXES[int(rng.integers(len(_CARD_PREFIXES)))]
    return _grouped(_luhn_complete(prefix, length, rng), rng)


def _letters(rng: np.random.Generator, n: int) -> str:
    return "".join(chr(ord("A") + int(v)) for v in rng.integers(0, 26, n))


def iban_code(rng: np.random.Generator) -> str:
    """A valid IBAN of DE, GB, NL or AT, compact or in groups of four."""
    country = _pick(rng, ("DE", "GB", "NL", "AT"))
    bban = {
        "DE": lambda: _digits(rng, 18),
        "GB": lambda: _letters(rng, 4) + _digits(rng, 14),
        "NL": lambda: _letters(rng, 4) + _digits(rng, 10),
        "AT": lambda: _digits(rng, 16),
    }[country]
    for _ in range(100):
        basic = bban()
        check = iban.calc_check_digits(f"{country}00{basic}")
        code = f"{country}{check}{basic}"
        if iban.is_valid(code):
            break
    else:  # pragma: no cover
        raise RuntimeError(f"no valid {country} IBAN drawn")
    if rng.random() < 0.5:
        return code
    return " ".join(code[i : i + 4] for i in range(0, len(code), 4))


_STREETS = ("Maple", "Oak", "Pennsylvania", "Baker", "Elm", "Market", "Sunset", "Harbor View")
_SUFFIXES = ("Street", "St.", "Avenue", "Ave", "Road", "Boulevard", "Lane", "Drive")
_CITIES = (("Springfield", "IL", "62704"), ("Austin", "TX", "78701"), ("Portland", "OR", "97205"))


def street_address(rng: np.random.Generator) -> str:
    number = str(int(rng.integers(1, 9999)))
    street = f"{number} {_pick(rng, _STREETS)} {_pick(rng, _SUFFIXES)}"
    style = int(rng.integers(4))
    city, state, zip_code = _CITIES[int(rng.integers(len(_CITIES)))]
    if style == 0:
        return street
    if style == 1:
        return f"{street}, {city}, {state} {zip_code}"
    if style == 2:
        return f"{street}, Apt {int(rng.integers(1, 40))}{_pick(rng, 'ABC')}, {city}"
    return f"{int(rng.integers(1, 300))}B Baker Street, London NW1 6XE"


# --------------------------------------------------------------------------- sentences

_TEMPLATES: dict[str, tuple[str, ...]] = {
    EMAIL: ("Contact the photographer at {}.", "Questions go to {} please.", "Sent by {}"),
    PHONE: ("Call {} for prints.", "Owner phone: {}.", "Reach the studio on {} today."),
    IP: ("Uploaded from {}.", "Camera feed at {} was used.", "Source host {}."),
    CARD: ("Paid with card {}.", "Card number {} was charged.", "Billing card: {}."),
    IBAN: ("Send the fee to IBAN {}.", "Bank account {} for licensing.", "Pay to {}."),
    ADDRESS: ("Taken at {}.", "Mail prints to {}.", "The studio is at {}."),
}
_VALUES = {
    EMAIL: email,
    PHONE: phone,
    IP: ip_address,
    CARD: card_number,
    IBAN: iban_code,
    ADDRESS: street_address,
}


def _negative(rng: np.random.Generator) -> tuple[str, str]:
    """(kind, sentence) of a hard negative: looks like PII, is none."""
    kind = _pick(
        rng,
        (
            "version", "date", "time", "isbn", "price", "order_number", "product_code",
            "resolution", "coordinates", "year_range",
        ),
    )  # fmt: skip
    if kind == "version":
        parts = rng.integers(0, 20, int(rng.integers(3, 5)))
        text = f"Rendered with version {'.'.join(str(int(p)) for p in parts)} of the tool."
    elif kind == "date":
        y, m, d = int(rng.integers(1990, 2027)), int(rng.integers(1, 13)), int(rng.integers(1, 29))
        text = _pick(rng, (f"Shot on {y}-{m:02d}-{d:02d}.", f"Shot on {d:02d}/{m:02d}/{y}."))
    elif kind == "time":
        h, mi, s = (int(v) for v in rng.integers(0, [24, 60, 60]))
        text = f"Exposure started at {h:02d}:{mi:02d}:{s:02d} local time."
    elif kind == "isbn":
        text = _pick(rng, ("From the book ISBN 978-3-16-148410-0.", "See ISBN 0-306-40615-2."))
    elif kind == "price":
        dollars = int(rng.integers(1, 5000))
        text = f"Prints cost ${dollars:,}.{int(rng.integers(0, 100)):02d} each."
    elif kind == "order_number":
        # 16 digits grouped like a Visa or Mastercard number, but the Luhn check fails
        body = _luhn_complete(_pick(rng, ("4", "51", "55")), 16, rng)
        wrong = str((int(body[-1]) + 1 + int(rng.integers(9))) % 10)
        text = f"Order number {_grouped(body[:-1] + wrong, rng)} shipped."
    elif kind == "product_code":
        text = f"Frame SKU {_digits(rng, 4)}-{_digits(rng, 4)}-{_digits(rng, 2)} in stock."
    elif kind == "resolution":
        text = f"Scanned at {_pick(rng, ('1920x1080', '3840x2160', '600 dpi'))} resolution."
    elif kind == "coordinates":
        lat, lon = rng.uniform(-80, 80), rng.uniform(-170, 170)
        text = f"Location {lat:.4f}, {lon:.4f} on the map."
    else:
        y = int(rng.integers(1900, 2000))
        text = f"Part of the {y}-{y + int(rng.integers(1, 30))} collection, plate 12 of 48."
    return kind, text


def planted_cases(rng: np.random.Generator, n: int) -> list[PiiCase]:
    """``n`` cases: about two thirds PII (every type in turn, some with two types), one third
    hard negatives."""
    cases: list[PiiCase] = []
    for i in range(n):
        if i % 3 == 2:
            kind, text = _negative(rng)
            cases.append(PiiCase(text, (), kind))
            continue
        kind = TYPES[(i - i // 3) % len(TYPES)]
        text = _pick(rng, _TEMPLATES[kind]).format(_VALUES[kind](rng))
        types: tuple[str, ...] = (kind,)
        if rng.random() < 0.15 and kind != EMAIL:
            text += f" Or write to {email(rng)}."
            types = (kind, EMAIL)
        cases.append(PiiCase(text, types, kind))
    return cases


# --------------------------------------------------------------------------- scoring


@dataclass
class PiiScores:
    """Per-type and overall (record, type) counts."""

    true_positives: dict[str, int] = field(default_factory=dict)
    misses: dict[str, int] = field(default_factory=dict)
    false_positives: dict[str, int] = field(default_factory=dict)
    records: int = 0
    negatives: int = 0
    negatives_flagged: int = 0

    @staticmethod
    def _ratio(hit: int, other: int) -> float:
        return hit / (hit + other) if hit + other else 1.0

    @property
    def recall(self) -> float:
        return self._ratio(sum(self.true_positives.values()), sum(self.misses.values()))

    @property
    def precision(self) -> float:
        return self._ratio(sum(self.true_positives.values()), sum(self.false_positives.values()))

    def rows(self) -> list[dict]:
        out = []
        for kind in TYPES:
            hit, missed = self.true_positives.get(kind, 0), self.misses.get(kind, 0)
            wrong = self.false_positives.get(kind, 0)
            out.append(
                {
                    "type": kind,
                    "planted": hit + missed,
                    "found": hit,
                    "false_positives": wrong,
                    "recall": self._ratio(hit, missed),
                    "precision": self._ratio(hit, wrong),
                }
            )
        return out


def score(
    planted: Mapping[object, Iterable[str]],
    found: Mapping[object, Iterable[str]],
    negatives: Iterable[object] = (),
) -> PiiScores:
    """Score ``found`` (types detected per record key, every record checked) against
    ``planted`` (types planted per key; keys absent are records without PII)."""
    scores = PiiScores()
    for key, detected in found.items():
        got, expected = set(detected), set(planted.get(key, ()))
        scores.records += 1
        for kind in got & expected:
            scores.true_positives[kind] = scores.true_positives.get(kind, 0) + 1
        for kind in expected - got:
            scores.misses[kind] = scores.misses.get(kind, 0) + 1
        for kind in got - expected:
            scores.false_positives[kind] = scores.false_positives.get(kind, 0) + 1
    negative_keys = set(negatives)
    scores.negatives = len(negative_keys & set(found))
    scores.negatives_flagged = sum(1 for key in negative_keys if set(found.get(key, ())))
    return scores


def planted_pii_scores(storage, truth_path) -> PiiScores | None:
    """The cleaning's PII detection on the demo, from ``cleaned_samples.pii_found`` and the
    ``pii_found`` rejects (drop mode), against the ground truth; None when no PII was planted
    or the column is empty everywhere (PII detection off)."""
    truth = pq.read_table(truth_path, columns=["source", "origin_key", "defect", "transform"])
    planted: dict[tuple[str, str], list[str]] = {}
    negatives = []
    for row in truth.to_pylist():
        key = (row["source"], row["origin_key"])
        if row["defect"] == PII:
            planted[key] = (row["transform"] or "").split(",")
        elif row["defect"] == PII_NEGATIVE:
            negatives.append(key)
    sources = sorted({source for source, _ in [*planted, *negatives]})
    found: dict[tuple[str, str], list[str]] = {}
    for source in sources:
        if storage.has_partition(CLEANED, source):
            table = storage.read_table(CLEANED, source, columns=["origin_key", "pii_found"])
            for row in table.to_pylist():
                if row["pii_found"] is not None:  # null: PII detection off for the source
                    found[(source, row["origin_key"])] = row["pii_found"]
        if storage.has_partition(CLEANED, source, kind=REJECTS):
            columns = ["origin_key", "reason", "detail"]
            rejects = storage.read_table(CLEANED, source, kind=REJECTS, columns=columns)
            for row in rejects.to_pylist():
                if row["reason"] == PII_FOUND:  # drop mode: the detail names the types
                    types = [part.split(" x")[0] for part in row["detail"].split(", ")]
                    found[(source, row["origin_key"])] = types
    if not planted or not found:
        return None
    return score(planted, found, negatives)
