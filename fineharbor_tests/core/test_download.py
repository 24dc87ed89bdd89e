"""Tests for the asynchronous downloader against a loopback HTTP server (no other network)."""

from __future__ import annotations

import contextlib
import gzip
import ipaddress
import random
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar
from urllib.parse import parse_qs, urlsplit

import aiohappyeyeballs
import pytest
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from fineharbor.core.config import DownloadParams
from fineharbor.core.download import (
    Downloader,
    DownloadResult,
    has_noai_directive,
    is_public_address,
)

SMALL_LIMIT = 4096


def image_bytes(key: str) -> bytes:
    """Deterministic per-key payload, so order and content can both be checked."""
    return (f"<img {key}>".encode() * 50)[:1000]


@dataclass
class ServerState:
    hits: Counter[str] = field(default_factory=Counter)
    active: int = 0
    max_active: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def enter(self, path: str) -> None:
        with self.lock:
            self.hits[path] += 1
            self.active += 1
            self.max_active = max(self.max_active, self.active)

    def leave(self) -> None:
        with self.lock:
            self.active -= 1


class Handler(BaseHTTPRequestHandler):
    """Routes: /img/<key>[?delay_ms=], /status/<code>, /flaky/<key>, /slow, /big?cl=0|1, /gzip,
    /robots?tag=, /redirect?to=, /loop/<n>."""

    state: ServerState

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        query = {key: values[0] for key, values in parse_qs(parts.query).items()}
        self.state.enter(parts.path)
        self.counted = True
        try:
            self.route(parts.path, query)
        finally:
            self.leave()

    def leave(self) -> None:
        """Counted out once, before the body goes out: a client that has read the whole body
        may start its next request before this thread runs again, which is not concurrency."""
        if self.counted:
            self.counted = False
            self.state.leave()

    def route(self, path: str, query: dict[str, str]) -> None:
        head, _, rest = path.lstrip("/").partition("/")
        if head == "img":
            time.sleep(int(query.get("delay_ms", "0")) / 1000)
            self.send_body(200, image_bytes(rest))
        elif head == "status":
            self.send_body(int(rest), b"nope")
        elif head == "flaky":
            first = self.state.hits[path] == 1
            self.send_body(503 if first else 200, b"busy" if first else image_bytes(rest))
        elif head == "slow":
            time.sleep(1.5)
            self.send_body(200, b"late")
        elif head == "big":
            self.send_body(200, b"x" * (SMALL_LIMIT * 3), content_length=query["cl"] == "1")
        elif head == "gzip":
            packed = gzip.compress(b"\0" * SMALL_LIMIT * 10)
            self.send_body(200, packed, headers={"Content-Encoding": "gzip"})
        elif head == "robots":
            self.send_body(200, image_bytes("robots"), headers={"X-Robots-Tag": query["tag"]})
        elif head == "redirect":
            self.send_body(302, b"", headers={"Location": query["to"]})
        elif head == "loop":
            self.send_body(302, b"", headers={"Location": f"/loop/{int(rest) + 1}"})
        else:
            self.send_body(404, b"unknown route")

    def send_body(
        self,
        status: int,
        body: bytes,
        *,
        content_length: bool = True,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "image/jpeg")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if content_length:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()  # HTTP/1.0: the connection closes, ending a body without a length
        self.leave()
        with contextlib.suppress(ConnectionError):  # the client may hang up (too_large)
            self.wfile.write(body)


@dataclass
class Server:
    base: str
    port: int
    state: ServerState


@pytest.fixture
def server() -> Iterator[Server]:
    state = ServerState()
    handler = type("BoundHandler", (Handler,), {"state": state})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    httpd.block_on_close = False
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    port = httpd.server_address[1]
    try:
        yield Server(f"http://127.0.0.1:{port}", port, state)
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def params(**overrides: object) -> DownloadParams:
    values: dict[str, object] = {
        "concurrency": 4,
        "timeout_s": 5.0,
        "retries": 0,
        "backoff_s": 0.0,
        "max_bytes": SMALL_LIMIT,
    }
    values.update(overrides)
    return DownloadParams(**values)


def fetch(urls: list[str], **kwargs: object) -> list[DownloadResult]:
    """Download with loopback allowed unless the caller decides the address policy itself."""
    download_params = kwargs.pop("download_params", None) or params()
    if "address_policy" not in kwargs:
        kwargs.setdefault("allow_private_addresses", True)
    with Downloader(download_params, **kwargs) as downloader:
        return list(downloader.map(urls))


# --------------------------------------------------------------------------- success, order


