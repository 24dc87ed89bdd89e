"""Judge through any OpenAI-compatible ``/v1/chat/completions`` endpoint (vLLM, SGLang, TGI).

This is how FineVision served its 32B judges (vLLM). Requests run concurrently up to
``concurrency`` in flight; each has a ``timeout_s`` deadline; timeouts, connection errors, 408,
429 and 5xx responses are retried ``retries`` times with exponential backoff and jitter (a
``Retry-After`` header is honoured up to ``max_backoff_s``). Other 4xx responses are not retried:
the same request would fail again. A request that still fails yields ``None``; nothing raises
for one item. Images are sent as ``data:image/...;base64,`` URLs in ``image_url`` content parts
before the text, the layout vLLM and SGLang accept for Qwen2.5-VL. Sampling is greedy
(``temperature=0``) so a rerun of the same request gives the same rating.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import logging
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp

from fineharbor.core.judge.backend import JudgeRequest, image_mime

log = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


@dataclass
class OpenAIStats:
    """Transport counters since construction (the judge's own stats count per axis)."""

    requests: int = 0
    attempts: int = 0
    retries: int = 0
    failures: int = 0
    timeouts: int = 0


class _Retryable(Exception):
    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


class _Fatal(Exception):
    """A response that will not improve on retry (400, 401, 404, malformed body)."""


def chat_completions_url(base_url: str) -> str:
    """Accept ``http://h:8000``, ``http://h:8000/v1`` or the full endpoint URL."""
    url = base_url.rstrip("/")
    if url.endswith("/chat/completions"):
        return url
    if url.endswith("/v1"):
        return f"{url}/chat/completions"
    return f"{url}/v1/chat/completions"


def _retry_after(headers: Any) -> float | None:
    value = headers.get("Retry-After")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None  # an HTTP date; fall back to our own backoff


def _message_text(payload: Any) -> str:
    """The reply text; an empty string (not a failure) when the model produced none."""
    try:
        message = payload["choices"][0]["message"]
    except (KeyError, IndexError, TypeError) as error:
        raise _Fatal(f"response without choices[0].message: {str(payload)[:200]}") from error
    content = message.get("content") if isinstance(message, dict) else None
    if isinstance(content, list):  # some servers return content parts
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return content or ""


class OpenAIChatBackend:
    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key_env: str | None = None,
        concurrency: int = 16,
        timeout_s: float = 120.0,
        retries: int = 3,
        max_tokens: int = 32,
        backoff_s: float = 1.0,
        max_backoff_s: float = 30.0,
        chat_template_kwargs: dict[str, Any] | None = None,
    ) -> None:
        if concurrency < 1 or retries < 0 or timeout_s <= 0 or max_tokens < 1:
            raise ValueError("need concurrency >= 1, retries >= 0, timeout_s > 0, max_tokens >= 1")
        self.url = chat_completions_url(base_url)
        self.model = model
        self.concurrency = concurrency
        self.timeout_s = timeout_s
        self.retries = retries
        self.max_tokens = max_tokens
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.chat_template_kwargs = dict(chat_template_kwargs or {})
        self.stats = OpenAIStats()
        self._warned: set[str] = set()
        self._headers = {"Content-Type": "application/json"}
        if api_key_env:
            key = os.environ.get(api_key_env)
            if not key:
                raise ValueError(
                    f"judge endpoint {self.url}: environment variable {api_key_env} (api_key_env) "
                    "is not set; export the API key there or set api_key_env to null"
                )
            self._headers["Authorization"] = f"Bearer {key}"

    @property
    def name(self) -> str:
        return self.model

    def close(self) -> None:
        return None  # sessions live only inside one complete() call

    # ------------------------------------------------------------------ request body

    def _body(self, request: JudgeRequest) -> dict[str, Any]:
        user: str | list[dict[str, Any]] = request.user
        if request.images:
            parts: list[dict[str, Any]] = []
            for data in request.images:
                encoded = base64.b64encode(data).decode("ascii")
                url = f"data:{image_mime(data)};base64,{encoded}"
                parts.append({"type": "image_url", "image_url": {"url": url}})
            parts.append({"type": "text", "text": request.user})
            user = parts
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [
                {"role": "system", "content": request.system},
                {"role": "user", "content": user},
            ],
            "max_tokens": self.max_tokens,
            "temperature": 0.0,
            "n": 1,
        }
        if self.chat_template_kwargs:  # vLLM / SGLang extension (e.g. enable_thinking: false)
            body["chat_template_kwargs"] = self.chat_template_kwargs
        return body

    # ------------------------------------------------------------------ transport

    async def _post_once(self, session: aiohttp.ClientSession, body: dict[str, Any]) -> str:
        self.stats.attempts += 1
        try:
            async with session.post(self.url, json=body, headers=self._headers) as response:
                if response.status in RETRY_STATUSES:
                    raise _Retryable(f"HTTP {response.status}", _retry_after(response.headers))
                if response.status != 200:
                    detail = (await response.text())[:300]
                    raise _Fatal(f"HTTP {response.status}: {detail}")
                try:
                    payload = await response.json(content_type=None)
                except ValueError as error:
                    raise _Fatal(f"response is not JSON: {error}") from error
                return _message_text(payload)
        except TimeoutError as error:
            self.stats.timeouts += 1
            raise _Retryable(f"timed out after {self.timeout_s}s") from error
        except aiohttp.ClientError as error:  # connection refused/reset, payload errors
            raise _Retryable(f"{type(error).__name__}: {error}") from error

    def _warn(self, message: str) -> None:
        """Log each kind of failure once: a wrong model name fails every request the same way."""
        kind = message[:40]
        if kind in self._warned:
            log.debug("judge %s at %s: %s", self.model, self.url, message)
            return
        self._warned.add(kind)
        log.warning(
            "judge %s at %s: %s (further ones at debug level)", self.model, self.url, message
        )

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.max_backoff_s)
        base = min(self.max_backoff_s, self.backoff_s * (2**attempt))
        return base * random.uniform(0.5, 1.5)  # jitter: don't retry in lockstep

    async def _complete_one(
        self, session: aiohttp.ClientSession, gate: asyncio.Semaphore, request: JudgeRequest
    ) -> str | None:
        self.stats.requests += 1
        body: dict[str, Any] | None = None
        for attempt in range(self.retries + 1):
            try:
                async with gate:  # the slot is released while backing off
                    if body is None:
                        # Built inside the gate: only `concurrency` base64 bodies live at once.
                        body = self._body(request)
                    return await self._post_once(session, body)
            except _Fatal as error:
                self._warn(f"{error}")
                break
            except _Retryable as error:
                if attempt == self.retries:
                    self._warn(f"giving up after {attempt + 1} attempt(s): {error}")
                    break
                self.stats.retries += 1
                await asyncio.sleep(self._delay(attempt, error.retry_after))
            except (OSError, ValueError) as error:  # an image Pillow cannot identify
                self._warn(f"request not sent: {error}")
                break
        self.stats.failures += 1
        return None

    async def acomplete(self, requests: Sequence[JudgeRequest]) -> list[str | None]:
        gate = asyncio.Semaphore(self.concurrency)
        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        connector = aiohttp.TCPConnector(limit=self.concurrency)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            return list(
                await asyncio.gather(*(self._complete_one(session, gate, r) for r in requests))
            )

    def complete(self, requests: Sequence[JudgeRequest]) -> list[str | None]:
        if not requests:
            return []
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self.acomplete(requests))
        # Called from inside an event loop (a notebook, an async caller): run on a private loop
        # in a worker thread rather than nesting loops.
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            return pool.submit(asyncio.run, self.acomplete(requests)).result()
