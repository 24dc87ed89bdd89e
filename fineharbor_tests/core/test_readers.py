import io
import json
import tarfile
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fineharbor.core.config import IngestParams, parse_config
from fineharbor.core.readers import SourceLocationError, read_source
from fineharbor.core.schema import IMAGE_TYPE, TURN_TYPE, make_sample_id
from fineharbor_tests.conftest import make_image_bytes


def source(tmp_path, **fields):
    fields.setdefault("name", "s")
    config = parse_config({"sources": [fields]}, tmp_path)
    return config.sources[0]


def read_all(src, params=None):
    kept, rejected = [], []
    for k, r in read_source(src, params or IngestParams()):
        kept += k.to_pylist()
        rejected += r.to_pylist()
    return kept, rejected


def test_hf_parquet_reads_image_structs_and_lists(tmp_path):
    image = make_image_bytes(1)
    rows = [
        {"images": [{"bytes": image, "path": "a.jpg"}], "texts": [{"user": "q", "assistant": "a"}]},
        {"images": [], "texts": [{"user": "text only", "assistant": "ok"}]},
    ]
    schema = pa.schema([("images", pa.list_(IMAGE_TYPE)), ("texts", pa.list_(TURN_TYPE))])
    (tmp_path / "d").mkdir()
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), tmp_path / "d" / "train-0.parquet")
    kept, rejected = read_all(
        source(
            tmp_path,
            reader="hf_parquet",
            location="d",
            mapping={"preset": "cauldron"},
            batch_size=1,
        )
    )
    assert rejected == []
    assert [k["origin_key"] for k in kept] == ["train-0.parquet:0", "train-0.parquet:1"]
    assert kept[0]["images"] == [{"bytes": image, "path": "a.jpg"}]
    assert kept[0]["sample_id"] == make_sample_id("s", "train-0.parquet:0")
    assert json.loads(kept[0]["record"]) == {"texts": [{"user": "q", "assistant": "a"}]}


def test_json_and_jsonl_with_image_dir_reject_bad_lines_and_escapes(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "1.jpg").write_bytes(make_image_bytes(2))
    good = {
        "id": "a",
        "image": "images/1.jpg",
        "conversations": [{"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": "a"}],
    }
    lines = [
        json.dumps(good),
        "{not json",
        json.dumps({**good, "id": "b", "image": "images/missing.jpg"}),
        json.dumps({**good, "id": "c", "image": "../../etc/passwd"}),
        json.dumps({**good, "id": "a"}),
    ]
    (tmp_path / "data.jsonl").write_text("\n".join(lines) + "\n")
    src = source(
        tmp_path,
        reader="json",
        location="data.jsonl",
        mapping={"preset": "llava", "origin_key": "id"},
    )
    kept, rejected = read_all(src)
    assert [k["origin_key"] for k in kept] == ["a"]
    assert kept[0]["images"][0]["bytes"] == make_image_bytes(2)
    reasons = {(r["origin_key"], r["reason"]) for r in rejected}
    assert reasons == {
        ("data.jsonl:1", "malformed_record"),
        ("b", "image_missing"),
        ("c", "image_path_outside_root"),
        ("a", "duplicate_origin_key"),
    }
    # A JSON array file gives the same result for the good record.
    (tmp_path / "arr").mkdir()
    (tmp_path / "arr" / "data.json").write_text(json.dumps([good]))
    src = source(
        tmp_path,
        reader="json",
        location="arr/data.json",
        image_root=str(tmp_path),
        mapping={"preset": "llava"},
    )
    kept, _ = read_all(src)
    assert kept[0]["origin_key"] == "data.json:0"


def add_member(archive, name, payload):
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    archive.addfile(info, io.BytesIO(payload))


def test_webdataset_groups_members_by_key(tmp_path):
    (tmp_path / "wds").mkdir()
    with tarfile.open(tmp_path / "wds" / "shard-0.tar", "w") as archive:
        for key in ("000", "001"):
            add_member(archive, f"{key}.jpg", make_image_bytes(int(key)))
            add_member(archive, f"{key}.txt", f"caption {key}".encode())
            add_member(archive, f"{key}.json", json.dumps({"k": key}).encode())
        add_member(archive, "002.json", b"{broken")
    kept, rejected = read_all(
        source(
            tmp_path, reader="webdataset", location="wds", mapping={"preset": "webdataset_caption"}
        )
    )
    assert [k["origin_key"] for k in kept] == ["shard-0.tar/000", "shard-0.tar/001"]
    assert json.loads(kept[1]["record"]) == {"txt": "caption 001", "json": {"k": "001"}}
    assert len(kept[1]["images"]) == 1
    assert [(r["origin_key"], r["reason"]) for r in rejected] == [
        ("shard-0.tar/002", "malformed_record")
    ]


def test_image_folder_reads_sidecars(tmp_path):
    (tmp_path / "f").mkdir()
    (tmp_path / "f" / "a.jpg").write_bytes(make_image_bytes(3))
    (tmp_path / "f" / "a.txt").write_text("a red circle")
    (tmp_path / "f" / "b.png").write_bytes(make_image_bytes(4, fmt="PNG"))
    kept, rejected = read_all(
        source(tmp_path, reader="image_folder", location="f", mapping={"caption": "txt"})
    )
    assert [k["origin_key"] for k in kept] == ["a.jpg", "b.png"]
    assert json.loads(kept[0]["record"])["txt"] == "a red circle"
    assert rejected == []


