"""Semi-synthetic four-level texts written by an MLLM through the judge's OpenAI-compatible
client, against a loopback server (the judge tests' fixture, answering generation prompts)."""

from __future__ import annotations

import pyarrow as pa
import pytest

from fineharbor.core.judge.backend import CallableBackend
from fineharbor.core.judge.cache import JudgmentCache
from fineharbor.core.judge.params import JudgeParams
from fineharbor.core.quality.classifier import TEXT, build_quality_training_set
from fineharbor.core.quality.params import QualityClassifierParams
from fineharbor.core.quality.perturb import PAGE_CHROME
from fineharbor.core.quality.synthetic import (
    DOCUMENT_PROMPT_VERSION,
    PROMPT_VERSION,
    RULE,
    level_request,
    reply_segments,
    write_level_texts,
    writer_backend,
)

from .conftest import image, png
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


# --------------------------------------------------------------------------- documents


def _documents(docs: list[list[bytes | str]]) -> pa.Table:
    """Unified rows of interleaved documents (bytes: an image, str: a paragraph, in order)."""
    from fineharbor.core.interleaved import document_segments, document_turns
    from fineharbor.core.schema import UNIFIED_SCHEMA

    rows = []
    for i, parts in enumerate(docs):
        images = [image(p) for p in parts if isinstance(p, bytes)]
        segments = document_segments(
            [p if isinstance(p, str) else None for p in parts], len(images)
        )
        rows.append(
            {
                "sample_id": f"d{i}",
                "source": "docs",
                "origin_uri": None,
                "origin_key": str(i),
                "images": images,
                "texts": document_turns(segments),
                "segments": segments,
                "metadata": "{}",
            }
        )
    return pa.Table.from_pylist(rows, schema=UNIFIED_SCHEMA)


def _doc(first: str, second: str, title: str = "My photos.") -> list[bytes | str]:
    return [
        title,
        png(COLORS[first]),
        f"A {first} square on the left.",
        png(COLORS[second]),
        f"A {second} square at the top.",
    ]


DOCS = [_doc("red", "blue"), _doc("green", "yellow"), _doc("blue", "red"), _doc("yellow", "green")]


def test_rule_based_documents_get_four_levels_in_their_layout():
    caption = _table([([png(COLORS["red"], (33, 30))], [{"user": "", "assistant": "A red one."}])])
    level0_rules = set()
    for seed in range(4):
        data = build_quality_training_set([_documents(DOCS), caption], seed=seed)
        rows = data.examples.to_pylist()
        docs = [r for r in rows if r["order"] is not None]
        assert {r["sample"] for r in docs} == {0, 1, 2, 3}
        for sample, parts in enumerate(DOCS):
            paragraphs = [p for p in parts if isinstance(p, str)]
            by = {r["level"]: r for r in docs if r["sample"] == sample}
            assert set(by) == {0, 1, 2, 3}
            layout = [TEXT, 0, TEXT, 1, TEXT]
            assert by[3]["segments"] == paragraphs and by[3]["order"] == layout
            assert by[1]["rule"] == "boilerplate" and by[1]["order"] == layout
            for text in by[1]["segments"]:  # page chrome only
                assert text and all(f in PAGE_CHROME for f in _fragments(text))
            # level 2: one paragraph next to an image swapped for another document's
            changed = [k for k in range(3) if by[2]["segments"][k] != paragraphs[k]]
            assert by[2]["rule"] == "mismatched_paragraph" and len(changed) == 1
            assert changed[0] in (1, 2) and by[2]["order"] == layout
            zero = by[0]
            level0_rules.add(zero["rule"])
            if zero["rule"] == "shuffled_images":
                assert zero["segments"] == paragraphs and zero["order"] == [TEXT, 1, TEXT, 0, TEXT]
            else:
                assert zero["rule"] == "other_paragraphs" and zero["order"] == layout
                assert not set(zero["segments"]) & set(paragraphs)
        kinds = data.kind_counts()
        assert kinds["documents"]["real_samples"] == 4 and kinds["documents"]["examples"] == 16
        assert kinds["documents"]["balance"] == 1.0
        assert kinds["captions"]["real_samples"] == 1
    assert level0_rules == {"shuffled_images", "other_paragraphs"}

    # the MLLM reads each example in its layout, images at their positions
    from fineharbor.core.quality.mllm_classifier import training_documents

    data = build_quality_training_set(_documents(DOCS[:2]), seed=0)
    true = data.examples.to_pylist().index(
        next(r for r in data.examples.to_pylist() if r["sample"] == 0 and r["level"] == 3)
    )
    assert training_documents(data)[true] == DOCS[0]


def _fragments(text: str) -> list[str]:
    """The page chrome sentences a boilerplate paragraph is made of."""
    out, rest = [], text
    while rest:
        match = next(f for f in PAGE_CHROME if rest.startswith(f))
        out.append(match)
        rest = rest[len(match) :].lstrip()
    return out


def test_documents_are_written_by_the_server_in_their_layout_and_cached(writer_server, tmp_path):
    params = JudgeParams(
        backend="openai", base_url=writer_server.url, vision_model="vlm", retries=0
    )
    writer = writer_backend(params, max_tokens=128)
    docs = [DOCS[0], _doc("green", "blue", title="SHORT notes.")]
    with JudgmentCache(tmp_path / "cache") as cache:
        data, report = write_level_texts(_documents(docs), writer, seed=0, cache=cache)
    prompt = writer_server.bodies[0]["messages"][1]["content"]
    text = " ".join(p["text"] for p in prompt if p["type"] == "text")
    assert "Write exactly 3 paragraphs" in text
    assert "My photos.\n[image 1]\nA red square on the left.\n[image 2]\n" in text
    assert sum(p["type"] == "image_url" for p in prompt) == 2
    assert report.real_samples == 2 and report.documents == 2 and report.requested == 8
    # the SHORT document's level-1 reply has 2 paragraphs for 3 places: the rules' text
    assert report.written == 7 and report.failures == 1
    assert report.by_level == {0: 2, 1: 2, 2: 2, 3: 2}
    assert (
        "(2 documents; levels" in report.summary() and DOCUMENT_PROMPT_VERSION in report.summary()
    )
    by = {(r["sample"], r["level"]): r for r in data.examples.to_pylist()}
    assert by[0, 3]["segments"] == ["A red square on white."] * 3
    assert by[0, 0]["segments"] == ["A cat."] * 3 and by[0, 0]["rule"] == RULE
    assert all(r["order"] == [TEXT, 0, TEXT, 1, TEXT] for r in by.values())
    assert by[1, 1]["rule"] == "boilerplate"
    assert data.kind_counts()["documents"]["by_level"] == {"0": 2, "1": 2, "2": 2, "3": 2}

    writer_server.reset_counts()
    with JudgmentCache(tmp_path / "cache") as cache:
        again, report = write_level_texts(_documents(docs), writer, seed=0, cache=cache)
    assert writer_server.requests == 1 and report.cache_hits == 7
    assert again.examples.to_pylist() == data.examples.to_pylist()
    assert DOCUMENT_PROMPT_VERSION != PROMPT_VERSION
