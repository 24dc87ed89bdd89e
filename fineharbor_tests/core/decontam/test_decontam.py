import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from fineharbor.core.decontam.index import (
    BENCHMARK_INDEX_SCHEMA,
    EmbedderMismatchError,
    image_rows,
    ngram_rows,
    precomputed_rows,
)
from fineharbor.core.decontam.match import (
    BenchmarkMatcher,
    decontaminate_batch,
    reject_benchmark_rows,
)
from fineharbor.core.decontam.params import DecontamParams
from fineharbor.core.decontam.text import ngram_hashes
from fineharbor.core.signatures.compute import SIGNATURE_SCHEMA
from fineharbor.core.signatures.hashing import decode_rgb, image_hashes
from fineharbor.testing.images import make_image_bytes

LONG_QUESTION = "Looking at the chart above, which of the coloured bars shows the largest value for the year twenty twenty"


def unit(vector):
    vector = np.asarray(vector, dtype=np.float32)
    return (vector / np.linalg.norm(vector)).tolist()


def signatures(rows):
    base = {
        "width": 10,
        "height": 10,
        "sha256_bytes": "x",
        "sha256_pixels": "y",
        "clip_embedding": None,
        "error": None,
    }
    return pa.Table.from_pylist([{**base, **r} for r in rows], schema=SIGNATURE_SCHEMA)


def samples(rows):
    return pa.Table.from_pylist(rows)


@pytest.fixture
def matcher():
    rng = np.random.default_rng(0)
    params = DecontamParams()
    bench_vectors = [unit(rng.normal(size=16)) for _ in range(3)]
    bench = signatures(
        [
            {
                "sample_id": f"b{i}",
                "source": "bench",
                "image_index": 0,
                "phash": int(v),
                "phash_flip": int(v) ^ 0xFF00,
                "copy_embedding": bench_vectors[i],
            }
            for i, v in enumerate([0x0F0F0F0F0F0F0F0F, 0x3333333333333333, -0x5555555555555556])
        ]
    )
    index = pa.concat_tables(
        [
            image_rows(bench, {"b0": "k0", "b1": "k1", "b2": "k2"}, params),
            ngram_rows(
                [
                    {
                        "source": "bench",
                        "sample_id": "b1",
                        "origin_key": "k1",
                        "texts": [{"user": LONG_QUESTION, "assistant": "red"}],
                    }
                ],
                params,
            ),
        ]
    )
    assert index.schema.equals(BENCHMARK_INDEX_SCHEMA)
    return BenchmarkMatcher(index, params), bench_vectors, rng


def test_embedding_phash_and_text_matches_are_rejected_with_their_benchmark(matcher):
    matcher, bench_vectors, rng = matcher
    near = unit(np.asarray(bench_vectors[0]) + 0.05 * rng.normal(size=16))
    train = signatures(
        [
            {
                "sample_id": "t0",
                "source": "train",
                "image_index": 0,
                "phash": 1,
                "phash_flip": 2,
                "copy_embedding": near,
            },
            {
                "sample_id": "t1",
                "source": "train",
                "image_index": 0,
                "phash": 0x3333333333333330,
                "phash_flip": 5,
                "copy_embedding": unit(rng.normal(size=16)),
            },
            {
                "sample_id": "t2",
                "source": "train",
                "image_index": 0,
                "phash": 7,
                "phash_flip": 9,
                "copy_embedding": unit(rng.normal(size=16)),
            },
            {
                "sample_id": "t3",
                "source": "train",
                "image_index": 0,
                "phash": 11,
                "phash_flip": 13,
                "copy_embedding": unit(rng.normal(size=16)),
            },
        ]
    )
    rows = samples(
        [
            {
                "sample_id": f"t{i}",
                "source": "train",
                "origin_key": f"o{i}",
                "texts": [{"user": question, "assistant": "a"}],
            }
            for i, question in enumerate(
                ["q", "q", "Which bar is largest?", "Please answer: " + LONG_QUESTION.upper() + "!"]
            )
        ]
    )
    kept, rejected = decontaminate_batch(rows, train, matcher)
    assert kept.column("sample_id").to_pylist() == ["t2"]
    found = {
        r["sample_id"]: (r["benchmark"], r["matched_origin_key"], r["signal"])
        for r in rejected.to_pylist()
    }
    assert found == {
        "t0": ("bench", "k0", "copy_embedding"),
        "t1": ("bench", "k1", "phash"),
        "t3": ("bench", "k1", "text_ngram"),
    }
    assert all(r["reason"] == "benchmark_match" for r in rejected.to_pylist())
    similarity = {r["sample_id"]: r["similarity"] for r in rejected.to_pylist()}
    assert similarity["t0"] >= 0.95