def test_success_returns_the_exact_bytes(server: Server) -> None:
    (result,) = fetch([f"{server.base}/img/a"])
    assert result.ok and result.error_code is None and result.error_message is None
    assert result.content == image_bytes("a")
    assert result.http_status == 200
    assert result.final_url == f"{server.base}/img/a"
    assert result.attempts == 1
    assert "content" not in repr(result)  # bytes stay out of logs


def test_order_is_preserved_and_concurrency_bounded(server: Server) -> None:
    rng = random.Random(0)
    urls = [f"{server.base}/img/{i}?delay_ms={rng.randint(0, 6)}" for i in range(300)]
    finished: list[int] = []
    results = fetch(urls, download_params=params(concurrency=3), progress=finished.append)
    assert [r.url for r in results] == urls
    assert [r.content for r in results] == [image_bytes(str(i)) for i in range(300)]
    assert all(r.ok for r in results)
    assert sum(finished) == 300
    assert server.state.max_active <= 3


def test_map_streams_without_reading_the_whole_input(server: Server) -> None:
    pulled = 0

    def urls() -> Iterator[str]:
        nonlocal pulled
        for i in range(10_000):
            pulled += 1
            yield f"{server.base}/img/{i}"

    with Downloader(params(concurrency=2), allow_private_addresses=True) as downloader:
        results = downloader.map(urls())
        first = next(results)
        assert first.ok
        assert pulled <= 4 * 2 + 1
        results.close()  # abandoning the iterator cancels the window and exits cleanly
    assert not any(t.name == "fineharbor-download" for t in threading.enumerate())


def test_non_string_and_empty_inputs_still_get_one_result_each(server: Server) -> None:
    urls = ["", None, f"{server.base}/img/z"]
    results = fetch(urls)  # type: ignore[arg-type]
    assert [r.error_code for r in results] == ["invalid_url", "invalid_url", None]


# --------------------------------------------------------------------------- HTTP errors, retries


def test_404_fails_at_once_without_retry(server: Server) -> None:
    (result,) = fetch([f"{server.base}/status/404"], download_params=params(retries=2))
    assert not result.ok
    assert (result.error_code, result.error_message) == ("http_error", "HTTP 404")
    assert result.http_status == 404
    assert result.attempts == 1
    assert server.state.hits["/status/404"] == 1


def test_5xx_and_429_are_retried_until_retries_run_out(server: Server) -> None:
    urls = [f"{server.base}/status/500", f"{server.base}/status/429"]
    results = fetch(urls, download_params=params(retries=2, backoff_s=0.01))
    assert [r.error_code for r in results] == ["http_error", "http_error"]
    assert [r.attempts for r in results] == [3, 3]
    assert server.state.hits["/status/500"] == 3
    assert server.state.hits["/status/429"] == 3


def test_503_then_success_is_retried(server: Server) -> None:
    (result,) = fetch([f"{server.base}/flaky/k"], download_params=params(retries=2, backoff_s=0.01))
    assert result.ok and result.content == image_bytes("k")
    assert result.attempts == 2
    assert server.state.hits["/flaky/k"] == 2


def test_slow_endpoint_times_out_and_is_retried(server: Server) -> None:
    (result,) = fetch([f"{server.base}/slow"], download_params=params(timeout_s=0.3, retries=1))
    # a timeout, not the image the endpoint sends after 1.5 s: neither attempt waited for it
    assert not result.ok and result.error_code == "timeout"
    assert result.attempts == 2


def test_connection_refused_is_a_connection_error() -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    (result,) = fetch([f"http://127.0.0.1:{port}/x"])
    assert result.error_code == "connection_error" and result.http_status is None


# --------------------------------------------------------------------------- size, noai


@pytest.mark.parametrize("with_length", [True, False])
def test_oversized_body_is_too_large(server: Server, with_length: bool) -> None:
    url = f"{server.base}/big?cl={int(with_length)}"
    (result,) = fetch([url])
    assert not result.ok and result.content is None
    assert result.error_code == "too_large"
    assert result.error_message is not None
    assert result.error_message.startswith(f"body exceeds {SMALL_LIMIT} bytes")
    assert ("Content-Length" in result.error_message) is with_length


def test_compressed_body_is_limited_after_decoding(server: Server) -> None:
    (result,) = fetch([f"{server.base}/gzip"])
    assert result.error_code == "too_large"


