"""Bytes stored: every stage of the demo (at ``--scale``), from raw to release, in process; the
bytes under ``data/`` per stage and in all, against the bytes of the demo's source files.

    .venv/bin/python bench/stored_bytes.py [--scale 0.05] [--home DIR] [--json OUT]

Runs each stage's build function from the stage table (hash signals only: no copy-detection
embedder, no CLIP, no judge; the quality classifier is not trained), with the demo's URL list
served on a loopback port. Prints one row per stage and the ratio ``data / sources`` that
docs/scale.md's storage section quotes; ``--json`` also writes the release's manifest hashes,
so two trees' releases can be compared byte for byte.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _tree_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run(home: Path, scale: float) -> dict:
    os.environ["FINEHARBOR_HOME"] = os.environ["FINEHARBOR_STATE"] = str(home)
    from fineharbor.core.config import load_config
    from fineharbor.core.pipeline import QUALITY_MODEL, RELEASE, STAGES, resolve
    from fineharbor.core.storage import Storage
    from fineharbor.defs.resources import STAGE_TABLES
    from fineharbor.demo import generate_demo
    from fineharbor.demo.server import serve_directory

    port = _free_port()
    generate_demo(home, f"http://127.0.0.1:{port}", seed=0, scale=scale)
    sources = home / "demo" / "sources"
    config = load_config(REPO / "fineharbor.yaml")
    signatures = config.stages.signatures.model_copy(update={"sscd_path": None, "clip_model": None})
    clip = config.stages.clip_score.model_copy(update={"model": None})
    config = config.model_copy(
        update={
            "stages": config.stages.model_copy(
                update={"signatures": signatures, "clip_score": clip}
            ),
            "release": config.release.model_copy(update={"require_review": False}),
        }
    )
    storage = Storage(str(home))
    partitions = [p for s in config.sources for p in config.partitions_of([s.name])]
    with serve_directory(sources / "laion_urls" / "_served", port=port):
        for stage in STAGES:
            build = resolve(stage.build)
            if stage.per_source:
                for partition in partitions:
                    result = build(config, partition, storage)
            elif stage.name == QUALITY_MODEL:
                continue  # needs CLIP; scored_samples scores without it
            elif stage.name == RELEASE:
                result = build(config, storage, STAGE_TABLES, REPO / "dbt_like_sql")
            else:
                result = build(config, storage)
            del result
    data = home / "data"
    per_stage = {s.name: _tree_bytes(data / s.name) for s in STAGES}
    releases = home / "releases"
    manifests = sorted(releases.rglob("manifest.json"))
    manifest = json.loads(manifests[0].read_text()) if manifests else {}
    return {
        "scale": scale,
        "source_bytes": _tree_bytes(sources),
        "data_bytes": _tree_bytes(data),
        "release_bytes": _tree_bytes(releases),
        "per_stage": per_stage,
        "release_files": {
            f["path"]: f.get("sha256") for f in manifest.get("files", []) if "path" in f
        },
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=0.05)
    parser.add_argument("--home", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="fh-bytes-") as tmp:
        result = run(args.home or Path(tmp), args.scale)
    mib = 1024 * 1024
    print(f"demo scale {result['scale']}: sources {result['source_bytes'] / mib:.1f} MiB")
    for name, size in result["per_stage"].items():
        if size:
            print(f"  {name:<24} {size / mib:8.2f} MiB")
    ratio = result["data_bytes"] / max(1, result["source_bytes"])
    print(f"data/ {result['data_bytes'] / mib:.1f} MiB = {ratio:.2f}x the source bytes")
    print(f"release {result['release_bytes'] / mib:.1f} MiB")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1, sort_keys=True))


if __name__ == "__main__":
    sys.exit(main())
