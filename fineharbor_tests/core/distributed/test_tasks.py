"""map_tasks: a global stage's tasks in this process or as Ray tasks, with the same results.

The Ray tests run on the loopback cluster of conftest.py's ``ray_address`` (skipped without
ray) and compare the k-means forest's pairs, the benchmark matches and the concept labels
computed in Ray tasks with the local ones, exactly."""

from __future__ import annotations

import io
import os

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image
from pydantic import ValidationError

from fineharbor.core.concepts import ConceptLevel, ConceptParams, hierarchical_kmeans
from fineharbor.core.decontam.index import BENCHMARK_INDEX_SCHEMA
from fineharbor.core.decontam.match import BenchmarkMatcher
from fineharbor.core.decontam.params import DecontamParams
from fineharbor.core.dedup.search import (
    ForestParams,
    cosine_pairs,
    exact_cosine_pairs,
    forest_cosine_pairs,
    leaf_chunks,
)
from fineharbor.core.dedup.verify import PairVerifier, thumbnail
from fineharbor.core.distributed.params import ExecutionParams
from fineharbor.core.distributed.tasks import (
    TaskEngine,
    TaskError,
    map_tasks,
    row_ranges,
    task_mapper,
)
from fineharbor.core.pipeline import CONCEPTS, DECONTAMINATED, DUPLICATES


def scaled(item: int, factor: np.ndarray) -> tuple[int, int, int]:
    return item, int(factor[item % len(factor)] * item), os.getpid()


def fails_on_three(item: int) -> int:
    if item == 3:
        raise ValueError(f"bad item {item}")
    return item


def local(stage: str, task_rows: int = 64) -> TaskEngine:
    return TaskEngine(stage, ExecutionParams(task_rows=task_rows))


def on_ray(stage: str, address: str, task_rows: int = 64) -> TaskEngine:
    return TaskEngine(stage, ExecutionParams(engine="ray", address=address, task_rows=task_rows))


# --------------------------------------------------------------------------- local


def test_local_tasks_run_in_order_in_this_process():
    results = map_tasks(scaled, range(6), engine=local(DUPLICATES), shared=(np.array([2, 3]),))
    assert results == [(i, [2, 3][i % 2] * i, os.getpid()) for i in range(6)]
    assert map_tasks(scaled, [], shared=(np.array([1]),)) == []


def test_a_failing_task_names_the_stage_and_the_task():
    with pytest.raises(TaskError, match=r"concept_clusters: task 4 of 6 .*ValueError: bad item 3"):
        map_tasks(fails_on_three, range(6), engine=local(CONCEPTS))


def test_chunks_cover_every_row_and_leaf_once_in_order():
    assert row_ranges(10, 4) == [(0, 4), (4, 8), (8, 10)] and row_ranges(0, 4) == []
    leaves = [np.arange(n) for n in (3, 3, 9, 1, 2)]
    chunks = leaf_chunks(leaves, 6)
    assert [[len(m) for m in c] for c in chunks] == [[3, 3], [9], [1, 2]]


def test_global_stages_go_to_ray_only_when_listed():
    execution = ExecutionParams(engine="ray", stages=["image_signatures", "duplicate_clusters"])
    assert TaskEngine(DUPLICATES, execution).on_ray
    assert not TaskEngine(CONCEPTS, execution).on_ray
    assert TaskEngine(CONCEPTS, ExecutionParams(engine="ray")).on_ray  # on by default
    assert not TaskEngine(DUPLICATES, ExecutionParams()).on_ray
    with pytest.raises(ValidationError, match="task_rows"):
        ExecutionParams(task_rows=0)


def test_task_mapper_applies_each_argument_tuple_in_order():
    mapper = task_mapper(local(DUPLICATES))
    assert mapper(divmod, [(7, 2), (9, 4), (1, 1)]) == [(3, 1), (2, 1), (1, 0)]


# --------------------------------------------------------------------------- data