@pytest.mark.parametrize(
    "tag", ["noai", "noimageai", "NoAI", "noindex, noimageai", "otherbot: noai", "a: x,noai"]
)
def test_x_robots_tag_noai_is_refused(server: Server, tag: str) -> None:
    url = f"{server.base}/robots?tag={tag.replace(' ', '%20')}"
    (refused,) = fetch([url])
    assert (refused.ok, refused.error_code, refused.http_status) == (False, "noai", 200)
    assert has_noai_directive([tag])
    (allowed,) = fetch([url], download_params=params(honour_noai=False))
    assert allowed.ok and allowed.content == image_bytes("robots")


def test_other_robots_directives_pass(server: Server) -> None:
    (result,) = fetch([f"{server.base}/robots?tag=noindex,%20noairplane"])
    assert result.ok


# --------------------------------------------------------------------------- SSRF


def test_loopback_is_blocked_by_default(server: Server) -> None:
    urls = [f"{server.base}/img/a", f"http://localhost:{server.port}/img/a"]
    with Downloader(params()) as downloader:
        results = list(downloader.map(urls))
    assert [r.error_code for r in results] == ["blocked_address", "blocked_address"]
    assert results[0].attempts == 0  # a literal address is refused before any attempt
    assert sum(server.state.hits.values()) == 0
    allowed = fetch(urls, allow_private_addresses=True)
    assert all(r.ok for r in allowed)


@pytest.fixture
def connection_log(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every peer address the client tries to connect to (aiohttp connects through here)."""
    attempts: list[str] = []
    real = aiohappyeyeballs.start_connection

    async def recording(addr_infos, *args, **kwargs):  # type: ignore[no-untyped-def]
        attempts.extend(str(info[4][0]) for info in addr_infos)
        assert all(a == "127.0.0.1" for a in attempts), f"tried to connect to {attempts}"
        return await real(addr_infos, *args, **kwargs)

    monkeypatch.setattr(aiohappyeyeballs, "start_connection", recording)
    return attempts


def only_127_0_0_1(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Test policy: 127.0.0.1 plays the part of a public host, everything else is private."""
    return address == ipaddress.IPv4Address("127.0.0.1")


class FakeResolver(AbstractResolver):
    """Name -> address table, so a redirect can point at a private host by name."""

    table: ClassVar[dict[str, str]] = {
        "public.test": "127.0.0.1",
        "internal.test": "10.0.0.1",
        "meta.test": "169.254.1.1",
    }

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        if host not in self.table:
            raise OSError(f"unknown host {host}")
        address = self.table[host]
        return [
            ResolveResult(
                hostname=host,
                host=address,
                port=port,
                family=socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
        ]

    async def close(self) -> None:
        pass


@pytest.mark.parametrize(
    "target",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.1/",
        "http://[::ffff:10.0.0.1]/",
        "http://internal.test/image.jpg",
        "http://meta.test:8080/",
    ],
)
def test_redirect_to_private_address_is_refused_before_connecting(
    server: Server, connection_log: list[str], target: str
) -> None:
    start = f"http://public.test:{server.port}/redirect?to={target}"
    (result,) = fetch([start], address_policy=only_127_0_0_1, resolver_factory=FakeResolver)
    assert not result.ok and result.error_code == "blocked_address"
    assert result.final_url is not None and URL(result.final_url).host == URL(target).host
    assert server.state.hits["/redirect"] == 1  # the first hop was fetched ...
    assert connection_log == ["127.0.0.1"]  # ... and the private target never connected to


def test_redirect_between_allowed_hosts_is_followed(
    server: Server, connection_log: list[str]
) -> None:
    start = f"http://public.test:{server.port}/redirect?to=/img/r"
    (result,) = fetch([start], address_policy=only_127_0_0_1, resolver_factory=FakeResolver)
    assert result.ok and result.content == image_bytes("r")
    assert result.final_url == f"http://public.test:{server.port}/img/r"


def test_unknown_host_is_a_dns_error(connection_log: list[str]) -> None:
    (result,) = fetch(
        ["http://nowhere.test/a.jpg"], address_policy=only_127_0_0_1, resolver_factory=FakeResolver
    )
    assert result.error_code == "dns_error" and result.attempts == 1
    assert connection_log == []


def test_a_failing_progress_callback_does_not_lose_results(server: Server) -> None:
    def broken(_n: int) -> None:
        raise RuntimeError("bar closed")

    results = fetch([f"{server.base}/img/{i}" for i in range(5)], progress=broken)
    assert all(r.ok for r in results)


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("8.8.8.8", True),
        ("2606:4700:4700::1111", True),
        ("127.0.0.1", False),
        ("10.1.2.3", False),
        ("172.16.0.1", False),
        ("172.31.255.255", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),
        ("100.64.0.1", False),
        ("0.0.0.0", False),
        ("224.0.0.1", False),
        ("240.0.0.1", False),
        ("255.255.255.255", False),
        ("::1", False),
        ("::", False),
        ("fe80::1", False),
        ("fc00::1", False),
        ("fd12:3456::1", False),
        ("ff02::1", False),
        ("::ffff:127.0.0.1", False),
        ("::ffff:192.168.0.1", False),
        ("::ffff:8.8.8.8", True),
        ("64:ff9b::a00:1", False),
        ("2002:7f00:1::", False),
    ],
)
def test_public_address_rule(address: str, public: bool) -> None:
    assert is_public_address(ipaddress.ip_address(address)) is public