def test_hf_dataset_reads_local_files_through_datasets(tmp_path):
    import datasets

    image = make_image_bytes(5, fmt="PNG")
    features = datasets.Features({"image": datasets.Image(), "caption": datasets.Value("string")})
    ds = datasets.Dataset.from_dict(
        {"image": [{"bytes": image, "path": "x.png"}], "caption": ["a blue square"]},
        features=features,
    )
    ds.to_parquet(str(tmp_path / "local.parquet"))
    src = source(
        tmp_path,
        reader="hf_dataset",
        location="parquet",
        data_files=["local.parquet"],
        mapping={"caption": "caption"},
    )
    kept, rejected = read_all(src)
    assert rejected == []
    assert kept[0]["images"][0]["bytes"] == image
    assert json.loads(kept[0]["record"])["caption"] == "a blue square"


def test_missing_location_is_a_clear_error(tmp_path):
    with pytest.raises(SourceLocationError, match="does not exist"):
        read_all(
            source(
                tmp_path, reader="hf_parquet", location="nowhere", mapping={"preset": "cauldron"}
            )
        )


@pytest.fixture
def http_root(tmp_path):
    root = tmp_path / "served"
    root.mkdir()

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_url_list_downloads_and_records_failures(tmp_path, http_root):
    root, base = http_root
    (root / "ok.jpg").write_bytes(make_image_bytes(6))
    urls = pa.table(
        {
            "key": ["k1", "k2", "k3"],
            "url": [f"{base}/ok.jpg", f"{base}/missing.jpg", None],
            "caption": ["a", "b", "c"],
        }
    )
    pq.write_table(urls, tmp_path / "urls.parquet")
    src = source(
        tmp_path,
        reader="url_list",
        location="urls.parquet",
        allow_private_addresses=True,
        mapping={"preset": "laion", "origin_key": "key"},
    )
    kept, rejected = read_all(src)
    assert [k["origin_key"] for k in kept] == ["k1"]
    assert kept[0]["images"][0]["bytes"] == make_image_bytes(6)
    assert kept[0]["origin_uri"] == f"{base}/ok.jpg"
    assert {(r["origin_key"], r["reason"]) for r in rejected} == {
        ("k2", "download_http_error"),
        ("k3", "malformed_record"),
    }


def test_url_list_refuses_loopback_unless_allowed(tmp_path, http_root):
    root, base = http_root
    (root / "ok.jpg").write_bytes(make_image_bytes(6))
    pq.write_table(
        pa.table({"url": [f"{base}/ok.jpg"], "caption": ["a"]}), tmp_path / "urls.parquet"
    )
    kept, rejected = read_all(
        source(tmp_path, reader="url_list", location="urls.parquet", mapping={"preset": "laion"})
    )
    assert kept == []
    assert rejected[0]["reason"] == "download_blocked_address"


def test_struct_image_column_with_nulls_and_path_only_images(tmp_path):
    """Columnar path for embedded structs; rows by path are fetched; null means no image."""
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "on_disk.png").write_bytes(make_image_bytes(8, fmt="PNG"))
    shot = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    embedded = pa.table(
        {"shot": pa.array([{"bytes": b"A" * 10, "path": "a"}, None], shot), "goal": ["g1", "g2"]}
    )
    pq.write_table(embedded, tmp_path / "d" / "a.parquet")
    by_path = pa.table(
        {"shot": pa.array([{"bytes": None, "path": "on_disk.png"}], shot), "goal": ["g3"]}
    )
    pq.write_table(by_path, tmp_path / "d" / "b.parquet")
    src = source(
        tmp_path,
        reader="hf_parquet",
        location="d",
        mapping={"images": "shot", "question": "goal", "answer": "goal"},
    )
    kept, rejected = read_all(src)
    assert rejected == []
    assert [len(k["images"]) for k in kept] == [1, 0, 1]
    assert kept[0]["images"] == [{"bytes": b"A" * 10, "path": "a"}]
    assert kept[2]["images"][0]["bytes"] == make_image_bytes(8, fmt="PNG")
    assert json.loads(kept[1]["record"]) == {"goal": "g2"}


def test_truncated_shard_keeps_what_was_read_and_records_the_rest(tmp_path):
    (tmp_path / "wds").mkdir()
    with tarfile.open(tmp_path / "wds" / "shard-0.tar", "w") as archive:
        for key in ("000", "001", "002"):
            add_member(archive, f"{key}.jpg", make_image_bytes(int(key)))
            add_member(archive, f"{key}.txt", b"a caption")
    data = (tmp_path / "wds" / "shard-0.tar").read_bytes()
    (tmp_path / "wds" / "shard-0.tar").write_bytes(data[: int(len(data) * 0.6)])
    kept, rejected = read_all(
        source(
            tmp_path, reader="webdataset", location="wds", mapping={"preset": "webdataset_caption"}
        )
    )
    assert kept and len(kept) < 3
    assert rejected[-1]["reason"] == "unreadable_shard"


def test_folder_without_images_rejects_its_files_and_an_empty_folder_is_a_location_error(
    tmp_path,
):
    (tmp_path / "f").mkdir()
    (tmp_path / "f" / "a.txt").write_text("caption without image")
    kept, rejected = read_all(
        source(tmp_path, reader="image_folder", location="f", mapping={"caption": "txt"})
    )
    assert kept == []
    assert [(r["origin_key"], r["reason"]) for r in rejected] == [("a.txt", "unsupported_file")]
    assert "extension .txt, content text" in rejected[0]["detail"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceLocationError, match="holds no files"):
        read_all(
            source(tmp_path, reader="image_folder", location="empty", mapping={"caption": "txt"})
        )
