"""clean_batch end to end (in process): schema, rule order, turns, GUI, conservation."""

from __future__ import annotations

import dataclasses
import io

import pyarrow as pa
import pytest
from PIL import Image

from fineharbor.core.cleaning import CLEANED_SCHEMA, REASONS, clean_batch
from fineharbor.core.cleaning.images import ImageResult, clean_image
from fineharbor.core.cleaning.stage import process_row
from fineharbor.core.schema import REJECT_SCHEMA
from fineharbor_tests.core.cleaning.helpers import (
    ENGLISH,
    batch,
    encode,
    fast_params,
    row,
    scene,
)

P = fast_params(domain_deny=["spam.example"], gui_action_sources=["gui"], web_pair_rules="always")


def good_jpeg(seed: int = 0, size=(640, 480)) -> bytes:
    return encode(scene(*size, seed), "JPEG")


def by_key(table: pa.Table) -> dict[str, dict]:
    return {r["origin_key"]: r for r in table.to_pylist()}


def test_schema_conservation_and_reasons():
    rows = [
        row("ok", [good_jpeg(1)], ENGLISH[1]),
        row("short", [good_jpeg(2)], "cat"),
        row("french", [good_jpeg(3)], "Une voiture rouge garée dans une rue calme la nuit."),
        row("corrupt", [good_jpeg(4)[:3000]], ENGLISH[2]),
        row("missing", [None], ENGLISH[3]),
        row("spam", [good_jpeg(5)], ENGLISH[4], origin_uri="https://cdn.spam.example/x.jpg"),
        row("wide", [good_jpeg(6, (1300, 400))], ENGLISH[0]),
        row("empty", [good_jpeg(7)], ""),
        row("qa", [good_jpeg(8)], turns=[("What is on the table?", "A cup of coffee.")]),
        row("textonly", [], turns=[("What is 2 + 2?", "4")]),
    ]
    kept, rejected = clean_batch(batch(rows), P)
    assert kept.schema == CLEANED_SCHEMA
    assert rejected.schema == REJECT_SCHEMA
    assert kept.num_rows + rejected.num_rows == len(rows)
    assert set(kept.column("origin_key").to_pylist()) == {"ok", "qa", "textonly"}
    reasons = {r["origin_key"]: r["reason"] for r in rejected.to_pylist()}
    assert reasons == {
        "short": "alt_text_short",
        "french": "language_not_allowed",
        "corrupt": "image_truncated",
        "missing": "image_missing",
        "spam": "domain_denied",
        "wide": "aspect_ratio",
        "empty": "text_empty",
    }
    assert set(reasons.values()) <= REASONS
    ids = {r["origin_key"]: r["sample_id"] for r in rows}
    assert all(r["sample_id"] == ids[r["origin_key"]] for r in rejected.to_pylist())
    assert by_key(rejected)["wide"]["detail"].startswith("aspect 3.25 > 3.0")
    ok = by_key(kept)["ok"]
    assert ok["language"] == "en" and ok["dropped_turns"] == 0
    info = ok["image_info"][0]
    assert (info["orig_width"], info["width"], info["format"], info["resized"]) == (
        640,
        640,
        "JPEG",
        False,
    )
    assert by_key(kept)["textonly"]["image_info"] == []


def test_images_are_resized_and_paths_follow_the_format():
    gif = encode(scene(2500, 1000, 3).convert("P"), "GIF")
    kept, rejected = clean_batch(batch([row("g", [gif], ENGLISH[0])]), P)
    assert rejected.num_rows == 0, rejected.to_pylist()
    image = kept.column("images")[0][0].as_py()
    assert image["path"] == "g.png"
    with Image.open(io.BytesIO(image["bytes"])) as out:
        assert out.format == "PNG" and out.size == (2048, 819)


def test_turn_level_rules():
    long = " ".join(["token"] * 9000)
    rows = [
        row("mixed", [good_jpeg(1)], turns=[("Q1?", "A1."), ("Q2?", long), ("Q3?", "  ")]),
        row("all_long", [good_jpeg(2)], turns=[("Q?", long)]),
        row("no_turns", [good_jpeg(3)], turns=[]),
    ]
    kept, rejected = clean_batch(batch(rows), P)
    mixed = by_key(kept)["mixed"]
    assert mixed["texts"] == [{"user": "Q1?", "assistant": "A1."}]
    assert mixed["dropped_turns"] == 2
    reasons = {r["origin_key"]: (r["reason"], r["detail"]) for r in rejected.to_pylist()}
    assert reasons["all_long"][0] == "turn_too_long" and "> 8192" in reasons["all_long"][1]
    assert by_key(kept)["no_turns"]["texts"] == []  # image-only, not a text reject


def test_multi_image_detail_names_the_image():
    rows = [row("two", [good_jpeg(1), b"garbage" * 2000], turns=[("Compare them.", "Both red.")])]
    _, rejected = clean_batch(batch(rows), P)
    assert rejected.to_pylist()[0]["detail"].startswith("image 1: ")


