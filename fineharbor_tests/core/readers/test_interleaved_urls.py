"""Image URLs inside interleaved documents: downloaded in document order through the url_list
downloader and its kept store; a document whose image fails is one reject naming the URL."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator

import pytest

from fineharbor.core.config import IngestParams, parse_config
from fineharbor.core.download_store import (
    ACCEPT_LOSSES_ENV,
    DOWNLOADS,
    REFETCH_ENV,
    DownloadLossError,
)
from fineharbor.core.ingest import build_raw_samples
from fineharbor.core.pipeline import RAW
from fineharbor.core.storage import Storage
from fineharbor.testing.documents import write_mint_jsonl
from fineharbor.testing.images import make_image_bytes
from fineharbor_tests.core.readers.helpers import make_source, read_whole, reasons
from fineharbor_tests.core.test_download_store import LoopbackServer

DOWNLOAD = {"retries": 0, "timeout_s": 5}


@pytest.fixture
def server(tmp_path) -> Iterator[LoopbackServer]:
    root = tmp_path / "served"
    root.mkdir()
    for i in range(4):
        (root / f"{i}.jpg").write_bytes(make_image_bytes(i))
    (root / "page.html").write_text("<!doctype html><html><body>not an image</body></html>")
    served = LoopbackServer(root)
    served.start()
    yield served
    served.stop()


@pytest.fixture(autouse=True)
def no_run_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(REFETCH_ENV, raising=False)
    monkeypatch.delenv(ACCEPT_LOSSES_ENV, raising=False)


def _documents(server: LoopbackServer) -> list[dict]:
    return [
        {
            "id": "two-urls",
            "texts": ["Intro.", None, "Middle.", None],
            "images": [
                None,
                server.url("1.jpg"),
                None,
                {"bytes": None, "path": server.url("0.jpg")},
            ],
        },
        {"id": "local", "texts": [None, "A local image."], "images": ["files/2.jpg", None]},
        {
            "id": "gone",
            "texts": ["x", None, None],
            "images": [None, server.url("3.jpg"), server.url("404.jpg")],
        },
        {"id": "html", "texts": [None, "y"], "images": [server.url("page.html"), None]},
        {
            "id": "mixed",
            "texts": [None, "z", None],
            "images": ["files/2.jpg", None, server.url("2.jpg")],
        },
    ]


def _write(tmp_path, server) -> None:
    (tmp_path / "docs" / "files").mkdir(parents=True)
    (tmp_path / "docs" / "files" / "2.jpg").write_bytes(make_image_bytes(2))
    write_mint_jsonl(tmp_path / "docs" / "docs.jsonl", _documents(server))


def _source_fields(**extra) -> dict:
    return {
        "name": "docs",
        "reader": "interleaved",
        "location": "docs",
        "allow_private_addresses": True,
        "mapping": {"origin_key": "id"},
        **extra,
    }


def test_urls_become_image_bytes_in_document_order(tmp_path, server):
    _write(tmp_path, server)
    source = make_source(tmp_path, **_source_fields())
    kept, rejected, _ = read_whole(source, IngestParams(download=DOWNLOAD))
    assert [k["origin_key"] for k in kept] == ["two-urls", "local", "mixed"]
    first = kept[0]
    assert [im["bytes"] for im in first["images"]] == [make_image_bytes(1), make_image_bytes(0)]
    record = json.loads(first["record"])
    assert record["texts"] == ["Intro.", None, "Middle.", None]
    assert [(d["position"], d["url"], d["http_status"]) for d in record["downloads"]] == [
        (1, server.url("1.jpg"), 200),
        (3, server.url("0.jpg"), 200),
    ]
    assert [im["bytes"] for im in kept[2]["images"]] == [make_image_bytes(2)] * 2
    assert "downloads" not in json.loads(kept[1]["record"])

    assert reasons(rejected) == {"gone": "download_http_error", "html": "image_corrupt"}
    detail = {r["origin_key"]: r["detail"] for r in rejected}
    assert detail["gone"] == f"position 2: {server.url('404.jpg')}: HTTP 404"
    assert detail["html"].startswith(f"position 0: {server.url('page.html')}: the downloaded")


def test_an_opt_out_rejects_the_document(tmp_path, server):
    _write(tmp_path, server)
    server.noai.add("1.jpg")
    kept, rejected, _ = read_whole(make_source(tmp_path, **_source_fields()))
    assert "two-urls" not in [k["origin_key"] for k in kept]
    assert reasons(rejected)["two-urls"] == "download_noai"


def test_loopback_urls_are_refused_unless_the_source_allows_them(tmp_path, server):
    _write(tmp_path, server)
    source = make_source(tmp_path, **_source_fields(allow_private_addresses=False))
    kept, rejected, _ = read_whole(source)
    assert [k["origin_key"] for k in kept] == ["local"]
    assert set(reasons(rejected).values()) == {"download_blocked_address"}
    assert server.hits == Counter()


def _project(tmp_path):
    stages = {"ingest": {"download": DOWNLOAD}}
    return parse_config({"sources": [_source_fields()], "stages": stages}, tmp_path)


def _raw(storage: Storage) -> tuple[list[dict], list[dict]]:
    kept = storage.read_table(RAW, "docs").sort_by("sample_id").to_pylist()
    rejected = storage.read_table(RAW, "docs", kind="rejects").sort_by("sample_id").to_pylist()
    return kept, rejected


def test_a_rerun_with_the_server_down_reuses_the_kept_downloads(tmp_path, server):
    _write(tmp_path, server)
    config = _project(tmp_path)
    storage = Storage(str(tmp_path / "home"))
    first = build_raw_samples(config, "docs", storage)
    assert (first.kept, first.rejected) == (3, 2)
    assert first.extra["downloads_fetched"] == 6
    before = _raw(storage)[0]

    server.stop()
    second = build_raw_samples(config, "docs", storage)
    assert _raw(storage)[0] == before  # same ids, records (fetch times too) and image bytes
    assert second.extra["downloads_reused"] == 5  # the 404 is asked again (refetch_failed)
    assert reasons(_raw(storage)[1]) == {
        "gone": "download_connection_error",
        "html": "image_corrupt",
    }


def test_a_rerun_that_would_lose_published_documents_is_not_published(
    tmp_path, server, monkeypatch
):
    _write(tmp_path, server)
    config = _project(tmp_path)
    storage = Storage(str(tmp_path / "home"))
    build_raw_samples(config, "docs", storage)
    before = _raw(storage)
    storage.fs.delete_dir(storage.path(DOWNLOADS))
    server.stop()
    with pytest.raises(DownloadLossError, match=r"not published: 2 URL\(s\)"):
        build_raw_samples(config, "docs", storage)
    assert _raw(storage) == before
    monkeypatch.setenv(ACCEPT_LOSSES_ENV, "1")
    assert build_raw_samples(config, "docs", storage).kept == 1  # "local" only
