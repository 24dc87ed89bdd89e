"""Schema mapping: a source's raw records become unified samples (images + user/assistant turns).

A mapping is a preset for a known layout (FineVision/Cauldron, LLaVA, LAION, WebDataset caption
pairs) or field paths for a custom layout. A record that cannot be mapped is rejected with a
reason; nothing is dropped silently.

A mapping without a text rule is image-only: every sample gets ``texts: []``. With a caption
rule, an image whose record has none of the caption fields (an image-folder file without a
``.txt`` sidecar) is an image-only sample too, not an unmappable one; a caption that is present
but empty stays a text and meets the cleaning stage's text rules.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

import pyarrow as pa

from fineharbor.core.config import MappingSpec
from fineharbor.core.interleaved import DocumentError, document_segments, document_turns
from fineharbor.core.readers.fields import get_path, has_path
from fineharbor.core.schema import REJECT_SCHEMA, UNIFIED_SCHEMA, reject_row

# Candidate fields per preset, first present wins: real dumps disagree on capitalisation.
_CAPTION_CANDIDATES = {
    "laion": ("caption", "TEXT", "text", "alt_text", "ALT_TEXT"),
    "webdataset_caption": ("txt", "caption", "text", "json.caption"),
}


class MappingError(ValueError):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class TextRule:
    """The resolved text rule of a mapping: exactly one kind with its field paths."""

    # "texts" | "conversations" | "qa" | "caption" | "interleaved" | "none" (image-only)
    kind: str
    fields: tuple[str, ...]


IMAGE_ONLY = TextRule("none", ())


def resolve_rule(mapping: MappingSpec) -> TextRule:
    """Explicit fields win over the preset's defaults."""
    if mapping.image_only:
        return IMAGE_ONLY
    if mapping.texts:
        return TextRule("texts", (mapping.texts,))
    if mapping.conversations:
        return TextRule("conversations", (mapping.conversations,))
    if mapping.question and mapping.answer:
        return TextRule("qa", (mapping.question, mapping.answer))
    if mapping.caption:
        return TextRule("caption", (mapping.caption,))
    preset = mapping.preset
    if preset == "interleaved":
        return TextRule("interleaved", ("texts",))
    if preset in ("finevision", "cauldron"):
        return TextRule("texts", ("texts",))
    if preset == "llava":
        return TextRule("conversations", ("conversations",))
    if preset in _CAPTION_CANDIDATES:
        return TextRule("caption", _CAPTION_CANDIDATES[preset])
    raise ValueError(f"mapping {mapping!r} has an unknown preset")  # the config forbids this


def _text(value: object, field: str) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return str(value)
    raise MappingError("unmappable_record", f"field {field!r} is {type(value).__name__}, not text")


def _turns_from_texts(record: dict, field: str) -> list[dict]:
    value = get_path(record, field)
    if not isinstance(value, list):
        raise MappingError("unmappable_record", f"field {field!r} is not a list of turns")
    turns = []
    for index, turn in enumerate(value):
        if not isinstance(turn, dict):
            raise MappingError("unmappable_record", f"{field}[{index}] is not an object")
        turns.append(
            {
                "user": _text(turn.get("user"), f"{field}[{index}].user"),
                "assistant": _text(turn.get("assistant"), f"{field}[{index}].assistant"),
            }
        )
    return turns


def _turns_from_conversation(record: dict, field: str, mapping: MappingSpec) -> list[dict]:
    """ShareGPT: alternate human/gpt messages; a reply without a question gets an empty user."""
    messages = get_path(record, field)
    if not isinstance(messages, list):
        raise MappingError("unmappable_record", f"field {field!r} is not a list of messages")
    turns: list[dict] = []
    question: str | None = None
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise MappingError("unmappable_record", f"{field}[{index}] is not an object")
        role = message.get(mapping.role_field)
        content = _text(message.get(mapping.content_field), f"{field}[{index}]")
        if role in mapping.user_roles:
            question = content if question is None else f"{question}\n{content}"
        elif role in mapping.assistant_roles:
            turns.append({"user": question or "", "assistant": content})
            question = None
        elif role == "system":
            continue
        else:
            raise MappingError("unknown_role", f"{field}[{index}] has role {role!r}")
    if question is not None:
        raise MappingError("unanswered_turn", f"{field} ends with a question and no answer")
    return turns


