"""MINT-1T PDF/ArXiv-style WebDataset shards read as interleaved documents: a `.json` member is
the document, its images are members of the sample (a multi-page `.tiff`, or named members)."""

from __future__ import annotations

import io
import json

import pyarrow as pa
from PIL import Image

from fineharbor.core.mapping import map_batch
from fineharbor.core.schema import RAW_SCHEMA
from fineharbor.testing.documents import tiff_pages, write_document_shard, write_mint_jsonl
from fineharbor.testing.images import make_image_bytes
from fineharbor_tests.core.readers.helpers import make_source, read_whole, reasons


def _page(size: tuple[int, int], colour: str) -> Image.Image:
    return Image.new("RGB", size, colour)


def _json(images: list, texts: list, **fields) -> bytes:
    return json.dumps({"images": images, "texts": texts, **fields}).encode()


def _decoded(image: dict) -> Image.Image:
    return Image.open(io.BytesIO(image["bytes"]))


def _source(tmp_path, **fields):
    return make_source(
        tmp_path, name="pdf", reader="interleaved", location="mint", mapping={}, **fields
    )


def test_mint_pdf_samples_become_documents_in_order(tmp_path):
    two_pages = tiff_pages([_page((40, 30), "red"), _page((20, 50), "blue")])
    fig_a, fig_b = make_image_bytes(1, fmt="PNG"), make_image_bytes(2)
    samples = [
        (
            "a0c1",  # MINT-1T PDF: image names that are no member, one TIFF page per image
            {
                "json": _json(
                    ["page_0_image_85", None, "page_2_image_9"],
                    [None, "A paragraph between two figures.", None],
                    url="https://example.org/a.pdf",
                    image_metadata=[{"page": 0, "xref": 85}, {"page": 2, "xref": 9}],
                ),
                "tiff": two_pages,
            },
        ),
        (
            "b7e2",  # members named by the document, stored in another order
            {
                "fig_b.jpg": fig_b,
                "json": _json([None, "fig_a", None, "fig_b.jpg"], ["One.", None, "Two.", None]),
                "fig_a.png": fig_a,
            },
        ),
        ("c3", {"json": _json(["p0"], [None]), "jpg": make_image_bytes(3)}),  # one page, one jpg
    ]
    write_document_shard(tmp_path / "mint" / "shard-00000.tar", samples)
    write_mint_jsonl(
        tmp_path / "mint" / "more.jsonl", [{"texts": ["Text only."], "images": [None]}]
    )
    source = _source(tmp_path)
    kept, rejected, _ = read_whole(source)
    assert rejected == []
    keys = ["more.jsonl:0", "shard-00000.tar/a0c1", "shard-00000.tar/b7e2", "shard-00000.tar/c3"]
    assert [k["origin_key"] for k in kept] == keys

    pdf = kept[1]
    assert [_decoded(im).size for im in pdf["images"]] == [(40, 30), (20, 50)]
    assert [_decoded(im).getpixel((0, 0)) for im in pdf["images"]] == [(255, 0, 0), (0, 0, 255)]
    assert [_decoded(im).format for im in pdf["images"]] == ["PNG", "PNG"]
    record = json.loads(pdf["record"])
    assert record["url"] == "https://example.org/a.pdf"
    assert record["texts"] == [None, "A paragraph between two figures.", None]
    assert [im["bytes"] for im in kept[2]["images"]] == [fig_a, fig_b]
    assert [im["bytes"] for im in kept[3]["images"]] == [make_image_bytes(3)]

    unified, mapped_rejects = map_batch(
        pa.Table.from_pylist(kept, schema=RAW_SCHEMA), source.mapping
    )
    assert mapped_rejects.num_rows == 0
    segments = unified.column("segments").to_pylist()
    assert segments[1] == [
        {"image": 0, "text": None},
        {"image": None, "text": "A paragraph between two figures."},
        {"image": 1, "text": None},
    ]
    assert segments[2][1] == {"image": 0, "text": None} and segments[2][3]["image"] == 1


def test_malformed_samples_are_rejects(tmp_path):
    one_page = tiff_pages([_page((10, 10), "red")])
    three_pages = tiff_pages([_page((10, 10), c) for c in ("red", "green", "blue")])
    samples = [
        ("ok", {"json": _json(["p0"], [None]), "tiff": one_page}),
        ("too-few", {"json": _json(["p0", None, "p1"], [None, "t", None]), "tiff": one_page}),
        ("too-many", {"json": _json(["p0", "p1"], [None, None]), "tiff": three_pages}),
        ("no-json", {"tiff": one_page}),
        ("bad-json", {"json": b"{not json", "tiff": one_page}),
        ("list-json", {"json": b"[1, 2]"}),
        ("bad-tiff", {"json": _json(["p0"], [None]), "tiff": b"II*\x00" + b"\x07" * 64}),
        ("misaligned", {"json": _json(["p0"], [None, "t"]), "tiff": one_page}),
        (
            "extra",
            {
                "json": _json(["fig"], [None]),
                "fig.png": make_image_bytes(4, fmt="PNG"),
                "jpg": make_image_bytes(5),
            },
        ),
    ]
    path = write_document_shard(tmp_path / "mint" / "shard.tar", samples)
    kept, rejected, _ = read_whole(_source(tmp_path))
    assert [k["origin_key"] for k in kept] == ["shard.tar/ok"]
    assert reasons(rejected) == {
        "shard.tar/too-few": "document_misaligned",
        "shard.tar/too-many": "document_misaligned",
        "shard.tar/no-json": "malformed_record",
        "shard.tar/bad-json": "malformed_record",
        "shard.tar/list-json": "malformed_record",
        "shard.tar/bad-tiff": "image_corrupt",
        "shard.tar/misaligned": "document_misaligned",
        "shard.tar/extra": "document_misaligned",
    }
    detail = {r["origin_key"]: r["detail"] for r in rejected}
    assert "1 of the sample's 3 unnamed images" in detail["shard.tar/too-many"]
    assert "image 1 of the sample, which has 1" in detail["shard.tar/too-few"]

    # a shard cut short: the samples before the damage are kept, one reject for the rest
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    kept, rejected, _ = read_whole(_source(tmp_path))
    assert [k["origin_key"] for k in kept] == ["shard.tar/ok"]
    assert reasons(rejected)["shard.tar/*"] == "unreadable_shard"
