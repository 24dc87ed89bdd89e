"""The project file (``fineharbor.yaml``): sources, stage parameters, release recipe.

Validated with pydantic at load. A bad file raises :class:`ConfigError` naming the file, the
field and the problem, so nothing deep inside a stage ever sees an invalid value. Paths in the
file are relative to the file's directory; ``${VAR}`` and ``${VAR:-default}`` are expanded from
the environment inside string values, after parsing (see ``docs/configuration.md``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal, TypeVar

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from fineharbor.core.cleaning.params import CleanParams
from fineharbor.core.concepts.params import ConceptParams
from fineharbor.core.decontam.params import DecontamParams
from fineharbor.core.dedup.params import DedupParams
from fineharbor.core.distributed.params import ExecutionParams
from fineharbor.core.judge.params import JudgeParams
from fineharbor.core.models import report_missing_models
from fineharbor.core.pipeline import SCORED
from fineharbor.core.quality.params import (
    ClipScoreParams,
    QualityClassifierParams,
    SignalParams,
)
from fineharbor.core.release.params import ReleaseRecipe
from fineharbor.core.signatures.params import SignatureParams
from fineharbor.core.strict import StrictModel

DEFAULT_HOME = ".fineharbor"
DEFAULT_CONFIG = "fineharbor.yaml"
SOURCE_NAME = re.compile(r"\A[a-z0-9][a-z0-9_\-]{0,63}\Z")
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


T = TypeVar("T")
SHARD_MARK = ".shard-"  # source names cannot hold a ".", so a shard key parses unambiguously


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count`` of a source: it reads every ``count``-th file from
    ``index`` on (files sorted), so the shards partition the source's records."""

    index: int
    count: int

    def pick(self, items: Sequence[T]) -> list[T]:
        return list(items[self.index :: self.count])


def shard_partition(name: str, index: int, count: int) -> str:
    return f"{name}{SHARD_MARK}{index:0{max(3, len(str(count - 1)))}d}"


class ConfigError(ValueError):
    """A project file that cannot be used; the message names file, field and problem."""


def is_uri(location: str) -> bool:
    """An object-store URI such as ``s3://bucket/prefix`` (anything else is a local path)."""
    return "://" in location


def fineharbor_home() -> str:
    """The storage root of stage data: ``FINEHARBOR_HOME``, a local directory (resolved) or an
    object-store URI (``s3://bucket/prefix``), default ``./.fineharbor``."""
    home = os.environ.get("FINEHARBOR_HOME", DEFAULT_HOME)
    return home if is_uri(home) else str(Path(home).expanduser().resolve())


def fineharbor_state(home: str | None = None) -> Path:
    """The local directory for process-local state that cannot live on object storage: the
    Dagster instance, ``catalog.duckdb``, the judge cache, lock files, the demo's sources and
    models. ``FINEHARBOR_STATE``, else the storage root ``home`` when it is local, else
    ``./.fineharbor`` in the working directory."""
    state = os.environ.get("FINEHARBOR_STATE")
    if state:
        return Path(state).expanduser().resolve()
    home = fineharbor_home() if home is None else home
    return Path(DEFAULT_HOME if is_uri(home) else home).expanduser().resolve()


def default_config_path() -> Path:
    return Path(os.environ.get("FINEHARBOR_CONFIG", DEFAULT_CONFIG)).expanduser().resolve()


# --------------------------------------------------------------------------- mapping


