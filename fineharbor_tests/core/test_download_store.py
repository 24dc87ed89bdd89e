"""Downloads are kept: the content store, its reuse rules, and the raw stage's loss guard,
against a loopback HTTP server that can be stopped (no other network)."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fineharbor.core.config import DownloadParams, parse_config
from fineharbor.core.download import DownloadResult
from fineharbor.core.download_store import (
    ACCEPT_LOSSES_ENV,
    DOWNLOADS,
    REFETCH_ENV,
    DownloadLossError,
    DownloadStore,
    refetch_requested,
)
from fineharbor.core.ingest import build_raw_samples
from fineharbor.core.pipeline import RAW
from fineharbor.core.storage import Storage
from fineharbor_tests.conftest import make_image_bytes

ROBOTS = "robots.jpg"


class LoopbackServer:
    """Serves a directory; counts requests per path; can be stopped and started again on the
    same port, as a server that goes down and comes back."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.hits: Counter[str] = Counter()
        self.noai: set[str] = set()
        self.port = 0
        self._httpd: ThreadingHTTPServer | None = None

    def start(self) -> None:
        server = self

        class Handler(SimpleHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                server.hits[self.path] += 1
                super().do_GET()

            def end_headers(self) -> None:
                if self.path.lstrip("/") in server.noai:
                    self.send_header("X-Robots-Tag", "noai")
                super().end_headers()

        httpd = ThreadingHTTPServer(
            ("127.0.0.1", self.port), partial(Handler, directory=str(self.root))
        )
        httpd.daemon_threads = True
        self.port = httpd.server_address[1]
        threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True).start()
        self._httpd = httpd

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LoopbackServer]:
    root = tmp_path / "served"
    root.mkdir()
    for i in range(3):
        (root / f"{i}.jpg").write_bytes(make_image_bytes(i))
    served = LoopbackServer(root)
    served.start()
    yield served
    served.stop()


@pytest.fixture(autouse=True)
def no_run_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(REFETCH_ENV, raising=False)
    monkeypatch.delenv(ACCEPT_LOSSES_ENV, raising=False)


def project(tmp_path: Path, urls: list[str], **source: object):
    pq.write_table(
        pa.table({"key": [f"k{i}" for i in range(len(urls))], "url": urls}),
        tmp_path / "urls.parquet",
    )
    fields = {
        "name": "web",
        "reader": "url_list",
        "location": "urls.parquet",
        "allow_private_addresses": True,
        "mapping": {"preset": "laion", "origin_key": "key"},
        **source,
    }
    stages = {"ingest": {"download": {"retries": 0, "timeout_s": 5}}}
    return parse_config({"sources": [fields], "stages": stages}, tmp_path)


def raw_rows(storage: Storage) -> tuple[list[dict], list[dict]]:
    kept = storage.read_table(RAW, "web").sort_by("sample_id").to_pylist()
    rejected = storage.read_table(RAW, "web", kind="rejects").sort_by("sample_id").to_pylist()
    return kept, rejected


def test_a_second_run_with_the_server_down_keeps_the_same_rows(tmp_path, server):
    config = project(tmp_path, [server.url("0.jpg"), server.url("1.jpg"), server.url("gone.jpg")])
    storage = Storage(str(tmp_path / "home"))
    first = build_raw_samples(config, "web", storage)
    before = raw_rows(storage)
    assert (first.kept, first.rejected) == (2, 1)
    assert first.extra["downloads_fetched"] == 3 and first.extra["files_seen"] == 1

    server.stop()
    second = build_raw_samples(config, "web", storage)
    assert raw_rows(storage)[0] == before[0]  # same ids, records (fetch time too), bytes
    assert second.extra["downloads_reused"] == 2
    # the URL that failed is asked again (refetch_failed) and now cannot connect
    assert [r["reason"] for r in raw_rows(storage)[1]] == ["download_connection_error"]