def test_gui_source_actions_are_normalised():
    screen = encode(scene(1080, 1920, 9), "PNG")
    rows = [
        row(
            "a",
            [screen],
            turns=[("Open the settings app", '{"action_type": "click", "x": 540, "y": 960}')],
            source="gui",
        ),
        row("b", [screen], turns=[("Scroll down the list", "pyautogui.scroll(-5)")], source="gui"),
        row("bad", [screen], turns=[("Do something", "pyautogui.teleport(x=1)")], source="gui"),
        row(
            "out",
            [screen],
            turns=[("Tap", '{"action_type": "click", "x": 5000, "y": 10}')],
            source="gui",
        ),
    ]
    kept, rejected = clean_batch(batch(rows), P)
    texts = {r["origin_key"]: r["texts"][0]["assistant"] for r in kept.to_pylist()}
    assert texts == {"a": "click(x=0.5, y=0.5)", "b": "scroll(direction='down', amount=5)"}
    reasons = {r["origin_key"]: r for r in rejected.to_pylist()}
    assert reasons["bad"]["reason"] == "gui_action_unparseable"
    assert "teleport" in reasons["bad"]["detail"]
    assert reasons["out"]["reason"] == "gui_action_unparseable"
    # the same action text in a non-GUI source is just text
    plain = row("p", [screen], turns=[("What does this do?", "pyautogui.teleport(x=1)")])
    kept, _ = clean_batch(batch([plain]), P)
    assert kept.num_rows == 1


def test_switches_turn_rules_off():
    rows = [row("short", [good_jpeg(2)], "cat")]
    off = fast_params(check_alt_text=False, check_caption_words=False)
    kept, rejected = clean_batch(batch(rows), off)
    assert kept.num_rows == 1 and rejected.num_rows == 0


def test_empty_batch():
    kept, rejected = clean_batch(batch([]), P)
    assert kept.num_rows == 0 and rejected.num_rows == 0 and kept.schema == CLEANED_SCHEMA


def image_only(key: str, images: list[bytes | None], source: str = "pool") -> dict:
    sample = row(key, images, source=source)
    sample["texts"] = []
    sample["images"] = [{"bytes": b, "path": f"DSC_{key}.JPG"} for b in images]
    return sample


def test_image_only_samples_skip_text_rules_but_not_image_rules():
    params = fast_params()  # language, caption words, alt text: all on
    rows = [
        image_only("photo", [good_jpeg(11)]),
        image_only("two", [good_jpeg(12), encode(scene(300, 280, 13), "PNG")]),
        image_only("broken", [good_jpeg(14)[:2500]]),
        image_only("nothing", []),
    ]
    kept, rejected = clean_batch(batch(rows), params)
    assert kept.num_rows + rejected.num_rows == len(rows)
    out = by_key(kept)
    assert set(out) == {"photo", "two"}
    assert out["photo"]["texts"] == [] and out["photo"]["language"] is None
    assert out["photo"]["dropped_turns"] == 0 and len(out["two"]["image_info"]) == 2
    reasons = {r["origin_key"]: (r["reason"], r["detail"]) for r in rejected.to_pylist()}
    assert reasons["broken"][0] == "image_truncated"
    assert reasons["nothing"] == ("text_empty", "no turns and no images")


def small_jpeg() -> bytes:
    """A sharp 220x220 photo-like JPEG under LAION's 5 KB."""
    data = encode(scene(220, 220, 21), "JPEG", quality=30)
    assert len(data) < 5120
    return data


@pytest.mark.parametrize(
    ("settings", "rejected_sources"),
    [
        ({}, set()),  # auto with no web source listed: nothing is a web pair
        ({"web_pair_sources": ["web"]}, {"web"}),
        ({"web_pair_sources": ["web", "docs"], "web_pair_exempt_sources": ["docs"]}, {"web"}),
        ({"web_pair_rules": "always"}, {"web", "docs"}),
        ({"web_pair_rules": "never", "web_pair_sources": ["web"]}, set()),
    ],
)
def test_web_pair_rules_apply_only_where_configured(settings, rejected_sources):
    params = fast_params(**settings)
    rows = []
    for source in ("web", "docs"):
        rows.append(row(f"{source}-tall", [good_jpeg(6, (400, 1500))], ENGLISH[0], source=source))
        rows.append(row(f"{source}-small", [small_jpeg()], ENGLISH[1], source=source))
    kept, rejected = clean_batch(batch(rows), params)
    reasons = {r["origin_key"]: r["reason"] for r in rejected.to_pylist()}
    expected = {}
    for source in rejected_sources:
        expected[f"{source}-tall"] = "aspect_ratio"
        expected[f"{source}-small"] = "image_too_small_bytes"
    assert reasons == expected
    assert kept.num_rows == len(rows) - len(expected)


def test_web_pair_scope_sentence_names_the_sources():
    auto = fast_params(web_pair_sources=["laion", "wds"], web_pair_exempt_sources=["wds"])
    assert auto.web_pair_scope() == (
        "Cleaning: the web alt-text pair rules shorter side >= 200 px (DataComp), aspect ratio "
        "<= 3 (DataComp) and image >= 5120 bytes (LAION) applied only to the sources laion; "
        "other sources keep tall and small images."
    )
    assert fast_params(web_pair_rules="always").web_pair_scope().endswith("every source.")
    assert fast_params().web_pair_scope().endswith("applied to no source.")


def _warning_decoder(count: int, fail: bool = False):
    def decode(data, params, *, pair=False):
        result = clean_image(data, params, pair=pair)
        if fail:
            result = ImageResult.failed("image_corrupt", "bad strip")
        return dataclasses.replace(result, warnings=count)

    return decode


def test_decoder_warnings_are_counted_per_image_not_printed():
    params = fast_params(check_language=False)
    image = good_jpeg()
    kept, _ = process_row(row("w", [image]), params, decoder=_warning_decoder(3))
    assert [info["decoder_warnings"] for info in kept["image_info"]] == [3]
    _, rejected = process_row(row("w", [image]), params, decoder=_warning_decoder(2, fail=True))
    assert rejected["detail"] == "bad strip (2 decoder warnings)"
