"""The OpenAI-compatible backend against a scripted chat-completions server on loopback."""

from __future__ import annotations

import asyncio
import base64

import pyarrow as pa
import pytest

from fineharbor.core.judge import (
    AXES,
    JudgeParams,
    JudgeRequest,
    JudgmentCache,
    OpenAIChatBackend,
    make_backends,
    rate_samples,
)
from fineharbor.core.judge.openai_backend import chat_completions_url
from fineharbor_tests.conftest import make_image_bytes
from fineharbor_tests.core.judge.conftest import make_samples

FAST = {"timeout_s": 0.5, "backoff_s": 0.01, "max_backoff_s": 0.05}


def with_questions(samples: pa.Table, questions: dict[tuple[int, int], str]) -> pa.Table:
    texts = samples.column("texts").to_pylist()
    for (row, turn), question in questions.items():
        texts[row][turn]["user"] = question
    index = samples.schema.get_field_index("texts")
    return samples.set_column(index, "texts", pa.array(texts, samples.schema.field(index).type))


def test_rates_every_axis_with_bounded_concurrency_and_cache(fake_server, samples, tmp_path):
    params = JudgeParams(
        backend="openai", base_url=fake_server.url, concurrency=3, timeout_s=5, retries=2
    )
    text, vision = make_backends(params)
    with JudgmentCache(tmp_path) as cache:
        table, stats = rate_samples(samples, text, vision, params, cache)
        rows = table.to_pylist()
        assert rows[0]["formatting_ratings"] == [4, 4]
        assert rows[0]["relevance_ratings"] == [5, 5]  # "**Rating:** 5/5"
        assert rows[0]["visual_dependency_ratings"] == [3, 3]  # '{"rating": 3}'
        assert rows[0]["image_correspondence_ratings"] == [2, 2]  # only when images arrived
        assert rows[1]["image_correspondence_ratings"] is None  # s1 has no image
        assert [r["relevance_min"] for r in rows] == [5, 5, 5]
        assert stats.requests_sent == fake_server.requests == 15
        assert stats.total_parse_failures == stats.total_request_failures == 0
        assert 1 < fake_server.max_in_flight <= 3  # concurrent, never above the bound

        # Image parts: data URLs before the text, only for image_correspondence.
        for body in fake_server.bodies:
            system, user = body["messages"][0]["content"], body["messages"][1]["content"]
            assert body["temperature"] == 0 and body["model"] in (text.name, vision.name)
            if "IMAGE-QUESTION" in system:
                assert body["model"] == "Qwen/Qwen2.5-VL-32B-Instruct"
                assert [p["type"] for p in user] == ["image_url", "text"]
                url = user[0]["image_url"]["url"]
                assert url.startswith("data:image/jpeg;base64,")
                assert base64.b64decode(url.split(",", 1)[1])[:2] == b"\xff\xd8"
            else:
                assert isinstance(user, str) and body["model"] == "Qwen/Qwen3-32B"

        fake_server.reset_counts()
        again, stats2 = rate_samples(samples, text, vision, params, cache)
        assert fake_server.requests == 0 and stats2.requests_sent == 0
        assert stats2.total_cache_hits == 15 and again.equals(table)


