"""rate_samples through deterministic stub backends: the parse -> column path, nulls, cache."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from fineharbor.core.judge import (
    AXES,
    RATINGS_SCHEMA,
    CallableBackend,
    JudgeParams,
    JudgeRequest,
    JudgmentCache,
    OpenAIChatBackend,
    TransformersBackend,
    make_backends,
    rate_samples,
)
from fineharbor.core.judge.rate import JudgeStats
from fineharbor_tests.core.judge.conftest import make_samples

REPLIES = {"FORMATTING": "Rating: 4", "RELEVANCE": "5", "VISUAL DEPENDENCY": '{"rating": 2}'}


def text_reply(request: JudgeRequest) -> str | None:
    if "NETWORK_DOWN" in request.user:
        return None
    if "GIBBERISH" in request.user:
        return "blah blah"
    return next(reply for axis, reply in REPLIES.items() if axis in request.system)


def vision_reply(request: JudgeRequest) -> str:
    assert request.images, "image_correspondence must carry the sample's images"
    return f"Rating: {min(len(request.images), 5)}"


def assert_counts_add_up(stats: JudgeStats, turns: int) -> None:
    assert stats.turns == turns
    for axis in AXES:
        judged = stats.cache_hits[axis] + stats.requests[axis] + stats.repeated_failures[axis]
        assert stats.skipped[axis] + judged == turns, axis
        outcomes = stats.ratings[axis] + stats.parse_failures[axis] + stats.request_failures[axis]
        assert judged == outcomes, axis


def test_ratings_columns_and_mins(samples, tmp_path) -> None:
    text, vision = CallableBackend("text-m", text_reply), CallableBackend("vis-m", vision_reply)
    params = JudgeParams()
    with JudgmentCache(tmp_path) as cache:
        table, stats = rate_samples(samples, text, vision, params, cache)
    assert table.schema == RATINGS_SCHEMA
    rows = table.to_pylist()
    assert [r["sample_id"] for r in rows] == ["s0", "s1", "s2"]
    assert rows[0]["formatting_ratings"] == [4, 4] and rows[0]["formatting_min"] == 4
    assert rows[0]["relevance_ratings"] == [5, 5] and rows[0]["relevance_min"] == 5
    assert rows[0]["visual_dependency_ratings"] == [2, 2]
    assert rows[0]["image_correspondence_ratings"] == [1, 1]
    # s1 has no image: image correspondence is null, the text axes are rated.
    assert rows[1]["image_correspondence_ratings"] is None
    assert rows[1]["image_correspondence_min"] is None
    assert rows[1]["relevance_ratings"] == [5]
    assert_counts_add_up(stats, turns=4)
    assert stats.skipped["image_correspondence"] == 1
    assert stats.requests_sent == 3 * 4 + 3 and stats.total_cache_hits == 0
    assert stats.total_parse_failures == 0 and stats.total_request_failures == 0
    assert stats.requests_per_s > 0 and stats.as_metadata()["judge/requests_sent"] == 15


def test_failures_are_null_entries_and_counted(tmp_path) -> None:
    samples = make_samples((3,), no_image=())
    texts = samples.column("texts").to_pylist()
    texts[0][1]["user"] = "GIBBERISH question"
    texts[0][2]["user"] = "NETWORK_DOWN question"
    samples = samples.set_column(
        samples.schema.get_field_index("texts"),
        "texts",
        pa.array(texts, samples.schema.field("texts").type),
    )
    text = CallableBackend("text-m", text_reply)
    with JudgmentCache(tmp_path) as cache:
        table, stats = rate_samples(samples, text, None, JudgeParams(), cache)
        row = table.to_pylist()[0]
        assert row["formatting_ratings"] == [4, None, None] and row["formatting_min"] == 4
        assert row["image_correspondence_ratings"] is None  # no vision backend
        for axis in ("formatting", "relevance", "visual_dependency"):
            assert stats.parse_failures[axis] == 1 and stats.request_failures[axis] == 1
        assert stats.skipped["image_correspondence"] == 3
        assert_counts_add_up(stats, turns=3)
        # Within the run (one cache object), a failed request is not sent again.
        same_run, stats1 = rate_samples(samples, text, None, JudgeParams(), cache)
        assert same_run.equals(table) and stats1.requests_sent == 0
        assert sum(stats1.repeated_failures.values()) == stats1.total_request_failures == 3
        assert_counts_add_up(stats1, turns=3)
    # Parse failures are cached (greedy would repeat them); the next run retries the failures.
    with JudgmentCache(tmp_path) as cache:
        again, stats2 = rate_samples(samples, text, None, JudgeParams(), cache)
        assert again.equals(table)
        assert stats2.requests_sent == 3 and stats2.total_cache_hits == 6
        assert stats2.total_parse_failures == 3 and stats2.total_request_failures == 3


def test_cache_prevents_a_second_call_and_follows_the_input(samples, tmp_path) -> None:
    text, vision = CallableBackend("text-m", text_reply), CallableBackend("vis-m", vision_reply)
    with JudgmentCache(tmp_path) as cache:
        first, _ = rate_samples(samples, text, vision, JudgeParams(), cache)
        calls = (text.calls, vision.calls)
        second, stats = rate_samples(samples, text, vision, JudgeParams(), cache)
        assert (text.calls, vision.calls) == calls  # no backend call at all
        assert second.equals(first)
        assert stats.requests_sent == 0 and stats.total_cache_hits == 15
        assert_counts_add_up(stats, turns=4)

        # Another model, or a changed answer under the same sample id, is judged again.
        other = CallableBackend("text-m2", text_reply)
        _, stats = rate_samples(samples, other, vision, JudgeParams(), cache)
        assert stats.requests["relevance"] == 4 and stats.requests["image_correspondence"] == 0
        texts = samples.column("texts").to_pylist()
        texts[2][0]["assistant"] = "a different answer"
        changed = samples.set_column(
            samples.schema.get_field_index("texts"),
            "texts",
            pa.array(texts, samples.schema.field("texts").type),
        )
        _, stats = rate_samples(changed, text, vision, JudgeParams(), cache)
        # formatting and relevance see the answer; visual dependency and the image axis do not.
        assert stats.requests == {
            "relevance": 1,
            "formatting": 1,
            "visual_dependency": 0,
            "image_correspondence": 0,
        }


def test_axes_switch_off_and_backend_none(samples) -> None:
    text = CallableBackend("text-m", text_reply)
    table, stats = rate_samples(samples, text, None, JudgeParams(axes=["relevance"]))
    for axis in AXES:
        column = table.column(f"{axis}_ratings")
        assert (column.null_count == 0) == (axis == "relevance")
    assert stats.requests_sent == 4
    table, stats = rate_samples(samples, None, None, JudgeParams())
    assert all(table.column(f"{a}_min").null_count == 3 for a in AXES)
    assert stats.requests_sent == 0 and sum(stats.skipped.values()) == 16


def test_empty_texts_and_flush_chunks(tmp_path) -> None:
    samples = make_samples((0, 5), no_image=(0,))
    text = CallableBackend("text-m", text_reply)
    with JudgmentCache(tmp_path) as cache:
        table, _ = rate_samples(samples, text, None, JudgeParams(flush_every=2), cache)
        assert text.calls == 8  # 15 requests in chunks of 2, each chunk cached on arrival
        assert len(cache) == 15
    rows = table.to_pylist()
    assert rows[0]["relevance_ratings"] == [] and rows[0]["relevance_min"] is None


def test_images_are_capped(tmp_path) -> None:
    samples = make_samples((1,), no_image=())
    images = samples.column("images").to_pylist()
    images[0] = images[0] * 7
    samples = samples.set_column(
        samples.schema.get_field_index("images"),
        "images",
        pa.array(images, samples.schema.field("images").type),
    )
    vision = CallableBackend("vis-m", vision_reply)
    table, _ = rate_samples(samples, None, vision, JudgeParams(max_images=3))
    assert table.column("image_correspondence_ratings").to_pylist() == [[3]]


def test_stats_merge() -> None:
    a, b = JudgeStats(samples=1, turns=2, seconds=1.0), JudgeStats(samples=2, turns=3, seconds=2.0)
    a.ratings["relevance"], b.ratings["relevance"] = 2, 3
    merged = a.merge(b)
    assert (merged.samples, merged.turns, merged.seconds) == (3, 5, 3.0)
    assert merged.ratings["relevance"] == 5


def test_loads_in_datasets_with_finevision_types(samples, tmp_path) -> None:
    datasets = pytest.importorskip("datasets")
    text, vision = CallableBackend("text-m", text_reply), CallableBackend("vis-m", vision_reply)
    ratings, _ = rate_samples(samples, text, vision, JudgeParams())
    table = samples
    for name in ratings.column_names[1:]:
        table = table.append_column(ratings.schema.field(name), ratings.column(name))
    path = tmp_path / "part-00000.parquet"
    pq.write_table(table, path)
    ds = datasets.load_dataset(
        "parquet", data_files=str(path), split="train", cache_dir=str(tmp_path / "hf")
    )
    # The types of HuggingFaceM4/FineVision's dataset card: `list: int64` and `dtype: int64`.
    for axis in AXES:
        assert ds.features[f"{axis}_ratings"] == datasets.List(datasets.Value("int64"))
        assert ds.features[f"{axis}_min"] == datasets.Value("int64")
    assert ds[0]["relevance_ratings"] == [5, 5] and ds[1]["image_correspondence_ratings"] is None
    assert pc.sum(table.column("relevance_min")).as_py() == 15


def test_make_backends() -> None:
    assert make_backends(JudgeParams()) == (None, None)
    text, vision = make_backends(JudgeParams(backend="openai", vision_base_url="http://v:9/v1"))
    assert isinstance(text, OpenAIChatBackend) and isinstance(vision, OpenAIChatBackend)
    assert text.url == "http://localhost:8000/v1/chat/completions"
    assert (
        vision.url == "http://v:9/v1/chat/completions"
        and vision.name == "Qwen/Qwen2.5-VL-32B-Instruct"
    )
    text, vision = make_backends(JudgeParams(backend="transformers", vision_model=None))
    assert isinstance(text, TransformersBackend) and vision is None and not text.loaded
    both = JudgeParams(backend="transformers", text_model="/m/vlm", vision_model="/m/vlm")
    text, vision = make_backends(both)
    assert text is vision  # one VLM named twice is loaded once
    text, vision = make_backends(JudgeParams(backend="openai", axes=["image_correspondence"]))
    assert text is None and vision is not None


def test_params_validation() -> None:
    with pytest.raises(ValueError, match="twice"):
        JudgeParams(axes=["relevance", "relevance"])
    with pytest.raises(ValueError):
        JudgeParams(axes=["beauty"])
    with pytest.raises(ValueError, match="http"):
        JudgeParams(backend="openai", base_url="localhost:8000")
    with pytest.raises(ValueError):
        JudgeParams(unknown_field=1)


def test_identical_inputs_of_different_samples_are_sent_once(tmp_path) -> None:
    samples = make_samples((2, 2), no_image=())
    texts = samples.column("texts").to_pylist()
    texts[1] = texts[0]  # another sample asking exactly the same turns (and the same image)
    images = samples.column("images").to_pylist()
    images[1] = images[0]
    samples = samples.set_column(
        samples.schema.get_field_index("texts"),
        "texts",
        pa.array(texts, samples.schema.field("texts").type),
    ).set_column(
        samples.schema.get_field_index("images"),
        "images",
        pa.array(images, samples.schema.field("images").type),
    )
    sent: list[JudgeRequest] = []

    def counting(request: JudgeRequest) -> str:
        sent.append(request)
        return vision_reply(request) if request.images else text_reply(request)

    backend = CallableBackend("m", counting)
    with JudgmentCache(tmp_path) as cache:
        table, stats = rate_samples(samples, backend, backend, JudgeParams(), cache)
        assert len(sent) == len({r.digest() for r in sent}) == stats.requests_sent
        assert stats.total_cache_hits == stats.requests_sent  # the second sample's turns
        rows = table.to_pylist()
        assert {k: v for k, v in rows[0].items() if k != "sample_id"} == {
            k: v for k, v in rows[1].items() if k != "sample_id"
        }
        assert_counts_add_up(stats, turns=4)
    # A later run, a third sample with the same input: answered from the file, nothing sent.
    third = samples.slice(0, 1).set_column(0, "sample_id", pa.array(["s9"]))
    sent.clear()
    with JudgmentCache(tmp_path) as cache:
        _, stats = rate_samples(third, backend, backend, JudgeParams(), cache)
    assert not sent and stats.total_cache_hits == 2 * 4
