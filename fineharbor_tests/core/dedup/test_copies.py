"""Copies a user calls copies, with hash signals only: every transformed copy of a photo shares
its original's cluster; photos of the same objects from another angle never do.

The photo set comes from :mod:`fineharbor.testing.copies` (textured scenes, several sizes,
each transform of the issue, other-angle photos) and goes through the real stage functions:
``compute_signatures`` (no model), ``find_duplicates`` with the stage defaults minus the copy
embedding, and pixel verification streamed from the same batches.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from fineharbor.core.dedup import DedupParams, compact_samples, find_duplicates
from fineharbor.core.dedup.clusters import cap_per_item
from fineharbor.core.dedup.verify import (
    PairVerifier,
    Thresholds,
    align,
    batches_thumbnail_loader,
    thumbnail_from_bytes,
    verify_stacks,
)
from fineharbor.core.signatures import SignatureParams, compute_signatures
from fineharbor.testing.copies import (
    COPIES,
    ORIGINAL,
    OTHER_ANGLE,
    copy_set,
    score_clusters,
    write_copy_set,
)

HASH_ONLY = {"copy_embedding": False, "phash_verify_min_cosine": None}


@pytest.fixture(scope="module")
def photos():
    files = copy_set(scenes=5, seed=3, scale=0.7)
    batch = pa.RecordBatch.from_pylist(
        [
            {
                "sample_id": f.name,
                "source": "photos",
                "origin_uri": None,
                "origin_key": f.name,
                "images": [{"bytes": f.data, "path": f.name}],
                "texts": [],
            }
            for f in files
        ]
    )
    signatures = pa.concat_tables(
        list(compute_signatures([batch], SignatureParams(num_workers=0, batch_size=32)))
    )
    return {
        "files": files,
        "signatures": signatures,
        "samples": compact_samples([batch]),
        "loader": batches_thumbnail_loader(lambda: iter([batch])),
    }


def _clusters(photos, **params):
    return find_duplicates(
        photos["signatures"],
        photos["samples"],
        DedupParams(**{**HASH_ONLY, **params}),
        {},
        thumbnails=photos["loader"],
    )


def test_every_copy_joins_its_original_and_no_two_photos_merge(photos):
    clusters, report = _clusters(photos)
    cluster_of = dict(
        zip(
            clusters.column("sample_id").to_pylist(),
            clusters.column("cluster_id").to_pylist(),
            strict=True,
        )
    )
    scores = score_clusters(photos["files"], cluster_of)
    assert set(scores) == {*COPIES, OTHER_ANGLE}
    for transform in COPIES:
        assert scores[transform]["recall"] == 1.0, (transform, scores[transform])
        assert scores[transform]["wrong_pairs"] == 0, (transform, scores[transform])
    assert scores[OTHER_ANGLE]["wrong_pairs"] == 0
    phash = report["candidates"]["phash"]
    assert phash["proposed"] >= phash["verified"] > 0
    assert phash["verified"] + phash["refuted"] + phash["capped"] == phash["proposed"]
    assert report["verification"]["passed_full_frame"] > 0


def test_rotated_copies_are_candidates_only_through_the_turned_hashes(photos):
    without = _clusters(photos, phash_rotations=False).table
    members = set(without.column("sample_id").to_pylist())
    rotated = {f.name for f in photos["files"] if f.transform in ("rot90", "rot270")}
    assert not rotated & members


def test_verification_refuses_other_angles_even_when_proposed(photos):
    """Every other-angle photo against its scene's original, as if a loose hash had proposed
    it: the pixels refute it; every copy against its original passes."""
    files = photos["files"]
    original = {f.scene: f for f in files if f.transform == ORIGINAL}
    for f in files:
        if f.transform == ORIGINAL:
            continue
        a = thumbnail_from_bytes(original[f.scene].data, 64)
        b = thumbnail_from_bytes(f.data, 64)
        ncc, worst = align(a, b)
        passed = ncc >= Thresholds().min_ncc and worst <= Thresholds().max_tile_residual
        assert passed == (f.transform != OTHER_ANGLE), (f.name, ncc, worst)


def test_verdicts_do_not_depend_on_batching_or_workers(photos):
    files = photos["files"]
    thumbs = {(f.name, 0): thumbnail_from_bytes(f.data, 64) for f in files}
    names = sorted(thumbs)
    pairs = [(names[k], names[(k * 7 + 3) % len(names)]) for k in range(len(names))]
    pairs = [(a, b) for a, b in pairs if a != b][:30]

    def run(batch_size: int, workers: int) -> list[bool]:
        verifier = PairVerifier(
            lambda keys: {k: thumbs[k] for k in keys}, batch_size=batch_size, workers=workers
        )
        return verifier.check(pairs)

    one_by_one = run(1, 1)
    assert run(64, 1) == one_by_one
    assert run(4, 2) == one_by_one  # 8 batches: a pool of 2 spawned workers
    calls = []

    def mapper(function, jobs):  # what a distributed engine's map does, in process
        calls.append(len(jobs))
        return [function(*job) for job in jobs]

    mapped = PairVerifier(lambda keys: {k: thumbs[k] for k in keys}, batch_size=8, mapper=mapper)
    assert mapped.check(pairs) == one_by_one
    assert calls == [4]
    stacked = verify_stacks(
        np.stack([thumbs[a].pixels for a, _ in pairs]),
        np.stack([thumbs[b].pixels for _, b in pairs]),
        np.array([[thumbs[a].aspect, thumbs[b].aspect] for a, b in pairs]),
    )[0]
    assert stacked.tolist() == one_by_one


def test_cap_keeps_each_items_most_similar_pairs():
    # item 0 is a hub with 10 candidates of falling similarity; 1-10 have only the hub
    i = np.zeros(10, np.int64)
    j = np.arange(1, 11, dtype=np.int64)
    sim = np.linspace(1.0, 0.9, 10).astype(np.float32)
    (ki, _, _), dropped = cap_per_item((i, j, sim), 3)
    # every pair is its other end's only candidate: all stay
    assert dropped == 0 and ki.size == 10
    # a clique of 6: each item keeps its 2 most similar; a pair stays if either end keeps it
    a, b = np.triu_indices(6, 1)
    sim = (1.0 - 0.01 * (a + b)).astype(np.float32)
    (ka, kb, _), dropped = cap_per_item((a.astype(np.int64), b.astype(np.int64), sim), 2)
    assert dropped == 15 - ka.size > 0
    assert ka.size <= 2 * 6  # the bound: cap x items, however dense the neighbourhood
    assert (0, 1) in set(zip(ka.tolist(), kb.tolist(), strict=True))


def test_the_cap_is_reported_when_it_cuts(photos):
    report = _clusters(photos, phash_max_distance=32, max_candidates_per_item=2).report
    assert report["max_candidates_per_item"] == 2
    assert report["candidates"]["phash"]["capped"] > 0


def test_the_set_is_written_as_an_image_only_folder_with_its_truth_beside_it(tmp_path):
    files = copy_set(scenes=1, seed=0, scale=0.2, transforms=("flip", "rot90"))
    truth = write_copy_set(tmp_path / "photos", files)
    assert sorted(p.name for p in (tmp_path / "photos").iterdir()) == sorted(f.name for f in files)
    rows = [json.loads(line) for line in truth.read_text().splitlines()]
    assert [r["transform"] for r in rows] == [ORIGINAL, "flip", "rot90", OTHER_ANGLE, OTHER_ANGLE]
    assert copy_set(scenes=1, seed=0, scale=0.2, transforms=("flip", "rot90")) == files
