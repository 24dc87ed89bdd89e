"""The engine's local path, the unit cut used on Ray, and the execution section's validation."""

import pyarrow as pa
import pyarrow.fs as pafs
import pytest

from fineharbor.core.config import ConfigError, parse_config
from fineharbor.core.distributed.engine import BatchWork, map_partition, partition_units, read_unit
from fineharbor.core.distributed.params import ExecutionParams
from fineharbor.core.pipeline import CLEANED, RAW, SCORED, UNIFIED
from fineharbor.core.storage import Storage

SOURCES = [{"name": "a", "reader": "json", "location": "a.jsonl", "mapping": {"preset": "llava"}}]


def _split_odd(batches):
    for batch in batches:
        table = pa.Table.from_batches([batch])
        odd = pa.array([v % 2 == 1 for v in table.column("n").to_pylist()])
        yield table.filter(odd), table.filter(pa.compute.invert(odd))


def _setup():
    return _split_odd


def _setup_with(offset: int = 0):
    """A stage whose "model" is an offset: loaded by each worker unless handed in."""

    def run(batches):
        for kept, rejected in _split_odd(batches):
            yield kept.set_column(0, "n", pa.compute.add(kept.column("n"), offset)), rejected

    return run


@pytest.fixture
def storage(tmp_path):
    storage = Storage(str(tmp_path))
    schema = pa.schema([("n", pa.int64())])
    with storage.writer("numbers", "a", schema) as writer:
        for start in range(0, 1200, 300):
            writer.write(pa.table({"n": list(range(start, start + 300))}, schema=schema))
    return storage


def test_units_cover_the_partition_in_order(storage):
    units = partition_units(storage, "numbers", "a", rows=200)
    assert all(u.length <= 200 for u in units)
    assert len({u.row_group for u in units}) > 1  # slices never span a row group
    values = [
        v
        for u in units
        for batch in read_unit(pafs.LocalFileSystem(), u, ["n"], batch_size=64)
        for v in batch.column("n").to_pylist()
    ]
    assert values == list(range(1200))
    with pytest.raises(FileNotFoundError, match="materialize it first"):
        partition_units(storage, "numbers", "missing", rows=200)


def test_local_engine_maps_every_batch_and_counts_progress(storage):
    seen = []
    mapped = map_partition(
        ExecutionParams(),
        storage,
        "numbers",
        "a",
        BatchWork("numbers", _setup),
        batch_size=100,
        progress=seen.append,
    )
    pairs = list(mapped)
    assert sum(k.num_rows for k, _ in pairs) == 600 and sum(r.num_rows for _, r in pairs) == 600
    assert sum(seen) == 1200 and mapped.info == {}


def test_execution_section_is_validated(tmp_path):
    config = parse_config(
        {"sources": SOURCES, "execution": {"engine": "ray", "gpus_per_actor": 0.25}}, tmp_path
    )
    assert config.execution.on_ray(CLEANED) and config.execution.gpus_per_actor == 0.25
    assert not parse_config({"sources": SOURCES}, tmp_path).execution.on_ray(CLEANED)
    with pytest.raises(ConfigError, match=r"execution\.engine"):
        parse_config({"sources": SOURCES, "execution": {"engine": "spark"}}, tmp_path)
    with pytest.raises(ConfigError, match=r"execution\.stages"):
        parse_config({"sources": SOURCES, "execution": {"stages": [RAW]}}, tmp_path)


def test_scoring_on_ray_refuses_a_judge(tmp_path):
    ray_scoring = {"engine": "ray", "stages": [SCORED]}
    assert parse_config({"sources": SOURCES, "execution": ray_scoring}, tmp_path)
    judged = {"judge": {"backend": "openai", "base_url": "http://127.0.0.1:1/v1"}}
    with pytest.raises(ConfigError, match="judgment cache is one local SQLite file"):
        parse_config({"sources": SOURCES, "execution": ray_scoring, "stages": judged}, tmp_path)


def test_models_loaded_here_reach_setup_in_process_only(storage):
    work = BatchWork(UNIFIED, _setup_with, models={"offset": 1000})
    assert work.without_models().models is None
    here = map_partition(ExecutionParams(), storage, "numbers", "a", work, batch_size=300)
    assert min(v for k, _ in here for v in k.column("n").to_pylist()) == 1001
    pooled = ExecutionParams(local_engines={UNIFIED: "process_pool"})
    work = BatchWork(UNIFIED, _setup_with, models={"offset": 1000})
    workers = map_partition(pooled, storage, "numbers", "a", work, batch_size=300)
    assert min(v for k, _ in workers for v in k.column("n").to_pylist()) == 1  # their own
