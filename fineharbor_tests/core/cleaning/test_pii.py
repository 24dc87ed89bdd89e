"""PII in turns: each type in several formats, look-alikes left alone, and the three modes
(flag, redact, drop) per source as the cleaning stage applies them."""

from __future__ import annotations

import pyarrow as pa
import pytest

from fineharbor.core.cleaning import pii
from fineharbor.core.cleaning.params import CleanParams
from fineharbor.core.cleaning.stage import CLEANED_SCHEMA, clean_batch, process_row
from fineharbor.core.config import ConfigError, parse_config
from fineharbor.testing.rules import check_rule, sample_row
from fineharbor_tests.core.cleaning.helpers import encode, scene

IMAGE = encode(scene(320, 240, 5), "JPEG")

FOUND = [
    ("Write to jane.doe@example.com today.", "jane.doe@example.com", pii.EMAIL),
    ("Mail J.Smith+prints@mail.example.co.uk", "J.Smith+prints@mail.example.co.uk", pii.EMAIL),
    ("Call (415) 555-2671 for prints.", "(415) 555-2671", pii.PHONE),
    ("Call 212-736-5000.", "212-736-5000", pii.PHONE),
    ("Call 312.555.0199 or later.", "312.555.0199", pii.PHONE),
    ("Ring +44 20 7946 0958 now.", "+44 20 7946 0958", pii.PHONE),
    ("Tel. +49 30 901820", "+49 30 901820", pii.PHONE),
    ("Uploaded from 203.0.113.42.", "203.0.113.42", pii.IP),
    ("Host 2001:db8::8a2e:370:7334 served it.", "2001:db8::8a2e:370:7334", pii.IP),
    ("Host fe80:0000:0000:0000:0202:b3ff:fe1e:8329.", "fe80:0000:0000:0000:0202:b3ff:fe1e:8329",
     pii.IP),
    ("Card 4111 1111 1111 1111 was used.", "4111 1111 1111 1111", pii.CARD),
    ("Card 5500-0000-0000-0004.", "5500-0000-0000-0004", pii.CARD),
    ("Amex 3782 822463 10005 paid.", "3782 822463 10005", pii.CARD),
    ("Paid by 6011111111111117.", "6011111111111117", pii.CARD),
    ("IBAN DE89 3704 0044 0532 0130 00 FOR FEES", "DE89 3704 0044 0532 0130 00", pii.IBAN),
    ("Pay GB82WEST12345698765432 now.", "GB82WEST12345698765432", pii.IBAN),
    ("At 1600 Pennsylvania Avenue NW, Washington, DC 20500 today.",
     "1600 Pennsylvania Avenue NW, Washington, DC 20500", pii.ADDRESS),
    ("Mail 221B Baker Street, London NW1 6XE please.", "221B Baker Street, London NW1 6XE",
     pii.ADDRESS),
    ("Studio at 42 Harbor View Rd., Apt 3B, Portland.", "42 Harbor View Rd., Apt 3B, Portland",
     pii.ADDRESS),
]  # fmt: skip

LOOK_ALIKES = [
    "Rendered with version 10.2.0.1 of the tool and v2.4.1 of the plugin.",
    "Shot on 2024-03-15 at 12:30:45, printed 15/03/2024.",
    "See section 2.1.3.4 of the manual and Fig. 10.2.1.3 below.",
    "From the book ISBN 978-3-16-148410-0.",
    "Prints cost $1,299.99 each, or 1.234.567,00 EUR for the lot.",
    "Order number 4532 1488 0343 6468 shipped.",  # a Visa-like number failing Luhn
    "Reference 1234567812345670 is not a card network prefix.",  # Luhn-valid, no network
    "Frame SKU 6865-5033-63 in stock.",
    "Location 40.7128, -74.0060 on the map; scanned at 1920x1080.",
    "There are 3 Red Circles on a blue background.",
    "A bar chart titled Sales showing North at 1234 and South at 5678.",
    "The ratio is 10:30:45 and the code is DE89 in the legend.",
]


@pytest.mark.parametrize(("text", "match", "kind"), FOUND, ids=[f[2] for f in FOUND])
def test_each_type_is_found_in_several_formats(text, match, kind):
    found = pii.find(text)
    assert [(text[m.start : m.end], m.type) for m in found] == [(match, kind)]
    assert pii.redact(text, found) == text.replace(match, f"<{kind}>")


