from __future__ import annotations

import sqlite3

from fineharbor.core.judge.cache import Judgment, JudgmentCache, JudgmentKey


def key(sample: str, turn: int = 0, axis: str = "relevance", model: str = "m") -> JudgmentKey:
    return JudgmentKey(model, f"{axis}/v1", sample, turn, axis)


def test_round_trip_and_misses(tmp_path) -> None:
    with JudgmentCache(tmp_path / "cache") as cache:
        written = cache.put_many(
            [(key("a"), Judgment("d1", "Rating: 4", 4)), (key("b", 1), Judgment("d2", "??", None))]
        )
        assert written == 2
        found = cache.get_many([key("a"), key("b", 1), key("c"), key("a", axis="formatting")])
        assert found == {
            key("a"): Judgment("d1", "Rating: 4", 4),
            key("b", 1): Judgment("d2", "??", None),
        }
        assert cache.get_many([]) == {}
        # Every key component separates entries.
        assert cache.get_many([key("a", model="other"), key("a", turn=1)]) == {}


def test_replace_and_persistence(tmp_path) -> None:
    with JudgmentCache(tmp_path) as cache:
        cache.put_many([(key("a"), Judgment("d1", "Rating: 2", 2))])
        cache.put_many([(key("a"), Judgment("d2", "Rating: 5", 5))])
        assert len(cache) == 1
    with JudgmentCache(tmp_path) as reopened:
        assert reopened.get_many([key("a")])[key("a")] == Judgment("d2", "Rating: 5", 5)
    mode = sqlite3.connect(tmp_path / "judgments.sqlite").execute("PRAGMA journal_mode").fetchone()
    assert mode[0] == "wal"


def test_thousands_of_keys_in_one_lookup(tmp_path) -> None:
    with JudgmentCache(tmp_path) as cache:
        items = [(key(f"s{i}", i % 3), Judgment("d", "Rating: 3", 3)) for i in range(20_000)]
        cache.put_many(items)
        wanted = [k for k, _ in items[::2]] + [key(f"missing{i}") for i in range(10_000)]
        found = cache.get_many(wanted)
        assert len(found) == 10_000 and set(found) == {k for k, _ in items[::2]}
        assert cache.get_many(wanted[:3]) == {k: found[k] for k in wanted[:3]}  # temp table reset