def planted_vectors(n: int = 3000, d: int = 32, copies: int = 200, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(np.float32)
    for k in range(copies):  # near copies at cosine ~0.97-0.99
        x[n - 1 - k] = x[k] + rng.standard_normal(d).astype(np.float32) * 0.15
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def benchmark_case(seed: int = 0):
    """A benchmark index of 200 images and 1,500 train signature rows: embedding copies, phash
    copies (some mirrored, some a few bits off), rows without an embedding."""
    rng = np.random.default_rng(seed)
    bench = rng.standard_normal((200, 24)).astype(np.float32)
    bench /= np.linalg.norm(bench, axis=1, keepdims=True)
    hashes = rng.integers(-(2**63), 2**63 - 1, 200, dtype=np.int64)
    index = pa.table(
        {
            "benchmark": ["bench"] * 200,
            "sample_id": [f"b{i}" for i in range(200)],
            "origin_key": [f"k{i}" for i in range(200)],
            "kind": ["image"] * 200,
            "image_index": [0] * 200,
            "phash": hashes,
            "phash_flip": hashes ^ 0xFF00,
            "embedding": pa.array(bench.tolist(), pa.list_(pa.float16())),
            "ngram": pa.nulls(200, pa.int64()),
        },
        schema=BENCHMARK_INDEX_SCHEMA,
    )
    n = 1500
    train = rng.standard_normal((n, 24)).astype(np.float32)
    picked = rng.choice(200, 300)
    train[:300] = bench[picked] + rng.standard_normal((300, 24)).astype(np.float32) * 0.05
    codes = rng.integers(-(2**63), 2**63 - 1, n, dtype=np.int64)
    bits = rng.integers(0, 64, (300, 3))
    near = hashes[picked] ^ np.bitwise_or.reduce(np.left_shift(1, bits).astype(np.int64), axis=1)
    codes[300:600] = near
    codes[600:650] = hashes[rng.choice(200, 50)] ^ 0xFF00  # mirrored copies
    embeddings = train.tolist()
    for row in range(0, n, 7):
        embeddings[row] = None
    signatures = pa.table(
        {
            "sample_id": [f"s{i // 2}" for i in range(n)],  # two images a sample
            "copy_embedding": pa.array(embeddings, pa.list_(pa.float32())),
            "phash": codes,
            "phash_flip": codes ^ 0x0F0F,
        }
    )
    return index, signatures


# --------------------------------------------------------------------------- on Ray

ray_tests = pytest.mark.slow


@ray_tests
def test_ray_tasks_give_the_local_results_in_order(ray_address):
    pytest.importorskip("ray")
    factor = np.array([2, 3])
    engine = on_ray(DUPLICATES, ray_address)
    assert engine.on_ray
    remote = map_tasks(scaled, range(6), engine=engine, shared=(engine.share(factor),))
    assert [r[:2] for r in remote] == [r[:2] for r in map_tasks(scaled, range(6), shared=(factor,))]
    assert all(pid != os.getpid() for *_, pid in remote)  # ran in Ray's worker processes
    with pytest.raises(TaskError, match=r"duplicate_clusters: Ray task 4 of 6 .*bad item 3"):
        map_tasks(fails_on_three, range(6), engine=engine)


@ray_tests
def test_forest_pairs_are_the_same_on_ray(ray_address):
    """The k-means forest's leaves in Ray tasks (as duplicate_clusters passes its engine to the
    search) give the local pairs, exactly."""
    x = planted_vectors()
    forest = ForestParams(trees=3, leaf_size=64)
    here = forest_cosine_pairs(x, 0.9, forest, local(DUPLICATES, 500))
    engine = on_ray(DUPLICATES, ray_address, 500)
    there = cosine_pairs(x, 0.9, exact_limit=100, forest=forest, engine=engine)
    assert engine.summary()["tasks"] > 3
    for a, b in zip(here, there, strict=True):
        np.testing.assert_array_equal(a, b)
    exact = set(zip(*(a.tolist() for a in exact_cosine_pairs(x, 0.9)[:2]), strict=True))
    found = set(zip(here[0].tolist(), here[1].tolist(), strict=True))
    assert len(exact) >= 200 and len(found & exact) >= 0.95 * len(exact)


@ray_tests
def test_benchmark_matches_are_the_same_on_ray(ray_address):
    index, signatures = benchmark_case()
    params = DecontamParams(embedding="copy_embedding")
    here = BenchmarkMatcher(index, params, local(DECONTAMINATED, 128)).match_images(signatures)
    matcher = BenchmarkMatcher(index, params, on_ray(DECONTAMINATED, ray_address, 128))
    there = matcher.match_images(signatures)
    assert here == there
    signals = {m.signal for m in here if m is not None}
    assert signals == {"copy_embedding", "phash"}
    assert sum(m is not None for m in here) >= 500  # of ~600 planted


@ray_tests
def test_concept_labels_are_the_same_on_ray(ray_address):
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(20, 16)) * 6
    x = (centers[rng.integers(0, 20, 3000)] + rng.normal(size=(3000, 16))).astype(np.float32)
    params = ConceptParams(
        levels=[
            ConceptLevel(n_clusters=40, n_resamples=2, sample_size=8),
            ConceptLevel(n_clusters=8, n_resamples=1, sample_size=3),
        ],
        n_iters=10,
    )
    here = hierarchical_kmeans(x, params, local(CONCEPTS, 256))
    there = hierarchical_kmeans(x, params, on_ray(CONCEPTS, ray_address, 256))
    for a, b in zip(here.labels, there.labels, strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(here.distances, there.distances)
    assert here.n_clusters == there.n_clusters == [40, 8]


@ray_tests
def test_concept_clusters_stage_is_the_same_on_ray(ray_address, tmp_path, home):
    """The stage threads ``execution`` to the assignment: its table on Ray equals the local."""
    from fineharbor.core.release.build import build_concept_clusters
    from fineharbor.core.storage import Storage
    from fineharbor.testing.release_input import project, write_input

    storage = Storage(str(home))
    write_input(storage, n_pairs=150, n_chats=30)
    stages = "  concepts:\n    embedding: copy_embedding\n    n_iters: 5\n    levels: [{n_clusters: 12}, {n_clusters: 3}]\n"
    config = project(tmp_path, "", stages)
    here, local_stats = build_concept_clusters(
        config.model_copy(update={"execution": ExecutionParams(task_rows=64)}), storage
    )
    ray_config = config.model_copy(
        update={"execution": ExecutionParams(engine="ray", address=ray_address, task_rows=64)}
    )
    there, stats = build_concept_clusters(ray_config, storage)
    assert here.num_rows == 180 and here.equals(there)
    assert local_stats["task_engine"] == "local" and stats["task_engine"] == "ray"
    assert stats["tasks"] == local_stats["tasks"] >= 3  # 180 items in tasks of 64, per step


def texture(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((160, 120), Image.Resampling.BILINEAR)


def jpeg(image: Image.Image, quality: int = 40) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


@ray_tests
def test_pixel_verification_batches_are_the_same_on_ray(ray_address):
    """duplicate_clusters hands the verification batches to Ray tasks (``verify_mapper``):
    the verdicts are the local ones."""
    thumbs = {}
    for k in range(4):
        thumbs[(f"o{k}", 0)] = thumbnail(texture(k), 64)
        thumbs[(f"c{k}", 0)] = thumbnail(jpeg(texture(k)), 64)
    pairs = [((f"o{k}", 0), (f"c{k}", 0)) for k in range(4)]
    pairs += [((f"o{k}", 0), (f"c{(k + 1) % 4}", 0)) for k in range(4)]

    def loader(keys):
        return {k: thumbs[k] for k in keys}

    here = PairVerifier(loader, batch_size=2).check(pairs)
    engine = on_ray(DUPLICATES, ray_address)
    verifier = PairVerifier(loader, batch_size=2, mapper=task_mapper(engine))
    assert verifier.check(pairs) == here == [True] * 4 + [False] * 4
    assert engine.summary() == {"task_engine": "ray", "tasks": 4}


DEMO_TRAIN = ["llava_scenes", "wds_captions"]


def _decisions(storage, source):
    """The stage's kept ids and its rejects (id, reason, detail), sorted."""
    kept = sorted(storage.read_table(DECONTAMINATED, source, columns=["sample_id"])[0].to_pylist())
    rejects = storage.read_table(DECONTAMINATED, source, kind="rejects")
    return kept, sorted(rejects.select(["sample_id", "reason", "detail"]).to_pylist(), key=str)


@ray_tests
def test_demo_global_stages_are_the_same_on_ray(ray_address, tmp_path, demo_hashes_config):
    """The demo (scale 0.1, hash signals): duplicate clusters, benchmark matches and the
    decontaminated partitions are the same with the global stages on Ray as locally."""
    from fineharbor.core.cleaning.build import build_cleaned_samples
    from fineharbor.core.decontam.build import (
        build_benchmark_index,
        build_decontaminated_samples,
    )
    from fineharbor.core.dedup.build import build_deduplicated_samples, build_duplicate_clusters
    from fineharbor.core.ingest import build_raw_samples, build_unified_samples
    from fineharbor.core.signatures.build import build_image_signatures
    from fineharbor.core.storage import Storage

    config = demo_hashes_config
    storage = Storage(str(tmp_path / "data"))
    for source in [*DEMO_TRAIN, "bench_vqa"]:
        for build in (
            build_raw_samples,
            build_unified_samples,
            build_cleaned_samples,
            build_image_signatures,
        ):
            assert build(config, source, storage).conserved
    results = {}
    for name, execution in (
        ("local", ExecutionParams(task_rows=64)),
        ("ray", ExecutionParams(engine="ray", address=ray_address, task_rows=64)),
    ):
        settings = config.model_copy(update={"execution": execution})
        clusters, stats = build_duplicate_clusters(settings, storage)
        build_benchmark_index(settings, storage)
        decisions, engines = [], {stats["task_engine"]}
        for source in DEMO_TRAIN:
            assert build_deduplicated_samples(settings, source, storage).conserved
            report = build_decontaminated_samples(settings, source, storage)
            assert report.conserved and report.extra["tasks"] > 0
            engines.add(report.extra["task_engine"])
            decisions.append(_decisions(storage, source))
        assert engines == {name}
        results[name] = clusters, decisions
    (local_clusters, local_decisions), (ray_clusters, ray_decisions) = results.values()
    assert local_clusters.num_rows > 0 and local_clusters.equals(ray_clusters)
    assert local_decisions == ray_decisions
    assert any(rejects for _, rejects in local_decisions)
