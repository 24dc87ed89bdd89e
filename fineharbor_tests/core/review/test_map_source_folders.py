"""`map-source` on folders as people hand them over: images in many formats with a stray tar,
captionless images, JSONL whose images live elsewhere, and sources where nothing maps."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
from PIL import Image

from fineharbor.cli import main
from fineharbor.core.config import load_config
from fineharbor.core.review.propose import detect_reader, propose_source

# Formats Pillow writes, saved under their usual suffixes (and two under none at all).
FORMATS = {
    "JPEG": ".jpg",
    "PNG": ".png",
    "GIF": ".gif",
    "BMP": ".bmp",
    "TIFF": ".tif",
    "WEBP": ".webp",
    "PPM": ".ppm",
    "TGA": ".tga",
    "ICO": ".ico",
    "PCX": ".pcx",
    "SGI": ".sgi",
}


def write_images(folder: Path, image_bytes) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for index, (fmt, suffix) in enumerate(FORMATS.items()):
        image = Image.open(io.BytesIO(image_bytes(index, size=(64, 48), fmt="PNG"))).convert("RGB")
        buffer = io.BytesIO()
        image.save(buffer, format=fmt)
        path = folder / f"photo_{index}{suffix}"
        path.write_bytes(buffer.getvalue())
        written.append(path)
    (folder / "no_suffix_png").write_bytes(image_bytes(50, fmt="PNG"))
    (folder / "no_suffix_jpeg").write_bytes(image_bytes(51))
    return written


@pytest.fixture
def config(tmp_path, home):
    path = tmp_path / "fineharbor.yaml"
    path.write_text("sources: []\n")
    return path


def test_images_in_many_formats_with_one_tar_are_an_image_folder(tmp_path, image_bytes):
    folder = tmp_path / "corpus"
    write_images(folder, image_bytes)
    with tarfile.open(folder / "stray.tar", "w") as archive:
        info = tarfile.TarInfo("x.txt")
        archive.addfile(info, io.BytesIO(b""))
    reader, _, evidence = detect_reader(folder)
    assert reader == "image_folder"
    assert any("not WebDataset" in line for line in evidence)
    # a folder of tars stays a WebDataset
    shards = tmp_path / "shards"
    shards.mkdir()
    for name in ("a.tar", "b.tar"):
        (shards / name).write_bytes((folder / "stray.tar").read_bytes())
    assert detect_reader(shards)[0] == "webdataset"


def test_captionless_images_get_an_image_only_proposal(tmp_path, image_bytes, config, capsys):
    folder = tmp_path / "pool"
    write_images(folder, image_bytes)
    proposal = propose_source(folder)
    assert proposal.block["reader"] == "image_folder"
    assert "mapping" not in proposal.block  # image-only: no mapping at all
    assert proposal.dry_run.mapped > 0 and proposal.dry_run.mapped == proposal.dry_run.image_only
    assert any("image-only" in line for line in proposal.evidence)

    assert main(["--config", str(config), "map-source", str(folder), "--write"]) == 0
    assert "image-only sample" in capsys.readouterr().out
    added = load_config(config).source("pool")
    assert added.reader == "image_folder" and added.mapping.image_only


def test_file_names_are_never_proposed_as_captions(tmp_path, image_bytes):
    folder = tmp_path / "pool"
    write_images(folder, image_bytes)
    (folder / "photo_0.txt").write_text("a textured scene with a round shape")
    proposal = propose_source(folder)
    assert proposal.block["mapping"] == {"caption": "txt"}
    assert proposal.dry_run.mapped - proposal.dry_run.image_only == 1


def _jsonl_elsewhere(tmp_path: Path, image_bytes, field: str = "image") -> tuple[Path, Path]:
    images = tmp_path / "storage" / "images"
    images.mkdir(parents=True)
    lines = []
    for i in range(6):
        (images / f"{i}.jpg").write_bytes(image_bytes(i))
        lines.append(json.dumps({"id": f"r{i}", field: f"{i}.jpg", "caption": f"scene {i}"}))
    (tmp_path / "meta").mkdir()
    listing = tmp_path / "meta" / "records.jsonl"
    listing.write_text("\n".join(lines) + "\n")
    return listing, images


def test_jsonl_with_images_elsewhere_takes_image_root(tmp_path, image_bytes, config, capsys):
    listing, images = _jsonl_elsewhere(tmp_path, image_bytes)
    assert main(["--config", str(config), "map-source", str(listing)]) == 2
    err = capsys.readouterr().err
    assert "image_missing: 6/6, first: '0.jpg' not found" in err
    assert "--image-root" in err

    args = ["--config", str(config), "map-source", str(listing), "--image-root", str(images)]
    assert main([*args, "--write"]) == 0
    added = load_config(config).source("meta")
    assert added.reader == "json" and Path(added.image_root) == images
    assert added.mapping.caption == "caption"


def test_when_nothing_maps_the_reasons_per_record_are_printed(
    tmp_path, image_bytes, config, capsys
):
    # the image field has an unusual name: the probe reads no image, the proposal names the
    # field, and the dry run finds none of the files next to the listing
    listing, _ = _jsonl_elsewhere(tmp_path, image_bytes, field="picture")
    assert main(["--config", str(config), "map-source", str(listing), "--write"]) == 1
    err = capsys.readouterr().err
    assert "none of the 6 sampled records maps" in err
    assert "image_missing: 6/6, first: '0.jpg' not found" in err
    assert "--image-root" in err
    assert load_config(config).source_names == []  # nothing written


def test_a_parquet_listing_beside_its_images_stays_hf_parquet(tmp_path, image_bytes):
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / "listed"
    write_images(folder / "images", image_bytes)
    names = sorted(p.name for p in (folder / "images").iterdir())
    pq.write_table(
        pa.table({"image": [f"images/{n}" for n in names], "caption": names}),
        folder / "train.parquet",
    )
    assert detect_reader(folder)[0] == "hf_parquet"
    # a CSV without URLs beside images is no URL list: the images decide
    (folder / "train.parquet").unlink()
    (folder / "metadata.csv").write_text("file,label\na.jpg,cat\n")
    reader, _, evidence = detect_reader(folder)
    assert reader == "image_folder"
    assert any("without a URL column" in line for line in evidence)


def test_stray_json_files_do_not_hide_a_mixed_folder_of_images(tmp_path, config, capsys):
    from fineharbor.testing.corpus import write_hostile_corpus

    corpus = write_hostile_corpus(tmp_path / "photos", tmp_path / "outside")
    reader, _, evidence = detect_reader(corpus.root)
    assert reader == "image_folder"
    assert any("name no image file: not read" in line for line in evidence)
    assert main(["--config", str(config), "map-source", str(corpus.root), "--write"]) == 0
    assert load_config(config).source("photos").reader == "image_folder"

    # a JSON listing whose records name the folder's images is the source, even among images
    names = sorted(str(p.relative_to(corpus.root)) for p in corpus.root.rglob("*.png"))
    assert names
    listing = [{"file": name, "caption": f"picture {i}"} for i, name in enumerate(names)]
    (corpus.root / "listing.json").write_text(json.dumps(listing))
    assert detect_reader(corpus.root)[0] == "json"


def test_mint_document_shards_are_proposed_as_interleaved(tmp_path, image_bytes):
    from fineharbor.testing.documents import write_document_shard

    document = {"texts": ["a heading", None], "images": [None, "page_0_image_1"], "url": "x"}
    members = {"json": json.dumps(document).encode(), "jpg": image_bytes(1)}
    write_document_shard(tmp_path / "mint" / "shard-0.tar", [("0" * 32, members)])
    reader, _, evidence = detect_reader(tmp_path / "mint")
    assert reader == "interleaved"
    assert any("MINT-1T" in line for line in evidence)
    # pairs with a caption in their .json stay a WebDataset
    caption = {"json": json.dumps({"caption": "a cat"}).encode(), "jpg": image_bytes(2)}
    write_document_shard(tmp_path / "pairs" / "shard-0.tar", [("k0", caption)])
    assert detect_reader(tmp_path / "pairs")[0] == "webdataset"