class MappingSpec(StrictModel):
    """How a source's records become unified samples.

    A preset fills the field paths for a known layout; any field given here overrides it.
    Paths are dotted (``meta.caption``) and may index lists (``turns.0.text``).
    """

    preset: (
        Literal["finevision", "cauldron", "llava", "laion", "webdataset_caption", "interleaved"]
        | None
    ) = None
    images: str | None = Field(None, description="field holding image references or structs")
    texts: str | None = Field(None, description="list of {user, assistant} turns")
    conversations: str | None = Field(None, description="ShareGPT list of {from, value}")
    question: str | None = None
    answer: str | None = None
    caption: str | None = None
    user_prompt: str = Field("", description="user turn for caption pairs")
    origin_key: str | None = Field(None, description="field used as origin key (default file:row)")
    role_field: str = "from"
    content_field: str = "value"
    user_roles: tuple[str, ...] = ("human", "user")
    assistant_roles: tuple[str, ...] = ("gpt", "assistant", "bot")
    image_placeholder: str = "<image>"

    @property
    def image_only(self) -> bool:
        """No text rule: samples carry images and ``texts: []`` (pretraining pools, screenshot
        dumps, class-labelled folders)."""
        return self.preset is None and not (
            self.texts or self.conversations or self.caption or (self.question and self.answer)
        )

    @model_validator(mode="after")
    def _has_text_rule(self) -> MappingSpec:
        if (self.question is None) != (self.answer is None):
            raise ValueError("question and answer must be given together")
        if self.image_only and self.user_prompt:
            raise ValueError(
                "user_prompt is set but there is no text rule (a preset, texts, conversations, "
                "caption, or question + answer); an image-only source needs neither"
            )
        return self


# --------------------------------------------------------------------------- sources


class _SourceBase(StrictModel):
    name: str
    location: str = Field(description="file, directory or glob; relative to the config file")
    mapping: MappingSpec = Field(
        default_factory=MappingSpec, description="omitted: image-only samples (texts: [])"
    )
    role: Literal["train", "benchmark"] = "train"
    priority: int = Field(0, description="higher wins when duplicates across sources are resolved")
    license: str = "unknown"
    batch_size: int = Field(256, ge=1, le=65536)
    shards: int = Field(
        1,
        ge=1,
        le=4096,
        description="split the source into this many partitions (`<name>.shard-NNN`), each "
        "reading every shards-th file, so one source's backfill runs in parallel",
    )
    follow_symlinks: bool = Field(
        False,
        description="read files whose real path lies outside the source's location (sources "
        "built from links); off: such a link is a path_outside_source reject",
    )

    @property
    def partitions(self) -> list[str]:
        """The source's partition keys: its name, or one key per shard."""
        if self.shards == 1:
            return [self.name]
        return [shard_partition(self.name, i, self.shards) for i in range(self.shards)]

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        if not SOURCE_NAME.match(value):
            raise ValueError(
                f"{value!r} is not a valid source name: use lowercase letters, digits, '_' "
                "or '-', starting with a letter or digit (it becomes a partition key and a path)"
            )
        return value


class HfParquetSource(_SourceBase):
    """Hugging Face `datasets` Parquet layout (Cauldron, FineVision)."""

    reader: Literal["hf_parquet"]


class JsonSource(_SourceBase):
    """JSON array or JSONL records (LLaVA / ShareGPT) with images in a directory."""

    reader: Literal["json"]
    image_root: str | None = Field(None, description="directory image paths are relative to")


class WebDatasetSource(_SourceBase):
    """WebDataset .tar/.tar.gz/.tgz shards: members grouped by key and decoded by extension
    as the webdataset package does (images, .txt, .json, .cls, .gz members)."""

    reader: Literal["webdataset"]


class _DownloadingSource(_SourceBase):
    """A source whose images may be URLs: downloaded into the kept store (docs/downloads.md)."""

    allow_private_addresses: bool = Field(
        False, description="allow loopback/private/link-local hosts (off: SSRF protection)"
    )
    refetch_failed: bool = Field(
        True, description="re-run URLs whose last fetch failed (off: reuse the kept failure)"
    )
    max_age_days: float | None = Field(
        None,
        gt=0,
        description="re-fetch a kept download older than this (None: kept downloads never expire)",
    )


class UrlListSource(_DownloadingSource):
    """LAION-style URL lists (Parquet, CSV, TSV or JSONL); images are downloaded."""

    reader: Literal["url_list"]
    url_column: str = "url"


class ImageFolderSource(_SourceBase):
    """A directory of images (found by content), with or without sidecar caption files (same
    stem, .txt and/or .json); every other file is a reject with a reason."""

    reader: Literal["image_folder"]