def _first_present(record: dict, fields: tuple[str, ...]) -> tuple[str, object]:
    for field in fields:
        if has_path(record, field):
            return field, get_path(record, field)
    raise MappingError("unmappable_record", f"none of the fields {list(fields)} is present")


def map_record(record: dict, image_count: int, mapping: MappingSpec, rule: TextRule) -> list[dict]:
    """The unified turns of one record; raises MappingError when it cannot be mapped."""
    if rule.kind == "none":
        if not image_count:
            raise MappingError("empty_sample", "an image-only mapping, and the record has no image")
        return []
    if rule.kind == "caption" and image_count and not any(has_path(record, f) for f in rule.fields):
        return []  # an image without a caption: image-only
    if rule.kind == "texts":
        turns = _turns_from_texts(record, rule.fields[0])
    elif rule.kind == "conversations":
        turns = _turns_from_conversation(record, rule.fields[0], mapping)
    elif rule.kind == "qa":
        question_field, answer_field = rule.fields
        for field in rule.fields:
            if not has_path(record, field):
                raise MappingError("unmappable_record", f"field {field!r} is missing")
        turns = [
            {
                "user": _text(get_path(record, question_field), question_field),
                "assistant": _text(get_path(record, answer_field), answer_field),
            }
        ]
    else:
        field, value = _first_present(record, rule.fields)
        turns = [{"user": mapping.user_prompt, "assistant": _text(value, field)}]
    if not turns:
        raise MappingError("no_turns", "the record holds no conversation turns")
    return _strip_placeholders(turns, image_count, mapping.image_placeholder)


def _strip_placeholders(turns: list[dict], image_count: int, placeholder: str) -> list[dict]:
    """Images live in `images`; `<image>` markers are removed, and must not outnumber images."""
    pattern = re.compile(rf"\s*{re.escape(placeholder)}\s*")
    count = sum(turn["user"].count(placeholder) for turn in turns)
    if count > image_count:
        raise MappingError(
            "image_placeholder_mismatch",
            f"{count} {placeholder} placeholders but {image_count} images",
        )
    if count == 0:
        return turns
    return [
        {"user": pattern.sub("\n", turn["user"]).strip(), "assistant": turn["assistant"]}
        for turn in turns
    ]


def map_batch(raw: pa.RecordBatch | pa.Table, mapping: MappingSpec) -> tuple[pa.Table, pa.Table]:
    """Map a batch of raw rows; returns (unified rows, rejects)."""
    rule = resolve_rule(mapping)
    kept, rejected = [], []
    for row in raw.to_pylist():
        images = row["images"] or []
        document: dict = {}
        try:
            record = json.loads(row["record"])
            if rule.kind == "interleaved":
                document = _document(record, len(images))
                turns = document_turns(document["segments"])
            else:
                turns = map_record(record, len(images), mapping, rule)
        except (MappingError, DocumentError) as error:
            rejected.append(
                reject_row(row["source"], row["origin_key"], error.reason, error.detail)
            )
            continue
        except (ValueError, TypeError, AttributeError, RecursionError) as error:
            # A record shaped in a way no rule foresaw costs that record, not the partition.
            detail = f"{type(error).__name__}: {str(error)[:200]}"
            rejected.append(
                reject_row(row["source"], row["origin_key"], "unmappable_record", detail)
            )
            continue
        kept.append(
            {
                "sample_id": row["sample_id"],
                "source": row["source"],
                "origin_uri": row["origin_uri"],
                "origin_key": row["origin_key"],
                "images": images,
                "texts": turns,
                **document,
            }
        )
    return (
        pa.Table.from_pylist(kept, schema=UNIFIED_SCHEMA),
        pa.Table.from_pylist(rejected, schema=REJECT_SCHEMA),
    )


def _document(record: dict, image_count: int) -> dict:
    """The segments and metadata of an interleaved document record (the interleaved reader's
    ``texts`` aligned list, null at each image position)."""
    texts = record.get("texts")
    if not isinstance(texts, list):
        raise MappingError("unmappable_record", "field 'texts' is not a list")
    segments = document_segments(texts, image_count)
    if not any(s["text"] is not None for s in segments) and not image_count:
        raise MappingError("empty_sample", "the document holds no text and no image")
    metadata = record.get("metadata")
    if metadata is not None and not isinstance(metadata, str):
        metadata = json.dumps(metadata, ensure_ascii=False)
    return {"segments": segments, "metadata": metadata}
