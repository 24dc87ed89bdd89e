"""The demo generator: determinism, ground truth that resolves, planted defects that are what
they claim, clean images that pass cleaning comfortably, and the loopback server."""

from __future__ import annotations

import io
import json
import re
import tarfile
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from fineharbor.core.cleaning.pii import TYPES as PII_TYPES
from fineharbor.demo import (
    DEFECT_RATES,
    DUPLICATE_DEFECTS,
    SOURCES,
    UNREACHABLE_DEFECTS,
    generate_demo,
    plan_counts,
    serve_directory,
)
from fineharbor.demo.generate import PII_RATE, PII_SOURCES, defect_count, record_count

pytestmark = pytest.mark.slow

BASE_URL = "http://127.0.0.1:8765"
SCALE = 0.2
IMAGE_EXTS = (".jpg", ".png", ".webp")


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    home = tmp_path_factory.mktemp("demo_a")
    summary = generate_demo(home, BASE_URL, seed=0, scale=SCALE)
    return summary


@pytest.fixture(scope="module")
def truth(demo) -> list[dict]:
    return pq.read_table(demo.ground_truth_path).to_pylist()


def _read_source(root: Path, source: str) -> dict[str, dict]:
    """Parse a demo source straight from its files: origin_key -> {images: [bytes|None], text}."""
    d = root / source
    out: dict[str, dict] = {}
    if source in ("cauldron_charts", "bench_vqa", "gui_android"):
        for f in sorted(d.glob("*.parquet")):
            for row, rec in enumerate(pq.read_table(f).to_pylist()):
                if source == "gui_android":
                    out[rec["step_id"]] = {
                        "images": [rec["screenshot"]["bytes"]],
                        "action": rec["action"],
                        "text": rec["goal"],
                    }
                else:
                    texts = rec["texts"]
                    out[f"{f.name}:{row}"] = {
                        "images": [im["bytes"] for im in rec["images"]],
                        "text": " ".join(t["assistant"] for t in texts),
                        "turns": texts,
                    }
    elif source in ("llava_scenes", "gui_aguvis"):
        name = "data.jsonl" if source == "llava_scenes" else "steps.jsonl"
        for i, line in enumerate((d / name).read_text(encoding="utf-8").splitlines()):
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                out[f"{name}:{i}"] = {"images": [], "malformed": True}
                continue
            path = d / rec["image"]
            entry = {"images": [path.read_bytes() if path.exists() else None]}
            if source == "llava_scenes":
                conv = rec["conversations"]
                assert [c["from"] for c in conv] == ["human", "gpt"] * (len(conv) // 2)
                assert conv[0]["value"].startswith("<image>\n")
                entry["text"] = " ".join(c["value"] for c in conv if c["from"] == "gpt")
                entry["turns"] = conv
            else:
                entry["action"] = rec["action"]
                entry["text"] = rec["instruction"]
            out[rec["id"]] = entry
    elif source == "wds_captions":
        for shard in sorted(d.glob("shard-*.tar")):
            with tarfile.open(shard) as tar:
                previous = None
                for member in tar.getmembers():
                    key, ext = member.name.split(".", 1)
                    full = f"{shard.name}/{key}"
                    if full != previous:
                        assert full not in out, f"members of {full} are not consecutive"
                        out[full] = {"images": []}
                        previous = full
                    data = tar.extractfile(member).read()
                    if ext in ("jpg", "png", "webp"):
                        out[full]["images"].append(data)
                    elif ext == "txt":
                        out[full]["text"] = data.decode()
                    elif ext == "json":
                        assert json.loads(data)["key"] == key
    elif source == "laion_urls":
        for rec in pq.read_table(d / "urls.parquet").to_pylist():
            assert rec["url"].startswith(BASE_URL + "/")
            name = rec["url"].rsplit("/", 1)[1]
            path = d / "_served" / name
            out[rec["key"]] = {
                "images": [path.read_bytes() if path.exists() else None],
                "text": rec["caption"],
                "file": name,
            }
    elif source == "folder_captions":
        for path in sorted(d.iterdir()):
            if path.suffix in IMAGE_EXTS:
                out[path.name] = {
                    "images": [path.read_bytes()],
                    "text": path.with_suffix(".txt").read_text(encoding="utf-8"),
                }
    elif source == "web_documents":
        for rec in pq.read_table(d / "documents-00000.parquet").to_pylist():
            out[rec["id"]] = {
                "images": [im["bytes"] for im in rec["images"] if im is not None],
                "text": " ".join(t for t in rec["texts"] if t is not None),
            }
    else:  # pragma: no cover
        raise AssertionError(source)
    return out


@pytest.fixture(scope="module")
def records(demo) -> dict[str, dict[str, dict]]:
    return {source: _read_source(demo.sources_dir, source) for source in SOURCES}


def _answers(rec: dict) -> set[str]:
    if "turns" in rec:
        return {t.get("assistant") or t["value"] for t in rec["turns"] if t.get("from") != "human"}
    return {rec["text"]}


def _decode(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        return img.convert("RGB")


def _laplacian_var(img: Image.Image) -> float:
    gray = img.convert("L")
    gray.thumbnail((256, 256))
    a = np.asarray(gray, dtype=np.float64)
    lap = a[1:-1, :-2] + a[1:-1, 2:] + a[:-2, 1:-1] + a[2:, 1:-1] - 4 * a[1:-1, 1:-1]
    return float(lap.var())


# --------------------------------------------------------------------------- tests


def test_generation_is_deterministic(demo, tmp_path):
    other = generate_demo(tmp_path, BASE_URL, seed=0, scale=SCALE)
    a_root, b_root = demo.demo_dir, other.demo_dir
    a_files = sorted(p.relative_to(a_root) for p in a_root.rglob("*") if p.is_file())
    b_files = sorted(p.relative_to(b_root) for p in b_root.rglob("*") if p.is_file())
    assert a_files == b_files
    assert not any(".tmp" in str(p) or "staging" in str(p) for p in a_files)
    for rel in a_files:
        assert (a_root / rel).read_bytes() == (b_root / rel).read_bytes(), rel
    assert other.records == demo.records and other.defects == demo.defects


def test_layout_and_summary(demo, records):
    for source in SOURCES:
        assert demo.source_paths[source].exists(), source
        assert len(records[source]) == demo.records[source], source
    assert demo.records["bench_vqa"] >= 16
    assert "near_duplicate_flip" in demo.readme_path.read_text()


def test_every_truth_row_resolves(truth, records):
    assert truth, "no planted defects"
    keys = [(r["source"], r["origin_key"]) for r in truth]
    assert len(keys) == len(set(keys)), "a sample carries more than one defect"
    for row in truth:
        assert row["origin_key"] in records[row["source"]], row
        if row["defect"] in DUPLICATE_DEFECTS or row["defect"] == "benchmark_copy":
            assert row["of_origin_key"] in records[row["of_source"]], row
            assert row["transform"] in ("none", "resize", "jpeg", "crop", "flip")
        elif row["defect"] == "watermark":  # transform describes the overlay
            assert row["of_source"] is None and re.fullmatch(
                r"(text|logo):(bottom|top)?_?(left|right|center|tiled):0\.\d+", row["transform"]
            ), row
        elif row["defect"] == "pii":  # transform lists the planted types
            assert row["of_source"] is None and set(row["transform"].split(",")) <= set(PII_TYPES)
        elif row["defect"] == "pii_negative":  # transform names the look-alike
            assert row["of_source"] is None and row["transform"]
        else:
            assert (
                row["of_source"] is None
                and row["of_origin_key"] is None
                and row["transform"] is None
            )


def test_defect_rates(demo, truth):
    by_source = Counter((r["source"], r["defect"]) for r in truth)
    planned = plan_counts(SCALE)
    for source, rates in DEFECT_RATES.items():
        for defect in rates:
            assert by_source[(source, defect)] >= 1, (source, defect)
            if source in planned:
                assert by_source[(source, defect)] == planned[source][defect]
    # defects only where they make sense; PII sentences in clean records of PII_SOURCES
    for source, defect in by_source:
        if defect in ("pii", "pii_negative"):
            assert source in PII_SOURCES, source
            continue
        assert defect in DEFECT_RATES[source], (source, defect)
    for source in PII_SOURCES:
        planted = by_source[(source, "pii")] + by_source[(source, "pii_negative")]
        assert (
            planted == defect_count(PII_RATE, demo.records[source]) and by_source[(source, "pii")]
        )
    assert not any(r["source"] == "bench_vqa" for r in truth)
    # at full scale every planted defect is a 1.5–4% share of its source
    full = plan_counts(1.0)
    for source, counts in full.items():
        n = record_count(source, 1.0)
        for defect, count in counts.items():
            assert 0.015 <= count / n <= 0.04, (source, defect, count, n)
        assert sum(counts.values()) / n <= 0.4


def test_clean_images_pass_cleaning_and_planted_ones_do_not(truth, records):
    defect_of = {(r["source"], r["origin_key"]): r["defect"] for r in truth}
    checked = 0
    for source, recs in records.items():
        for key, rec in recs.items():
            defect = defect_of.get((source, key))
            if defect in UNREACHABLE_DEFECTS:
                continue
            for data in rec["images"]:
                assert data is not None, (source, key)
                if defect == "corrupt_image" or defect == "truncated_image":
                    with pytest.raises(Exception):  # noqa: B017 - any decoder error
                        _decode(data)
                    assert len(data) >= 5 * 1024  # fails for being broken, not small
                    continue
                img = _decode(data)
                w, h = img.size
                if defect == "small_image_bytes":
                    assert len(data) < 5000 and min(w, h) >= 200
                    continue
                if defect == "extreme_aspect":
                    assert max(w, h) / min(w, h) >= 4 and len(data) > 5 * 1024
                    continue
                assert len(data) >= 5 * 1024, (source, key, len(data))
                assert min(w, h) >= 224, (source, key, img.size)
                assert max(w, h) / min(w, h) <= 2.0, (source, key, img.size)
                assert _laplacian_var(img) >= 120, (source, key)
                assert np.asarray(img.convert("L")).std() >= 5, (source, key)
                checked += 1
    assert checked > 200
    # some images exercise the 2048 px resize
    big = [
        key
        for key, rec in records["folder_captions"].items()
        if defect_of.get(("folder_captions", key)) is None
        and max(Image.open(io.BytesIO(rec["images"][0])).size) >= 2400
    ]
    assert big


def test_unreachable_defects(truth, records, demo):
    for row in truth:
        rec = records[row["source"]][row["origin_key"]]
        if row["defect"] == "malformed_record":
            assert rec.get("malformed") and row["origin_key"].startswith("data.jsonl:")
        elif row["defect"] in ("missing_image", "broken_url"):
            assert rec["images"] == [None]
        elif row["defect"] == "noai_url":
            assert "noai" in rec["file"] and rec["images"][0] is not None
    served = [p.name for p in demo.served_dir.iterdir()]
    noai = {r["origin_key"] for r in truth if r["defect"] == "noai_url"}
    assert sum("noai" in name for name in served) == len(noai)


def test_duplicates_and_benchmark_copies(truth, records):
    defect_of = {(r["source"], r["origin_key"]) for r in truth}
    transforms = Counter()
    for row in truth:
        if row["of_source"] is None:
            continue
        original = records[row["of_source"]][row["of_origin_key"]]
        copy = records[row["source"]][row["origin_key"]]
        assert (row["of_source"], row["of_origin_key"]) not in defect_of, "original must be clean"
        assert not _answers(copy) & _answers(original), "a copy carries its own text"
        a, b = original["images"][0], copy["images"][0]
        ia, ib = _decode(a), _decode(b)
        transforms[row["transform"]] += 1
        if row["defect"] == "exact_duplicate":
            assert row["of_source"] != row["source"] and a == b
            continue
        if row["defect"] == "benchmark_copy":
            assert row["of_source"] == "bench_vqa"
        else:
            assert row["transform"] == row["defect"].removeprefix("near_duplicate_")
        assert a != b
        ratio = (ib.width * ib.height) / (ia.width * ia.height)
        if row["transform"] == "resize":
            assert 0.24 <= ratio <= 0.65
        elif row["transform"] == "crop":
            assert 0.79 <= ratio <= 0.91
        else:
            assert ib.size == ia.size
            ref = (
                ia.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if row["transform"] == "flip" else ia
            )
            diff = np.abs(np.asarray(ref, float) - np.asarray(ib, float)).mean()
            assert diff < 12, (row, diff)
    sources = {r["source"] for r in truth if r["defect"] == "near_duplicate_crop"}
    assert len(sources) >= 3
    within = [r for r in truth if r["defect"].startswith("near_") and r["of_source"] == r["source"]]
    across = [r for r in truth if r["defect"].startswith("near_") and r["of_source"] != r["source"]]
    assert within and across
    assert set(transforms) == {"none", "resize", "jpeg", "crop", "flip"}


def test_texts(truth, records):
    defect_of = {(r["source"], r["origin_key"]): r["defect"] for r in truth}
    for source in ("wds_captions", "laion_urls", "folder_captions"):
        for key, rec in records[source].items():
            defect = defect_of.get((source, key))
            text = rec["text"]
            if defect == "short_alt_text":
                assert len(text) < 5
            elif defect == "foreign_language":
                assert " the " not in f" {text.lower()} "
                assert not text.isascii() or {"Une", "Das", "Una"} & set(text.split()), text
            elif defect in ("pii", "pii_negative"):  # a caption and one planted sentence
                assert 10 <= len(text.split()) <= 60, text
                assert text.isascii(), text
            else:
                assert 8 <= len(text.split()) <= 40, text
                assert text.isascii(), text
    for key, rec in records["llava_scenes"].items():
        if defect_of.get(("llava_scenes", key)) in ("mismatched_caption", "foreign_language"):
            assert len(rec["turns"]) == 2
    for rec in records["bench_vqa"].values():
        (turn,) = rec["turns"]
        assert len(turn["user"].split()) <= 12 and turn["assistant"]


_PYAUTOGUI = re.compile(
    r"pyautogui\.(?:(click|doubleClick|rightClick|moveTo|dragTo)\(x=([01]\.\d{4}), y=([01]\.\d{4})\)"
    r"|scroll\(-?\d+\)|write\(message='[^']*'\)|hotkey\('\w+'(?:, '\w+')+\)|press\('\w+'\))"
)
_ANDROID = {
    "click": {"x", "y"},
    "long_press": {"x", "y"},
    "scroll": {"direction"},
    "type": {"text"},
    "swipe": {"touch", "lift"},
    "open_app": {"app_name"},
    "navigate_home": set(),
    "navigate_back": set(),
    "wait": set(),
    "status": {"goal_status"},
}


def _android_ok(action: str, size: tuple[int, int]) -> bool:
    try:
        obj = json.loads(action)
    except json.JSONDecodeError:
        return False
    if not isinstance(obj, dict) or obj.get("action_type") not in _ANDROID:
        return False
    if set(obj) != {"action_type", *_ANDROID[obj["action_type"]]}:
        return False
    if "x" in obj:
        return (
            all(isinstance(obj[k], int) for k in ("x", "y"))
            and 0 <= obj["x"] < size[0]
            and 0 <= obj["y"] < size[1]
        )
    return True


def test_gui_actions(truth, records):
    bad = {(r["source"], r["origin_key"]) for r in truth if r["defect"] == "gui_action_unparseable"}
    kinds = Counter()
    for key, rec in records["gui_aguvis"].items():
        m = _PYAUTOGUI.fullmatch(rec["action"])
        assert (m is None) == (("gui_aguvis", key) in bad), rec["action"]
        if m:
            kinds[rec["action"].split("(")[0]] += 1
    assert len(kinds) >= 6
    corrupt = {r["origin_key"] for r in truth if r["defect"] == "corrupt_image"}
    android_kinds = Counter()
    for key, rec in records["gui_android"].items():
        size = (10**6, 10**6) if key in corrupt else _decode(rec["images"][0]).size
        ok = _android_ok(rec["action"], size)
        assert ok != (("gui_android", key) in bad), rec["action"]
        if ok:
            android_kinds[json.loads(rec["action"])["action_type"]] += 1
        assert key in corrupt or size[1] > size[0]  # portrait
    assert len(android_kinds) >= 5


def test_server_serves_404s_and_tags_noai(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"hello")
    (tmp_path / "b_noai.jpg").write_bytes(b"opt out")
    with serve_directory(tmp_path) as base:
        assert base.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(f"{base}/a.jpg", timeout=5) as resp:
            assert resp.status == 200 and resp.read() == b"hello"
            assert resp.headers.get("X-Robots-Tag") is None
        with urllib.request.urlopen(f"{base}/b_noai.jpg", timeout=5) as resp:
            assert resp.read() == b"opt out"
            assert resp.headers.get("X-Robots-Tag") == "noai"
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"{base}/missing.jpg", timeout=5)
        assert err.value.code == 404
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{base}/a.jpg", timeout=2)


def test_serves_the_generated_url_list(demo):
    rows = pq.read_table(demo.source_paths["laion_urls"]).to_pylist()
    with serve_directory(demo.served_dir) as base:
        ok = 0
        for row in rows[:10]:
            url = row["url"].replace(BASE_URL, base)
            try:
                with urllib.request.urlopen(url, timeout=5) as resp:
                    ok += resp.status == 200
            except urllib.error.HTTPError as exc:
                assert exc.code == 404
        assert ok >= 5
