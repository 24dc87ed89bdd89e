"""Dotted field paths into nested records (``meta.caption``, ``turns.0.text``)."""

from __future__ import annotations

from typing import Any

from fineharbor.core.readers.common import ImageFetchError

_MISSING = object()


def get_path(record: Any, path: str, default: Any = None) -> Any:
    value = lookup(record, path)
    return default if value is _MISSING else value


def has_path(record: Any, path: str) -> bool:
    return lookup(record, path) is not _MISSING


def lookup(record: Any, path: str) -> Any:
    """The value at `path`, or the module's _MISSING sentinel when any step is absent."""
    value = record
    for part in path.split("."):
        if isinstance(value, dict):
            if part not in value:
                return _MISSING
            value = value[part]
        elif isinstance(value, list) and part.lstrip("-").isdigit():
            index = int(part)
            if not -len(value) <= index < len(value):
                return _MISSING
            value = value[index]
        else:
            return _MISSING
    return value


def checked_reference(reference: str) -> str:
    """An image path taken from a record, refused when no file system could open it."""
    if "\x00" in reference:
        raise ImageFetchError("image_path_invalid", f"{ascii(reference)[:200]} holds a NUL byte")
    return reference
