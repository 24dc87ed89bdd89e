"""Judgment cache: never ask a judge the same question twice.

One SQLite file (``judgments.sqlite``) under a directory, in WAL mode: readers never block the
writer and a killed run loses at most the chunk it was writing. A judgment is keyed by (model,
prompt version, sample id, turn, axis) and stores the judge's raw reply plus a digest of the exact
input (prompt text and image bytes). The rating is re-parsed from the reply on read, so improving
the parser fixes old judgments without re-judging, and a sample whose text changed under the same
id is judged again because its digest no longer matches. Request failures are not stored (they
are retried next run); unparseable replies are (greedy decoding would repeat them).

Identical requests of different samples (same model, prompt version and input digest: question,
answer, image bytes) are answered once: a stored reply is found by its digest too
(``get_by_digest``), and within a run ``run`` remembers the replies and the failed requests, so
a request that failed is not sent again in the same run (one cache object lives for one run).

SQLite serialises writers itself (``busy_timeout`` waits for the lock), but the cache is meant
for one writer process at a time, e.g. one Dagster run per ``gpu`` pool slot. The file must be on
a local filesystem: SQLite locking is unreliable on network filesystems and impossible on object
storage.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

SCHEMA_VERSION = 1
FILENAME = "judgments.sqlite"
_KEY_COLUMNS = "model, prompt_version, sample_id, turn, axis"


class JudgmentKey(NamedTuple):
    model: str
    prompt_version: str
    sample_id: str
    turn: int
    axis: str


class Judgment(NamedTuple):
    input_digest: str
    reply: str
    rating: int | None  # stored for SQL users; readers should re-parse `reply`


class DigestKey(NamedTuple):
    """An exact judge input, whichever sample asked it."""

    model: str
    prompt_version: str
    input_digest: str


class RunMemo:
    """What one run learned about exact inputs: replies, and requests that failed (a failed
    request is not sent again in the same run; the next run retries it)."""

    def __init__(self) -> None:
        self.replies: dict[DigestKey, str] = {}
        self.failed: set[DigestKey] = set()


class JudgmentCache:
    def __init__(self, directory: str | Path) -> None:
        self.run = RunMemo()
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path = self.directory / FILENAME
        self._conn = sqlite3.connect(self.path, timeout=60.0)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")  # durable at checkpoints; WAL-safe
        self._conn.execute("PRAGMA busy_timeout=60000")
        self._create()

    def _create(self) -> None:
        with self._conn:
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)"
            )
            self._conn.execute(
                f"""CREATE TABLE IF NOT EXISTS judgments (
                    model TEXT NOT NULL,
                    prompt_version TEXT NOT NULL,
                    sample_id TEXT NOT NULL,
                    turn INTEGER NOT NULL,
                    axis TEXT NOT NULL,
                    input_digest TEXT NOT NULL,
                    reply TEXT NOT NULL,
                    rating INTEGER,
                    created_at REAL NOT NULL,
                    PRIMARY KEY ({_KEY_COLUMNS})
                ) WITHOUT ROWID"""
            )
            self._conn.execute(
                "CREATE INDEX IF NOT EXISTS judgments_by_digest "
                "ON judgments (model, prompt_version, input_digest)"
            )
            row = self._conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
            if row is None:
                self._conn.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
            elif int(row[0]) != SCHEMA_VERSION:
                raise RuntimeError(
                    f"{self.path}: judgment cache schema {row[0]}, this code reads "
                    f"{SCHEMA_VERSION}; move the file away to start a new cache"
                )

    def get_many(self, keys: Sequence[JudgmentKey]) -> dict[JudgmentKey, Judgment]:
        """Stored judgments for those keys that have one; one indexed join, not one query each."""
        if not keys:
            return {}
        conn = self._conn
        with conn:
            conn.execute(
                "CREATE TEMP TABLE IF NOT EXISTS wanted (model TEXT, prompt_version TEXT, "
                "sample_id TEXT, turn INTEGER, axis TEXT)"
            )
            conn.execute("DELETE FROM wanted")
            conn.executemany("INSERT INTO wanted VALUES (?, ?, ?, ?, ?)", keys)
            rows = conn.execute(
                f"SELECT j.model, j.prompt_version, j.sample_id, j.turn, j.axis, "
                f"j.input_digest, j.reply, j.rating FROM wanted w JOIN judgments j "
                f"USING ({_KEY_COLUMNS})"
            ).fetchall()
            conn.execute("DELETE FROM wanted")
        return {JudgmentKey(*row[:5]): Judgment(*row[5:]) for row in rows}

    def get_by_digest(self, keys: Sequence[DigestKey]) -> dict[DigestKey, str]:
        """A stored reply for each exact input that has one, whichever sample it was for."""
        found: dict[DigestKey, str] = {}
        for key in dict.fromkeys(keys):
            row = self._conn.execute(
                "SELECT reply FROM judgments WHERE model = ? AND prompt_version = ? "
                "AND input_digest = ? LIMIT 1",
                key,
            ).fetchone()
            if row is not None:
                found[key] = row[0]
        return found

    def put_many(self, items: Iterable[tuple[JudgmentKey, Judgment]]) -> int:
        """Insert or replace judgments in one transaction; returns how many were written."""
        now = time.time()
        rows = [(*key, *judgment, now) for key, judgment in items]
        if rows:
            with self._conn:
                self._conn.executemany(
                    "INSERT OR REPLACE INTO judgments VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows
                )
        return len(rows)

    def __len__(self) -> int:
        return self._conn.execute("SELECT count(*) FROM judgments").fetchone()[0]

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> JudgmentCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
