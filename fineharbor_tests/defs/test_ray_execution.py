"""engine: ray gives the same partitions as the local engine, computed on a Ray cluster.

A one-node Ray cluster with two CPU slots and one logical GPU (model actors ask for half of it
each) is started on loopback for the session (the ``ray_address`` fixture of conftest.py;
skipped when ray is not installed: `pip install -e '.[ray]'`)."""

import os
from pathlib import Path

import dagster as dg
import numpy as np
import pyarrow.compute as pc
import pytest

from fineharbor.core.pipeline import CLEANED, DECONTAMINATED, RAW, SCORED, SIGNATURES, UNIFIED
from fineharbor.core.quality.stage import build_scored_samples
from fineharbor.core.signatures.build import build_image_signatures
from fineharbor.core.signatures.embedders import build_embedders
from fineharbor.defs.partitions import source_partitions
from fineharbor.defs.resources import FineharborProject
from fineharbor_tests.defs.pipeline import CONFIG, materialize

pytestmark = pytest.mark.slow

ray = pytest.importorskip("ray")

PARTITIONS = ["charts"]  # 7 records: one unmappable, the rest cleaned and signed
STAGES = [RAW, UNIFIED, CLEANED, SIGNATURES]


def _rows(storage, asset, partition, kind="data"):
    """Each stage's rows as (key..., reason) sorted: what must not depend on the engine."""
    table = storage.read_table(asset, partition, kind=kind)
    if kind == "rejects":
        return sorted(
            zip(*(table.column(c).to_pylist() for c in ("sample_id", "reason")), strict=True)
        )
    keys = ["sample_id", "image_index"] if "image_index" in table.column_names else ["sample_id"]
    return sorted(zip(*(table.column(c).to_pylist() for c in keys), strict=True))


def test_ray_matches_local(project, ray_address, tmp_path, tiny_sscd):
    """Unified, cleaned, signatures (hashes, then a model) and scored partitions on Ray equal the
    local ones, rows, rejects and reasons; the work ran in Ray's worker processes."""
    config = Path(project.config_path).with_name("fineharbor_ray.yaml")
    config.write_text(
        CONFIG + f"execution: {{engine: ray, address: '{ray_address}', batch_rows: 3, "
        "cpu_actors: 2, gpu_actors: 2, gpus_per_actor: 0.5, stages: [unified_samples, cleaned_samples, "
        "image_signatures, scored_samples]}\n"
    )
    (tmp_path / "ray_home").mkdir()
    on_ray = FineharborProject(config_path=str(config), home=str(tmp_path / "ray_home"))
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(source_partitions.name, PARTITIONS)
        for partition in PARTITIONS:
            assert materialize(project, instance, partition).success
            assert materialize(on_ray, instance, partition).success
        event = instance.get_latest_materialization_event(dg.AssetKey(CLEANED))
        metadata = event.asset_materialization.metadata
        signed = instance.get_latest_materialization_event(dg.AssetKey(SIGNATURES))
        signed_metadata = signed.asset_materialization.metadata
    local, remote = project.storage, on_ray.storage
    for asset in STAGES:
        for partition in PARTITIONS:
            for kind in ("data", "rejects"):
                assert _rows(local, asset, partition, kind) == _rows(
                    remote, asset, partition, kind
                ), (asset, partition, kind)
    # Same rows in the same order, column for column (cleaning re-encodes images identically).
    for asset in (UNIFIED, CLEANED):
        assert local.read_table(asset, "charts").equals(remote.read_table(asset, "charts"))
    signatures = remote.read_table(SIGNATURES, "charts")
    assert pc.all(pc.is_valid(signatures.column("sha256_pixels"))).as_py()
    # The work ran in Ray's worker processes, in more than one unit; the driver only wrote.
    assert metadata["engine"].value == "ray"
    assert metadata["ray_units"].value == 2  # 6 unified rows in units of 3
    for meta in (metadata, signed_metadata):
        workers = meta["ray_worker_ids"].value.split(", ")
        assert workers and all(not w.endswith(f":{os.getpid()}") for w in workers)
    assert signed_metadata["engine"].value == "ray" and signed_metadata["rows_in"].value == 6
    # scored_samples (CLIP and classifier; the judge stays local) over the cleaned rows.
    reports = []
    for config, storage in ((project.config, local), (on_ray.config, remote)):
        # a decided stage stores its ids only (core/stored.py)
        ids = storage.read_table(CLEANED, "charts", columns=["sample_id"])
        with storage.writer(DECONTAMINATED, "charts", ids.schema) as writer:
            writer.write(ids)
        reports.append(build_scored_samples(config, "charts", storage)[0])
    assert local.read_table(SCORED, "charts").equals(remote.read_table(SCORED, "charts"))
    assert reports[0].extra == {} and reports[1].extra["engine"] == "ray"
    assert reports[1].conserved and reports[1].kept == 6
    # A model stage: the copy-detection embedder (a tiny TorchScript file) loads in each actor.
    vectors, reports = [], []
    for config, storage in ((project.config, local), (on_ray.config, remote)):
        params = config.stages.signatures.model_copy(
            update={"sscd_path": str(tiny_sscd), "num_workers": 0}
        )
        config = config.model_copy(
            update={"stages": config.stages.model_copy(update={"signatures": params})}
        )
        embedders = build_embedders(params) if storage is local else ()  # Ray actors load theirs
        reports.append(build_image_signatures(config, "charts", storage, embedders=embedders))
        table = storage.read_table(SIGNATURES, "charts")
        vectors.append(np.asarray(table.column("copy_embedding").to_pylist(), dtype=np.float32))
    assert vectors[0].shape == (6, 24) and np.allclose(vectors[0], vectors[1], atol=2e-3)
    assert reports[1].extra["engine"] == "ray" and reports[1].conserved


DEMO_SOURCES = ["llava_scenes", "wds_captions"]  # a JSON and a WebDataset reader


def test_demo_gives_the_same_samples_on_ray(ray_address, tmp_path, demo_hashes_config):
    """The demo (scale 0.1): every per-source stage up to the signatures keeps and rejects the
    same sample_ids, with the same reasons, on Ray as locally."""
    from fineharbor.core.cleaning.build import build_cleaned_samples
    from fineharbor.core.distributed.params import ExecutionParams
    from fineharbor.core.ingest import build_raw_samples, build_unified_samples
    from fineharbor.core.storage import Storage

    config = demo_hashes_config
    on_ray = config.model_copy(
        update={"execution": ExecutionParams(engine="ray", address=ray_address, batch_rows=16)}
    )
    builders = [
        build_raw_samples,
        build_unified_samples,
        build_cleaned_samples,
        build_image_signatures,
    ]
    homes = {}
    for name, settings in (("local", config), ("ray", on_ray)):
        storage = Storage(str(tmp_path / name))
        for source in DEMO_SOURCES:
            for build in builders:
                report = build(settings, source, storage)
                assert report.conserved, (name, source, report.asset)
                if name == "ray" and build is not build_raw_samples:
                    assert report.extra["engine"] == "ray", report.asset
        homes[name] = storage
    for source in DEMO_SOURCES:
        for asset in STAGES:
            for kind in ("data", "rejects"):
                assert _rows(homes["local"], asset, source, kind) == _rows(
                    homes["ray"], asset, source, kind
                ), (source, asset, kind)
