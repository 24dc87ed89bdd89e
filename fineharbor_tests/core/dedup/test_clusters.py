"""find_duplicates on hand-made signatures: every signal, the keep policy, determinism."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from fineharbor.core.dedup import (
    DUPLICATE_SCHEMA,
    SAMPLE_SCHEMA,
    DedupParams,
    compact_samples,
    find_duplicates,
)
from fineharbor.core.schema import UNIFIED_SCHEMA
from fineharbor.core.signatures import SIGNATURE_SCHEMA
from fineharbor_tests.conftest import make_image_bytes

RNG = np.random.default_rng(7)
DIM = 16


def _unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v)).astype(np.float16)


def _vec() -> np.ndarray:
    return _unit(RNG.standard_normal(DIM))


def _near(v: np.ndarray, noise: float = 0.1) -> np.ndarray:
    return _unit(v.astype(np.float32) + RNG.standard_normal(DIM) * noise)


def _axis(k: int) -> np.ndarray:
    v = np.zeros(DIM)
    v[k] = 1.0
    return _unit(v)


def _between(k: int, other: int) -> np.ndarray:
    """Cosine 0.6 with axis k: agrees with a hash match (>= 0.5), below the copy threshold."""
    v = np.zeros(DIM)
    v[k], v[other] = 0.6, 0.8
    return _unit(v)


def _code() -> int:
    return int(RNG.integers(-(2**63), 2**63 - 1))


def _flip_bits(code: int, bits: list[int]) -> int:
    value = code & (2**64 - 1)
    for b in bits:
        value ^= 1 << b
    return value - 2**64 if value >= 2**63 else value


def _sig(
    sample_id,
    source,
    *,
    pixels=None,
    phash=None,
    phash_flip=None,
    copy=None,
    size=(100, 100),
    index=0,
    error=None,
):
    return {
        "sample_id": sample_id,
        "source": source,
        "image_index": index,
        "width": size[0],
        "height": size[1],
        "sha256_bytes": None,
        "sha256_pixels": pixels or f"px-{sample_id}-{index}",
        "phash": _code() if phash is None else phash,
        "phash_flip": _code() if phash_flip is None else phash_flip,
        "copy_embedding": (_vec() if copy is None else copy).tolist(),
        "clip_embedding": None,
        "error": error,
    }


def _sample(
    sample_id, source, *, uri=None, text="a caption", n_images=1, pixels=None, quality=None
):
    return {
        "sample_id": sample_id,
        "source": source,
        "origin_uri": uri,
        "text": text,
        "n_images": n_images,
        "max_pixels": pixels,
        "quality": quality,
    }


@pytest.fixture
def world() -> tuple[pa.Table, pa.Table]:
    base = _vec()
    code = _code()
    flip_src = _code()
    sigs = [
        # exact pixels: s1 (src_a) == s2 (src_b)
        _sig("s1", "src_a", pixels="same"),
        _sig("s2", "src_b", pixels="same", size=(200, 200)),
        # copy embedding: s3 ~ s4
        _sig("s3", "src_a", copy=base),
        _sig("s4", "src_c", copy=_near(base, 0.05)),
        # phash within 3 bits: s5 ~ s6 (embeddings at cosine 0.6 do not contradict it)
        _sig("s5", "src_a", phash=code, copy=_axis(0)),
        # mirror: s7's phash equals s8's mirror phash
        _sig("s7", "src_a", phash=flip_src, copy=_axis(2)),
        _sig("s8", "src_b", phash_flip=flip_src, copy=_between(2, 3)),
        # unrelated, and an undecodable image with a colliding hash that must be ignored
        _sig("s9", "src_c"),
        _sig("s10", "src_c", pixels="same", error="image_undecodable: x"),
    ]
    sigs.append(_sig("s6", "src_b", phash=_flip_bits(code, [1, 20, 40]), copy=_between(0, 1)))
    samples = [_sample(s["sample_id"], s["source"]) for s in sigs]
    long_text = " ".join(f"word{k}" for k in range(80))
    samples += [
        _sample("t1", "src_a", n_images=0, text="What is 2 + 2?  Four."),
        _sample("t2", "src_b", n_images=0, text="what is 2 + 2? four."),
        _sample("t3", "src_a", n_images=0, text=long_text),
        _sample("t4", "src_c", n_images=0, text=long_text.replace("word40", "changed")),
        _sample("u1", "src_a", uri="https://img.example/a.jpg", text="a dog", n_images=0),
        _sample("u2", "src_c", uri="HTTPS://IMG.example/a.jpg", text="A dog", n_images=0),
        _sample("u3", "src_c", uri="https://img.example/a.jpg", text="a cat", n_images=0),
    ]
    sig_table = pa.Table.from_pylist(sigs, schema=SIGNATURE_SCHEMA)
    return sig_table, pa.Table.from_pylist(samples, schema=SAMPLE_SCHEMA)


PRIORITIES = {"src_a": 5, "src_b": 5, "src_c": 1}


def _clusters(table: pa.Table) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for row in table.to_pylist():
        out.setdefault(row["cluster_id"], set()).add(row["sample_id"])
    return out


def test_every_signal_forms_its_cluster(world):
    sigs, samples = world
    result = find_duplicates(sigs, samples, DedupParams(phash_max_distance=4), PRIORITIES).table
    assert result.schema == DUPLICATE_SCHEMA
    clusters = sorted(sorted(c) for c in _clusters(result).values())
    assert clusters == [
        ["s1", "s2"], ["s3", "s4"], ["s5", "s6"], ["s7", "s8"],
        ["t1", "t2"], ["t3", "t4"], ["u1", "u2"],
    ]  # fmt: skip
    by_id = {r["sample_id"]: r for r in result.to_pylist()}
    assert by_id["s1"]["signal"] == "exact_pixels" and by_id["s1"]["similarity"] == 1.0
    assert by_id["s4"]["signal"] == "copy_embedding" and by_id["s4"]["similarity"] > 0.9
    assert by_id["s6"]["signal"] == "phash"
    assert by_id["s6"]["similarity"] == pytest.approx(1 - 3 / 64)
    assert by_id["s8"]["signal"] == "phash" and by_id["s8"]["similarity"] == 1.0
    assert by_id["t2"]["signal"] == "text_exact"
    assert by_id["t4"]["signal"] == "text_minhash" and 0.8 <= by_id["t4"]["similarity"] < 1
    assert by_id["u2"]["signal"] == "url_caption"
    # keep policy: priority first (src_a 5 beats src_c 1), then resolution (s2 is 200x200)
    assert by_id["s4"]["kept_sample_id"] == "s3"
    assert by_id["s1"]["kept_sample_id"] == "s2" and by_id["s2"]["is_kept"]
    assert by_id["u2"]["kept_sample_id"] == "u1"
    for row in result.to_pylist():
        assert row["is_kept"] == (row["sample_id"] == row["kept_sample_id"])
        assert row["cluster_size"] == 2


def test_switches_and_thresholds(world):
    sigs, samples = world
    none = DedupParams(
        exact_pixels=False, phash=False, copy_embedding=False, url_caption=False,
        text_exact=False, text_minhash=False,
    )  # fmt: skip
    assert find_duplicates(sigs, samples, none, PRIORITIES).table.num_rows == 0
    tight = DedupParams(phash_max_distance=2, phash_flip=False)
    ids = set(
        find_duplicates(sigs, samples, tight, PRIORITIES).table.column("sample_id").to_pylist()
    )
    assert not ids & {"s5", "s6", "s7", "s8"}
    # a phash match the copy embeddings contradict is dropped by the verification
    contradicted = sigs.set_column(
        sigs.schema.get_field_index("copy_embedding"),
        "copy_embedding",
        pa.array([_vec().tolist() for _ in range(sigs.num_rows)], pa.list_(pa.float16())),
    )
    strict = DedupParams(phash_verify_min_cosine=0.9, copy_embedding=False)
    ids = set(
        find_duplicates(contradicted, samples, strict, PRIORITIES).table["sample_id"].to_pylist()
    )
    assert not ids & {"s5", "s6"}


def test_exempt_sources_are_not_near_matched_among_themselves(world):
    sigs, samples = world
    params = DedupParams(near_duplicate_exempt_sources=("src_a", "src_b"))
    ids = set(find_duplicates(sigs, samples, params, PRIORITIES).table["sample_id"].to_pylist())
    assert {"s1", "s2"} <= ids  # exact pixels still count
    assert {"s3", "s4"} <= ids  # src_c is not exempt
    assert not ids & {"s5", "s6", "s7", "s8"}


def test_keep_policy_is_deterministic_under_shuffling(world):
    sigs, samples = world
    params = DedupParams()
    reference = find_duplicates(sigs, samples, params, PRIORITIES).table
    for seed in range(3):
        order = np.random.default_rng(seed)
        shuffled = find_duplicates(
            sigs.take(order.permutation(sigs.num_rows)),
            samples.take(order.permutation(samples.num_rows)),
            params,
            PRIORITIES,
        ).table
        assert shuffled.equals(reference)


def test_keep_order_resolution_quality_and_id_ties():
    base = _vec()
    sigs = pa.Table.from_pylist(
        [_sig(s, "src", copy=base, size=size) for s, size in
         (("b", (10, 10)), ("a", (10, 10)), ("c", (5, 5)), ("d", (10, 10)))],
        schema=SIGNATURE_SCHEMA,
    )  # fmt: skip
    samples = pa.Table.from_pylist(
        [_sample("a", "src"), _sample("b", "src", quality=0.9), _sample("c", "src", quality=5.0),
         _sample("d", "src", quality=0.1)],
        schema=SAMPLE_SCHEMA,
    )  # fmt: skip

    def kept(order) -> str:
        table = find_duplicates(sigs, samples, DedupParams(keep_order=order), {}).table
        return table.column("kept_sample_id")[0].as_py()

    assert kept(("resolution", "quality")) == "b"  # a, b, d tie on pixels; b has best quality
    assert kept(("quality",)) == "c"
    assert kept(("resolution",)) == "a"  # a, b, d tie: smallest sample_id
    assert kept(()) == "a"
    with pytest.raises(ValueError, match="repeats"):
        DedupParams(keep_order=("quality", "quality"))


def test_compact_samples_reads_only_unified_columns():
    rows = [
        {
            "sample_id": "x",
            "source": "s",
            "origin_uri": "https://e.org/x.jpg",
            "origin_key": "x",
            "images": [{"bytes": make_image_bytes(1, (64, 32)), "path": None},
                       {"bytes": make_image_bytes(2, (40, 40)), "path": None}],
            "texts": [{"user": "Q?", "assistant": "A."}, {"user": None, "assistant": "B."}],
        },
        {"sample_id": "y", "source": "s", "origin_uri": None, "origin_key": "y", "images": [],
         "texts": [{"user": "", "assistant": "only text"}]},
    ]  # fmt: skip
    table = pa.Table.from_pylist(rows, schema=UNIFIED_SCHEMA)
    table = table.append_column("score", pa.array([0.5, None], pa.float64()))
    out = compact_samples(table.to_batches(), quality_column="score")
    assert out.schema == SAMPLE_SCHEMA
    assert out.to_pylist() == [
        {"sample_id": "x", "source": "s", "origin_uri": "https://e.org/x.jpg",
         "text": "Q?\nA.\nB.", "n_images": 2, "max_pixels": 2048, "quality": 0.5,
         "document": False},
        {"sample_id": "y", "source": "s", "origin_uri": None, "text": "only text",
         "n_images": 0, "max_pixels": None, "quality": None, "document": False},
    ]  # fmt: skip


def test_documents_are_deduplicated_per_document_text():
    """Two interleaved documents with the same text and other images are text duplicates; two
    caption pairs with the same caption are not (their images decide)."""
    from fineharbor.core.dedup.clusters import _RANK, TEXT_EXACT, sample_edges
    from fineharbor.core.dedup.params import DedupParams

    text = "A long enough paragraph about the harbour.\n\nAnd another one after the image."
    samples = pa.Table.from_pylist(
        [
            {"sample_id": str(i), "source": "s", "origin_uri": None, "text": text,
             "n_images": 1, "max_pixels": 1, "quality": None, "document": document}
            for i, document in enumerate([True, True, False, False])
        ],
        schema=SAMPLE_SCHEMA,
    )  # fmt: skip
    edges = [e for e in sample_edges(samples, DedupParams()) if e.a.size]
    pairs = {
        (int(a), int(b), int(r)) for e in edges for a, b, r in zip(e.a, e.b, e.rank, strict=True)
    }
    assert (0, 1, _RANK[TEXT_EXACT]) in pairs
    assert not {p for p in pairs if 2 in p[:2] or 3 in p[:2]}


def test_forest_search_finds_the_same_clusters_and_reports_its_recall(world):
    """Above exact_search_limit the copy embeddings go through the k-means forest; with a
    few hundred filler images it is really used, and the report says so with its recall."""
    sigs, samples = world
    filler = [_sig(f"f{k:03d}", "src_c") for k in range(300)]
    sigs = pa.concat_tables([sigs, pa.Table.from_pylist(filler, schema=SIGNATURE_SCHEMA)])
    more = [_sample(f["sample_id"], "src_c") for f in filler]
    samples = pa.concat_tables([samples, pa.Table.from_pylist(more, schema=SAMPLE_SCHEMA)])
    exact = find_duplicates(sigs, samples, DedupParams(), PRIORITIES)
    forest = find_duplicates(
        sigs, samples, DedupParams(exact_search_limit=50, forest_leaf_size=16), PRIORITIES
    )
    assert _clusters(forest.table) == _clusters(exact.table)
    searched = forest.report["vector_search"]
    copy = searched["copy_embedding"]
    assert copy["method"].startswith("kmeans_forest") and copy["vectors"] > 300
    assert copy["recall"] == 1.0 and copy["recall_exact_neighbours"] >= 2
    plain = exact.report["vector_search"]
    assert plain["copy_embedding"]["method"] == "exact" and "recall" not in plain["copy_embedding"]
