"""The Dagster asset graph pinned: the stage table generates it, and must generate exactly this.

The expected values were taken from the hand-written definitions before the stage table
(`fineharbor/core/pipeline.py`) replaced them; a change here is a change of the graph users see.
"""

import dagster as dg

from fineharbor.defs.automation import STAGE_PARAMS
from fineharbor.defs.jobs import ASSETS, JOBS, PIPELINE, stage_resources
from fineharbor.defs.resources import STAGE_TABLES
from fineharbor.defs.sensors import source_sensor

ASSET_ORDER = [
    "raw_samples",
    "unified_samples",
    "cleaned_samples",
    "image_signatures",
    "duplicate_clusters",
    "benchmark_index",
    "deduplicated_samples",
    "decontaminated_samples",
    "quality_classifier",
    "scored_samples",
    "concept_clusters",
    "release_mix",
    "contamination_report",
    "duplicate_matrix",
    "ratings_distribution",
    "rejects_by_reason",
    "release_composition",
    "release_rejects",
    "source_funnel",
    "duckdb_catalog",
]

# code versions of the SQL models (`statistics`) are hashes of their SQL files: not pinned
GRAPH = {
    "raw_samples": {
        "deps": [],
        "group": "ingest",
        "kinds": ["parquet", "python"],
        "pool": None,
        "partitioned": True,
        "code_version": "1",
        "checks": ["rows_conserved", "schema_matches", "unique_sample_id"],
        "backfill": "BackfillPolicy.multi_run(max_partitions_per_run=4)",
    },
    "unified_samples": {
        "deps": ["raw_samples"],
        "group": "ingest",
        "kinds": ["parquet", "python"],
        "pool": None,
        "partitioned": True,
        "code_version": "1",
        "checks": ["rows_conserved", "schema_matches", "unique_sample_id"],
        "backfill": "BackfillPolicy.multi_run(max_partitions_per_run=4)",
    },
    "cleaned_samples": {
        "deps": ["unified_samples"],
        "group": "clean",
        "kinds": ["parquet", "python"],
        "pool": None,
        "partitioned": True,
        "code_version": "1",
        "checks": ["rows_conserved", "schema_matches", "unique_sample_id"],
        "backfill": "BackfillPolicy.multi_run(max_partitions_per_run=4)",
    },
    "image_signatures": {
        "deps": ["cleaned_samples"],
        "group": "dedup",
        "kinds": ["parquet", "pytorch"],
        "pool": ["gpu"],
        "partitioned": True,
        "code_version": "1",
        "checks": ["rows_conserved", "schema_matches", "unique_sample_id"],
        "backfill": "BackfillPolicy.multi_run(max_partitions_per_run=4)",
    },
    "benchmark_index": {
        "deps": ["cleaned_samples", "image_signatures"],
        "group": "decontam",
        "kinds": ["parquet", "python"],
        "pool": None,
        "partitioned": False,
        "code_version": "1",
        "checks": [],
        "backfill": None,
    },
    "duplicate_clusters": {
        "deps": ["cleaned_samples", "image_signatures"],
        "group": "dedup",
        "kinds": ["parquet", "python"],
        "pool": None,
        "partitioned": False,
        "code_version": "1",
        "checks": [],
        "backfill": None,
    },
    "deduplicated_samples": {
        "deps": ["cleaned_samples", "duplicate_clusters"],
        "group": "dedup",
        "kinds": ["parquet", "python"],
        "pool": None,
        "partitioned": True,
        "code_version": "1",
        "checks": ["rows_conserved", "schema_matches", "unique_sample_id"],
        "backfill": "BackfillPolicy.multi_run(max_partitions_per_run=4)",
    },
    "duplicate_matrix": {
        "deps": ["duplicate_clusters"],
        "group": "statistics",
        "kinds": ["duckdb", "parquet", "sql"],
        "pool": None,
        "partitioned": False,
        "checks": [],
        "backfill": None,
    },
    "decontaminated_samples": {
        "deps": ["benchmark_index", "deduplicated_samples", "image_signatures"],
        "group": "decontam",
        "kinds": ["parquet", "python"],
        "pool": None,
        "partitioned": True,
        "code_version": "1",
        "checks": [
            "contamination_rate_within_limit",
            "rows_conserved",
            "schema_matches",
            "unique_sample_id",
        ],
        "backfill": "BackfillPolicy.multi_run(max_partitions_per_run=4)",
    },
    "contamination_report": {
        "deps": ["decontaminated_samples", "deduplicated_samples", "image_signatures"],
        "group": "statistics",
        "kinds": ["duckdb", "parquet", "sql"],
        "pool": None,
        "partitioned": False,
        "checks": [],
        "backfill": None,
    },
    "quality_classifier": {
        "deps": ["decontaminated_samples"],
        "group": "quality",
        "kinds": ["python", "pytorch"],
        "pool": ["gpu"],
        "partitioned": False,
        "code_version": "1",
        "checks": [],
        "backfill": None,
    },
    "rejects_by_reason": {
        "deps": [
            "cleaned_samples",
            "decontaminated_samples",
            "deduplicated_samples",
            "raw_samples",
            "unified_samples",
        ],
        "group": "statistics",
        "kinds": ["duckdb", "parquet", "sql"],
        "pool": None,
        "partitioned": False,
        "checks": [],
        "backfill": None,
    },
    "source_funnel": {
        "deps": [
            "cleaned_samples",
            "decontaminated_samples",
            "deduplicated_samples",
            "raw_samples",
            "unified_samples",
        ],
        "group": "statistics",
        "kinds": ["duckdb", "parquet", "sql"],
        "pool": None,
        "partitioned": False,
        "checks": [],
        "backfill": None,
    },
    "scored_samples": {
        "deps": ["decontaminated_samples", "quality_classifier"],
        "group": "quality",
        "kinds": ["parquet", "pytorch"],
        "pool": ["gpu"],
        "partitioned": True,
        "code_version": "2",
        "checks": ["rows_conserved", "schema_matches", "unique_sample_id"],
        "backfill": "BackfillPolicy.multi_run(max_partitions_per_run=4)",
    },
    "concept_clusters": {
        "deps": ["image_signatures", "scored_samples"],
        "group": "release",
        "kinds": ["faiss", "parquet"],
        "pool": None,
        "partitioned": False,
        "code_version": "1",
        "checks": [],
        "backfill": None,
    },
    "release_mix": {
        "deps": ["concept_clusters", "scored_samples"],
        "group": "release",
        "kinds": ["duckdb", "parquet"],
        "pool": None,
        "partitioned": False,
        "code_version": "1",
        "checks": [
            "release_holds_no_rejected_or_benchmark_sample",
            "release_size_within_limits",
            "reviewed_sources_only",
            "rows_conserved",
        ],
        "backfill": None,
    },
    "ratings_distribution": {
        "deps": ["release_mix"],
        "group": "statistics",
        "kinds": ["duckdb", "parquet", "sql"],
        "pool": None,
        "partitioned": False,
        "checks": [],
        "backfill": None,
    },
    "release_composition": {
        "deps": ["release_mix"],
        "group": "statistics",
        "kinds": ["duckdb", "parquet", "sql"],
        "pool": None,
        "partitioned": False,
        "checks": [],
        "backfill": None,
    },
    "release_rejects": {
        "deps": ["release_mix"],
        "group": "statistics",
        "kinds": ["duckdb", "parquet", "sql"],
        "pool": None,
        "partitioned": False,
        "checks": [],
        "backfill": None,
    },
    "duckdb_catalog": {
        "deps": [
            "benchmark_index",
            "cleaned_samples",
            "contamination_report",
            "decontaminated_samples",
            "deduplicated_samples",
            "duplicate_clusters",
            "duplicate_matrix",
            "image_signatures",
            "ratings_distribution",
            "raw_samples",
            "rejects_by_reason",
            "release_composition",
            "release_rejects",
            "source_funnel",
            "unified_samples",
        ],
        "group": "catalog",
        "kinds": ["duckdb"],
        "pool": ["duckdb_write"],
        "partitioned": False,
        "code_version": None,
        "checks": [],
        "backfill": None,
    },
}