def test_retries_timeouts_and_counted_failures(fake_server, tmp_path):
    samples = with_questions(
        make_samples((4,), no_image=()),
        {
            (0, 0): "FAIL_ONCE what is it?",
            (0, 1): "SLOW_ONCE what is it?",
            (0, 2): "ALWAYS_500 what is it?",
            (0, 3): "GARBAGE what is it?",
        },
    )
    params = JudgeParams(
        backend="openai", base_url=fake_server.url, retries=2, timeout_s=0.5, backoff_s=0.01
    )
    text, vision = make_backends(params)
    fake_server.hang_s = 1.5
    with JudgmentCache(tmp_path) as cache:
        table, stats = rate_samples(samples, text, vision, params, cache)
        row = table.to_pylist()[0]
        for axis in AXES:
            ratings = row[f"{axis}_ratings"]
            assert ratings[0] is not None and ratings[1] is not None  # recovered by retrying
            assert ratings[2] is None and ratings[3] is None
            assert stats.request_failures[axis] == 1  # ALWAYS_500 after 1 + 2 attempts
            assert stats.parse_failures[axis] == 1  # GARBAGE
            assert stats.requests[axis] == 4
        assert text.stats.timeouts >= 3 and vision.stats.timeouts >= 1
        assert fake_server.statuses.count(500) == 4 * 1 + 4 * 3  # FAIL_ONCE + ALWAYS_500 x3

        # The same run does not send a failed request again (no second round of backoff).
        fake_server.reset_counts()
        _, stats1 = rate_samples(samples, text, vision, params, cache)
        assert stats1.requests_sent == 0 and fake_server.requests == 0
        assert sum(stats1.repeated_failures.values()) == stats1.total_request_failures == 4

    # The next run sends only the failed requests again; the unparseable reply is cached.
    fake_server.reset_counts()
    with JudgmentCache(tmp_path) as cache:
        _, stats2 = rate_samples(samples, text, vision, params, cache)
        assert stats2.requests_sent == 4 and fake_server.requests == 4 * 3  # ALWAYS_500 again
        assert stats2.total_cache_hits == 12 and stats2.total_request_failures == 4


def test_no_retry_on_client_errors_and_unreachable_server(fake_server):
    backend = OpenAIChatBackend(fake_server.url.replace("/v1", "/nope"), "m", retries=3, **FAST)
    assert backend.complete([JudgeRequest("s", "u")]) == [None]  # 404: not retried
    assert backend.stats.attempts == 1 and backend.stats.failures == 1

    dead = OpenAIChatBackend("http://127.0.0.1:9/v1", "m", retries=1, **FAST)
    assert dead.complete([JudgeRequest("s", "u"), JudgeRequest("s", "v")]) == [None, None]
    assert dead.stats.attempts == 4 and dead.stats.retries == 2


def test_bad_image_fails_only_its_request(fake_server):
    backend = OpenAIChatBackend(fake_server.url, "m", **FAST)
    good = make_image_bytes(1, fmt="PNG")
    replies = backend.complete(
        [
            JudgeRequest("IMAGE-QUESTION CORRESPONDENCE", "q", (good,)),
            JudgeRequest("IMAGE-QUESTION CORRESPONDENCE", "q", (b"not an image",)),
        ]
    )
    assert replies[0].endswith("Rating: 2") and replies[1] is None
    assert fake_server.bodies[0]["messages"][1]["content"][0]["image_url"]["url"].startswith(
        "data:image/png;base64,"
    )


def test_works_inside_a_running_event_loop(fake_server):
    backend = OpenAIChatBackend(fake_server.url, "m", **FAST)

    async def caller():
        return backend.complete([JudgeRequest("FORMATTING", "q")])

    assert asyncio.run(caller()) == ["Rating: 4"]


def test_api_key_and_template_kwargs(fake_server, monkeypatch):
    with pytest.raises(ValueError, match="JUDGE_KEY_FOR_TEST"):
        OpenAIChatBackend(fake_server.url, "m", api_key_env="JUDGE_KEY_FOR_TEST")
    monkeypatch.setenv("JUDGE_KEY_FOR_TEST", "secret")
    backend = OpenAIChatBackend(
        fake_server.url,
        "m",
        api_key_env="JUDGE_KEY_FOR_TEST",
        chat_template_kwargs={"enable_thinking": False},
        **FAST,
    )
    assert backend._headers["Authorization"] == "Bearer secret"
    assert backend.complete([JudgeRequest("RELEVANCE", "q")]) == ["**Rating:** 5/5"]
    assert fake_server.bodies[-1]["chat_template_kwargs"] == {"enable_thinking": False}


def test_endpoint_urls():
    assert chat_completions_url("http://h:8000") == "http://h:8000/v1/chat/completions"
    assert chat_completions_url("http://h:8000/v1/") == "http://h:8000/v1/chat/completions"
    full = "http://h/v1/chat/completions"
    assert chat_completions_url(full) == full
