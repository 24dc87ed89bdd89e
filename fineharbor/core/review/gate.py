"""What the release takes from the reviews: which sources may enter, and which samples not.

``release_gate`` decides per source; ``apply_human_flags`` is the stage function the release
applies to each source's rows (kept rows, and rejects with reason ``human_flagged``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from fineharbor.core.config import ProjectConfig
from fineharbor.core.review.decisions import Approve, ReviewLog, mapping_fingerprint
from fineharbor.core.schema import REJECT_SCHEMA

HUMAN_FLAGGED = "human_flagged"


@dataclass(frozen=True)
class GateResult:
    allowed: list[str]
    blocked: dict[str, str]  # source -> why it may not enter

    def summary(self) -> str:
        lines = [f"allowed: {', '.join(self.allowed) or 'none'}"]
        lines += [f"blocked {name}: {why}" for name, why in self.blocked.items()]
        return "\n".join(lines)


def release_gate(
    reviews: ReviewLog,
    sources: Sequence[str],
    fingerprints: Mapping[str, str] | None = None,
) -> GateResult:
    """Sources that may enter a release: approved, and (with `fingerprints`, source -> current
    mapping fingerprint) approved for the mapping they have now. Order of `sources` is kept."""
    allowed: list[str] = []
    blocked: dict[str, str] = {}
    for name in sources:
        state = reviews.state(name)
        decided = state.decided
        if decided is None:
            blocked[name] = f"unreviewed: approve it with `fineharbor review {name} --approve`"
        elif not isinstance(decided, Approve):
            note = f" ({decided.note})" if decided.note else ""
            blocked[name] = f"rejected by {decided.by} at {decided.at.isoformat()}{note}"
        elif fingerprints is not None and fingerprints.get(name) != decided.mapping:
            blocked[name] = (
                f"stale approval: the mapping changed since {decided.by} approved it "
                f"(approved {decided.mapping}, now {fingerprints.get(name)}); review it again"
            )
        else:
            allowed.append(name)
    return GateResult(allowed, blocked)


def project_gate(reviews: ReviewLog, project: ProjectConfig) -> GateResult:
    """The gate over a project's train sources (benchmark sources never enter a release)."""
    train = [s for s in project.sources if s.role == "train"]
    return release_gate(
        reviews, [s.name for s in train], {s.name: mapping_fingerprint(s) for s in train}
    )


def apply_human_flags(
    batch: pa.RecordBatch | pa.Table, flagged: Mapping[str, str]
) -> tuple[pa.Table, pa.Table]:
    """(rows not flagged, rejects for flagged rows with reason `human_flagged`).

    `flagged` maps sample_id to the detail recorded (who flagged it, when, why), as
    ``ReviewLog.state(source).flagged`` gives it. Rows in = kept + rejected.
    """
    table = batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])
    hit = pc.is_in(table.column("sample_id"), value_set=pa.array(list(flagged), pa.string()))
    hit = pc.fill_null(hit, False)
    kept = table.filter(pc.invert(hit))
    dropped = table.filter(hit).select(["sample_id", "source", "origin_key"]).to_pylist()
    rejected = pa.Table.from_pylist(
        [{**row, "reason": HUMAN_FLAGGED, "detail": flagged[row["sample_id"]]} for row in dropped],
        schema=REJECT_SCHEMA,
    )
    return kept, rejected


def release_violations(released: pa.Table, reviews: ReviewLog, project: ProjectConfig) -> list[str]:
    """What a written release holds that the reviews forbid (`released` has sample_id, source)."""
    gate = project_gate(reviews, project)
    problems = []
    counts = released.group_by("source").aggregate([("sample_id", "count")]).to_pylist()
    for row in counts:
        if row["source"] not in gate.allowed:
            why = gate.blocked.get(row["source"], "not a configured train source")
            problems.append(f"{row['sample_id_count']} samples of {row['source']}: {why}")
    for name in sorted({row["source"] for row in counts}):
        flagged = reviews.state(name).flagged
        mine = released.filter(pc.equal(released.column("source"), name)).column("sample_id")
        hits = sorted(set(mine.to_pylist()) & set(flagged))
        if hits:
            shown = ", ".join(hits[:5])
            problems.append(f"{len(hits)} flagged samples of {name} released ({shown})")
    return problems
