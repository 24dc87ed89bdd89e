"""Rate every turn of a batch of unified samples on FineVision's four axes.

Per turn and axis one judge request is built (:mod:`~fineharbor.core.judge.prompts`): the text
judge sees question + answer for ``formatting`` and ``relevance`` and the question alone for
``visual_dependency``; the vision judge sees the sample's images + the question for
``image_correspondence``. Turns are rated independently (FineVision rates per turn; earlier turns
are not shown). Cached judgments are reused; the rest go to the backends in chunks of
``flush_every`` and are cached after each chunk, so a killed run keeps its progress.

Output, one row per input row in the same order (FineVision's published names and types,
``list<int64>`` and ``int64``):

- ``<axis>_ratings``: one entry per element of ``texts``; a null entry where the judge failed or
  its reply held no valid rating. The whole list is null when the axis was not rated for the
  sample: axis switched off, no backend for it, or ``image_correspondence`` on a sample without
  image bytes.
- ``<axis>_min``: minimum of the non-null entries; null when there is none.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from fineharbor.core.judge.backend import JudgeBackend, JudgeRequest
from fineharbor.core.judge.cache import DigestKey, Judgment, JudgmentCache, JudgmentKey, RunMemo
from fineharbor.core.judge.openai_backend import OpenAIChatBackend
from fineharbor.core.judge.params import JudgeParams
from fineharbor.core.judge.parse import parse_rating
from fineharbor.core.judge.prompts import AXES, TEXT_AXES, VISION_AXES, Axis, build_prompt
from fineharbor.core.judge.transformers_backend import Modality, TransformersBackend

RATING_TYPE = pa.int64()  # FineVision's dataset card: `list: int64` and `dtype: int64`


def ratings_column(axis: Axis) -> str:
    return f"{axis}_ratings"


def min_column(axis: Axis) -> str:
    return f"{axis}_min"


RATINGS_SCHEMA = pa.schema(
    [pa.field("sample_id", pa.string(), nullable=False)]
    + [
        field_
        for axis in AXES
        for field_ in (
            pa.field(ratings_column(axis), pa.list_(RATING_TYPE)),
            pa.field(min_column(axis), RATING_TYPE),
        )
    ]
)


def _per_axis() -> dict[str, int]:
    return dict.fromkeys(AXES, 0)


@dataclass
class JudgeStats:
    """Counts per axis. For every axis: turns = skipped + cache_hits + requests +
    repeated_failures, and cache_hits + requests + repeated_failures = ratings + parse_failures
    + request_failures. A cache hit is a turn answered without a request of its own: from the
    cache file, or by an identical input (another sample's) earlier in the run; a repeated
    failure is a turn whose identical input already failed in this run, so it was not sent."""

    samples: int = 0
    turns: int = 0
    requests: dict[str, int] = field(default_factory=_per_axis)
    cache_hits: dict[str, int] = field(default_factory=_per_axis)
    ratings: dict[str, int] = field(default_factory=_per_axis)
    parse_failures: dict[str, int] = field(default_factory=_per_axis)
    request_failures: dict[str, int] = field(default_factory=_per_axis)
    repeated_failures: dict[str, int] = field(default_factory=_per_axis)
    skipped: dict[str, int] = field(default_factory=_per_axis)
    seconds: float = 0.0

    @property
    def requests_sent(self) -> int:
        return sum(self.requests.values())

    @property
    def total_cache_hits(self) -> int:
        return sum(self.cache_hits.values())

    @property
    def total_parse_failures(self) -> int:
        return sum(self.parse_failures.values())

    @property
    def total_request_failures(self) -> int:
        return sum(self.request_failures.values())

    @property
    def requests_per_s(self) -> float:
        return self.requests_sent / self.seconds if self.seconds > 0 else 0.0

    @property
    def turns_per_s(self) -> float:
        return self.turns / self.seconds if self.seconds > 0 else 0.0

    def merge(self, other: JudgeStats) -> JudgeStats:
        """Sum of two runs (e.g. the record batches of one partition)."""

        def add(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
            return {axis: a.get(axis, 0) + b.get(axis, 0) for axis in AXES}

        return JudgeStats(
            samples=self.samples + other.samples,
            turns=self.turns + other.turns,
            requests=add(self.requests, other.requests),
            cache_hits=add(self.cache_hits, other.cache_hits),
            ratings=add(self.ratings, other.ratings),
            parse_failures=add(self.parse_failures, other.parse_failures),
            request_failures=add(self.request_failures, other.request_failures),
            repeated_failures=add(self.repeated_failures, other.repeated_failures),
            skipped=add(self.skipped, other.skipped),
            seconds=self.seconds + other.seconds,
        )

    def as_metadata(self) -> dict[str, Any]:
        """Flat plain values, ready for materialization metadata."""
        meta: dict[str, Any] = {
            "judge/samples": self.samples,
            "judge/turns": self.turns,
            "judge/requests_sent": self.requests_sent,
            "judge/cache_hits": self.total_cache_hits,
            "judge/parse_failures": self.total_parse_failures,
            "judge/request_failures": self.total_request_failures,
            "judge/repeated_failures_not_sent": sum(self.repeated_failures.values()),
            "judge/seconds": round(self.seconds, 3),
            "judge/requests_per_s": round(self.requests_per_s, 3),
            "judge/turns_per_s": round(self.turns_per_s, 3),
        }
        for axis in AXES:
            for name in ("ratings", "parse_failures", "request_failures", "skipped"):
                meta[f"judge/{axis}/{name}"] = getattr(self, name)[axis]
        return meta


@dataclass
class _Task:
    row: int
    turn: int
    axis: Axis
    key: JudgmentKey
    request: JudgeRequest
    digest: str


def _image_bytes(images: list[dict[str, Any]] | None, limit: int) -> tuple[bytes, ...]:
    found = [image["bytes"] for image in images or [] if image and image.get("bytes")]
    return tuple(found[:limit])


def _backend_for(
    axis: Axis, text_backend: JudgeBackend | None, vision_backend: JudgeBackend | None
) -> JudgeBackend | None:
    return vision_backend if axis in VISION_AXES else text_backend


def _plan(
    rows: list[dict[str, Any]],
    text_backend: JudgeBackend | None,
    vision_backend: JudgeBackend | None,
    params: JudgeParams,
    stats: JudgeStats,
) -> tuple[list[_Task], dict[Axis, list[list[int | None] | None]]]:
    """One task per (turn, axis) to rate, and the output lists (None where not rated)."""
    tasks: list[_Task] = []
    lists: dict[Axis, list[list[int | None] | None]] = {axis: [] for axis in AXES}
    for row_index, row in enumerate(rows):
        turns = row.get("texts") or []
        images = _image_bytes(row.get("images"), params.max_images)
        stats.samples += 1
        stats.turns += len(turns)
        for axis in AXES:
            backend = _backend_for(axis, text_backend, vision_backend)
            vision = axis in VISION_AXES
            if axis not in params.axes or backend is None or (vision and not images):
                lists[axis].append(None)
                stats.skipped[axis] += len(turns)
                continue
            lists[axis].append([None] * len(turns))
            for turn_index, turn in enumerate(turns):
                prompt = build_prompt(
                    axis,
                    (turn or {}).get("user"),
                    (turn or {}).get("assistant"),
                    max_chars=params.max_chars_per_turn,
                    n_images=len(images) if vision else 0,
                )
                request = JudgeRequest(prompt.system, prompt.user, images if vision else ())
                key = JudgmentKey(backend.name, prompt.version, row["sample_id"], turn_index, axis)
                tasks.append(_Task(row_index, turn_index, axis, key, request, request.digest()))
    return tasks, lists


def _record(
    task: _Task,
    reply: str | None,
    lists: dict[Axis, list[list[int | None] | None]],
    stats: JudgeStats,
) -> int | None:
    if reply is None:
        stats.request_failures[task.axis] += 1
        return None
    rating = parse_rating(reply)
    if rating is None:
        stats.parse_failures[task.axis] += 1
    else:
        stats.ratings[task.axis] += 1
        target = lists[task.axis][task.row]
        assert target is not None  # planned tasks always have a list
        target[task.turn] = rating
    return rating


def _run_backend(
    backend: JudgeBackend,
    tasks: Sequence[_Task],
    lists: dict[Axis, list[list[int | None] | None]],
    params: JudgeParams,
    cache: JudgmentCache | None,
    memo: RunMemo,
    stats: JudgeStats,
) -> None:
    hits = cache.get_many([t.key for t in tasks]) if cache is not None else {}
    by_input: dict[DigestKey, list[_Task]] = {}
    for task in tasks:
        hit = hits.get(task.key)
        if hit is not None and hit.input_digest == task.digest:
            stats.cache_hits[task.axis] += 1
            _record(task, hit.reply, lists, stats)  # re-parsed: parser fixes apply to old replies
        else:
            digest = DigestKey(task.key.model, task.key.prompt_version, task.digest)
            by_input.setdefault(digest, []).append(task)
    # The same input for other samples: answered earlier in this run or stored for another id.
    unknown = [k for k in by_input if k not in memo.replies and k not in memo.failed]
    if cache is not None:
        memo.replies.update(cache.get_by_digest(unknown))
    reused = []
    pending: list[DigestKey] = []
    for digest, waiting in by_input.items():
        if digest in memo.failed:
            for task in waiting:
                stats.repeated_failures[task.axis] += 1
                _record(task, None, lists, stats)
        elif digest in memo.replies:
            reused += _answer(waiting, memo.replies[digest], lists, stats, sent=False)
        else:
            pending.append(digest)
    if cache is not None:
        cache.put_many(reused)
    for start in range(0, len(pending), params.flush_every):
        chunk = pending[start : start + params.flush_every]
        replies = backend.complete([by_input[d][0].request for d in chunk])
        if len(replies) != len(chunk):
            raise RuntimeError(
                f"judge backend {backend.name!r} returned {len(replies)} replies for "
                f"{len(chunk)} requests"
            )
        done = []
        for digest, reply in zip(chunk, replies, strict=True):
            if reply is None:  # failures are retried next run, so never cached
                memo.failed.add(digest)
            else:
                memo.replies[digest] = reply
            done += _answer(by_input[digest], reply, lists, stats, sent=True)
        if cache is not None:
            cache.put_many(done)


def _answer(
    tasks: list[_Task],
    reply: str | None,
    lists: dict[Axis, list[list[int | None] | None]],
    stats: JudgeStats,
    sent: bool,
) -> list[tuple[JudgmentKey, Judgment]]:
    """Record one reply for every task that asked the same input: the first counts as the
    request when it was ``sent``, the others as answered from the run's memory. Returns the
    judgments to store under each task's own key (none for a failure)."""
    stored = []
    for index, task in enumerate(tasks):
        if sent and index == 0:
            stats.requests[task.axis] += 1
        else:
            stats.cache_hits[task.axis] += 1
        rating = _record(task, reply, lists, stats)
        if reply is not None:
            stored.append((task.key, Judgment(task.digest, reply, rating)))
    return stored


def _min_or_none(values: list[int | None] | None) -> int | None:
    present = [v for v in values or [] if v is not None]
    return min(present) if present else None


def rate_samples(
    samples: pa.Table | pa.RecordBatch,
    text_backend: JudgeBackend | None,
    vision_backend: JudgeBackend | None,
    params: JudgeParams,
    cache: JudgmentCache | None = None,
    memo: RunMemo | None = None,
) -> tuple[pa.Table, JudgeStats]:
    """Ratings for every sample (``RATINGS_SCHEMA``, row-aligned with ``samples``) and stats.

    ``samples`` needs ``sample_id``, ``images`` and ``texts`` (the unified schema). Append the
    result's rating columns to the samples to get FineVision's layout. ``memo`` holds what
    this run learned (replies and failed requests by exact input); by default the cache's own
    (one cache object per run), else one for this call.
    """
    started = time.perf_counter()
    stats = JudgeStats()
    rows = samples.select(["sample_id", "images", "texts"]).to_pylist()
    tasks, lists = _plan(rows, text_backend, vision_backend, params, stats)

    by_backend: dict[int, list[_Task]] = defaultdict(list)
    backends: dict[int, JudgeBackend] = {}
    for task in tasks:
        backend = _backend_for(task.axis, text_backend, vision_backend)
        assert backend is not None
        by_backend[id(backend)].append(task)
        backends[id(backend)] = backend
    memo = memo or (cache.run if cache is not None else RunMemo())
    for backend_id, backend_tasks in by_backend.items():
        _run_backend(backends[backend_id], backend_tasks, lists, params, cache, memo, stats)

    columns: dict[str, pa.Array] = {
        "sample_id": pa.array([row["sample_id"] for row in rows], pa.string())
    }
    for axis in AXES:
        columns[ratings_column(axis)] = pa.array(lists[axis], pa.list_(RATING_TYPE))
        columns[min_column(axis)] = pa.array([_min_or_none(v) for v in lists[axis]], RATING_TYPE)
    stats.seconds = time.perf_counter() - started
    return pa.Table.from_pydict(columns, schema=RATINGS_SCHEMA), stats


def make_backends(params: JudgeParams) -> tuple[JudgeBackend | None, JudgeBackend | None]:
    """(text backend, vision backend) for the params; None where no axis needs one.

    Nothing is loaded or connected here: `transformers` models load on first use.
    """
    if params.backend == "none":
        return None, None
    wants_text = any(axis in params.axes for axis in TEXT_AXES)
    wants_vision = params.vision_model is not None and any(
        axis in params.axes for axis in VISION_AXES
    )
    text: JudgeBackend | None = None
    vision: JudgeBackend | None = None
    if params.backend == "transformers":

        def local(model: str, modality: Modality) -> TransformersBackend:
            return TransformersBackend(
                model,
                modality=modality,
                device=params.device,
                dtype=params.dtype,
                max_new_tokens=params.max_new_tokens,
                batch_size=params.batch_size,
                chat_template_kwargs=params.chat_template_kwargs,
            )

        if wants_vision and params.vision_model is not None:
            vision = local(params.vision_model, "vision")
        if wants_text:
            # One VLM named for both roles is loaded once and also rates the text axes.
            same = vision is not None and params.vision_model == params.text_model
            text = vision if same else local(params.text_model, "text")
        return text, vision

    def remote(base_url: str, model: str) -> OpenAIChatBackend:
        return OpenAIChatBackend(
            base_url,
            model,
            api_key_env=params.api_key_env,
            concurrency=params.concurrency,
            timeout_s=params.timeout_s,
            retries=params.retries,
            max_tokens=params.max_new_tokens,
            backoff_s=params.backoff_s,
            chat_template_kwargs=params.chat_template_kwargs,
        )

    if wants_text:
        text = remote(params.base_url, params.text_model)
    if wants_vision and params.vision_model is not None:
        vision = remote(params.vision_base_url or params.base_url, params.vision_model)
    return text, vision
