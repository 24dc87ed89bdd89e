"""Dedup quality on the demo's planted duplicates (scale 0.3), without any model.

Pixel hash + phash + mirror phash, candidates verified by pixel alignment: training the demo copy
detector takes minutes, so crops (which a 64-bit DCT hash cannot follow) are measured by
``bench/dedup_quality.py`` instead. The thresholds asserted here are the ones these model-free
signals actually reach at this scale.
"""

from __future__ import annotations

import contextlib
import itertools
import socket

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fineharbor.core.config import load_config
from fineharbor.core.dedup import DedupParams, compact_samples, find_duplicates
from fineharbor.core.dedup.evaluate import evaluate_clusters
from fineharbor.core.dedup.verify import batches_thumbnail_loader
from fineharbor.core.ingest import build_raw_samples, build_unified_samples
from fineharbor.core.pipeline import UNIFIED
from fineharbor.core.signatures import SignatureParams, compute_signatures
from fineharbor.core.storage import Storage
from fineharbor.core.stored import read_stage_rows
from fineharbor.demo import generate_demo, serve_directory
from fineharbor_tests.core.signatures.conftest import TinyCopyNet, save_script

pytestmark = pytest.mark.slow

SCALE = 0.3
GUI_SOURCES = ("gui_aguvis", "gui_android")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    home = tmp_path_factory.mktemp("dedup_demo")
    patch = pytest.MonkeyPatch()
    patch.setenv("FINEHARBOR_HOME", str(home))
    port = _port()
    generate_demo(home, f"http://127.0.0.1:{port}", seed=0, scale=SCALE)
    config = load_config("fineharbor.yaml")
    storage = Storage(str(home))
    names = [s.name for s in config.sources if s.role == "train"]
    for name in names:
        served = (
            serve_directory(home / "demo/sources/laion_urls/_served", port=port)
            if name == "laion_urls"
            else contextlib.nullcontext()
        )
        with served:
            build_raw_samples(config, name, storage)
        build_unified_samples(config, name, storage)
    params = SignatureParams(num_workers=0, batch_size=64)
    signatures = pa.concat_tables(
        [t for n in names for t in compute_signatures(read_stage_rows(storage, UNIFIED, n), params)]
    )
    samples = pa.concat_tables(compact_samples(read_stage_rows(storage, UNIFIED, n)) for n in names)
    thumbnails = batches_thumbnail_loader(
        lambda: itertools.chain.from_iterable(
            read_stage_rows(storage, UNIFIED, n, columns=["sample_id", "images"]) for n in names
        )
    )
    yield {
        "home": home,
        "thumbnails": thumbnails,
        "storage": storage,
        "names": names,
        "signatures": signatures,
        "samples": samples,
        "truth": pq.read_table(home / "demo" / "ground_truth.parquet"),
        "priorities": {s.name: s.priority for s in config.sources},
    }
    patch.undo()


def _params(**overrides) -> DedupParams:
    """Stage defaults without the copy embedding (no model here)."""
    base = {"copy_embedding": False, "near_duplicate_exempt_sources": GUI_SOURCES}
    return DedupParams(**{**base, **overrides})


def test_model_free_signals_find_exact_resize_jpeg_and_flip_copies(demo):
    clusters, dedup_report = find_duplicates(
        demo["signatures"], demo["samples"], _params(), demo["priorities"], demo["thumbnails"]
    )
    present = set(demo["samples"].column("sample_id").to_pylist())
    report = evaluate_clusters(clusters, present, demo["truth"])
    scores = report.by_transform
    assert set(scores) == {"exact", "resize", "jpeg", "crop", "flip"}
    for transform in ("exact", "resize", "jpeg", "flip"):
        assert scores[transform].planted >= 5
        assert scores[transform].recall >= 0.98, (transform, scores[transform].missed)
        assert scores[transform].precision >= 0.99, (transform, scores[transform].wrong)
    assert report.precision >= 0.99, report.false_pairs
    # crops move the content under the 8x8 DCT: phash alone misses them (the copy embedding's job)
    assert scores["crop"].recall < 0.5
    # exact duplicates are found by the pixel hash with similarity 1
    exact = clusters.filter(pa.compute.equal(clusters["signal"], "exact_pixels"))
    assert exact.num_rows >= 2 * scores["exact"].planted
    assert set(exact.column("similarity").to_pylist()) == {1.0}
    verification = dedup_report["verification"]
    assert verification["pairs_checked"] >= verification["pairs_passed"] > 0


def test_rerun_keeps_the_same_members(demo):
    first = find_duplicates(
        demo["signatures"], demo["samples"], _params(), demo["priorities"]
    ).table
    order = pa.array(list(reversed(range(demo["signatures"].num_rows))))
    second = find_duplicates(
        demo["signatures"].take(order), demo["samples"], _params(), demo["priorities"]
    ).table
    assert first.equals(second)
    kept = first.filter(first["is_kept"])
    assert kept.num_rows == len(set(first.column("cluster_id").to_pylist()))


def test_every_image_is_signed_and_broken_ones_carry_an_error(demo):
    signatures = demo["signatures"]
    truth = demo["truth"].to_pylist()
    broken = {r["defect"] for r in truth} & {"corrupt_image", "truncated_image"}
    assert broken
    errors = signatures.filter(pa.compute.is_valid(signatures["error"]))
    assert errors.num_rows >= 1
    assert errors.column("phash").null_count == errors.num_rows
    assert signatures.num_rows == pa.compute.sum(demo["samples"]["n_images"]).as_py() > 0


def test_a_copy_embedding_column_flows_through(demo, tmp_path):
    """The same stage with an SSCD-format model loaded from a file (random weights): embeddings
    are present for every decodable image and find_duplicates accepts them."""
    from fineharbor.core.signatures import SscdEmbedder

    model = save_script(TinyCopyNet(), tmp_path / "tiny.torchscript.pt")
    embedder = SscdEmbedder(model, device="cpu", input_size=64)
    storage = demo["storage"]
    name = demo["names"][0]
    params = SignatureParams(num_workers=0)
    table = pa.concat_tables(
        list(compute_signatures(read_stage_rows(storage, UNIFIED, name), params, [embedder]))
    )
    decodable = table.filter(pa.compute.is_null(table["error"]))
    assert decodable.column("copy_embedding").null_count == 0
    assert len(decodable.column("copy_embedding")[0]) == 24
