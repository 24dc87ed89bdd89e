"""The columnar selection (`Candidates`) decides exactly what the row-by-row selection it
replaced decided: the same selected ids in the same order, the same kept turns, the same
rejects with the same reasons and details, the same signal table and concept flatness.

The reference below is the previous implementation (Python dicts per candidate), kept verbatim
apart from being gathered into one function."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from fineharbor.core.concepts.sampling import balanced_sample, flatness
from fineharbor.core.release.params import ReleaseRecipe
from fineharbor.core.release.select import (
    HUMAN_FLAGGED,
    PII_COUNT,
    PII_FOUND,
    SOURCE_NOT_APPROVED,
    THRESHOLDS,
    Candidates,
    ReleaseGate,
    _source_rng,
    ratings_column,
)
from fineharbor.core.schema import REJECT_SCHEMA

TURN = pa.struct([("user", pa.string()), ("assistant", pa.string())])


def reject(row: dict, reason: str, detail: str) -> dict:
    keys = ("sample_id", "source", "origin_key")
    return {**{k: row[k] for k in keys}, "reason": reason, "detail": detail}


def _fails(threshold, value, recipe):
    limit = threshold.limit(recipe)
    if limit is None:
        return False
    if value is None:
        return recipe.require_scores
    return value < limit if threshold.minimum else value > limit


def _kept_turns(row, recipe, n_turns):
    minimums = recipe.min_ratings.active()
    if not minimums:
        return None
    keep = []
    for turn in range(n_turns):
        ok = True
        for axis, minimum in minimums.items():
            ratings = row.get(ratings_column(axis))
            rating = ratings[turn] if ratings is not None and turn < len(ratings) else None
            if rating is None:
                ok = ok and not recipe.require_scores
            elif rating < minimum:
                ok = False
        if ok:
            keep.append(turn)
    return keep


def reference(parts, recipe, gate, clusters):
    """parts: (source, verdict for the whole source or None, batches)."""
    from fineharbor.core.concepts.kmeans import ConceptHierarchy
    from fineharbor.core.dedup.clusters import list_matrix

    turns, source_of, rejects, origin, signals = {}, {}, [], {}, []
    minimums = recipe.min_ratings.active()
    for source, verdict, batches in parts:
        for batch in batches:
            rows = batch.to_pylist()
            for row in rows:
                origin[row["sample_id"]] = row["origin_key"]
                row["n_turns"] = len(row.pop("texts") or [])
                matches = row.pop(PII_FOUND, None)
                row[PII_COUNT] = None if matches is None else len(matches)
            if verdict:
                rejects += [reject(r, *verdict) for r in rows]
                continue
            if source in gate.blocked:
                rejects += [reject(r, SOURCE_NOT_APPROVED, gate.blocked[source]) for r in rows]
                continue
            flagged = gate.flagged.get(source, {})
            rejects += [
                reject(r, HUMAN_FLAGGED, flagged[r["sample_id"]])
                for r in rows
                if r["sample_id"] in flagged
            ]
            rows = [r for r in rows if r["sample_id"] not in flagged]
            kept = pa.array([r["sample_id"] for r in rows], pa.string())
            signals.append(batch.filter(pc.is_in(batch.column("sample_id"), kept)))
            for row in rows:
                failed = next(
                    (
                        (t.reason, t.detail(row.get(t.column), recipe))
                        for t in THRESHOLDS
                        if _fails(t, row.get(t.column), recipe)
                    ),
                    None,
                )
                if failed:
                    rejects.append(reject(row, *failed))
                    continue
                image_only = row["n_turns"] == 0
                if image_only and not recipe.include_image_only:
                    detail = "no turns; release.include_image_only is false"
                    rejects.append(reject(row, "image_only_excluded", detail))
                    continue
                kept_turns = None if image_only else _kept_turns(row, recipe, row["n_turns"])
                if kept_turns is not None and not kept_turns:
                    limits = ", ".join(f"{a} >= {m}" for a, m in minimums.items())
                    detail = f"all {row['n_turns']} turns below {limits}"
                    rejects.append(reject(row, "rating_below_min", detail))
                    continue
                turns[row["sample_id"]] = kept_turns
                source_of[row["sample_id"]] = row["source"]
    by_source: dict[str, list[str]] = {}
    for sample_id, source in source_of.items():
        by_source.setdefault(source, []).append(sample_id)
    mix = {s.name: s for s in recipe.sources}
    for source, ids in sorted(by_source.items()):
        spec = mix.get(source)
        if spec is None:
            continue
        ids = sorted(ids)
        order = _source_rng(recipe.seed, source).permutation(len(ids))
        keep_n = round(spec.weight * len(ids))
        dropped = {ids[i]: ("source_weight", f"weight {spec.weight}") for i in order[keep_n:]}
        if spec.cap is not None and keep_n > spec.cap:
            dropped |= {ids[i]: ("source_cap", f"cap {spec.cap}") for i in order[spec.cap : keep_n]}
        for sample_id, (reason, detail) in sorted(dropped.items()):
            row = {"sample_id": sample_id, "source": source, "origin_key": origin[sample_id]}
            rejects.append(reject(row, reason, detail))
            del turns[sample_id]
            del source_of[sample_id]
    flat = []
    if clusters is not None:
        ids = clusters.column("sample_id")
        present = pc.is_in(ids, value_set=pa.array(list(turns), pa.string()))
        rows = np.flatnonzero(present.to_numpy(zero_copy_only=False))
        if rows.size:
            paths = list_matrix(clusters.column("clusters"), np.int64)
            labels = [np.ascontiguousarray(paths[:, level]) for level in range(paths.shape[1])]
            hierarchy = ConceptHierarchy(
                labels,
                [int(level.max()) + 1 for level in labels],
                clusters.column("distance").to_numpy(zero_copy_only=False),
            ).subset(rows)
            policy = recipe.balancing
            target = policy.target_size or max(1, round(policy.target_fraction * rows.size))
            chosen = balanced_sample(hierarchy, target, policy.strategy, recipe.seed)
            left = np.setdiff1d(np.arange(rows.size), chosen)
            for sample_id in ids.take(pa.array(rows[left])).to_pylist():
                source = source_of.pop(sample_id)
                del turns[sample_id]
                row = {"sample_id": sample_id, "source": source, "origin_key": origin[sample_id]}
                rejects.append(
                    reject(row, "concept_balance", f"target {target} of {rows.size} clustered")
                )
            flat = flatness(hierarchy, chosen)
    rejects = sorted(rejects, key=lambda r: (r["source"], r["sample_id"]))
    return turns, source_of, pa.Table.from_pylist(rejects, schema=REJECT_SCHEMA), signals, flat


def batches(source: str, n: int, seed: int, batch_size: int = 97):
    """Generated release-input rows with nulls everywhere the input may have them."""
    rng = np.random.default_rng(seed)
    out = []
    for start in range(0, n, batch_size):
        size = min(batch_size, n - start)

        def scores(low, high, size=size):
            values = rng.uniform(low, high, size)
            return pa.array(values, pa.float32(), mask=rng.uniform(size=size) < 0.1)

        n_turns = rng.integers(-1, 4, size)  # -1: no texts at all
        ratings = [
            None
            if rng.uniform() < 0.1
            else [None if rng.uniform() < 0.1 else int(rng.integers(1, 6)) for _ in range(k)]
            for k in rng.integers(0, 5, size)
        ]
        out.append(
            pa.record_batch(
                {
                    # not generated in id order: the selection sorts
                    "sample_id": [f"{source}-{int(i):05d}" for i in rng.permutation(size) + start],
                    "source": [source] * size,
                    "origin_key": [f"k{start + i}" for i in range(size)],
                    "texts": pa.array(
                        [None if k < 0 else [{"user": "q", "assistant": "a"}] * k for k in n_turns],
                        pa.list_(TURN),
                    ),
                    "clip_score": scores(0.1, 0.5),
                    "quality_score": scores(0, 3),
                    "punsafe": scores(0, 1),
                    "pwatermark": scores(0, 1),
                    "aesthetic_score": scores(2, 8),
                    "face_count": pa.array(rng.integers(0, 3, size), pa.int32()),
                    PII_FOUND: pa.array(
                        [None if i % 13 == 0 else ["EMAIL"] * (i % 3) for i in range(size)],
                        pa.list_(pa.string()),
                    ),
                    "relevance_ratings": pa.array(ratings, pa.list_(pa.int64())),
                    "formatting_ratings": pa.array(
                        [None if r is None else r[::-1] for r in ratings], pa.list_(pa.int64())
                    ),
                }
            )
        )
    return out


def concepts(ids: list[str], seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    fine = rng.integers(0, 40, len(ids))
    return pa.table(
        {
            "sample_id": pa.array(ids, pa.string()),
            "clusters": pa.array([[int(f), int(f) // 8] for f in fine], pa.list_(pa.int64())),
            "distance": pa.array(rng.uniform(0, 1, len(ids)), pa.float32()),
        }
    )


RECIPES = {
    "thresholds": dict(clip_score_min=0.2, pwatermark_max=0.8, pii_max=1),
    "required": dict(clip_score_min=0.2, punsafe_max=0.7, require_scores=True),
    "turns": dict(min_ratings={"relevance": 3, "formatting": 2}, quality_min=0.5),
    "turns_required": dict(min_ratings={"relevance": 2}, require_scores=True),
    "no_image_only": dict(include_image_only=False, aesthetic_score_min=4.0),
    "mix": dict(
        clip_score_max=0.45,
        sources=[{"name": "a", "weight": 0.7}, {"name": "b", "cap": 40}, {"name": "c"}],
    ),
    "balanced": dict(
        min_ratings={"relevance": 2},
        sources=[{"name": "a", "weight": 0.8, "cap": 100}, {"name": "b"}],
        balancing={"enabled": True, "target_fraction": 0.5, "strategy": "c"},
        seed=7,
    ),
    "balanced_random": dict(balancing={"enabled": True, "target_size": 90}, seed=3),
}


@pytest.mark.parametrize("name", list(RECIPES))
def test_columnar_selection_decides_what_the_row_wise_one_did(name):
    recipe = ReleaseRecipe(**RECIPES[name])
    listed = {s.name for s in recipe.sources}
    data = {s: batches(s, 230, seed) for seed, s in enumerate(("a", "b", "c", "bench", "d"))}
    gate = ReleaseGate(
        blocked={"d": "unreviewed"},
        flagged={"a": {"a-00003": "flagged by x: blurry", "a-00150": "flagged by y"}},
    )
    parts = []
    for source, source_batches in data.items():
        if source == "bench":
            verdict = ("benchmark_source", "role: benchmark")
        elif listed and source not in listed:
            verdict = ("source_not_in_recipe", "not in release.sources")
        else:
            verdict = None
        parts.append((source, verdict, source_batches))
    ids = [i for b in data.values() for batch in b for i in batch.column("sample_id").to_pylist()]
    clusters = concepts(ids[::-1], 5) if recipe.balancing.enabled else None
    turns, source_of, rejects, signals, flat = reference(parts, recipe, gate, clusters)

    candidates = Candidates(recipe, gate)
    for source, verdict, source_batches in parts:
        for batch in source_batches:
            if verdict:
                candidates.leave_out(batch, *verdict)
            else:
                candidates.admit(batch, source)
    candidates.apply_source_mix()
    new_flat = candidates.balance(clusters) if clusters is not None else []

    assert candidates.rejects().equals(rejects)
    assert candidates.rejects().to_pylist() == rejects.to_pylist()
    assert 0 < len(source_of) < rejects.num_rows
    assert candidates.sources() == sorted(set(source_of.values()))
    for source in candidates.sources():
        chosen = sorted(i for i, s in source_of.items() if s == source)
        assert candidates.chosen(source).to_pylist() == chosen
        kept = candidates.turns(source)
        assert {i: kept.get(i) for i in chosen} == {i: turns[i] for i in chosen}
    assert sorted(candidates.released().to_pylist()) == sorted(source_of)
    assert [f.as_dict() for f in new_flat] == [f.as_dict() for f in flat]
    expected = pa.concat_tables(pa.Table.from_batches([s]) for s in signals)
    table = candidates.signal_table()
    for column in table.column_names:
        assert table.column(column).to_pylist() == expected.column(column).to_pylist()


def select_rows(rows: list[dict], recipe: ReleaseRecipe) -> tuple[dict, list[dict]]:
    """Rows (sample_id, source, origin_key, n_turns, scores) through the thresholds and judge
    minimums: (selected sample_id -> kept turns, None for all; rejects)."""
    types = {"sample_id": pa.string(), "source": pa.string(), "origin_key": pa.string()}
    types |= {t.column: pa.float32() for t in THRESHOLDS if t.column != PII_COUNT}
    types |= {PII_FOUND: pa.list_(pa.string())}
    types |= {ratings_column(a): pa.list_(pa.int64()) for a in recipe.min_ratings.active()}
    columns = {name: pa.array([r.get(name) for r in rows], kind) for name, kind in types.items()}
    texts = [[{"user": "q", "assistant": "a"}] * r["n_turns"] for r in rows]
    candidates = Candidates(recipe)
    candidates.admit(pa.record_batch({**columns, "texts": pa.array(texts, pa.list_(TURN))}), "s")
    selected = {}
    for source in candidates.sources():
        kept = candidates.turns(source)
        selected |= {i: kept.get(i) for i in candidates.chosen(source).to_pylist()}
    return selected, candidates.rejects().to_pylist()
