"""People's decisions per source, recorded in ``reviews.yaml`` next to the project file.

The file is an append-only log, versioned with the config (commit it with ``fineharbor.yaml``)::

    version: 1
    sources:
      my_vqa:
        - {action: approve, by: alice, at: 2026-11-22T06:00:00Z, mapping: 3f2a9c0d1e2b4a5c}
        - {action: flag, by: bob, at: ..., sample_ids: [0a1b...], note: watermark}
        - {action: override, by: bob, at: ..., key: clean.caption_min_words, value: 3}

Each entry says who, when and what. The current state of a source is derived from its log: the
latest approve/reject is its status (an approval names the mapping it approved, so a changed
mapping needs a new approval), flags accumulate (``unflag`` removes ids), the latest override
per key wins. A bad file fails at load with the file, the field and the problem.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator

from fineharbor.core.config import (
    SOURCE_NAME,
    ConfigError,
    ProjectConfig,
    SourceConfig,
    StageParams,
    read_text_file,
)
from fineharbor.core.strict import StrictModel

REVIEWS_FILE = "reviews.yaml"


def reviews_path(config_path: str | Path) -> Path:
    """The decisions file beside a project file."""
    return Path(config_path).expanduser().resolve().parent / REVIEWS_FILE


def mapping_fingerprint(source: SourceConfig) -> str:
    """What an approval approves: the reader and the mapping (not the location, which moves)."""
    payload = json.dumps(
        {"reader": source.reader, "mapping": source.mapping.model_dump(mode="json")},
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


class _Entry(StrictModel):
    by: str = Field(min_length=1, description="who decided")
    at: datetime = Field(description="when (UTC, ISO 8601)")
    note: str = Field("", description="why, in the reviewer's words")


class Approve(_Entry):
    """The source's mapping and samples were looked at and may enter a release."""

    action: Literal["approve"]
    mapping: str = Field(
        min_length=1, description="mapping fingerprint approved (see mapping_fingerprint)"
    )


class Reject(_Entry):
    """The source must not enter a release."""

    action: Literal["reject"]


class Flag(_Entry):
    """Samples a person removed; the release drops them with reason `human_flagged`."""

    action: Literal["flag", "unflag"]
    sample_ids: list[str] = Field(min_length=1)

    @field_validator("sample_ids")
    @classmethod
    def _non_empty(cls, ids: list[str]) -> list[str]:
        if any(not i.strip() for i in ids):
            raise ValueError("sample ids must be non-empty strings")
        return ids


class Override(_Entry):
    """A stage parameter changed for this source only (a dotted path under `stages`)."""

    action: Literal["override"]
    key: str = Field(min_length=1, description="e.g. clean.caption_min_words")
    value: Any = Field(description="the new value; validated as that parameter")


Decision = Annotated[Approve | Reject | Flag | Override, Field(discriminator="action")]


class ReviewLog(StrictModel):
    """The whole decisions file."""

    version: Literal[1] = 1
    sources: dict[str, list[Decision]] = Field(default_factory=dict)

    @field_validator("sources")
    @classmethod
    def _valid_names(cls, sources: dict) -> dict:
        for name in sources:
            if not SOURCE_NAME.match(name):
                raise ValueError(f"{name!r} is not a valid source name")
        return sources

    def decisions(self, source: str) -> list[Decision]:
        return list(self.sources.get(source, []))

    def state(self, source: str) -> ReviewState:
        return ReviewState.of(source, self.decisions(source))

    def with_decision(self, source: str, decision: Decision) -> ReviewLog:
        sources = {name: list(entries) for name, entries in self.sources.items()}
        sources.setdefault(source, []).append(decision)
        return ReviewLog(version=self.version, sources=sources)


