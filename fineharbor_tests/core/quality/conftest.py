"""Tiny open_clip models with random weights, saved in the demo CLIP's local-directory layout
and loaded through the path users take (no weights are ever downloaded), plus a fake embedder
with hand-set vectors for checking the scoring rules exactly."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fineharbor.testing.models import save_tiny_clip


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory) -> Path:
    return save_tiny_clip(tmp_path_factory.mktemp("tiny_clip"))


def png(color: tuple[int, int, int], size: tuple[int, int] = (40, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def image(data: bytes | None) -> dict:
    return {"bytes": data, "path": None}


def turn(user: str, assistant: str) -> dict:
    return {"user": user, "assistant": assistant}


class FakeEmbedder:
    """Unit vectors looked up by image bytes and by text; unknown images are undecodable."""

    def __init__(self, images: dict[bytes, list[float]], texts: dict[str, list[float]]):
        self.images = {k: _unit(v) for k, v in images.items()}
        self.texts = {k: _unit(v) for k, v in texts.items()}
        self.dim = len(next(iter(self.texts.values())))
        self.text_calls: list[list[str]] = []

    def embed_images(self, images) -> np.ndarray:
        rows = [self.images.get(data, np.full(self.dim, np.nan)) for data in images]
        return np.array(rows, dtype=np.float32).reshape(len(rows), self.dim)

    def embed_texts(self, texts) -> np.ndarray:
        self.text_calls.append(list(texts))
        return np.array([self.texts[t] for t in texts], dtype=np.float32)


def _unit(vector: list[float]) -> np.ndarray:
    array = np.asarray(vector, dtype=np.float32)
    return array / np.linalg.norm(array)
