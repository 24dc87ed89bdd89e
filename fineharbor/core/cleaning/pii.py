"""Personal data in texts: find emails, phone numbers, IP addresses, payment card numbers,
IBANs and street addresses, and replace them with typed placeholders.

Why not Presidio: its analyzer needs a spaCy pipeline whose model is a separate download (no
downloads at run time here) and pulls spaCy in for recognizers that are, for these six types,
regular expressions plus checksums anyway. So this is a careful regex set with validators:

* phone numbers: Google's libphonenumber (``phonenumbers``, the lite build without geocoding
  data), whose matcher finds numbers in text and accepts only numbers valid for their region
  and grouped the way that region writes them (international ``+CC`` numbers for any region,
  national ones for ``pii_phone_regions``); it runs only on texts with a run of 7+ digits;
* IBANs: ``python-stdnum`` (country length and BBAN format, then ISO 7064 mod 97);
* payment cards: 13-19 digits with a card network's prefix and length, Luhn-checked;
* IP addresses: candidates checked by :mod:`ipaddress` (v4 and v6), not after "version" or
  "section";
* emails and street addresses: regular expressions (addresses: a house number, capitalised
  street words and a street type, with the unit, city, state and ZIP when they follow; written
  for English-language addresses).

Each detector claims its spans in that order of confidence (emails, IBANs, cards, IPs, phones,
addresses), so one piece of text is one match. Types are Presidio's entity names, as NeMo
Curator's PII modifier writes them.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import phonenumbers
from stdnum import iban, luhn

EMAIL = "EMAIL_ADDRESS"
PHONE = "PHONE_NUMBER"
IP = "IP_ADDRESS"
CARD = "CREDIT_CARD"
IBAN = "IBAN_CODE"
ADDRESS = "STREET_ADDRESS"
TYPES = (EMAIL, PHONE, IP, CARD, IBAN, ADDRESS)


@dataclass(frozen=True, order=True)
class Match:
    start: int
    end: int
    type: str


_EMAIL = re.compile(
    r"(?<![\w.%+-])[A-Za-z0-9](?:[A-Za-z0-9._%+-]{0,63})@"
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24}(?![\w-])"
)
_IBAN = re.compile(r"(?<![A-Za-z0-9])[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}(?![a-z0-9])")
_CARD = re.compile(r"(?<!\d)(?<!\d[.,-])\d(?:[ -]?\d){12,18}(?!\d|[.,-]\d)")
_IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?!\.?\d)")
_IPV6 = re.compile(r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])")
# valid for its region and grouped as the region writes numbers: "6865-5033-63" is a product code
_LENIENCY = phonenumbers.Leniency.STRICT_GROUPING
# a run that may hold a phone number (the shortest valid national numbers have 7 digits)
_PHONE_HINT = re.compile(r"\d[\d\s().\-/]{5,}\d")
# dotted numbers after these words are versions or section numbers, not IPv4 addresses
_NOT_AN_IP_BEFORE = re.compile(
    r"(?:\b(?:v|ver|version|release|build|firmware|rev|revision|section|sec|chapter|figure|"
    r"fig|table|step|item|clause|§)\.?\s*)$",
    re.IGNORECASE,
)

_SUFFIXES = (
    "Street|St|Avenue|Ave|Road|Rd|Boulevard|Blvd|Lane|Ln|Drive|Dr|Court|Ct|Place|Pl|Terrace|"
    "Way|Parkway|Pkwy|Highway|Hwy|Crescent|Close|Gardens|Row|Walk|Alley"
)
_STATES = (
    "AL|AK|AZ|AR|CA|CO|CT|DE|DC|FL|GA|HI|ID|IL|IN|IA|KS|KY|LA|ME|MD|MA|MI|MN|MS|MO|MT|NE|NV|NH|"
    "NJ|NM|NY|NC|ND|OH|OK|OR|PA|RI|SC|SD|TN|TX|UT|VT|VA|WA|WV|WI|WY"
)
_ADDRESS = re.compile(
    r"\b\d{1,6}[A-Za-z]?"  # house number, 221B
    r"(?:\s+(?:[NSEW]|North|South|East|West)\.?)?"
    r"(?:\s+(?:[A-Z][a-z]+|\d{1,3}(?:st|nd|rd|th))){1,4}"  # street name
    rf"\s+(?:{_SUFFIXES})\.?(?![\w])"
    r"(?:\s+(?:NW|NE|SW|SE|N|S|E|W)\b\.?)?"
    r"(?:,?\s+(?:Apt|Apartment|Suite|Ste|Unit|Flat|Floor|Fl)\.?\s*#?\s*[A-Za-z0-9-]{1,6}\b)?"
    rf"(?:,\s+[A-Z][a-z]+(?:\s+[A-Z][a-z]+){{0,2}}(?:,?\s+(?:{_STATES})\b)?"
    r"(?:,?\s+\d{5}(?:-\d{4})?\b|,?\s+[A-Z]{1,2}\d[A-Z\d]?\s+\d[A-Z]{2}\b)?)?"
)

# card networks: (prefixes, lengths)
_NETWORKS = (
    (("4",), (13, 16, 19)),  # Visa
    (tuple(str(p) for p in (*range(51, 56), *range(2221, 2721))), (16,)),  # Mastercard
    (("34", "37"), (15,)),  # American Express
    (("6011", "65", *(str(p) for p in range(644, 650))), (16, 19)),  # Discover
    (tuple(str(p) for p in range(3528, 3590)), (16, 19)),  # JCB
    (("36", "38", "300", "301", "302", "303", "304", "305"), (14, 16)),  # Diners Club
)


def _card_network(digits: str) -> bool:
    return any(
        len(digits) in lengths and digits.startswith(prefixes) for prefixes, lengths in _NETWORKS
    )


def _emails(text: str) -> Iterator[Match]:
    if "@" in text:
        for m in _EMAIL.finditer(text):
            yield Match(m.start(), m.end(), EMAIL)


def _ibans(text: str) -> Iterator[Match]:
    for m in _IBAN.finditer(text):
        # the pattern may run on into following capitals: take the longest valid prefix
        chars = [(i, c) for i, c in enumerate(m.group(), m.start()) if c != " "]
        for length in range(min(len(chars), 34), 14, -1):
            if iban.is_valid("".join(c for _, c in chars[:length])):
                yield Match(m.start(), chars[length - 1][0] + 1, IBAN)
                break


def _cards(text: str) -> Iterator[Match]:
    for m in _CARD.finditer(text):
        raw = m.group()
        separators = set(re.sub(r"\d", "", raw))
        if len(separators) > 1:  # "1234 5678-..." is not how a card number is written
            continue
        digits = re.sub(r"\D", "", raw)
        if _card_network(digits) and luhn.is_valid(digits):
            yield Match(m.start(), m.end(), CARD)


def _ips(text: str) -> Iterator[Match]:
    for m in _IPV4.finditer(text):
        if _NOT_AN_IP_BEFORE.search(text, max(0, m.start() - 12), m.start()):
            continue
        try:
            ipaddress.IPv4Address(m.group())
        except ValueError:
            continue
        yield Match(m.start(), m.end(), IP)
    if "::" in text or text.count(":") >= 7:
        for m in _IPV6.finditer(text):
            candidate = m.group()
            if not any(c.isalnum() for c in candidate):
                continue
            try:
                ipaddress.IPv6Address(candidate)
            except ValueError:
                continue
            yield Match(m.start(), m.end(), IP)


def _phones(text: str, regions: Iterable[str], claimed: list[Match]) -> Iterator[Match]:
    # libphonenumber's matcher is most of the cost: run it only where a phone number can be,
    # outside the spans already claimed (cards, IBANs, IPs)
    hints = (m for m in _PHONE_HINT.finditer(text) if not _overlaps(m.start(), m.end(), claimed))
    if not any(sum(c.isdigit() for c in m.group()) >= 7 for m in hints):
        return
    for region in regions:
        for m in phonenumbers.PhoneNumberMatcher(
            text, region, phonenumbers.Leniency.STRICT_GROUPING
        ):
            yield Match(m.start, m.end, PHONE)


def _addresses(text: str) -> Iterator[Match]:
    for m in _ADDRESS.finditer(text):
        yield Match(m.start(), m.end(), ADDRESS)


def _overlaps(start: int, end: int, matches: list[Match]) -> bool:
    return any(start < kept.end and kept.start < end for kept in matches)


def find(text: str, regions: Iterable[str] = ("US",)) -> list[Match]:
    """Every PII match in ``text``, in text order, none overlapping another."""
    if not text:
        return []
    found: list[Match] = list(_emails(text))
    if any(map(str.isdigit, text)):  # every other type holds a digit
        detectors = (
            _ibans,
            _cards,
            _ips,
            lambda t: _phones(t, regions, found),
            _addresses,
        )
        for detect in detectors:
            for match in detect(text):
                if not _overlaps(match.start, match.end, found):
                    found.append(match)
    return sorted(found)


def placeholder(kind: str) -> str:
    return f"<{kind}>"


def redact(text: str, matches: list[Match]) -> str:
    """``text`` with each match replaced by its typed placeholder (``<EMAIL_ADDRESS>``)."""
    out, last = [], 0
    for match in matches:
        out += [text[last : match.start], placeholder(match.type)]
        last = match.end
    out.append(text[last:])
    return "".join(out)


def summary(types: list[str]) -> str:
    """``EMAIL_ADDRESS x2, PHONE_NUMBER``: the types found, never the text."""
    counts: dict[str, int] = {}
    for kind in types:
        counts[kind] = counts.get(kind, 0) + 1
    return ", ".join(f"{k} x{n}" if n > 1 else k for k, n in counts.items())