@dataclass(frozen=True)
class ReviewState:
    """What a source's log amounts to now."""

    source: str
    status: Literal["unreviewed", "approved", "rejected"]
    decided: Approve | Reject | None
    flagged: dict[str, str] = field(default_factory=dict)  # sample_id -> detail
    overrides: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, source: str, decisions: Sequence[Decision]) -> ReviewState:
        decided: Approve | Reject | None = None
        flagged: dict[str, str] = {}
        overrides: dict[str, Any] = {}
        for entry in decisions:
            if isinstance(entry, Approve | Reject):
                decided = entry
            elif isinstance(entry, Flag):
                for sample_id in entry.sample_ids:
                    if entry.action == "flag":
                        when = entry.at.isoformat(timespec="seconds")
                        note = f": {entry.note}" if entry.note else ""
                        flagged[sample_id] = f"flagged by {entry.by} at {when}{note}"
                    else:
                        flagged.pop(sample_id, None)
            else:
                overrides[entry.key] = entry.value
        status = (
            "unreviewed"
            if decided is None
            else "approved"
            if isinstance(decided, Approve)
            else "rejected"
        )
        return cls(source, status, decided, flagged, overrides)


# --------------------------------------------------------------------------- parameters


def effective_stage_params(stages: StageParams, overrides: Mapping[str, Any]) -> StageParams:
    """The stage parameters with a source's overrides applied, validated like the project file.

    Raises ValueError naming the key when a key does not exist or a value is invalid.
    """
    if not overrides:
        return stages
    data = stages.model_dump(mode="json")
    for key, value in overrides.items():
        node: Any = data
        parts = key.split(".")
        for depth, part in enumerate(parts):
            if not isinstance(node, dict) or part not in node:
                known = ", ".join(sorted(node)) if isinstance(node, dict) else "none"
                where = ".".join(parts[:depth]) or "stages"
                raise ValueError(f"override {key!r}: {where} has no {part!r} (known: {known})")
            if depth == len(parts) - 1:
                if isinstance(node[part], dict):
                    raise ValueError(f"override {key!r} names a section, not a parameter")
                node[part] = value
            else:
                node = node[part]
    try:
        return StageParams.model_validate(data)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in error.errors()
        )
        raise ValueError(f"override rejected: {problems}") from None


def project_for_source(project: ProjectConfig, reviews: ReviewLog, source: str) -> ProjectConfig:
    """The project as a per-source stage of `source` should see it (its overrides applied)."""
    overrides = reviews.state(source).overrides
    if not overrides:
        return project
    return project.model_copy(update={"stages": effective_stage_params(project.stages, overrides)})


# --------------------------------------------------------------------------- file


def _format_error(path: Path, error: ValidationError) -> str:
    lines = [f"{path}: invalid reviews file ({error.error_count()} problem(s))"]
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"]) or "(top level)"
        lines.append(f"  {where}: {item['msg']}")
    return "\n".join(lines)


def load_reviews(path: str | Path, project: ProjectConfig | None = None) -> ReviewLog:
    """The decisions file (an absent file is an empty log). With `project`, every override of
    a configured source must be a valid stage parameter."""
    path = Path(path)
    if not path.exists():
        return ReviewLog()
    text = read_text_file(path, "the reviews file")
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    try:
        log = ReviewLog.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(_format_error(path, error)) from None
    if project is not None:
        check_against_project(log, project, path)
    return log


def check_against_project(log: ReviewLog, project: ProjectConfig, path: Path) -> None:
    """Every configured source's overrides must be valid parameters. Decisions about sources
    no longer configured are kept as history and ignored."""
    problems = []
    for name in log.sources:
        if name not in project.source_names:
            continue
        try:
            effective_stage_params(project.stages, log.state(name).overrides)
        except ValueError as error:
            problems.append(f"  sources.{name}: {error}")
    if problems:
        head = f"{path}: invalid reviews file ({len(problems)} problem(s))"
        raise ConfigError("\n".join([head, *problems]))


def save_reviews(log: ReviewLog, path: str | Path) -> None:
    """Write atomically (temp file + rename): a killed write leaves the previous file."""
    path = Path(path)
    data = log.model_dump(mode="json", exclude_defaults=False)
    data["sources"] = {
        name: [
            {"action": e["action"], **{k: v for k, v in e.items() if k != "action" and v != ""}}
            for e in entries
        ]
        for name, entries in data["sources"].items()
    }
    text = (
        "# Review decisions per source (fineharbor review SOURCE --approve|--reject|--flag|"
        "--override).\n# Append-only; commit it with the project file.\n"
        + yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=100)
    )
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)
