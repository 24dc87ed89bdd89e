"""The in-process judge with real (tiny, random) transformers models loaded by path."""

from __future__ import annotations

import pytest

from fineharbor.core.judge import (
    AXES,
    JudgeModelNotFoundError,
    JudgeParams,
    JudgeRequest,
    JudgmentCache,
    TransformersBackend,
    make_backends,
    rate_samples,
)
from fineharbor_tests.conftest import make_image_bytes

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def forbid_calls(backend: TransformersBackend, monkeypatch) -> None:
    def fail(requests):
        raise AssertionError(f"{len(requests)} requests reached the model despite the cache")

    monkeypatch.setattr(backend, "complete", fail)


@pytest.mark.slow
def test_random_models_generate_and_failures_add_up(tiny_models, samples, tmp_path, monkeypatch):
    params = JudgeParams(backend="transformers", max_new_tokens=4, batch_size=2)
    text = TransformersBackend(str(tiny_models["text"]), max_new_tokens=4, batch_size=2)
    vision = TransformersBackend(str(tiny_models["vision"]), max_new_tokens=4, batch_size=2)

    replies = text.complete([JudgeRequest("rate", "the question"), JudgeRequest("rate", "a")])
    assert text.modality == "text" and all(isinstance(r, str) for r in replies)

    with JudgmentCache(tmp_path) as cache:
        table, stats = rate_samples(samples, text, vision, params, cache)
        assert vision.modality == "vision"  # detected from the saved config
        assert stats.turns == 4 and stats.samples == 3
        for axis in AXES:
            judged = 3 if axis == "image_correspondence" else 4  # s1 has no image
            assert stats.requests[axis] == judged and stats.skipped[axis] == 4 - judged
            outcomes = stats.ratings[axis] + stats.parse_failures[axis]
            assert outcomes == judged and stats.request_failures[axis] == 0
            # Random weights: whatever parsed is on the scale, the rest is a null entry.
            column = table.column(f"{axis}_ratings").to_pylist()
            values = [v for row in column if row is not None for v in row]
            assert sum(v is None for v in values) == stats.parse_failures[axis]
            assert all(1 <= v <= 5 for v in values if v is not None)
        assert len(cache) == stats.requests_sent == 15

        forbid_calls(text, monkeypatch)
        forbid_calls(vision, monkeypatch)
        again, stats2 = rate_samples(samples, text, vision, params, cache)
        assert again.equals(table)
        assert stats2.requests_sent == 0 and stats2.total_cache_hits == 15
        assert stats2.total_parse_failures == stats.total_parse_failures


def test_fixed_answer_reaches_the_columns(tiny_models, samples) -> None:
    # Zeroed final norm: every logit is 0, greedy picks id 0, the word "4" -> "4" every time.
    params = JudgeParams(
        backend="transformers",
        text_model=str(tiny_models["text_four"]),
        vision_model=str(tiny_models["vision_four"]),
        max_new_tokens=1,
        batch_size=3,
    )
    text, vision = make_backends(params)
    table, stats = rate_samples(samples, text, vision, params)
    rows = table.to_pylist()
    for axis in AXES:
        assert rows[0][f"{axis}_ratings"] == [4, 4] and rows[0][f"{axis}_min"] == 4
        assert rows[2][f"{axis}_ratings"] == [4]
    assert rows[1]["image_correspondence_ratings"] is None and rows[1]["relevance_min"] == 4
    assert stats.total_parse_failures == 0 and stats.requests_sent == 15


def test_vision_batches_mix_image_counts_and_bad_images(tiny_models) -> None:
    vision = TransformersBackend(str(tiny_models["vision_four"]), max_new_tokens=1, batch_size=4)
    image = make_image_bytes(3, size=(64, 48), fmt="PNG")
    requests = [
        JudgeRequest("rate", "one image <image> <|im_end|>", (image,)),
        JudgeRequest("rate", "two images", (image, image)),
        JudgeRequest("rate", "broken image", (b"not an image",)),
        JudgeRequest("rate", "no image"),  # a VLM also rates text-only prompts
    ]
    assert vision.complete(requests) == ["4", "4", None, "4"]
    vision.close()
    assert not vision.loaded
    assert vision.complete(requests[:1]) == ["4"]  # loads again after close


def test_missing_local_model_names_the_path(tmp_path) -> None:
    missing = tmp_path / "no-such-judge"
    backend = TransformersBackend(str(missing))
    with pytest.raises(JudgeModelNotFoundError, match=r"no-such-judge.*does not exist"):
        backend.complete([JudgeRequest("s", "u")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(JudgeModelNotFoundError, match=r"has no config\.json"):
        TransformersBackend(str(tmp_path / "empty")).load()


def test_unreachable_hub_name_says_how_to_provide_it(monkeypatch) -> None:
    import transformers

    def offline(*args, **kwargs):
        raise OSError("couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", offline)
    backend = TransformersBackend("fineharbor-test/no-such-judge")
    with pytest.raises(JudgeModelNotFoundError) as error:
        backend.load()
    message = str(error.value)
    assert "fineharbor-test/no-such-judge" in message and "hf download" in message
