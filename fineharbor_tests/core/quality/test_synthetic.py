"""Semi-synthetic four-level texts written by an MLLM through the judge's OpenAI-compatible
client, against a loopback server (the judge tests' fixture, answering generation prompts)."""

from __future__ import annotations

import pytest

from fineharbor.core.judge.backend import CallableBackend
from fineharbor.core.judge.cache import JudgmentCache
from fineharbor.core.judge.params import JudgeParams
from fineharbor.core.quality.params import QualityClassifierParams
from fineharbor.core.quality.synthetic import (
    PROMPT_VERSION,
    RULE,
    level_request,
    reply_segments,
    write_level_texts,
    writer_backend,
)

from .conftest import png
from .test_classifier import COLORS, _table


def _samples():
    rows = [
        ([png(COLORS[name], (30 + i, 30))], [{"user": "", "assistant": f"A {name} square."}])
        for i, name in enumerate(["red", "green", "blue"])
    ]
    rows.append(  # a two-image document
        ([png(COLORS["red"]), png(COLORS["blue"])], [{"user": "", "assistant": "A red square."}])
    )
    rows.append(([png(COLORS["yellow"])], [{"user": "", "assistant": "A FAIL square."}]))
    return _table(rows)


def test_every_level_is_written_by_the_server_and_cached(writer_server, tmp_path):
    params = JudgeParams(
        backend="openai", base_url=writer_server.url, vision_model="vlm", retries=0
    )
    writer = writer_backend(params, max_tokens=128)
    with JudgmentCache(tmp_path / "cache") as cache:
        data, report = write_level_texts(_samples(), writer, seed=0, cache=cache)
    assert (
        writer_server.bodies[0]["max_tokens"] == 128 and writer_server.bodies[0]["model"] == "vlm"
    )
    assert report.real_samples == 5 and report.requested == 20
    assert report.written == 19 and report.failures == 1 and report.cache_hits == 0
    assert report.by_level == {0: 5, 1: 5, 2: 5, 3: 5} and report.balance() == 1.0
    assert "20 training texts from 5 real samples" in report.summary()
    rows = data.examples.to_pylist()
    by = {(r["sample"], r["level"]): r for r in rows}
    assert by[0, 3]["segments"] == ["A red square on white."] and by[0, 3]["rule"] == RULE
    assert by[1, 1]["segments"] == ["An image."] and by[2, 0]["segments"] == ["A cat."]
    # the document: one paragraph per image, quotes stripped
    assert by[3, 3]["segments"] == ["A red square on white."] * 2
    # the failed request fell back to the rule-based level-2 text (one attribute changed)
    assert by[4, 2]["rule"] != RULE and by[4, 2]["segments"] != ["A FAIL square."]
    assert data.rewrite_failures == 1

    writer_server.reset_counts()
    with JudgmentCache(tmp_path / "cache") as cache:
        again, report = write_level_texts(_samples(), writer, seed=0, cache=cache)
    # only the failure is asked again; the rest come from the cache
    assert writer_server.requests == 1 and report.cache_hits == 19
    assert again.examples.to_pylist() == rows


def test_a_changed_image_is_asked_again(tmp_path):
    calls = []

    def reply(request):
        calls.append(request)
        return "A square."

    writer = CallableBackend("writer", reply)
    with JudgmentCache(tmp_path / "cache") as cache:
        write_level_texts(_samples().slice(0, 1), writer, cache=cache)
        assert len(calls) == 4
        changed = (
            _samples()
            .slice(0, 1)
            .set_column(4, "images", [[[{"bytes": png((1, 2, 3)), "path": None}]]])
        )
        write_level_texts(changed, writer, cache=cache)
    assert len(calls) == 8  # same sample id, new image: the digest differs


def test_requests_and_replies():
    request = level_request([b"img"], ["A red square."], 2)
    assert request.images == (b"img",) and "exactly one clearly wrong detail" in request.user
    assert "<reference>\nA red square.\n</reference>" in request.user
    assert "2 images" in level_request([b"a", b"b"], ["t"], 3).user
    assert reply_segments(' "A red square." \n\n  Second. ') == ["A red square.", "Second."]
    assert reply_segments("  ") is None and reply_segments(None) is None
    assert PROMPT_VERSION.startswith("unifilter-levels/")


def test_the_writer_needs_a_vision_model():
    with pytest.raises(ValueError, match=r"stages\.judge\.vision_model"):
        writer_backend(JudgeParams(backend="none"), 64)
    with pytest.raises(ValueError, match="rewrite_with_judge"):
        QualityClassifierParams(synthetic_texts="mllm", rewrite_with_judge=True)


@pytest.mark.slow
def test_an_in_process_transformers_writer(tmp_path):
    """The judge's in-process backend writes too: a tiny LLaVA (random weights) built from a
    config and loaded by path; whatever it writes, every level of every sample is accounted for."""
    from fineharbor_tests.core.judge.conftest import save_vision_model

    model = save_vision_model(tmp_path / "vlm")
    params = JudgeParams(backend="transformers", vision_model=str(model), device="cpu")
    writer = writer_backend(params, max_tokens=6)
    try:
        data, report = write_level_texts(_samples().slice(0, 2), writer, seed=0)
    finally:
        writer.close()
    assert report.writer == str(model.resolve())
    assert report.requested == 8 and report.written > 0
    assert report.written + report.failures == 8
    assert report.by_level == {0: 2, 1: 2, 2: 2, 3: 2}
    written = [r for r in data.examples.to_pylist() if r["rule"] == RULE]
    assert len(written) == report.written and all(r["segments"] for r in written)
