"""Tiny open_clip models with random weights, saved in the demo CLIP's local-directory layout
and loaded through the path users take (no weights are ever downloaded), plus a fake embedder
with hand-set vectors for checking the scoring rules exactly, and the judge tests' loopback
OpenAI-compatible server answering the MLLM writer's level prompts."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from aiohttp import web
from PIL import Image

from fineharbor.core.quality.synthetic import DOCUMENT_TASKS, LEVEL_TASKS
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


WRITTEN = {
    3: "A {colour} square on white.",
    2: "A purple square on white.",
    1: "An image.",
    0: "A cat.",
}


def _level_of(prompt: str) -> int:
    if "Rewrite this web document" in prompt:
        return next(level for level, task in DOCUMENT_TASKS.items() if task in prompt)
    return next(level for level, task in LEVEL_TASKS.items() if task.split("{kind}")[1] in prompt)


@pytest.fixture
def writer_server(fake_server):
    """The loopback server answering level prompts: the text of the asked level, naming the
    reference's colour; "FAIL" in the reference answers 500 for level 2; judge rating prompts
    get "Rating: 4". A document gets the paragraphs it asks for, one short at level 1 when its
    reference says "SHORT"."""

    async def answer(body: dict) -> web.Response:
        system, user = body["messages"][0]["content"], body["messages"][1]["content"]
        text = " ".join(p["text"] for p in user if p["type"] == "text")
        images = [p for p in user if p["type"] == "image_url"]
        if "rates how well a text matches" not in system:  # a judge rating, not a writer
            reply = "Rating: 4"
            payload = {"choices": [{"message": {"role": "assistant", "content": reply}}]}
            return web.Response(text=json.dumps(payload), content_type="application/json")
        assert images, "the writer must see the images"
        assert all(p["image_url"]["url"].startswith("data:image/png") for p in images)
        level = _level_of(text)
        fake_server.seen[text] = fake_server.seen.get(text, 0) + 1
        if "FAIL" in text and level == 2:
            return fake_server._status(500)
        asked = re.search(r"Write exactly (\d+) paragraphs", text)
        if asked:  # an interleaved document
            colour = re.search(r"\bA (\w+) square", text).group(1)
            count = int(asked.group(1)) - (level == 1 and "SHORT" in text)
            reply = "\n\n".join([WRITTEN[level].format(colour=colour)] * count)
        else:
            colour = re.search(r"<reference>\nA (\w+)", text).group(1)
            reply = WRITTEN[level].format(colour=colour)
        if len(images) > 1 and not asked:
            reply = "\n\n".join(f'"{reply}"' for _ in images)  # one quoted paragraph per image
        fake_server.statuses.append(200)
        payload = {"choices": [{"index": 0, "message": {"role": "assistant", "content": reply}}]}
        return web.Response(text=json.dumps(payload), content_type="application/json")

    fake_server._answer = answer
    return fake_server
