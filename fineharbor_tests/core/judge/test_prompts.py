from __future__ import annotations

import pytest

from fineharbor.core.judge import prompts
from fineharbor.core.judge.parse import parse_rating
from fineharbor.core.judge.prompts import AXES, PROMPT_VERSIONS, build_prompt


def test_every_template_change_has_a_new_version() -> None:
    # Fails when a template was edited without a new PROMPT_VERSIONS entry: cached ratings
    # would otherwise be served for a different prompt.
    assert prompts.check_prompt_versions() == []


def test_edited_template_is_detected(monkeypatch) -> None:
    monkeypatch.setitem(prompts._SYSTEM, "formatting", prompts._SYSTEM["formatting"] + " ")
    problems = prompts.check_prompt_versions()
    assert len(problems) == 1 and "formatting" in problems[0]


def test_versions_are_unique_and_named_by_axis() -> None:
    assert set(PROMPT_VERSIONS) == set(AXES)
    assert len(set(PROMPT_VERSIONS.values())) == len(AXES)
    for axis, version in PROMPT_VERSIONS.items():
        assert version.startswith(f"{axis}/v")


@pytest.mark.parametrize("axis", AXES)
def test_prompt_has_rubric_and_rating_format(axis) -> None:
    prompt = build_prompt(axis, "What is shown?", "A red ball.", max_chars=100, n_images=1)
    assert prompt.version == PROMPT_VERSIONS[axis]
    for level in "12345":
        assert f"\n{level}: " in prompt.system  # a rubric line per level
    assert "Rating: N" in prompt.system and "Rating: N" in prompt.user
    assert parse_rating(prompt.user) is None  # the instructions themselves hold no rating
    assert "<question>\nWhat is shown?\n</question>" in prompt.user


def test_each_axis_sees_only_its_inputs() -> None:
    question, answer = "How many cats?", "Three cats."
    for axis in ("formatting", "relevance"):
        assert answer in build_prompt(axis, question, answer, max_chars=100).user
    for axis in ("visual_dependency", "image_correspondence"):
        assert answer not in build_prompt(axis, question, answer, max_chars=100).user
    assert (
        "2 image(s)"
        in build_prompt("image_correspondence", question, answer, max_chars=100, n_images=2).user
    )


def test_long_text_is_truncated_and_empty_text_marked() -> None:
    prompt = build_prompt("formatting", "q" * 500, "", max_chars=100)
    assert "q" * 100 + "\n[... 400 more characters cut]" in prompt.user
    assert "q" * 101 not in prompt.user
    assert "<answer>\n(empty)\n</answer>" in prompt.user


def test_braces_in_data_are_not_template_fields() -> None:
    prompt = build_prompt("relevance", "{answer} {0}", "{question}", max_chars=100)
    assert "<question>\n{answer} {0}\n</question>" in prompt.user