def test_a_new_url_is_fetched_and_the_old_ones_reused(tmp_path, server):
    storage = Storage(str(tmp_path / "home"))
    build_raw_samples(project(tmp_path, [server.url("0.jpg"), server.url("1.jpg")]), "web", storage)
    server.hits.clear()
    urls = [server.url("0.jpg"), server.url("1.jpg"), server.url("2.jpg")]
    report = build_raw_samples(project(tmp_path, urls), "web", storage)
    assert server.hits == Counter({"/2.jpg": 1})
    assert report.kept == 3
    assert (report.extra["downloads_reused"], report.extra["downloads_fetched"]) == (2, 1)


def test_refetch_asks_again_and_keeps_the_copy_when_the_server_is_down(
    tmp_path, server, monkeypatch
):
    config = project(tmp_path, [server.url("0.jpg"), server.url("1.jpg")])
    storage = Storage(str(tmp_path / "home"))
    build_raw_samples(config, "web", storage)
    before = raw_rows(storage)
    server.hits.clear()
    monkeypatch.setenv(REFETCH_ENV, "web")
    build_raw_samples(config, "web", storage)
    assert server.hits == Counter({"/0.jpg": 1, "/1.jpg": 1})

    server.stop()
    report = build_raw_samples(config, "web", storage)
    assert report.extra["downloads_kept_after_failed_refetch"] == 2
    assert [row["images"] for row in raw_rows(storage)[0]] == [row["images"] for row in before[0]]


def test_a_changed_image_replaces_the_kept_copy_only_when_refetched(tmp_path, server, monkeypatch):
    config = project(tmp_path, [server.url("0.jpg")])
    storage = Storage(str(tmp_path / "home"))
    build_raw_samples(config, "web", storage)
    (server.root / "0.jpg").write_bytes(make_image_bytes(9))
    build_raw_samples(config, "web", storage)
    assert raw_rows(storage)[0][0]["images"][0]["bytes"] == make_image_bytes(0)
    monkeypatch.setenv(REFETCH_ENV, "1")
    build_raw_samples(config, "web", storage)
    assert raw_rows(storage)[0][0]["images"][0]["bytes"] == make_image_bytes(9)


def test_failed_urls_are_retried_unless_refetch_failed_is_off(tmp_path, server):
    storage = Storage(str(tmp_path / "home"))
    urls = [server.url("late.jpg")]
    build_raw_samples(project(tmp_path, urls, refetch_failed=False), "web", storage)
    (server.root / "late.jpg").write_bytes(make_image_bytes(5))
    server.hits.clear()
    report = build_raw_samples(project(tmp_path, urls, refetch_failed=False), "web", storage)
    assert server.hits == Counter() and report.kept == 0
    assert raw_rows(storage)[1][0]["reason"] == "download_http_error"
    report = build_raw_samples(project(tmp_path, urls), "web", storage)
    assert server.hits == Counter({"/late.jpg": 1}) and report.kept == 1


def test_max_age_days_refetches_old_copies(tmp_path, server):
    storage = Storage(str(tmp_path / "home"))
    build_raw_samples(project(tmp_path, [server.url("0.jpg")]), "web", storage)
    server.hits.clear()
    build_raw_samples(project(tmp_path, [server.url("0.jpg")], max_age_days=30), "web", storage)
    assert server.hits == Counter()
    build_raw_samples(project(tmp_path, [server.url("0.jpg")], max_age_days=1e-9), "web", storage)
    assert server.hits == Counter({"/0.jpg": 1})


def test_an_opt_out_seen_on_refetch_drops_the_kept_copy(tmp_path, server, monkeypatch):
    config = project(tmp_path, [server.url("0.jpg")])
    storage = Storage(str(tmp_path / "home"))
    build_raw_samples(config, "web", storage)
    server.noai.add("0.jpg")
    monkeypatch.setenv(REFETCH_ENV, "1")
    report = build_raw_samples(config, "web", storage)
    assert report.kept == 0 and report.reasons == {"download_noai": 1}
    monkeypatch.delenv(REFETCH_ENV)
    server.stop()  # the good copy is gone from the store: nothing brings the image back
    assert build_raw_samples(config, "web", storage).kept == 0


