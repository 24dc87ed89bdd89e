"""The rule table: every rule once through ``check_rule``, the order, the codes and the docs."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from fineharbor.core.cleaning import REASONS, RULES, reasons
from fineharbor.core.cleaning.params import CleanParams
from fineharbor.core.cleaning.stage import process_row
from fineharbor.testing.rules import DOC, check_rule, sample_row, with_rules_table
from fineharbor_tests.core.cleaning.helpers import ENGLISH, blurred, encode, png_declaring, scene

GOOD = encode(scene(640, 480, 1), "JPEG")
CAPTION = ENGLISH[0]


def pair(caption: str = CAPTION, image: bytes | None = GOOD, **fields) -> dict:
    """A caption pair: one turn whose question is empty."""
    return sample_row([("", caption)], [image], **fields)


def qa(answer: str, question: str = "What is shown in the picture?", **fields) -> dict:
    return sample_row([(question, answer)], [GOOD], **fields)


def flat_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (320, 320), (128, 128, 128)).save(buffer, "PNG")
    return buffer.getvalue()


FRENCH = (
    "Une vieille voiture rouge garée devant la boulangerie du village, sous un ciel gris "
    "d'automne, pendant que les enfants rentrent de l'école."
)

# code -> (sample, params, expected detail fragment): one line per rule of the table
REJECTED: list[tuple[str, dict, dict, str]] = [
    ("domain_denied", pair(origin_uri="https://img.bad.com/1.jpg"),
     {"domain_deny": ["bad.com"]}, "matches deny rule bad.com"),
    ("domain_not_allowed", pair(origin_uri="https://cdn.other.net/1.jpg"),
     {"domain_allow": ["good.org"]}, "not in allowlist"),
    ("text_empty", sample_row(), {}, "no turns and no images"),
    ("text_empty", qa("   "), {}, "all 1 turns have empty answers"),
    ("gui_action_unparseable", qa("pyautogui.teleport(x=1)", source="gui"),
     {"gui_action_sources": ["gui"]}, "teleport"),
    ("turn_too_long", qa("word " * 60), {"max_turn_tokens": 20}, "> 20 (all 1 turns dropped)"),
    ("pii_found", qa("Write to jane.doe@example.com or jane@example.org."), {"pii_mode": "drop"},
     "EMAIL_ADDRESS x2"),
    ("text_unsafe", qa("A page of nsfw pictures."), {}, "unsafe term 'nsfw'"),
    ("alt_text_short", pair("car"), {}, "caption 3 chars < 5"),
    ("caption_word_count", pair("A red car"), {}, "caption 3 words < 5"),
    ("text_unk_tokens", qa("The sign reads [UNK] [UNK]."), {}, "unk tokens 2 > 0"),
    ("text_special_chars", qa("🎉🎉🎉🎉🎉 ok", "Mood?"), {}, "special chars"),
    ("text_repetitive", qa("the cat sat " * 10), {}, "(3-grams)"),
    ("language_not_allowed", pair(FRENCH), {"language_candidates": ["en", "fr"]},
     "language fr"),
    ("image_missing", pair(image=None), {}, "no bytes"),
    ("image_format_not_allowed", pair(image=encode(scene(320, 240), "PNG")),
     {"allowed_formats": ["JPEG"]}, "format PNG not allowed"),
    ("decompression_bomb", pair(image=png_declaring(40_000, 40_000)), {}, "1600000000 pixels"),
    ("too_many_pixels", pair(), {"max_pixels": 100_000}, "pixels 307200 > 100000"),
    ("image_corrupt", pair(image=b"not an image at all" * 100), {}, "unrecognised image data"),
    ("image_truncated", pair(image=GOOD[: len(GOOD) // 2]), {}, ""),
    ("image_too_small_side", pair(image=encode(scene(150, 120, 2), "JPEG")), {}, "side 120 < 200"),
    ("aspect_ratio", pair(image=encode(scene(1200, 300, 3), "JPEG")), {}, "aspect 4.00 > 3.0"),
    ("image_too_small_bytes", pair(), {"min_image_bytes": 10**7}, "< 10000000"),
    ("image_low_entropy", pair(image=flat_png()), {}, "entropy 0.000 bits"),
    ("image_blurry", pair(image=encode(blurred(scene(640, 480, 4), 12), "PNG")), {},
     "laplacian var"),
    # a document whose (rewritten) text no longer splits into its two paragraphs
    ("document_segments_mismatch", pair(segments=[{"image": None, "text": "A."},
     {"image": 0, "text": None}, {"image": None, "text": "B."}]), {}, "1 paragraphs"),
]  # fmt: skip
# reported by the worker pool only (a decode overrunning its time limit, a killed worker):
# covered by test_pool.py
POOL_ONLY = {"image_decode_timeout", "worker_crashed"}
# needs a blocklist file: covered by test_blocklist.py (through check_rule too)
ELSEWHERE = {"blocklisted_image"}


@pytest.mark.parametrize(
    ("code", "sample", "params", "detail"), REJECTED, ids=[case[0] for case in REJECTED]
)
def test_each_rule_rejects_what_it_names(code, sample, params, detail):
    kept, reason, got = check_rule(code, sample, **params)
    assert (kept, reason) == (False, code)
    assert detail in got


@pytest.mark.parametrize("code", sorted(REASONS - POOL_ONLY))
def test_each_rule_keeps_a_clean_caption_pair(code):
    assert check_rule(code, pair()) == (True, None, None)


def test_every_code_of_the_table_is_exercised():
    assert {case[0] for case in REJECTED} | POOL_ONLY | ELSEWHERE == REASONS
    assert all(rule.check is None for rule in RULES if set(rule.codes) <= POOL_ONLY)


def test_a_switched_off_rule_keeps_the_sample():
    assert check_rule("text_unsafe", qa("nsfw"), check_safety=False) == (True, None, None)


def test_image_only_samples_skip_text_rules_and_web_rules_stay_in_their_scope():
    image_only = sample_row([], [encode(scene(1200, 300, 3), "JPEG")])
    assert check_rule("text_empty", image_only)[0]
    assert check_rule("aspect_ratio", image_only)[1] == "aspect_ratio"
    assert check_rule("aspect_ratio", image_only, web_pair_rules="auto")[0]


def test_rules_run_in_table_order():
    """A sample failing several rules gets the first of the table, text before images."""
    sample = qa("nsfw [UNK] " * 4, source="web")
    sample["images"] = [{"bytes": b"broken", "path": None}]
    params = CleanParams(check_language=False, web_pair_rules="always")
    _, rejected = process_row(sample, params)
    assert rejected["reason"] == "text_unsafe"
    _, rejected = process_row(sample, params.model_copy(update={"check_safety": False}))
    assert rejected["reason"] == "text_unk_tokens"
    tiny_and_flat = pair(image=encode(Image.new("RGB", (100, 20), (9, 9, 9)), "PNG"))
    _, rejected = process_row(tiny_and_flat, params)
    assert rejected["reason"] == "image_too_small_side"


def test_every_code_constant_is_declared_and_every_switch_is_a_flag():
    constants = {
        value for name, value in vars(reasons).items() if name.isupper() and isinstance(value, str)
    }
    assert constants == REASONS
    fields = CleanParams.model_fields
    for rule in RULES:
        if rule.enabled_by is not None:
            assert fields[rule.enabled_by].annotation is bool, rule.enabled_by


def test_reasons_stays_importable_from_the_codes_module():
    from fineharbor.core.cleaning.reasons import REASONS as from_codes

    assert from_codes is REASONS


def test_docs_table_is_generated_from_the_rules():
    committed = DOC.read_text(encoding="utf-8")
    assert committed == with_rules_table(committed), "run: python -m fineharbor.testing.rules"
    for rule in RULES:
        assert f"`{rule.codes[0]}`" in committed
