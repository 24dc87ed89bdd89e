"""Tiny judge models built offline from configs, a loopback OpenAI-compatible server, samples.

Models: a 2-layer Llama causal LM and a tiny LLaVA (CLIP vision tower + 2-layer Llama), random
weights, a hand-made WordLevel tokenizer with a chat template, saved with ``save_pretrained`` and
loaded by path through :class:`TransformersBackend`, as a user's local model would be. An
"always 4" variant zeroes the final norm: every logit is then exactly 0, greedy argmax picks token
id 0, and id 0 is the word "4"; with one new token the real generate path answers "4".
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from aiohttp import web

from fineharbor.core.schema import UNIFIED_SCHEMA
from fineharbor_tests.conftest import make_image_bytes

SPECIALS = ["<pad>", "<eos>", "<unk>", "<|im_start|>", "<|im_end|>", "<image>"]
WORDS = ["4", "1", "2", "3", "5", "Rating", ":", "the", "a", "question", "answer", "image"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}"
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>{% else %}{{ c['text'] }}"
    "{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {word: index for index, word in enumerate(WORDS + SPECIALS)}  # "4" is id 0
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.decoder = decoders.WordPiece()  # joins words with spaces
    tokenizer.add_special_tokens(SPECIALS)  # existing ids, matched before pre-tokenization
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token="<pad>",
        eos_token="<eos>",
        unk_token="<unk>",
        chat_template=CHAT_TEMPLATE,
        extra_special_tokens={"image_token": "<image>"},
    )


def _text_config(tokenizer):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )


def _always_four(language_model) -> None:
    import torch

    with torch.no_grad():
        language_model.norm.weight.zero_()


def save_text_model(directory: Path, *, always_four: bool = False) -> Path:
    import torch
    from transformers import LlamaForCausalLM

    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    model = LlamaForCausalLM(_text_config(tokenizer))
    if always_four:
        _always_four(model.model)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def save_vision_model(directory: Path, *, always_four: bool = False) -> Path:
    import torch
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    tokenizer = build_tokenizer()
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(
            size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28}
        ),
        tokenizer=tokenizer,
        patch_size=14,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATE,
    )
    vision = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=28,
        patch_size=14,
        projection_dim=32,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=_text_config(tokenizer),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
    )
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config)
    if always_four:
        _always_four(model.model.language_model)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("judge_models")
    return {
        "text": save_text_model(root / "text"),
        "text_four": save_text_model(root / "text_four", always_four=True),
        "vision": save_vision_model(root / "vision"),
        "vision_four": save_vision_model(root / "vision_four", always_four=True),
    }


@pytest.fixture
def single_torch_thread() -> Iterator[None]:
    """Tiny matmuls gain nothing from threads and lose much on a busy 2-core CI machine
    (measured here under load: 12.8 s with the default threads, 1.6 s with one)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --------------------------------------------------------------------------- samples


def make_samples(n_turns: tuple[int, ...] = (2, 1, 1), no_image: tuple[int, ...] = (1,)):
    """Unified rows; rows listed in `no_image` have no images (text-only samples)."""
    rows = []
    for index, turns in enumerate(n_turns):
        images = [] if index in no_image else [{"bytes": make_image_bytes(index), "path": None}]
        texts = [
            {"user": f"Q{index}.{t}: what colour is the ball?", "assistant": f"red {index}.{t}"}
            for t in range(turns)
        ]
        rows.append(
            {
                "sample_id": f"s{index}",
                "source": "demo",
                "origin_uri": None,
                "origin_key": str(index),
                "images": images,
                "texts": texts,
            }
        )
    return pa.Table.from_pylist(rows, schema=UNIFIED_SCHEMA)


@pytest.fixture
def samples() -> pa.Table:
    return make_samples()


# --------------------------------------------------------------------------- loopback server

AXIS_REPLIES = {
    "FORMATTING": "Rating: 4",
    "RELEVANCE": "**Rating:** 5/5",
    "VISUAL DEPENDENCY": '{"rating": 3}',
    "IMAGE-QUESTION CORRESPONDENCE": "The image shows the ball.\nRating: 2",
}


@dataclass
class FakeServer:
    """Answers chat completions by axis; markers in the question script failures."""

    url: str = ""
    delay_s: float = 0.05
    hang_s: float = 2.0
    in_flight: int = 0
    max_in_flight: int = 0
    requests: int = 0
    bodies: list[dict[str, Any]] = field(default_factory=list)
    seen: dict[str, int] = field(default_factory=dict)
    statuses: list[int] = field(default_factory=list)

    def reset_counts(self) -> None:
        self.requests = 0
        self.max_in_flight = 0
        self.bodies.clear()
        self.statuses.clear()

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests += 1
        self.bodies.append(body)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return await self._answer(body)
        finally:
            self.in_flight -= 1

    async def _answer(self, body: dict[str, Any]) -> web.Response:
        system = body["messages"][0]["content"]
        user = body["messages"][1]["content"]
        parts = user if isinstance(user, list) else [{"type": "text", "text": user}]
        text = " ".join(p.get("text", "") for p in parts if p["type"] == "text")
        images = [p for p in parts if p["type"] == "image_url"]
        marker = next(
            (m for m in ("FAIL_ONCE", "SLOW_ONCE", "ALWAYS_500", "GARBAGE") if m in text), None
        )
        attempt = self.seen[text] = self.seen.get(text, 0) + 1
        await asyncio.sleep(self.delay_s)
        if marker == "ALWAYS_500" or (marker == "FAIL_ONCE" and attempt == 1):
            return self._status(500)
        if marker == "SLOW_ONCE" and attempt == 1:
            await asyncio.sleep(self.hang_s)  # beyond the client's timeout
        axis = next(name for name in AXIS_REPLIES if name in system)
        reply = AXIS_REPLIES[axis]
        if marker == "GARBAGE":
            reply = "I cannot decide."
        if axis == "IMAGE-QUESTION CORRESPONDENCE":
            ok = images and all(p["image_url"]["url"].startswith("data:image/") for p in images)
            reply = reply if ok else "no image was attached"
        self.statuses.append(200)
        payload = {"choices": [{"index": 0, "message": {"role": "assistant", "content": reply}}]}
        return web.Response(text=json.dumps(payload), content_type="application/json")

    def _status(self, status: int) -> web.Response:
        self.statuses.append(status)
        return web.Response(status=status, text="scripted failure")


@pytest.fixture
def fake_server() -> Iterator[FakeServer]:
    server = FakeServer()
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/chat/completions", server.handle)
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app)
    started = threading.Event()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        loop.run_until_complete(site.start())
        port = runner.addresses[0][1]
        server.url = f"http://127.0.0.1:{port}/v1"
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert started.wait(10), "loopback server did not start"
    try:
        yield server
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