def test_a_run_that_would_lose_published_images_is_not_published(tmp_path, server, monkeypatch):
    config = project(tmp_path, [server.url("0.jpg"), server.url("1.jpg"), server.url("2.jpg")])
    storage = Storage(str(tmp_path / "home"))
    build_raw_samples(config, "web", storage)
    before = raw_rows(storage)
    # the kept copies are gone (a store deleted, a home from before the store) and so is the server
    storage.fs.delete_dir(storage.path(DOWNLOADS))
    server.stop()
    with pytest.raises(DownloadLossError, match=r"3 URL\(s\).*download_connection_error 3"):
        build_raw_samples(config, "web", storage)
    assert raw_rows(storage) == before
    monkeypatch.setenv(ACCEPT_LOSSES_ENV, "1")
    report = build_raw_samples(config, "web", storage)
    assert (report.kept, report.rejected) == (0, 3)


def test_urls_that_left_the_list_are_not_counted_as_losses(tmp_path, server):
    storage = Storage(str(tmp_path / "home"))
    urls = [server.url("0.jpg"), server.url("1.jpg"), server.url("2.jpg")]
    build_raw_samples(project(tmp_path, urls), "web", storage)
    storage.fs.delete_dir(storage.path(DOWNLOADS))
    server.stop()
    with pytest.raises(DownloadLossError, match=r"not published: 1 URL\(s\)"):
        build_raw_samples(project(tmp_path, urls[:1]), "web", storage)
    server.start()
    report = build_raw_samples(project(tmp_path, urls[:1]), "web", storage)
    assert (report.kept, report.rejected) == (1, 0)


def test_a_damaged_store_file_is_fetched_again(tmp_path, server):
    storage = Storage(str(tmp_path / "home"))
    store = DownloadStore(storage, "web")
    url = server.url("0.jpg")
    build_raw_samples(project(tmp_path, [url]), "web", storage)
    path = Path(store.path(url))
    assert path.is_file() and path.name.endswith(".fetch")
    path.write_bytes(path.read_bytes()[:-10])  # truncated body: its sha256 no longer matches
    assert store.get(url) is None
    server.hits.clear()
    build_raw_samples(project(tmp_path, [url]), "web", storage)
    assert server.hits == Counter({"/0.jpg": 1})
    assert store.get(url) is not None and store.get(url).content == make_image_bytes(0)


def ok_result(url: str, content: bytes, **fields: object) -> DownloadResult:
    values = {
        "url": url,
        "ok": True,
        "content": content,
        "http_status": 200,
        "error_code": None,
        "error_message": None,
        "final_url": url,
        "attempts": 1,
        "headers": {"Content-Type": "image/jpeg"},
        "fetched_at": 1000.0,
        **fields,
    }
    return DownloadResult(**values)


def test_kept_copies_are_checked_against_the_current_limits(tmp_path):
    storage = Storage(str(tmp_path))
    store = DownloadStore(storage, "web", params=DownloadParams(max_bytes=2048))
    small, big = ok_result("http://x/a", b"a" * 100), ok_result("http://x/b", b"b" * 4096)
    tagged = ok_result("http://x/c", b"c", headers={"X-Robots-Tag": "noimageai"})
    for result in (small, big, tagged):
        store.put(result)
        assert store.get(result.url) == result
    assert store.reuse(store.get(small.url)).ok
    assert store.reuse(store.get(big.url)).error_code == "too_large"
    assert store.reuse(store.get(tagged.url)).error_code == "noai"


def test_the_store_works_on_an_object_store(s3_bucket):
    bucket, client = s3_bucket
    store = DownloadStore(Storage(f"s3://{bucket}/home"), "web")
    result = ok_result("http://x/a.jpg", b"\xff\xd8 bytes")
    assert store.get(result.url) is None
    store.put(result)
    assert store.get(result.url) == result
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]]
    assert len(keys) == 1 and keys[0].startswith("home/downloads/web/")


@pytest.mark.parametrize(
    ("value", "source", "expected"),
    [
        ("", "a", False),
        ("0", "a", False),
        ("1", "a", True),
        ("all", "b", True),
        ("a,c", "a", True),
        ("a,c", "b", False),
    ],
)
def test_refetch_requested(value, source, expected):
    assert refetch_requested(source, {REFETCH_ENV: value}) is expected