class InterleavedSource(_DownloadingSource):
    """Interleaved image-text documents: OBELICS / MINT-1T HTML Parquet (``images`` and
    ``texts`` aligned lists, ``metadata``), MINT-style JSONL, or MINT-1T PDF/ArXiv WebDataset
    shards; image URLs are downloaded like a URL list's; kept in document order
    (``segments``) and released in the OBELICS layout (docs/sources.md)."""

    reader: Literal["interleaved"]
    image_root: str | None = Field(None, description="directory image paths are relative to")
    mapping: MappingSpec = Field(
        default_factory=lambda: MappingSpec(preset="interleaved"),
        description="always the interleaved preset (origin_key may be set)",
    )

    @field_validator("mapping")
    @classmethod
    def _interleaved_mapping(cls, mapping: MappingSpec) -> MappingSpec:
        if mapping.image_only:
            return mapping.model_copy(update={"preset": "interleaved"})
        if mapping.preset != "interleaved":
            raise ValueError(
                "an interleaved source maps its documents itself: leave mapping out or set "
                "preset: interleaved (origin_key may be given)"
            )
        return mapping


class HfDatasetSource(_SourceBase):
    """`datasets.load_dataset` by name (Hub) or by builder + data files (local)."""

    reader: Literal["hf_dataset"]
    location: str = Field(description="Hub name, local dataset dir, or builder ('parquet', 'json')")
    data_files: list[str] | None = None
    subset: str | None = None
    split: str = "train"


SourceConfig = Annotated[
    HfParquetSource
    | JsonSource
    | WebDatasetSource
    | UrlListSource
    | ImageFolderSource
    | HfDatasetSource
    | InterleavedSource,
    Field(discriminator="reader"),
]

# --------------------------------------------------------------------------- stage parameters


class DownloadParams(StrictModel):
    """img2dataset-style downloader settings."""

    concurrency: int = Field(32, ge=1, le=4096)
    timeout_s: float = Field(10.0, gt=0)
    retries: int = Field(2, ge=0, le=10)
    backoff_s: float = Field(0.5, ge=0)
    max_bytes: int = Field(32 * 1024 * 1024, ge=1024)
    max_redirects: int = Field(5, ge=0, le=20)
    user_agent: str = "fineharbor/0.1 (+https://github.com/fineharbor/fineharbor)"
    honour_noai: bool = Field(True, description="skip X-Robots-Tag noai / noimageai responses")


class IngestParams(StrictModel):
    download: DownloadParams = DownloadParams()
    max_image_bytes: int = Field(
        64 * 1024 * 1024, ge=1024, description="larger local image files are rejected unread"
    )
    max_record_bytes: int = Field(
        4 * 1024 * 1024,
        ge=1024,
        description="larger text sidecars, tar text members and JSON lines are rejected unread "
        "(record_too_large)",
    )


class StageParams(StrictModel):
    """Every stage's thresholds, each defaulting to its paper's value."""

    ingest: IngestParams = IngestParams()
    clean: CleanParams = CleanParams()
    signatures: SignatureParams = SignatureParams()
    dedup: DedupParams = DedupParams()
    decontam: DecontamParams = DecontamParams()
    judge: JudgeParams = JudgeParams()
    concepts: ConceptParams = ConceptParams()
    clip_score: ClipScoreParams = ClipScoreParams()
    quality_classifier: QualityClassifierParams = QualityClassifierParams()
    signals: SignalParams = SignalParams()


class OrchestrationParams(StrictModel):
    """How Dagster groups work into runs (read when the definitions load)."""

    partitions_per_run: int = Field(
        4,
        ge=1,
        le=1000,
        description="source partitions one backfill run of a per-source stage materializes: "
        "each run pays a fixed start-up cost (process, imports, models), so a few partitions "
        "per run amortise it while a failure still costs only that run's partitions",
    )