JOB_SELECTIONS = {
    "per_source_job": ["cleaned_samples", "image_signatures", "raw_samples", "unified_samples"],
    "cross_source_job": ["benchmark_index", "duplicate_clusters"],
    "filter_job": ["decontaminated_samples", "deduplicated_samples"],
    "quality_model_job": ["quality_classifier"],
    "scoring_job": ["scored_samples"],
    "global_job": [
        "concept_clusters",
        "contamination_report",
        "duckdb_catalog",
        "duplicate_matrix",
        "ratings_distribution",
        "rejects_by_reason",
        "release_composition",
        "release_mix",
        "release_rejects",
        "source_funnel",
    ],
}

PIPELINE_ORDER = [
    ("per_source_job", True),
    ("cross_source_job", False),
    ("filter_job", True),
    ("quality_model_job", False),
    ("scoring_job", True),
    ("global_job", False),
]

PARAM_SECTIONS = {
    "raw_samples": ("ingest",),
    "cleaned_samples": ("clean",),
    "image_signatures": ("signatures",),
    "duplicate_clusters": ("dedup",),
    "deduplicated_samples": ("dedup",),
    "benchmark_index": ("decontam", "signatures"),
    "decontaminated_samples": ("decontam",),
    "quality_classifier": ("clip_score", "quality_classifier", "judge"),
    "scored_samples": ("clip_score", "quality_classifier", "judge", "signals"),
    "concept_clusters": ("concepts",),
    "release_mix": ("release", "concepts"),
}

