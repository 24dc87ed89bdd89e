"""The stage table is consistent: what it names exists, and it is in an order that runs."""

import subprocess
import sys
from pathlib import Path

import pyarrow as pa

from fineharbor.core import pipeline
from fineharbor.core.config import StageParams


def test_every_stage_names_a_build_function_and_a_schema_that_exist():
    for stage in pipeline.STAGES:
        assert callable(pipeline.resolve(stage.build)), stage.name
        if stage.schema is not None:
            assert isinstance(pipeline.resolve(stage.schema), pa.Schema), stage.name
        assert ("parquet" in stage.kinds) == stage.has_table, stage.name


def test_every_stage_reads_sections_that_exist():
    for stage in pipeline.STAGES:
        for section in stage.params:
            assert section == "release" or section in StageParams.model_fields, stage.name


def test_stages_come_after_their_upstream_and_their_jobs_after_the_upstreams_jobs():
    names = [s.name for s in pipeline.STAGES]
    assert len(set(names)) == len(names)
    jobs = [j.name for j in pipeline.JOBS]
    for position, stage in enumerate(pipeline.STAGES):
        assert all(u in names[:position] for u in stage.upstream), stage.name
        # a job runs after the jobs of the stages it reads
        upstream_jobs = {pipeline.stage(u).job for u in stage.upstream}
        assert all(jobs.index(j) <= jobs.index(stage.job) for j in upstream_jobs), stage.name


def test_a_per_source_job_holds_only_per_source_stages():
    assert [pipeline.per_partition(j.name) for j in pipeline.JOBS] == [
        True,
        False,
        True,
        False,
        True,
        False,
    ]


def test_the_definitions_load_without_torch_or_the_stage_modules_that_need_it():
    code = (
        "import sys, fineharbor.definitions\n"
        "assert 'torch' not in sys.modules\n"
        "assert 'fineharbor.core.quality.stage' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def test_the_docs_show_the_stage_table_as_it_is():
    docs = Path(__file__).resolve().parents[2] / "docs" / "stages.md"
    assert pipeline.markdown() in docs.read_text()
