"""The cleaning stage: unified batch in, (kept rows, rejected rows) out.

The rules, their order and their scopes are declared once in
:data:`fineharbor.core.cleaning.rules.RULES` (rendered in ``docs/cleaning-rules.md``); the first
that fails rejects the sample (one reject row per sample, ``REJECT_SCHEMA``, the detail giving
the measured value and the threshold). Here the row rules run first, then each image goes
through the decoder (which runs the image rules), then GUI coordinates are normalised with the
first screenshot's size. Kept images are converted to RGB, resized and re-encoded.

:func:`clean_batch` runs in the calling process (no time limit); :func:`clean_batches` runs
batches in worker processes with a per-image time limit and survives decoder crashes (the
process-pool engine, see :mod:`fineharbor.core.cleaning.pool`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any, Protocol

import pyarrow as pa

from fineharbor.core.cleaning import gui_actions
from fineharbor.core.cleaning.images import ImageResult, clean_image
from fineharbor.core.cleaning.params import CleanParams
from fineharbor.core.cleaning.reasons import GUI_ACTION_UNPARSEABLE, IMAGE_MISSING, Reject
from fineharbor.core.cleaning.rules import WEB_SWITCHES, Sample, row_reject
from fineharbor.core.interleaved import DocumentError, resync_segments
from fineharbor.core.schema import UNIFIED_SCHEMA, reject_row, rejects_table

if TYPE_CHECKING:
    from fineharbor.core.distributed.pool import WorkerPools

IMAGE_INFO_TYPE = pa.struct(
    [
        pa.field("orig_width", pa.int32()),
        pa.field("orig_height", pa.int32()),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("format", pa.string()),
        pa.field("animated", pa.bool_()),
        pa.field("resized", pa.bool_()),
        pa.field("reencoded", pa.bool_()),
        pa.field("encoded_format", pa.string()),
        pa.field("laplacian_var", pa.float32()),
        pa.field("entropy", pa.float32()),
        # warnings the decoder raised or printed (libtiff's C stderr): counted, never printed
        pa.field("decoder_warnings", pa.int32()),
    ]
)

# Columns the cleaning stage appends to the unified schema.
CLEANING_FIELDS = [
    pa.field("image_info", pa.list_(IMAGE_INFO_TYPE)),
    pa.field("language", pa.string()),
    pa.field("language_confidence", pa.float32()),
    pa.field("dropped_turns", pa.int32()),
    # the PII types found in the turns, one entry per match (before redaction); null when PII
    # detection is off for the source
    pa.field("pii_found", pa.list_(pa.string())),
]

CLEANED_SCHEMA = pa.schema([*UNIFIED_SCHEMA, *CLEANING_FIELDS])

# (data, params, pair=...) -> ImageResult; replaceable for tests and custom decoders. It must be
# a module-level function so that worker processes can import it.
Decoder = Callable[..., ImageResult]

_JPEG_SUFFIXES = {".jpg", ".jpeg", ".jpe", ".jfif"}


class Hooks(Protocol):
    """Progress callbacks; the process pool uses them to enforce the per-row and per-image
    time limits and to blame the row a crash happened on."""

    def row_start(self, index: int) -> None: ...

    def image_start(self, index: int) -> None: ...

    def image_end(self) -> None: ...


class _NoHooks:
    def row_start(self, index: int) -> None:
        pass

    def image_start(self, index: int) -> None:
        pass

    def image_end(self) -> None:
        pass


NO_HOOKS = _NoHooks()


def cleaned_schema(input_schema: pa.Schema) -> pa.Schema:
    """The input columns (kept, in order) plus the cleaning columns."""
    names = {f.name for f in CLEANING_FIELDS}
    return pa.schema([f for f in input_schema if f.name not in names] + CLEANING_FIELDS)


_WITHOUT_WEB: dict[int, tuple[CleanParams, CleanParams]] = {}


def _without_web_rules(params: CleanParams) -> CleanParams:
    """``params`` with the rules of scope ``web`` off; one copy per params object."""
    cached = _WITHOUT_WEB.get(id(params))
    if cached is None or cached[0] is not params:
        if len(_WITHOUT_WEB) > 8:
            _WITHOUT_WEB.clear()
        off = dict.fromkeys(WEB_SWITCHES, False)
        cached = _WITHOUT_WEB[id(params)] = (params, params.model_copy(update=off))
    return cached[1]


def _reject(row: dict, reject: Reject) -> dict:
    out = reject_row(str(row.get("source") or ""), str(row.get("origin_key") or ""), *reject)
    if row.get("sample_id"):
        out["sample_id"] = row["sample_id"]
    return out


def _image_path(path: str | None, result: ImageResult) -> str | None:
    if not path or result.info is None or not result.extension:
        return path
    suffix = PurePosixPath(path).suffix.lower()
    encoded = result.info.encoded_format
    fits = (
        (encoded == "JPEG" and suffix in _JPEG_SUFFIXES)
        or (encoded == "PNG" and suffix == ".png")
        or (encoded == "WEBP" and suffix == ".webp")
    )
    if fits or not suffix:
        return path
    return path[: len(path) - len(suffix)] + result.extension


def process_row(
    row: dict[str, Any],
    params: CleanParams,
    *,
    decoder: Decoder | None = None,
    hooks: Hooks = NO_HOOKS,
) -> tuple[dict | None, dict | None]:
    """Clean one unified sample. Returns (kept row, None) or (None, reject row)."""
    decode = decoder or clean_image
    source = str(row.get("source") or "")
    sample = Sample(row, params)
    found = row_reject(sample, params)
    if found:
        return None, _reject(row, found)
    pair = sample.pair
    image_params = params if params.web_pair_rules_apply(source) else _without_web_rules(params)

    images = row.get("images") or []
    out_images: list[dict] = []
    infos: list[dict] = []
    for j, image in enumerate(images):
        prefix = f"image {j}: " if len(images) > 1 else ""
        data = image.get("bytes") if image else None
        if not data:
            path = image.get("path") if image else None
            detail = f"no bytes (path {path!r})" if path else "no bytes"
            return None, _reject(row, Reject(IMAGE_MISSING, prefix + detail))
        hooks.image_start(j)
        try:
            result = decode(data, image_params, pair=pair)
        finally:
            hooks.image_end()
        if not result.ok or result.info is None:
            reason = result.reason or "image_corrupt"
            warned = f" ({result.warnings} decoder warnings)" if result.warnings else ""
            return None, _reject(row, Reject(reason, prefix + (result.detail or "") + warned))
        out_images.append({"bytes": result.data, "path": _image_path(image.get("path"), result)})
        infos.append({**result.info.as_row(), "decoder_warnings": result.warnings})

    # GUI coordinates, once the first screenshot's size is known
    out_turns = [{"user": t["user"], "assistant": t["assistant"]} for t in sample.turns]
    if sample.gui:
        size = (infos[0]["orig_width"], infos[0]["orig_height"]) if infos else None
        for i, turn in enumerate(sample.turns):
            try:
                out_turns[i]["assistant"] = gui_actions.render_items(sample.parsed[id(turn)], size)
            except gui_actions.GuiActionError as error:
                return None, _reject(row, Reject(GUI_ACTION_UNPARSEABLE, f"turn {i}: {error}"))

    out = dict(row)
    if row.get("segments") is not None:  # an interleaved document: its order follows its text
        try:
            out["segments"] = resync_segments(row["segments"], out_turns)
        except DocumentError as error:
            return None, _reject(row, Reject(error.reason, error.detail))
    out["images"] = out_images
    out["texts"] = out_turns
    out["image_info"] = infos
    out["language"] = sample.language
    out["language_confidence"] = sample.confidence
    out["dropped_turns"] = sample.dropped
    out["pii_found"] = sample.pii
    return out, None


def iter_outcomes(
    batch: pa.RecordBatch | pa.Table,
    params: CleanParams,
    *,
    decoder: Decoder | None = None,
    hooks: Hooks = NO_HOOKS,
) -> Iterator[tuple[int, dict | None, dict | None]]:
    """(row index, kept row or None, reject row or None) for each row."""
    for index, row in enumerate(batch.to_pylist()):
        hooks.row_start(index)
        kept, rejected = process_row(row, params, decoder=decoder, hooks=hooks)
        yield index, kept, rejected


def kept_table(rows: list[dict], schema: pa.Schema) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=schema)


def clean_batch(
    batch: pa.RecordBatch | pa.Table,
    params: CleanParams,
    *,
    decoder: Decoder | None = None,
    hooks: Hooks = NO_HOOKS,
) -> tuple[pa.Table, pa.Table]:
    """Clean one batch in this process. Returns (kept rows, rejected rows).

    No time limit applies here (a decoder stuck in C cannot be interrupted in process); use
    :func:`clean_batches` for untrusted images.
    """
    schema = cleaned_schema(batch.schema)
    kept: list[dict] = []
    rejected: list[dict] = []
    for _, keep, reject in iter_outcomes(batch, params, decoder=decoder, hooks=hooks):
        if keep is not None:
            kept.append(keep)
        else:
            rejected.append(reject)  # type: ignore[arg-type]
    return kept_table(kept, schema), rejects_table(rejected)


def clean_batches(
    batches: Iterable[pa.RecordBatch | pa.Table],
    params: CleanParams,
    *,
    decoder: Decoder | None = None,
    pools: WorkerPools | None = None,
) -> Iterator[tuple[pa.Table, pa.Table]]:
    """Clean batches in ``params.processes`` worker processes; yields (kept, rejected) per
    input batch, in input order.

    Each image is decoded under ``params.decode_timeout_s``; a worker that stalls is killed and
    one that crashes (e.g. a segfault in a decoder) is replaced, costing only the sample being
    processed (``image_decode_timeout`` / ``image_corrupt``). At most about two batches per
    worker are held in memory. ``pools``: warm pools to reuse (their workers load the language
    models once); without it the pool lives as long as the stream.
    """
    from fineharbor.core.cleaning.pool import cleaning_work
    from fineharbor.core.distributed.pool import map_in_pool

    yield from map_in_pool(cleaning_work(params, decoder), batches, pools)
