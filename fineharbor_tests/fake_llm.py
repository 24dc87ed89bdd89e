"""A loopback OpenAI-compatible chat server for the judge tests (the ``fake_server`` fixture)."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

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


@contextmanager
def running_fake_server() -> Iterator[FakeServer]:
    """A :class:`FakeServer` on a free loopback port, served from a thread until the block ends."""
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
