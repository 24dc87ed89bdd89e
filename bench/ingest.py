"""Benchmark: samples/s of each reader against plain pyarrow reading the same Parquet, same run.

Generates N image-text samples (~30 KB JPEGs) in every local format, then times

  baseline   pyarrow ``ParquetFile.iter_batches`` over the Hugging Face Parquet file (the bytes
             leave the file as Arrow buffers; nothing else is done)
  readers    hf_parquet, json (+ image dir), webdataset, image_folder: the full fineharbor read
             path (records parsed, images fetched, raw rows built as Arrow)

and prints samples/s and the ratio reader / baseline (target >= 0.5x). Then runs the download
benchmark (bench/ingest_download.py: our downloader against img2dataset on one loopback server).

Usage: python bench/ingest.py [--n 2000] [--repeats 3] [--skip-download]
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

if __package__ in (None, ""):  # run as a script: make the `bench` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import Measurement, best_time
from fineharbor.core.config import IngestParams, parse_config
from fineharbor.core.readers import read_source
from fineharbor.core.schema import IMAGE_TYPE, TURN_TYPE


def jpeg(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 255, size=(160, 160, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).resize((320, 240)).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def generate(root: Path, n: int) -> None:
    images = [jpeg(i % 64) for i in range(n)]
    captions = [f"a red circle and {i % 4 + 1} blue squares on a grey background" for i in range(n)]
    (root / "parquet").mkdir()
    schema = pa.schema([("images", pa.list_(IMAGE_TYPE)), ("texts", pa.list_(TURN_TYPE))])
    rows = [
        {"images": [{"bytes": b, "path": f"{i}.jpg"}], "texts": [{"user": "", "assistant": c}]}
        for i, (b, c) in enumerate(zip(images, captions, strict=True))
    ]
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), root / "parquet" / "train.parquet")
    (root / "json" / "images").mkdir(parents=True)
    (root / "folder").mkdir()
    (root / "wds").mkdir()
    with (root / "json" / "data.jsonl").open("w") as lines:
        for i, (b, c) in enumerate(zip(images, captions, strict=True)):
            (root / "json" / "images" / f"{i}.jpg").write_bytes(b)
            (root / "folder" / f"{i:06d}.jpg").write_bytes(b)
            (root / "folder" / f"{i:06d}.txt").write_text(c)
            conversation = [{"from": "human", "value": "<image>"}, {"from": "gpt", "value": c}]
            record = {"id": str(i), "image": f"images/{i}.jpg", "conversations": conversation}
            lines.write(json.dumps(record) + "\n")
    with tarfile.open(root / "wds" / "shard-0.tar", "w") as archive:
        for i, (b, c) in enumerate(zip(images, captions, strict=True)):
            for extension, payload in (("jpg", b), ("txt", c.encode())):
                info = tarfile.TarInfo(f"{i:06d}.{extension}")
                info.size = len(payload)
                archive.addfile(info, io.BytesIO(payload))


def sources(root: Path) -> dict:
    layouts = [
        ("hf_parquet", "parquet", {"preset": "cauldron"}),
        ("json", "json/data.jsonl", {"preset": "llava"}),
        ("webdataset", "wds", {"preset": "webdataset_caption"}),
        ("image_folder", "folder", {"caption": "txt"}),
    ]
    raw = [
        {"name": reader, "reader": reader, "location": location, "mapping": mapping}
        for reader, location, mapping in layouts
    ]
    return {s.name: s for s in parse_config({"sources": raw}, root).sources}


SIZES = {"tiny": 40, "small": 300, "large": 2400}


def run(size: int, repeats: int = 2) -> list[Measurement]:
    """Each reader against plain pyarrow reading the same Parquet, on ``size`` samples."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        generate(root, size)
        parquet_path = root / "parquet" / "train.parquet"

        def baseline() -> int:
            parquet = pq.ParquetFile(parquet_path)
            return sum(b.num_rows for b in parquet.iter_batches(batch_size=256))

        base_seconds, rows = best_time(baseline, repeats)
        assert rows == size, f"pyarrow read {rows} rows, expected {size}"
        params = IngestParams()
        out = []
        for name, source in sources(root).items():

            def read(source=source) -> int:
                return sum(k.num_rows + r.num_rows for k, r in read_source(source, params))

            seconds, rows = best_time(read, repeats)
            assert rows == size, f"{name} read {rows} rows, expected {size}"
            out.append(
                Measurement(
                    f"ingest/{name}", size, seconds, "pyarrow iter_batches", base_seconds, "samples"
                )
            )
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-download", action="store_true")
    args = parser.parse_args()
    measurements = run(args.n, args.repeats)
    base_rate = args.n / measurements[0].baseline_seconds
    print(f"samples: {args.n}")
    print(f"{'reader':<14}{'samples/s':>12}{'vs pyarrow':>12}")
    print(f"{'pyarrow':<14}{base_rate:>12.0f}{1.0:>11.2f}x")
    for m in measurements:
        verdict = "ok" if m.ratio >= 0.5 else "below 0.5x target"
        print(f"{m.name.split('/')[1]:<14}{m.rate:>12.0f}{m.ratio:>11.2f}x  {verdict}")
    if not args.skip_download:
        print("\ndownload (bench/ingest_download.py):", flush=True)
        script = Path(__file__).with_name("ingest_download.py")
        subprocess.run([sys.executable, str(script), "--n", str(args.n)], check=False)


if __name__ == "__main__":
    main()
