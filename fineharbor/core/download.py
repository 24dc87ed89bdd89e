"""Asynchronous image downloader for URL-list sources (LAION-style), in the spirit of img2dataset.

Why it looks like this:

- One asyncio event loop runs in a background thread with one pooled ``aiohttp`` session, so the
  synchronous, streaming readers of the pipeline can call :meth:`Downloader.map` like a plain
  iterator while hundreds of requests overlap on the network.
- Results come back in input order and only a bounded window of URLs is in flight, so a reader can
  zip them back onto its rows without ever holding the whole URL list (bounded-memory invariant).
- Every URL gets exactly one :class:`DownloadResult`; failures carry a stable ``error_code`` that
  becomes a ``rejects`` reason upstream ("nothing is lost silently").
- Failed DNS lookups are remembered per host for the run (:class:`_NegativeCachingResolver`):
  a dead domain costs one lookup per host, not one (plus retries) per URL; and once many
  lookups in a row failed, DNS is taken to be unusable (offline) and the rest fail at once,
  with a probe now and then in case it comes back.
- URL lists are untrusted input, so the downloader refuses to reach non-public addresses (SSRF):
  the check runs on the addresses DNS returned, inside the connector, so the socket goes to the
  address that was checked (no time-of-check/time-of-use gap, no DNS rebinding), and again on
  every redirect hop, which is followed by hand.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
import re
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from multidict import CIMultiDictProxy
from yarl import URL

from fineharbor.core.config import DownloadParams

__all__ = [
    "ERROR_CODES",
    "AddressPolicy",
    "BlockedAddressError",
    "DownloadResult",
    "Downloader",
    "has_noai_directive",
    "is_public_address",
]

log = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
AddressPolicy = Callable[[IPAddress], bool]
"""Decides whether the downloader may connect to an address (True: allowed)."""

ERROR_CODES = (
    "invalid_url",
    "blocked_address",
    "dns_error",
    "connection_error",
    "timeout",
    "http_error",
    "too_large",
    "too_many_redirects",
    "noai",
)

_SCHEMES = frozenset({"http", "https"})
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_NOAI_DIRECTIVES = frozenset({"noai", "noimageai"})
_DIRECTIVE_SPLIT = re.compile(r"[\s,:;]+")
_MAX_RETRY_AFTER_S = 30.0
_WINDOW_PER_SLOT = 4
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
# Response headers kept with a download: what a later run needs to re-check or re-validate it.
KEPT_HEADERS = ("Content-Type", "Content-Length", "ETag", "Last-Modified", "X-Robots-Tag")
# A lookup that got no answer may work a moment later; one that got "no such name" will not.
_TEMPORARY_DNS_TTL_S = 10.0
# This many failed lookups in a row and DNS is taken to be unusable: few before any lookup of
# the run worked (nothing to lose), many after (a dead stretch of a healthy list is short).
_OFFLINE_AT_START = 8
_OFFLINE_LATER = 64
_OFFLINE_PROBE_S = 2.0
# getaddrinfo blocks a thread: enough threads that many hosts resolve at once.
_MAX_DNS_THREADS = 64


@dataclass(frozen=True)
class DownloadResult:
    """The outcome for one input URL; exactly one per URL, in input order.

    ``attempts`` counts the tries made (1 + retries used); it is 0 when the URL was refused
    before any network activity (bad scheme, blocked literal address). ``headers`` holds the
    final response's :data:`KEPT_HEADERS` that were present; ``fetched_at`` is the Unix time the
    result was obtained (None when no request was made).
    """

    url: str
    ok: bool
    content: bytes | None = field(repr=False)
    http_status: int | None
    error_code: str | None
    error_message: str | None
    final_url: str | None
    attempts: int
    headers: dict[str, str] = field(default_factory=dict)
    fetched_at: float | None = None


class BlockedAddressError(OSError):
    """A host resolved (or was written as) an address the policy refuses.

    An ``OSError`` so that aiohttp treats it like any other resolution/connect failure and
    never opens a socket; the downloader finds it in the exception chain to report
    ``blocked_address``.
    """


# --------------------------------------------------------------------------- address policy


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address tunnels to, if any (mapped, NAT64, 6to4).

    Without this, ``::ffff:127.0.0.1`` or ``64:ff9b::a00:1`` would pass as public IPv6.
    """
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address.sixtofour


