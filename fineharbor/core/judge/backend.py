"""What every judge backend accepts and returns.

A backend turns :class:`JudgeRequest` s (a system prompt, a user prompt and optional images as
encoded bytes) into reply strings, one per request and in order. A request that fails (timeout,
server error, undecodable image) yields ``None`` instead of raising, so one bad item never costs
a batch; the caller counts the ``None`` s. ``name`` identifies the model in the judgment cache.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from PIL import Image


class JudgeModelNotFoundError(FileNotFoundError):
    """A configured judge model that is neither a local directory nor reachable on the Hub."""


@dataclass(frozen=True)
class JudgeRequest:
    system: str
    user: str
    images: tuple[bytes, ...] = field(default=(), repr=False)

    def digest(self) -> str:
        """Hash of everything the judge sees: a changed text or image invalidates a cached reply."""
        h = hashlib.sha256()
        for part in (self.system, self.user):
            h.update(part.encode())
            h.update(b"\x00")
        for image in self.images:
            h.update(hashlib.sha256(image).digest())
        return h.hexdigest()[:32]


@runtime_checkable
class JudgeBackend(Protocol):
    @property
    def name(self) -> str:
        """The model identifier used in cache keys."""
        ...

    def complete(self, requests: Sequence[JudgeRequest]) -> list[str | None]:
        """One reply per request, in order; ``None`` where the request failed."""
        ...

    def close(self) -> None:
        """Release the model / connections; the backend may be used again afterwards."""
        ...


class CallableBackend:
    """A backend from a plain function: for tests, demos and rule-based judges."""

    def __init__(self, name: str, reply: Callable[[JudgeRequest], str | None]) -> None:
        self._name = name
        self._reply = reply
        self.calls = 0  # number of complete() calls, so tests can prove the cache was used
        self.requests = 0

    @property
    def name(self) -> str:
        return self._name

    def complete(self, requests: Sequence[JudgeRequest]) -> list[str | None]:
        self.calls += 1
        self.requests += len(requests)
        return [self._reply(request) for request in requests]

    def close(self) -> None:
        return None


def image_mime(data: bytes) -> str:
    """MIME type from the header, for ``data:`` URLs; Pillow reads only the header here."""
    with Image.open(io.BytesIO(data)) as image:
        fmt = image.format
    mime = Image.MIME.get(fmt or "")
    if mime is None:
        raise ValueError(f"unrecognised image format {fmt!r}")
    return mime


def decode_image(data: bytes) -> Image.Image:
    """Decode fully to RGB (lazy decoding would defer errors into the model's preprocessing)."""
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return image.convert("RGB")
