"""The project resource (the validated config, the storage root), the run's warm worker pools
and the embedder resource. Models and worker pools live as long as the resource that loaded
them (a run); core receives them as arguments."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path
from typing import Any

import dagster as dg
import duckdb
from dagster_duckdb import DuckDBResource
from pydantic import Field, PrivateAttr

from fineharbor.core.catalog import StageTable, configure
from fineharbor.core.config import (
    ProjectConfig,
    default_config_path,
    fineharbor_home,
    fineharbor_state,
    is_uri,
    load_config,
)
from fineharbor.core.distributed.pool import WorkerPools
from fineharbor.core.pipeline import table_stages
from fineharbor.core.signatures.params import SignatureParams
from fineharbor.core.storage import Storage


class FineharborProject(dg.ConfigurableResource):
    """Where the project file is, where data lives and where process-local state lives.

    Empty fields resolve when a run starts, from FINEHARBOR_CONFIG / FINEHARBOR_HOME /
    FINEHARBOR_STATE (defaults: ./fineharbor.yaml, ./.fineharbor, and the home itself when it
    is a directory, else ./.fineharbor), so one code location serves any environment. `home`
    may be an object-store URI (``s3://bucket/prefix``); `state` is always a local directory.
    """

    config_path: str = ""
    home: str = ""
    state: str = ""
    duckdb_config: dict[str, Any] = Field(
        default_factory=dict,
        description="DuckDB settings for every connection the assets open (e.g. "
        "{memory_limit: 4GB, threads: 4} when several steps run side by side); DuckDB's "
        "defaults (80% of RAM, every core) otherwise",
    )

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        # A run start is where a killed run's debris goes: Storage.clean_staging takes only
        # staging whose writer is dead (its lock is free), so concurrent runs keep theirs.
        removed = self.storage.clean_staging()
        if removed and context.log is not None:
            context.log.info(f"removed {len(removed)} staging leftovers of dead runs: {removed}")

    def duckdb(self, database: str = ":memory:") -> DuckDBResource:
        """dagster-duckdb's resource for one database: it retries while another process holds
        the file (a user's duckdb CLI on the catalog) and applies ``duckdb_config``."""
        return DuckDBResource(database=database, connection_config=self.duckdb_config)

    @contextmanager
    def duckdb_connection(self, database: str = ":memory:") -> Iterator[duckdb.DuckDBPyConnection]:
        """A connection that reads this project's storage (``s3://`` included)."""
        with self.duckdb(database).get_connection() as connection:
            yield configure(connection, self.storage)

    @property
    def root(self) -> str:
        """The storage root: a resolved local directory or an object-store URI."""
        if not self.home:
            return fineharbor_home()
        return self.home if is_uri(self.home) else str(Path(self.home).resolve())

    @property
    def state_path(self) -> Path:
        """Local state: the catalog file, the judge cache, lock files."""
        return Path(self.state).resolve() if self.state else fineharbor_state(self.root)

    @cached_property
    def config(self) -> ProjectConfig:
        return load_config(self.config_path or default_config_path())

    @cached_property
    def storage(self) -> Storage:
        return Storage(self.root)

    @property
    def catalog_path(self) -> Path:
        return self.state_path / "catalog.duckdb"


# Every stage that writes Parquet, in pipeline order; the catalog exposes each as a view.
STAGE_TABLES = [StageTable(s.name, partitioned=s.per_source) for s in table_stages()]


class WorkerPoolsResource(dg.ConfigurableResource):
    """The process-pool engine's warm pools of a run: cleaning workers load their language
    models once per run, not once per partition; the workers stop when the run ends."""

    _pools: WorkerPools = PrivateAttr(default_factory=WorkerPools)

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        self._pools.close()

    @property
    def pools(self) -> WorkerPools:
        return self._pools


class ModelCache:
    """Models a resource loaded, by config: one set at a time (a changed config replaces it),
    dropped with the resource when the run ends."""

    def __init__(self) -> None:
        self._loaded: dict[tuple[str, str], Any] = {}

    def get(self, kind: str, config: str, load: Callable[[], Any]) -> Any:
        key = (kind, config)
        if key not in self._loaded:
            for stale in [k for k in self._loaded if k[0] == kind]:
                del self._loaded[stale]
            self._loaded[key] = load()
        return self._loaded[key]

    def clear(self) -> None:
        self._loaded.clear()


class EmbedderResource(dg.ConfigurableResource):
    """Copy-detection and CLIP embedders, loaded once per run and shared by its partitions.

    The models are whatever `stages.signatures` in the project file names; they pick CUDA and
    half precision when a GPU is present.
    """

    _models: ModelCache = PrivateAttr(default_factory=ModelCache)

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        self._models.clear()

    def embedders(self, params: SignatureParams) -> list:
        from fineharbor.core.signatures.embedders import build_embedders

        return self._models.get(
            "embedders", params.model_dump_json(), lambda: build_embedders(params)
        )
