"""What the release takes from the reviews: which sources may enter, and which samples not.

``release_gate`` decides per source; ``review_release_gate`` hands the decisions to the release,
which rejects the rows of blocked sources (``source_not_approved``) and flagged samples
(``human_flagged``); ``release_violations`` checks a written release against the reviews.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from fineharbor.core.config import ProjectConfig
from fineharbor.core.release.select import ReleaseGate
from fineharbor.core.review.decisions import Approve, ReviewLog, mapping_fingerprint


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


def review_release_gate(reviews: ReviewLog, project: ProjectConfig) -> ReleaseGate:
    """The reviewers' decisions as the release applies them: blocked sources, flagged samples."""
    gate = project_gate(reviews, project)
    return ReleaseGate(
        blocked=gate.blocked,
        flagged={name: reviews.state(name).flagged for name in gate.allowed},
    )


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
        flagged_ids = pa.array(list(flagged), pa.string())
        hits = sorted(mine.filter(pc.is_in(mine, value_set=flagged_ids)).to_pylist())
        if hits:
            shown = ", ".join(hits[:5])
            problems.append(f"{len(hits)} flagged samples of {name} released ({shown})")
    return problems