def test_mirrored_copy_matches_through_the_flip_hash(matcher):
    matcher, _, rng = matcher
    train = signatures(
        [
            {
                "sample_id": "f",
                "source": "train",
                "image_index": 0,
                "phash": 123456,
                "phash_flip": 0x0F0F0F0F0F0F0F0F,
                "copy_embedding": unit(rng.normal(size=16)),
            }
        ]
    )
    _, rejected = decontaminate_batch(
        samples([{"sample_id": "f", "source": "train", "origin_key": "f", "texts": []}]),
        train,
        matcher,
    )
    assert rejected.column("matched_sample_id").to_pylist() == ["b0"]


def test_threshold_changes_the_result():
    rng = np.random.default_rng(1)
    base = rng.normal(size=8)
    noisy = unit(base + 0.4 * rng.normal(size=8))
    similarity = float(np.dot(unit(base), noisy))
    bench = signatures(
        [
            {
                "sample_id": "b",
                "source": "bench",
                "image_index": 0,
                "phash": 0,
                "phash_flip": 0,
                "copy_embedding": unit(base),
            }
        ]
    )
    train = signatures(
        [
            {
                "sample_id": "t",
                "source": "train",
                "image_index": 0,
                "phash": -1,
                "phash_flip": -1,
                "copy_embedding": noisy,
            }
        ]
    )
    rows = samples([{"sample_id": "t", "source": "train", "origin_key": "t", "texts": []}])
    for threshold, expected in ((similarity - 0.01, 1), (similarity + 0.01, 0)):
        params = DecontamParams(image_threshold=threshold)
        matcher = BenchmarkMatcher(image_rows(bench, {}, params), params)
        assert decontaminate_batch(rows, train, matcher)[1].num_rows == expected


def test_ngrams_ignore_case_punctuation_and_short_text():
    assert ngram_hashes("A B C", 13) == set()
    assert ngram_hashes(LONG_QUESTION, 13) == ngram_hashes(
        LONG_QUESTION.upper().replace(",", " ;"), 13
    )


def test_precomputed_embeddings_must_come_from_the_same_model(tmp_path):
    table = pa.table({"embedding": [[0.1, 0.2]], "id": ["x"]}).replace_schema_metadata(
        {"embedder": "sscd:model-a"}
    )
    pq.write_table(table, tmp_path / "bench.parquet")
    params = DecontamParams()
    rows = precomputed_rows(tmp_path / "bench.parquet", "sscd:model-a", params)
    assert rows.column("benchmark").to_pylist() == ["bench"]
    with pytest.raises(EmbedderMismatchError, match="model-a"):
        precomputed_rows(tmp_path / "bench.parquet", "sscd:model-b", params)


def test_benchmark_sources_are_rejected_whole():
    rows = samples([{"sample_id": "b", "source": "bench", "origin_key": "k", "texts": []}])
    assert reject_benchmark_rows(rows).column("reason").to_pylist() == ["benchmark_source"]


@pytest.mark.parametrize("turn", [Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_180])
def test_a_rotated_benchmark_copy_matches_through_the_rotation_hashes(turn):
    """A benchmark image turned by 90/180 degrees: the train image's rotated phashes find it,
    which its phash and mirror alone do not."""
    photo = decode_rgb(make_image_bytes(7, size=(320, 240)))

    def signed(image, sample_id, source):
        hashes = image_hashes(image)
        return {
            "sample_id": sample_id,
            "source": source,
            "image_index": 0,
            "phash": hashes.phash,
            "phash_flip": hashes.phash_flip,
            "phash_dihedral": list(hashes.phash_dihedral),
            "copy_embedding": None,
        }

    bench = signatures([signed(photo, "b", "bench")])
    train = signatures([signed(photo.transpose(turn), "t", "train")])
    rows = samples([{"sample_id": "t", "source": "train", "origin_key": "t", "texts": []}])
    for rotations, matched in ((True, ["b"]), (False, [])):
        params = DecontamParams(embedding=None, phash_rotations=rotations)
        matcher = BenchmarkMatcher(image_rows(bench, {"b": "kb"}, params), params)
        _, rejected = decontaminate_batch(rows, train, matcher)
        assert rejected.column("matched_sample_id").to_pylist() == matched


def test_a_document_quoting_a_benchmark_question_in_one_paragraph_matches(matcher):
    from fineharbor.core.interleaved import document_segments, document_turns

    match, _, _ = matcher
    segments = document_segments(["An unrelated introduction.", None, LONG_QUESTION], 1)
    found = match.match_text(document_turns(segments))
    assert found is not None and (found.benchmark, found.origin_key) == ("bench", "k1")
    clean = document_segments(["An unrelated introduction.", None, "Nothing else."], 1)
    assert match.match_text(document_turns(clean)) is None
