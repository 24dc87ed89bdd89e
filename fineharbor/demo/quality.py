"""How well the pipeline caught the demo's planted duplicates and benchmark copies, scored
against ``ground_truth.parquet`` from the stages' own outputs (what `fineharbor demo` prints
and the demo test asserts)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from fineharbor.core.config import ProjectConfig
from fineharbor.core.decontam.evaluate import DecontamReport, evaluate_decontamination
from fineharbor.core.dedup.evaluate import QualityReport, evaluate_clusters
from fineharbor.core.pipeline import CLEANED, DECONTAMINATED, DEDUPLICATED, DUPLICATES
from fineharbor.core.storage import REJECTS, Storage


@dataclass
class PlantedDefectScores:
    dedup: QualityReport
    decontam: DecontamReport


def _sample_ids(storage: Storage, asset: str, sources: list[str]) -> set[str]:
    return {
        sample_id
        for source in sources
        if storage.has_partition(asset, source)
        for sample_id in storage.read_table(asset, source, columns=["sample_id"])
        .column("sample_id")
        .to_pylist()
    }


def score_planted_defects(
    config: ProjectConfig, storage: Storage, ground_truth: Path
) -> PlantedDefectScores:
    truth = pq.read_table(ground_truth)
    train = config.role_partitions("train")
    dedup = evaluate_clusters(
        storage.read_table(DUPLICATES), _sample_ids(storage, CLEANED, train), truth
    )
    columns = ["sample_id", "reason", "matched_origin_key"]
    rejects = pa.concat_tables(
        [pa.table({c: pa.array([], pa.string()) for c in columns})]
        + [
            storage.read_table(DECONTAMINATED, source, kind=REJECTS, columns=columns)
            for source in train
            if storage.has_partition(DECONTAMINATED, source, kind=REJECTS)
        ],
        promote_options="default",
    )
    decontam = evaluate_decontamination(_sample_ids(storage, DEDUPLICATED, train), rejects, truth)
    return PlantedDefectScores(dedup, decontam)