# --------------------------------------------------------------------------- URLs, redirects


@pytest.mark.parametrize(
    "url", ["file:///etc/passwd", "ftp://example.com/a.jpg", "not a url", "http://", "data:,x"]
)
def test_invalid_urls(url: str) -> None:
    (result,) = fetch([url])
    assert (result.ok, result.error_code, result.attempts) == (False, "invalid_url", 0)


def test_redirect_to_another_scheme_is_invalid(server: Server) -> None:
    (result,) = fetch([f"{server.base}/redirect?to=file:///etc/passwd"])
    assert result.error_code == "invalid_url" and result.http_status == 302


def test_redirect_loop_is_too_many_redirects(server: Server) -> None:
    (result,) = fetch([f"{server.base}/loop/0"], download_params=params(max_redirects=3))
    assert result.error_code == "too_many_redirects"
    assert sum(n for path, n in server.state.hits.items() if path.startswith("/loop/")) == 4


# --------------------------------------------------------------------------- failing DNS


class FailingResolver(AbstractResolver):
    """Every name fails with ``errno`` (EAI_NONAME: no such name; EAI_AGAIN: no answer at
    all, as on an offline machine); lookups are counted per host."""

    def __init__(self, errno: int, calls: Counter[str]) -> None:
        self.errno, self.calls = errno, calls

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.calls[host] += 1
        raise socket.gaierror(self.errno, "Name or service not known")

    async def close(self) -> None:
        pass


def test_a_host_that_does_not_resolve_is_looked_up_once() -> None:
    calls: Counter[str] = Counter()
    urls = [f"http://h{i % 5}.invalid/{i}.jpg" for i in range(200)]
    results = fetch(
        urls,
        download_params=params(concurrency=8, retries=2, backoff_s=0.5),
        resolver_factory=lambda: FailingResolver(socket.EAI_NONAME, calls),
    )
    assert calls == Counter({f"h{i}.invalid": 1 for i in range(5)})
    assert all(r.error_code == "dns_error" and r.attempts == 1 for r in results)
    assert all(f"host h{i % 5}.invalid" in r.error_message for i, r in enumerate(results))


def test_dns_without_any_answer_is_taken_as_offline() -> None:
    calls: Counter[str] = Counter()
    urls = [f"http://host{i}.invalid/a.jpg" for i in range(300)]
    results = fetch(
        urls,
        download_params=params(concurrency=8, retries=2, backoff_s=0.5),
        resolver_factory=lambda: FailingResolver(socket.EAI_AGAIN, calls),
    )
    assert all(r.error_code == "dns_error" for r in results)
    assert sum(calls.values()) < 60  # the first few lookups, then one probe now and then
    assert "offline" in results[-1].error_message


class DeadThenPublic(FailingResolver):
    """``public.test`` resolves to 127.0.0.1; every other name has no answer."""

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        if host != "public.test":
            return await super().resolve(host, port, family)
        return await FakeResolver().resolve(host, port, family)


def test_dns_that_answers_again_ends_the_offline_state(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("fineharbor.core.download._OFFLINE_PROBE_S", 0.5)
    calls: Counter[str] = Counter()

    def urls() -> Iterator[str]:
        yield from (f"http://dead{i}.invalid/a.jpg" for i in range(10))
        time.sleep(1.0)  # past the probe interval: the next lookup is a probe
        yield f"http://public.test:{server.port}/img/back"
        yield "http://dead99.invalid/a.jpg"

    resolver = DeadThenPublic(socket.EAI_AGAIN, calls)
    with Downloader(
        params(concurrency=1), allow_private_addresses=True, resolver_factory=lambda: resolver
    ) as downloader:
        results = list(downloader.map(urls()))
    assert "offline" in results[9].error_message and "dead9.invalid" not in calls
    assert results[10].ok and results[10].content == image_bytes("back")
    assert "offline" not in results[11].error_message and calls["dead99.invalid"] == 1
