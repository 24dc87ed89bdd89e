"""CleanParams: paper defaults, strict validation."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from fineharbor.core.cleaning.params import CleanParams


def test_paper_defaults():
    p = CleanParams()
    assert p.max_image_side == 2048  # FineVision
    assert p.max_turn_tokens == 8192  # FineVision
    assert p.min_image_bytes == 5120 and p.min_caption_chars == 5  # LAION
    assert p.min_side == 200 and p.max_aspect_ratio == 3.0  # DataComp
    assert (p.caption_min_words, p.caption_max_words) == (5, 60)  # DanQing
    assert p.languages_allowed == ["en"]
    assert p.max_pixels == 89_478_485 and p.decompression_bomb_pixels == 2 * 89_478_485
    assert "EPS" not in p.allowed_formats and "JPEG" in p.allowed_formats


@pytest.mark.parametrize(
    "bad",
    [
        {"unknown_threshold": 1},
        {"allowed_formats": ["JPEG", "PDF"]},
        {"allowed_formats": []},
        {"languages_allowed": ["english"]},
        {"language_candidates": ["xx"]},
        {"max_aspect_ratio": 0.5},
        {"decompression_bomb_pixels": 10, "max_pixels": 100},
        {"caption_min_words": 10, "caption_max_words": 5},
        {"unsafe_terms": ["ok", "  "]},
        {"processes": -1},
    ],
)
def test_invalid_values_fail_at_load(bad):
    with pytest.raises(ValidationError):
        CleanParams(**bad)


def test_frozen_and_normalised():
    p = CleanParams(domain_deny=[" .Ads.Example.com "], languages_allowed=["EN", "fr", "en"])
    assert p.domain_deny == ["ads.example.com"]
    assert p.languages_allowed == ["en", "fr"]
    assert p.lingua_languages[:2] == ["en", "fr"]
    with pytest.raises(ValidationError):
        p.max_image_side = 100  # type: ignore[misc]
    assert CleanParams(processes=3).worker_count == 3 and CleanParams().worker_count >= 1