class ProjectConfig(StrictModel):
    name: str = "fineharbor"
    sources: list[SourceConfig]
    stages: StageParams = StageParams()
    release: ReleaseRecipe = ReleaseRecipe()
    orchestration: OrchestrationParams = OrchestrationParams()
    execution: ExecutionParams = ExecutionParams()

    @field_validator("sources", mode="before")
    @classmethod
    def _none_is_empty(cls, sources: object) -> object:
        return [] if sources is None else sources  # `sources:` with nothing under it

    @field_validator("sources")
    @classmethod
    def _unique_names(cls, sources: list) -> list:
        seen: set[str] = set()
        for source in sources:
            if source.name in seen:
                raise ValueError(f"source name {source.name!r} is used twice")
            seen.add(source.name)
        return sources

    @model_validator(mode="after")
    def _judge_stays_local(self) -> ProjectConfig:
        if self.execution.on_ray(SCORED) and self.stages.judge.backend != "none":
            raise ValueError(
                "execution.stages: scored_samples runs on Ray only with stages.judge.backend "
                "none (the judgment cache is one local SQLite file); drop it from the list to "
                "judge locally"
            )
        return self

    @model_validator(mode="after")
    def _faces_for_blurring(self) -> ProjectConfig:
        if self.release.blur_faces and not self.stages.signals.faces:
            raise ValueError(
                "release.blur_faces needs the face boxes that stages.signals.faces: true stores "
                "on scored_samples"
            )
        return self

    def clean_params(self) -> CleanParams:
        """``stages.clean`` as the cleaning stage runs it: ``web_pair_sources`` completed with
        the project's web caption sources (what ``web_pair_rules: auto`` applies to)."""
        clean = self.stages.clean
        names = list(
            dict.fromkeys(
                [*clean.web_pair_sources, *(s.name for s in self.sources if is_web_caption(s))]
            )
        )
        if names == clean.web_pair_sources:
            return clean
        return clean.model_copy(update={"web_pair_sources": names})

    def source(self, name: str) -> SourceConfig:
        """The source named ``name``, or the source a partition key (a shard) belongs to."""
        base = name.split(SHARD_MARK)[0]
        for source in self.sources:
            if source.name == base and name in (base, *source.partitions):
                return source
        known = ", ".join(s.name for s in self.sources) or "none"
        raise KeyError(f"no source or partition {name!r} in the config (configured: {known})")

    def shard(self, partition: str) -> Shard | None:
        """Which shard of its source a partition key is (None: the whole source)."""
        source = self.source(partition)
        if source.shards == 1:
            return None
        return Shard(source.partitions.index(partition), source.shards)

    @property
    def source_names(self) -> list[str]:
        return [s.name for s in self.sources]

    @property
    def partition_keys(self) -> list[str]:
        """Every source's partition keys, in config order (what the sensor adds)."""
        return [key for s in self.sources for key in s.partitions]

    def role_partitions(self, role: str) -> list[str]:
        """The partition keys of every ``train`` or ``benchmark`` source, in config order."""
        return [key for s in self.sources if s.role == role for key in s.partitions]

    def partitions_of(self, names: Iterable[str]) -> list[str]:
        """The partition keys of the named sources, in config order."""
        wanted = set(names)
        return [key for s in self.sources if s.name in wanted for key in s.partitions]


WEB_CAPTION_PRESETS = ("laion", "webdataset_caption")


def is_web_caption(source: SourceConfig) -> bool:
    """A source of web alt-text pairs: a URL list, or a source mapped with a web caption preset."""
    preset = source.mapping.preset if source.mapping is not None else None
    return source.reader == "url_list" or preset in WEB_CAPTION_PRESETS