CATALOG_VIEWS = [
    ("raw_samples", True),
    ("unified_samples", True),
    ("cleaned_samples", True),
    ("image_signatures", True),
    ("duplicate_clusters", False),
    ("deduplicated_samples", True),
    ("benchmark_index", False),
    ("decontaminated_samples", True),
    ("scored_samples", True),
    ("concept_clusters", False),
    ("release_mix", False),
]


def _repository() -> dg.RepositoryDefinition:
    return dg.Definitions(
        assets=ASSETS, jobs=JOBS, resources=stage_resources()
    ).get_repository_def()


def _node(graph, key: dg.AssetKey) -> dict:
    node = graph.get(key)
    found = {
        "deps": sorted(k.to_user_string() for k in node.parent_keys),
        "group": node.group_name,
        "kinds": sorted(node.kinds),
        "pool": sorted(node.pools) if node.pools else None,
        "partitioned": node.partitions_def is not None,
        "code_version": node.code_version,
        "checks": sorted(c.name for c in node.check_keys),
        "backfill": str(node.backfill_policy) if node.backfill_policy else None,
    }
    if node.group_name == "statistics":
        assert found.pop("code_version")
    return found


def test_asset_graph_is_the_pinned_one():
    repository = _repository()
    graph = repository.asset_graph
    assert [k.to_user_string() for a in ASSETS for k in a.keys] == ASSET_ORDER
    assert {k.to_user_string(): _node(graph, k) for k in graph.toposorted_asset_keys} == GRAPH


def test_jobs_select_the_pinned_assets_in_the_pinned_order():
    repository = _repository()
    selections = {
        job.name: sorted(
            k.to_user_string()
            for k in repository.get_job(job.name).asset_layer.executable_asset_keys
        )
        for job in JOBS
    }
    assert selections == JOB_SELECTIONS
    assert PIPELINE == PIPELINE_ORDER
    assert source_sensor.job_name == "per_source_job"


def test_staleness_sections_and_catalog_views_are_the_pinned_ones():
    assert STAGE_PARAMS == PARAM_SECTIONS
    assert [(t.asset, t.partitioned) for t in STAGE_TABLES] == CATALOG_VIEWS