@pytest.mark.parametrize("text", LOOK_ALIKES)
def test_look_alikes_are_not_pii(text):
    assert pii.find(text) == []


def test_national_numbers_need_their_region():
    text = "Call 020 7946 0958 tonight."
    assert pii.find(text) == []
    assert [m.type for m in pii.find(text, ("US", "GB"))] == [pii.PHONE]


def qa(answer: str, source: str = "web", question: str = "Who took this photo?") -> dict:
    return sample_row([(question, answer)], [IMAGE], source=source)


def test_flag_keeps_the_sample_and_lists_each_match():
    sample = qa("Mail jane@example.com or bob@example.org, or call (415) 555-2671.")
    kept, _ = process_row(sample, CleanParams(check_language=False))
    assert kept["pii_found"] == [pii.EMAIL, pii.EMAIL, pii.PHONE]
    assert kept["texts"] == [
        {"user": "Who took this photo?", "assistant": sample["texts"][0]["assistant"]}
    ]
    clean, _ = process_row(qa("A red car."), CleanParams(check_language=False))
    assert clean["pii_found"] == []


def test_redact_replaces_matches_with_typed_placeholders():
    sample = sample_row(
        [("My card is 4111 1111 1111 1111, ok?", "Noted: write to jane@example.com.")], [IMAGE]
    )
    kept, _ = process_row(sample, CleanParams(check_language=False, pii_mode="redact"))
    assert kept["texts"] == [
        {"user": "My card is <CREDIT_CARD>, ok?", "assistant": "Noted: write to <EMAIL_ADDRESS>."}
    ]
    assert kept["pii_found"] == [pii.CARD, pii.EMAIL]


def test_drop_rejects_naming_the_types_never_the_text():
    kept, reason, detail = check_rule(
        "pii_found", qa("Card 4111 1111 1111 1111, IBAN GB82WEST12345698765432."), pii_mode="drop"
    )
    assert (kept, reason, detail) == (False, "pii_found", "CREDIT_CARD, IBAN_CODE")


def test_modes_per_source_and_off():
    params = CleanParams(
        check_language=False,
        pii_mode="drop",
        pii_source_modes={"synthetic": "off", "scraped": "redact"},
    )
    text = "Reach me at jane@example.com."
    assert process_row(qa(text, "other"), params)[1]["reason"] == "pii_found"
    assert process_row(qa(text, "synthetic"), params)[0]["pii_found"] is None
    redacted = process_row(qa(text, "scraped"), params)[0]
    assert redacted["texts"][0]["assistant"] == "Reach me at <EMAIL_ADDRESS>."
    switched_off = params.model_copy(update={"check_pii": False})
    assert process_row(qa(text, "other"), switched_off)[0]["pii_found"] is None


def test_gui_answers_are_actions_and_are_not_scanned():
    sample = qa("pyautogui.write(message='jane@example.com')", "gui", "Mail jane@example.com")
    params = CleanParams(
        check_language=False,
        pii_mode="redact",
        gui_action_sources=["gui"],
        check_special_chars=False,
    )
    kept, _ = process_row(sample, params)
    assert kept["pii_found"] == [pii.EMAIL]
    assert kept["texts"][0]["user"] == "Mail <EMAIL_ADDRESS>"
    assert "jane@example.com" in kept["texts"][0]["assistant"]


def test_the_column_is_nullable_on_cleaned_rows():
    field = CLEANED_SCHEMA.field("pii_found")
    assert field.nullable and field.type == pa.list_(pa.string())
    table = pa.Table.from_pylist([qa("Call (415) 555-2671."), qa("A plain caption.")])
    kept, rejected = clean_batch(table, CleanParams(check_language=False))
    assert kept.column("pii_found").to_pylist() == [[pii.PHONE], []] and rejected.num_rows == 0


def test_bad_pii_settings_fail_at_config_load(tmp_path):
    with pytest.raises(ConfigError, match=r"pii_phone_regions.*unknown phone region"):
        parse_config({"sources": [], "stages": {"clean": {"pii_phone_regions": ["XX"]}}}, tmp_path)
    with pytest.raises(ConfigError, match="pii_source_modes"):
        parse_config(
            {"sources": [], "stages": {"clean": {"pii_source_modes": {"a": "mask"}}}}, tmp_path
        )