def source_fingerprint(source: SourceConfig) -> str:
    """Changes whenever anything that defines the source's records changes."""
    payload = json.dumps(source.model_dump(mode="json"), sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- loading


def _env_value(match: re.Match[str]) -> str:
    name, default = match.group(1), match.group(2)
    value = os.environ.get(name)
    if value is None and name == "FINEHARBOR_HOME":
        value = fineharbor_home()
    if value is None and name == "FINEHARBOR_STATE":
        value = str(fineharbor_state())
    if value is None:
        if default is None:
            raise KeyError(name)
        value = default
    return value


def _expand_env(node: object, where: str = "") -> object:
    """``${VAR}`` / ``${VAR:-default}`` expanded inside the parsed string values only.

    Expanding after parsing means a value can never change the file's structure: a ``#`` or a
    newline in a variable stays part of that one string, and variables in comments or keys are
    never looked at. Raises ConfigError naming the field of an unset variable.
    """
    if isinstance(node, dict):
        return {
            key: _expand_env(value, f"{where}.{key}" if where else str(key))
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [_expand_env(value, f"{where}.{i}") for i, value in enumerate(node)]
    if isinstance(node, str) and "${" in node:
        try:
            return _ENV_REF.sub(_env_value, node)
        except KeyError as missing:
            raise ConfigError(
                f"{where or '(top level)'}: environment variable {missing.args[0]} is not set "
                "(use ${VAR:-default} for an optional one)"
            ) from None
    return node


def _resolve_locations(raw: dict, base: Path) -> None:
    for source in raw.get("sources") or []:
        if not isinstance(source, dict):
            continue
        if source.get("reader") == "hf_dataset":
            files = source.get("data_files")
            if isinstance(files, list):
                source["data_files"] = [str((base / str(f)).resolve()) for f in files]
            location = source.get("location")
            if isinstance(location, str) and (base / location).exists():
                source["location"] = str((base / location).resolve())
            continue
        for key in ("location", "image_root"):
            value = source.get(key)
            if isinstance(value, str) and "://" not in value:
                source[key] = (
                    str((base / value).resolve()) if not Path(value).is_absolute() else value
                )


def _resolve_blocklists(raw: dict, base: Path) -> None:
    """``stages.clean.blocklists`` are relative to the project file, like source locations."""
    clean = (raw.get("stages") or {}).get("clean") if isinstance(raw.get("stages"), dict) else None
    lists = clean.get("blocklists") if isinstance(clean, dict) else None
    if isinstance(lists, list):
        clean["blocklists"] = [
            str(base / Path(p).expanduser()) if isinstance(p, str) else p for p in lists
        ]


def _format_validation_error(path: Path, error: ValidationError) -> str:
    lines = [f"{path}: invalid configuration ({error.error_count()} problem(s))"]
    for item in error.errors():
        field = ".".join(str(part) for part in item["loc"]) or "(top level)"
        lines.append(f"  {field}: {item['msg']}")
    return "\n".join(lines)


def parse_config(raw: dict, base_dir: Path, origin: str = "<config>") -> ProjectConfig:
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{origin}: expected a mapping at the top level, got {type(raw).__name__}"
        )
    _resolve_locations(raw, base_dir)
    _resolve_blocklists(raw, base_dir)
    try:
        return ProjectConfig.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(_format_validation_error(Path(origin), error)) from None


def read_text_file(path: Path, what: str) -> str:
    """A project or decisions file as UTF-8 text; anything else is a one-line ConfigError."""
    try:
        return path.read_text(encoding="utf-8-sig")  # a BOM some editors write is dropped
    except UnicodeDecodeError as error:
        raise ConfigError(
            f"{path}: {what} is not UTF-8 text (byte {error.object[error.start]:#04x} at offset "
            f"{error.start}); save it as UTF-8"
        ) from None
    except OSError as error:
        raise ConfigError(f"{path}: cannot read {what}: {error.strerror or error}") from None


def load_config(path: str | Path | None = None, *, check_models: bool = True) -> ProjectConfig:
    """Read, expand and validate a project file. With ``check_models``, every model it names
    that is not on this machine is logged once per process, naming the field, where it was
    looked for and how to get it (:mod:`fineharbor.core.models`)."""
    config_path = Path(path).expanduser().resolve() if path else default_config_path()
    if not config_path.exists():
        raise ConfigError(
            f"{config_path}: no such project file (set FINEHARBOR_CONFIG or run from the "
            "directory holding fineharbor.yaml)"
        )
    text = read_text_file(config_path, "the project file")
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"{config_path}: not valid YAML: {error}") from None
    try:
        raw = _expand_env(raw)
    except ConfigError as error:
        raise ConfigError(f"{config_path}: {error}") from None
    config = parse_config(raw, config_path.parent, str(config_path))
    if check_models:
        report_missing_models(config)
    return config