def is_public_address(address: IPAddress) -> bool:
    """True for globally routable unicast addresses: the only ones a URL list may reach.

    Refuses loopback, private (10/8, 172.16/12, 192.168/16, IPv6 unique-local), link-local
    (169.254/16 including cloud metadata, fe80::/10), multicast, unspecified, reserved, shared
    and documentation ranges, and IPv6 forms that embed any of those IPv4 addresses.
    """
    if isinstance(address, ipaddress.IPv6Address):
        inner = _embedded_ipv4(address)
        if inner is not None:  # the packet ends up at the IPv4 address: judge that one
            return is_public_address(inner)
        if address.is_site_local:
            return False
    return address.is_global and not (
        address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_unspecified
        or address.is_reserved
    )


def _allow_all(_address: IPAddress) -> bool:
    return True


def _parse_ip(host: str) -> IPAddress | None:
    """The address when ``host`` is an IP literal (brackets and zone id allowed), else None."""
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def _check_address(host: str, policy: AddressPolicy) -> None:
    """Raise :class:`BlockedAddressError` unless ``host`` (an IP literal) passes the policy."""
    address = _parse_ip(host)
    if address is None or not policy(address):
        raise BlockedAddressError(f"{host} is not an allowed (public) address")


class _FilteringResolver(AbstractResolver):
    """Drops refused addresses from DNS answers so aiohttp only ever connects to checked ones.

    The connector connects to exactly the addresses returned here (and caches them), which is
    what closes the time-of-check/time-of-use gap of a separate pre-flight lookup.
    """

    def __init__(self, inner: AbstractResolver, policy: AddressPolicy) -> None:
        self._inner = inner
        self._policy = policy

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        answers = await self._inner.resolve(host, port, family)
        kept = [answer for answer in answers if self._is_allowed(answer["host"])]
        if not kept:
            found = ", ".join(sorted({answer["host"] for answer in answers})) or "nothing"
            raise BlockedAddressError(f"{host} resolves to non-public address(es): {found}")
        return kept

    def _is_allowed(self, host: str) -> bool:
        address = _parse_ip(host)
        return address is not None and self._policy(address)

    async def close(self) -> None:
        await self._inner.close()


def _is_temporary_dns_error(error: OSError) -> bool:
    """No answer at all (timeout, unreachable nameserver), as opposed to "no such name"."""
    return isinstance(error, TimeoutError) or error.errno == socket.EAI_AGAIN


class _NegativeCachingResolver(AbstractResolver):
    """Remembers failed lookups per host for the run, and notices when DNS does not work.

    A host whose lookup failed is not looked up again: every later URL of it fails at once with
    the first failure's message (for a temporary failure, only for a short while).

    When lookups keep failing - :data:`_OFFLINE_AT_START` in a row before any lookup of the run
    returned an address, :data:`_OFFLINE_LATER` in a row after one did - DNS is taken to be
    unusable (an offline machine, a resolver that times out, a list of dead domains): lookups
    in flight and new ones fail at once, except one probe every :data:`_OFFLINE_PROBE_S`
    seconds, and the first lookup that returns an address ends it. Without this, each new host
    of an all-fail list pays the resolver's full timeout (5 s per try with glibc's defaults).
    """

    def __init__(self, inner: AbstractResolver) -> None:
        self._inner = inner
        self._failed: dict[str, tuple[OSError, float]] = {}
        self._failed_in_a_row = 0
        self._answered = False
        self._offline: asyncio.Event | None = None  # created on the loop that uses it
        self._next_probe = 0.0

    @property
    def _limit(self) -> int:
        return _OFFLINE_LATER if self._answered else _OFFLINE_AT_START

    def _offline_error(self, host: str) -> OSError:
        return OSError(
            socket.EAI_AGAIN,
            f"DNS looks unusable: the last {self._failed_in_a_row} lookups failed "
            f"(is this machine offline?); {host} was not looked up",
        )

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        now = time.monotonic()
        known = self._failed.get(host)
        if known is not None:
            error, expires = known
            if now < expires:
                raise OSError(error.errno, f"{error.strerror} (failed before in this run)")
            del self._failed[host]
        if self._offline is None:
            self._offline = asyncio.Event()
        probe = self._offline.is_set()
        if probe:
            if now < self._next_probe:
                raise self._offline_error(host)
            self._next_probe = now + _OFFLINE_PROBE_S
        lookup = asyncio.ensure_future(self._inner.resolve(host, port, family))
        if not probe:  # a lookup in flight gives up as soon as DNS is found unusable
            offline = asyncio.ensure_future(self._offline.wait())
            try:
                await asyncio.wait({lookup, offline}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                offline.cancel()
            if not lookup.done():
                lookup.cancel()
                raise self._offline_error(host)
        try:
            answers = await lookup
        except OSError as error:
            self._remember(host, error)
            raise
        self._failed_in_a_row = 0
        self._answered = True
        self._offline.clear()
        return answers

    def _remember(self, host: str, error: OSError) -> None:
        temporary = _is_temporary_dns_error(error)
        message = error.strerror or str(error) or type(error).__name__
        errno = error.errno
        if errno is None and temporary:
            errno = socket.EAI_AGAIN
        ttl = _TEMPORARY_DNS_TTL_S if temporary else float("inf")
        self._failed[host] = (OSError(errno, message), time.monotonic() + ttl)
        self._failed_in_a_row += 1
        if self._failed_in_a_row >= self._limit and self._offline is not None:
            if not self._offline.is_set():
                self._next_probe = time.monotonic() + _OFFLINE_PROBE_S
            self._offline.set()

    async def close(self) -> None:
        await self._inner.close()


def _guarded_socket_factory(policy: AddressPolicy) -> Callable[[tuple], socket.socket]:
    """Last line of defence: refuse to even create a socket for a refused peer address.

    Covers any path that skips the resolver (IP literals, cached answers) whatever aiohttp
    does internally.
    """

    def factory(addr_info: tuple) -> socket.socket:
        family, type_, proto, _canonname, sockaddr = addr_info
        _check_address(str(sockaddr[0]), policy)
        return socket.socket(family=family, type=type_, proto=proto)

    return factory


# --------------------------------------------------------------------------- header rules


def has_noai_directive(values: Iterable[str]) -> bool:
    """True when any ``X-Robots-Tag`` value carries ``noai`` or ``noimageai``.

    Matched word by word, case-insensitively, whatever the separators; a user-agent prefix
    (``otherbot: noai``) still counts: we honour opt-outs conservatively, for any crawler.
    """
    return any(
        word in _NOAI_DIRECTIVES
        for value in values
        for word in _DIRECTIVE_SPLIT.split(value.lower())
    )


def _kept_headers(headers: CIMultiDictProxy[str]) -> dict[str, str]:
    """The :data:`KEPT_HEADERS` present in a response (repeated ones joined with ", ")."""
    kept = {}
    for name in KEPT_HEADERS:
        values = headers.getall(name, ())
        if values:
            kept[name] = ", ".join(values)
    return kept


def _retry_after_s(headers: Mapping[str, str]) -> float | None:
    """``Retry-After`` in seconds when given as a number (dates are ignored), capped."""
    value = headers.get("Retry-After")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return min(max(seconds, 0.0), _MAX_RETRY_AFTER_S)


# --------------------------------------------------------------------------- outcomes


class _Failure(Exception):
    """A per-URL failure with its stable code; raised inside an attempt, never outside."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        retryable: bool = False,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retryable = retryable
        self.status = status
        self.retry_after = retry_after


@dataclass(frozen=True)
class _Outcome:
    """What one attempt produced, before it is turned into the public result."""

    content: bytes | None
    status: int | None
    final_url: URL | None
    failure: _Failure | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def result(self, url: str, attempts: int) -> DownloadResult:
        failure = self.failure
        return DownloadResult(
            url=url,
            ok=failure is None,
            content=self.content,
            http_status=self.status,
            error_code=None if failure is None else failure.code,
            error_message=None if failure is None else failure.message,
            final_url=None if self.final_url is None else str(self.final_url),
            attempts=attempts,
            headers=self.headers,
            fetched_at=time.time() if attempts else None,
        )


def _find_in_chain(exc: BaseException, kind: type[BaseException]) -> BaseException | None:
    """First exception of ``kind`` among ``exc``, its causes and aiohttp's wrapped os_error."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, kind):
            return current
        seen.add(id(current))
        wrapped = getattr(current, "os_error", None)
        current = wrapped if isinstance(wrapped, BaseException) else current.__cause__
    return None


def _classify(exc: BaseException) -> _Failure:
    """Map a transport exception to a stable code, and whether a retry can help."""
    blocked = _find_in_chain(exc, BlockedAddressError)
    if blocked is not None:
        return _Failure("blocked_address", str(blocked))
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        # Not retried per URL: the resolver already remembers the host's failure for the run.
        reason = exc.os_error.strerror or str(exc.os_error) or type(exc.os_error).__name__
        return _Failure("dns_error", f"DNS lookup failed for host {exc.host}: {reason}")
    if isinstance(exc, aiohttp.InvalidURL):
        return _Failure("invalid_url", f"invalid URL: {exc}")
    if isinstance(exc, aiohttp.ClientSSLError):
        return _Failure("connection_error", f"TLS error: {exc}")
    return _Failure("connection_error", f"{type(exc).__name__}: {exc}", retryable=True)


def _parse_target(text: str) -> URL:
    """The URL to fetch, or ``invalid_url``: only absolute http(s) URLs with a host."""
    try:
        url = URL(text.strip())
    except (TypeError, ValueError) as exc:
        raise _Failure("invalid_url", f"invalid URL: {exc}") from exc
    if url.scheme not in _SCHEMES:
        raise _Failure("invalid_url", f"unsupported scheme {url.scheme or '(none)'!r}")
    if not url.raw_host:
        raise _Failure("invalid_url", "URL has no host")
    return url


# --------------------------------------------------------------------------- downloader


def _done(result: DownloadResult) -> Future[DownloadResult]:
    future: Future[DownloadResult] = Future()
    future.set_result(result)
    return future


def _run_loop(loop: asyncio.AbstractEventLoop) -> None:
    asyncio.set_event_loop(loop)
    loop.run_forever()


class Downloader:
    """Downloads URLs concurrently on a private event loop; use as a context manager.

    ``allow_private_addresses`` turns SSRF protection off (local mirrors, tests).
    ``progress(n)`` is called from the download thread each time ``n`` more URLs finish (pass
    a tqdm bar's ``update``). ``address_policy`` replaces the public-address rule and
    ``resolver_factory`` the DNS resolver (called inside the loop); both exist so tests and
    special deployments can decide what "public" means without touching the checks themselves.
    """

    def __init__(
        self,
        params: DownloadParams,
        *,
        allow_private_addresses: bool = False,
        progress: Callable[[int], None] | None = None,
        address_policy: AddressPolicy | None = None,
        resolver_factory: Callable[[], AbstractResolver] | None = None,
    ) -> None:
        self._params = params
        default_policy = _allow_all if allow_private_addresses else is_public_address
        self._policy: AddressPolicy = address_policy or default_policy
        self._progress = progress
        self._resolver_factory = resolver_factory or DefaultResolver
        self._rng = random.Random()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._session: aiohttp.ClientSession | None = None
        self._semaphore: asyncio.Semaphore | None = None

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> Downloader:
        if self._loop is not None:
            raise RuntimeError("Downloader is already started")
        loop = asyncio.new_event_loop()
        # The threaded resolver runs getaddrinfo in the loop's default executor, which is only
        # a few threads on a small machine: slow lookups would queue behind each other.
        dns_threads = min(_MAX_DNS_THREADS, self._params.concurrency)
        loop.set_default_executor(
            ThreadPoolExecutor(max_workers=dns_threads, thread_name_prefix="fineharbor-dns")
        )
        thread = threading.Thread(
            target=_run_loop, args=(loop,), name="fineharbor-download", daemon=True
        )
        thread.start()
        self._loop, self._thread = loop, thread
        try:
            asyncio.run_coroutine_threadsafe(self._open(), loop).result()
        except BaseException:
            self._shutdown()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._shutdown()

    async def _open(self) -> None:
        """Create the pooled session on the loop thread (aiohttp objects bind to their loop)."""
        params = self._params
        resolver = _NegativeCachingResolver(self._resolver_factory())
        connector = aiohttp.TCPConnector(
            limit=params.concurrency,
            resolver=_FilteringResolver(resolver, self._policy),
            socket_factory=_guarded_socket_factory(self._policy),
            ttl_dns_cache=60,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            headers={"User-Agent": params.user_agent},
            cookie_jar=aiohttp.DummyCookieJar(),
            timeout=aiohttp.ClientTimeout(total=None),
            trust_env=False,  # an environment proxy would connect on our behalf, unchecked
        )
        self._semaphore = asyncio.Semaphore(params.concurrency)

    async def _close(self) -> None:
        """Cancel downloads nobody will collect (an abandoned map) and close the session."""
        current = asyncio.current_task()
        tasks = [task for task in asyncio.all_tasks() if task is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    def _shutdown(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self._close(), loop).result()
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join()
            loop.close()
            self._loop = self._thread = None
            self._session = self._semaphore = None

    # ------------------------------------------------------------------ public

    def map(self, urls: Iterable[str | DownloadResult]) -> Iterator[DownloadResult]:
        """Results in input order, streaming: at most ~4*concurrency requests in flight, never
        materialises the whole URL list.

        An input that is already a :class:`DownloadResult` (a copy kept from an earlier run)
        comes back in its place without any request, so callers can mix kept and new fetches
        and still zip the results onto their rows.

        A window of ``4 * concurrency`` URLs is scheduled ahead of the one being returned, so
        the semaphore always has work queued while memory stays bounded by the window. A slow
        URL at the head of the window holds back returning (not downloading) later ones.
        """
        loop = self._loop
        if loop is None:
            raise RuntimeError("use Downloader as a context manager before calling map()")
        window = _WINDOW_PER_SLOT * self._params.concurrency
        pending: deque[Future[DownloadResult]] = deque()
        try:
            for url in urls:
                if isinstance(url, DownloadResult):
                    pending.append(_done(url))
                    self._report_progress(1)
                else:
                    pending.append(asyncio.run_coroutine_threadsafe(self._download(url), loop))
                if len(pending) >= window:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()

    # ------------------------------------------------------------------ per URL

    async def _download(self, url: object) -> DownloadResult:
        """One URL to one result; never raises for a per-URL failure."""
        text = url if isinstance(url, str) else ("" if url is None else str(url))
        try:
            result = await self._download_with_retries(text)
        except Exception as exc:  # defensive: a bug must not lose the row
            log.exception("unexpected error downloading %s", text)
            failure = _Failure("connection_error", f"unexpected {type(exc).__name__}: {exc}")
            result = _Outcome(None, None, None, failure).result(text, 0)
        self._report_progress(1)
        return result

    async def _download_with_retries(self, text: str) -> DownloadResult:
        try:
            url = _parse_target(text)
            self._check_literal_host(url)
        except _Failure as failure:
            return _Outcome(None, None, None, failure).result(text, 0)
        assert self._semaphore is not None
        attempts = 0
        while True:
            attempts += 1
            async with self._semaphore:
                outcome = await self._attempt(url)
            failure = outcome.failure
            if failure is None or not failure.retryable or attempts > self._params.retries:
                return outcome.result(text, attempts)
            await asyncio.sleep(self._backoff_s(attempts, failure.retry_after))

    def _backoff_s(self, attempt: int, retry_after: float | None) -> float:
        """Exponential backoff with jitter, so retries of many URLs do not arrive in lockstep."""
        delay = self._params.backoff_s * 2 ** (attempt - 1) * self._rng.uniform(0.5, 1.5)
        return max(delay, retry_after or 0.0)

    def _check_literal_host(self, url: URL) -> None:
        """Refuse an IP-literal host up front: it never goes through the resolver."""
        host = url.raw_host or ""
        if _parse_ip(host) is None:
            return
        try:
            _check_address(host, self._policy)
        except BlockedAddressError as exc:
            raise _Failure("blocked_address", str(exc)) from exc

    async def _attempt(self, url: URL) -> _Outcome:
        """One try: follow redirects by hand (each hop re-checked) and read the body."""
        assert self._session is not None
        params = self._params
        current, status, redirects = url, None, 0
        headers: dict[str, str] = {}
        try:
            async with asyncio.timeout(params.timeout_s):
                while True:
                    async with self._session.get(current, allow_redirects=False) as response:
                        status = response.status
                        if status not in _REDIRECT_STATUSES:
                            headers = _kept_headers(response.headers)
                            content = await self._read(response)
                            return _Outcome(content, status, current, headers=headers)
                        current = self._redirect_target(current, response, redirects)
                        redirects += 1
                        self._check_hop(current)
        except _Failure as failure:
            return _Outcome(None, failure.status or status, current, failure, headers)
        except TimeoutError:
            message = f"no complete response within {params.timeout_s} s"
            failure = _Failure("timeout", message, retryable=True)
            return _Outcome(None, status, current, failure, headers)
        except (aiohttp.ClientError, OSError) as exc:
            return _Outcome(None, status, current, _classify(exc), headers)

    def _redirect_target(
        self, current: URL, response: aiohttp.ClientResponse, redirects: int
    ) -> URL:
        """Where a redirect points (resolved against the current URL), if we may follow it."""
        location = response.headers.get("Location")
        if not location:
            raise _Failure("http_error", f"HTTP {response.status} without Location")
        if redirects >= self._params.max_redirects:
            raise _Failure(
                "too_many_redirects", f"more than {self._params.max_redirects} redirects"
            )
        try:
            return current.join(URL(location))
        except (TypeError, ValueError) as exc:
            raise _Failure("invalid_url", f"invalid redirect Location {location!r}") from exc

    def _check_hop(self, url: URL) -> None:
        """The same checks as for an input URL; DNS answers are checked by the resolver."""
        _parse_target(str(url))
        self._check_literal_host(url)

    async def _read(self, response: aiohttp.ClientResponse) -> bytes:
        """The body of a final response, enforcing status, noai and the size limit."""
        params = self._params
        status = response.status
        if not 200 <= status < 300:
            retryable = status == 429 or status >= 500
            retry_after = _retry_after_s(response.headers) if retryable else None
            raise _Failure(
                "http_error",
                f"HTTP {status}",
                retryable=retryable,
                status=status,
                retry_after=retry_after,
            )
        if params.honour_noai and has_noai_directive(response.headers.getall("X-Robots-Tag", ())):
            tag = ", ".join(response.headers.getall("X-Robots-Tag"))
            raise _Failure("noai", f"X-Robots-Tag: {tag}", status=status)
        declared = response.content_length
        if declared is not None and declared > params.max_bytes:
            response.close()
            raise _Failure(
                "too_large",
                f"body exceeds {params.max_bytes} bytes (Content-Length {declared})",
                status=status,
            )
        chunks: list[bytes] = []  # counted as decoded, so a gzip bomb stops at max_bytes too
        size = 0
        async for chunk in response.content.iter_any():
            size += len(chunk)
            if size > params.max_bytes:
                response.close()  # do not drain a huge body just to reuse the connection
                raise _Failure("too_large", f"body exceeds {params.max_bytes} bytes", status=status)
            chunks.append(chunk)
        return b"".join(chunks)

    def _report_progress(self, finished: int) -> None:
        """Tell the caller's progress bar; a broken callback is logged once, then dropped."""
        callback = self._progress
        if callback is None:
            return
        try:
            callback(finished)
        except Exception:
            log.exception("progress callback failed; progress reporting disabled")
            self._progress = None
