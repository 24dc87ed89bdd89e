"""Generate the demo sources (seven train sources in five reader formats, one benchmark) with
planted defects at known rates, and the ground truth that names every planted defect.

Layout under ``home/demo``::

    sources/cauldron_charts/train-0000{0,1}-of-00002.parquet   HF Parquet (images, texts, source)
    sources/llava_scenes/data.jsonl + images/                  LLaVA conversations
    sources/wds_captions/shard-0000{0,1}.tar                   WebDataset (image, .txt, .json)
    sources/laion_urls/urls.parquet + _served/                 URL list (key, url, caption)
    sources/folder_captions/img_NNNN.{jpg,png} + .txt          image folder with sidecar captions
    sources/gui_aguvis/steps.jsonl + screens/                  pyautogui actions (normalised)
    sources/gui_android/train-00000-of-00001.parquet           Android-in-the-wild actions (pixels)
    sources/bench_vqa/test-00000-of-00001.parquet              benchmark test set (role benchmark)
    ground_truth.parquet                                       one row per planted defect
    README.md

Every random draw comes from a generator seeded by (seed, source, record, purpose), so the output
is identical byte for byte for the same seed, scale and base URL.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import math
import os
import pickle
import shutil
import subprocess
import sys
import tarfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from fineharbor.demo import charts, gui, images, pii, scenes
from fineharbor.demo.charts import Chart
from fineharbor.demo.documents import DOCUMENT_DEFECTS, build_documents, write_documents
from fineharbor.demo.documents import FILE_NAME as DOCUMENTS_FILE
from fineharbor.demo.documents import SOURCE as DOCS
from fineharbor.demo.scenes import Scene

# --------------------------------------------------------------------------- defect codes

CORRUPT = "corrupt_image"
TRUNCATED = "truncated_image"
SMALL = "small_image_bytes"
ASPECT = "extreme_aspect"
EXACT = "exact_duplicate"
ND_RESIZE = "near_duplicate_resize"
ND_JPEG = "near_duplicate_jpeg"
ND_CROP = "near_duplicate_crop"
ND_FLIP = "near_duplicate_flip"
MISMATCH = "mismatched_caption"
SHORT = "short_alt_text"
FOREIGN = "foreign_language"
BENCH = "benchmark_copy"
MALFORMED = "malformed_record"
MISSING = "missing_image"
BROKEN_URL = "broken_url"
NOAI = "noai_url"
GUI_BAD = "gui_action_unparseable"
WATERMARK = "watermark"  # a clean pair whose image carries a visible watermark (pwatermark)
# bad interleaved documents (fineharbor.demo.documents): for the quality classifier to rank low
SHUFFLED_DOC, BOILERPLATE_DOC, UNRELATED_DOC = DOCUMENT_DEFECTS
# a clean record whose caption or last answer ends with a sentence holding personal data
# (transform: the types planted) or a hard negative that only looks like it (transform: its kind)
PII = pii.PII
PII_NEGATIVE = pii.PII_NEGATIVE

DEFECTS = (
    CORRUPT, TRUNCATED, SMALL, ASPECT, EXACT, ND_RESIZE, ND_JPEG, ND_CROP, ND_FLIP,
    MISMATCH, SHORT, FOREIGN, BENCH, MALFORMED, MISSING, BROKEN_URL, NOAI, GUI_BAD, WATERMARK,
    *DOCUMENT_DEFECTS, PII, PII_NEGATIVE,
)  # fmt: skip
NEAR_DUPLICATES = {ND_RESIZE: "resize", ND_JPEG: "jpeg", ND_CROP: "crop", ND_FLIP: "flip"}
# Groups, for the stages that must catch them.
IMAGE_DEFECTS = frozenset({CORRUPT, TRUNCATED, SMALL, ASPECT})  # the image fails cleaning
UNREACHABLE_DEFECTS = frozenset({MALFORMED, MISSING, BROKEN_URL, NOAI})  # no image arrives
TEXT_DEFECTS = frozenset({MISMATCH, SHORT, FOREIGN})
DUPLICATE_DEFECTS = frozenset({EXACT, *NEAR_DUPLICATES})

CAULDRON = "cauldron_charts"
LLAVA = "llava_scenes"
WDS = "wds_captions"
LAION = "laion_urls"
FOLDER = "folder_captions"
AGUVIS = "gui_aguvis"
ANDROID = "gui_android"
BENCH_VQA = "bench_vqa"
TRAIN_SOURCES = (CAULDRON, LLAVA, WDS, LAION, FOLDER, AGUVIS, ANDROID, DOCS)
SOURCES = (*TRAIN_SOURCES, BENCH_VQA)

# Records at scale 1.0 (gui_android: episodes of 3–4 steps, so about 175 steps).
BASE_RECORDS = {
    CAULDRON: 200,
    LLAVA: 200,
    WDS: 220,
    LAION: 220,
    FOLDER: 160,
    AGUVIS: 160,
    ANDROID: 50,
    BENCH_VQA: 120,
    DOCS: 100,
}
MIN_RECORDS = {
    CAULDRON: 30,
    LLAVA: 30,
    WDS: 30,
    LAION: 30,
    FOLDER: 30,
    AGUVIS: 12,
    ANDROID: 5,
    BENCH_VQA: 16,
    DOCS: 30,
}

_ND = {ND_RESIZE: 0.02, ND_JPEG: 0.02, ND_CROP: 0.02, ND_FLIP: 0.02}
# Fraction of a source's records carrying each defect (at least one of each when scaled down).
DEFECT_RATES: dict[str, dict[str, float]] = {
    CAULDRON: {CORRUPT: 0.03, TRUNCATED: 0.02, SMALL: 0.02, ASPECT: 0.02, EXACT: 0.03, **_ND,
               MISMATCH: 0.03, BENCH: 0.03},
    LLAVA: {MALFORMED: 0.02, MISSING: 0.02, CORRUPT: 0.02, TRUNCATED: 0.02, SMALL: 0.02,
            EXACT: 0.03, **_ND, MISMATCH: 0.03, FOREIGN: 0.02, BENCH: 0.03, WATERMARK: 0.035},
    WDS: {CORRUPT: 0.03, TRUNCATED: 0.03, SMALL: 0.03, ASPECT: 0.03, EXACT: 0.03,
          **{k: 0.025 for k in _ND}, MISMATCH: 0.03, SHORT: 0.03, FOREIGN: 0.03, BENCH: 0.03},
    LAION: {BROKEN_URL: 0.03, NOAI: 0.02, CORRUPT: 0.02, TRUNCATED: 0.02, SMALL: 0.03,
            ASPECT: 0.02, EXACT: 0.03, **_ND, MISMATCH: 0.03, SHORT: 0.03, FOREIGN: 0.03,
            BENCH: 0.03},
    FOLDER: {CORRUPT: 0.03, TRUNCATED: 0.03, SMALL: 0.03, ASPECT: 0.03, EXACT: 0.03,
             **{k: 0.025 for k in _ND}, MISMATCH: 0.03, SHORT: 0.03, FOREIGN: 0.03, BENCH: 0.03,
             WATERMARK: 0.02},
    AGUVIS: {GUI_BAD: 0.03, TRUNCATED: 0.02},
    ANDROID: {GUI_BAD: 0.03, CORRUPT: 0.02},
    DOCS: {SHUFFLED_DOC: 0.04, BOILERPLATE_DOC: 0.04, UNRELATED_DOC: 0.04},
}  # fmt: skip

# Share of a source's clean records given a planted PII sentence (two thirds personal data,
# one third hard negatives), after the other defects are planted: the other defects' slots and
# draws stay as they were.
PII_RATE = 0.09
PII_SOURCES = (CAULDRON, LLAVA, WDS, LAION, FOLDER)

SHORT_TEXTS = ("img", "pic", "IMG", "jpg", "pic1", "a", "?", "ok", "foto", "DSC", "img2", "--")
GT_SCHEMA = pa.schema(
    [
        ("source", pa.string()),
        ("origin_key", pa.string()),
        ("defect", pa.string()),
        ("of_source", pa.string()),
        ("of_origin_key", pa.string()),
        ("transform", pa.string()),
    ]
)
IMAGE_STRUCT = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
TURN_STRUCT = pa.struct([("user", pa.string()), ("assistant", pa.string())])


def record_count(source: str, scale: float) -> int:
    return max(MIN_RECORDS[source], round(BASE_RECORDS[source] * scale))


def defect_count(rate: float, n: int) -> int:
    return max(1, round(rate * n))


def plan_counts(scale: float = 1.0) -> dict[str, dict[str, int]]:
    """Planted defects per source and code for sources whose size depends only on the scale
    (``gui_android`` counts steps, known only after its episodes are drawn)."""
    return {
        source: {d: defect_count(rate, record_count(source, scale)) for d, rate in rates.items()}
        for source, rates in DEFECT_RATES.items()
        if source != ANDROID
    }


# --------------------------------------------------------------------------- records


@dataclass
class Visual:
    """An encoded image and what it shows (None for broken files)."""

    data: bytes
    fmt: str
    size: tuple[int, int]
    content: Scene | Chart | None

    @property
    def ext(self) -> str:
        return images.FORMAT_EXT[self.fmt]


@dataclass
class Record:
    source: str
    index: int
    defect: str | None = None
    visuals: list[Visual] = field(default_factory=list)
    caption: str | None = None  # caption sources
    turns: list[tuple[str, str]] = field(default_factory=list)  # QA sources
    extra: dict = field(default_factory=dict)
    origin_key: str = ""
    of: tuple[str, str] | None = None
    transform: str | None = None
    original: bool = False  # usable as the original of a duplicate

    @property
    def answers(self) -> set[str]:
        """The caption and every answer: a copy must share none of them with its original."""
        return ({self.caption} if self.caption is not None else set()) | {a for _, a in self.turns}


def _seed_part(value: object) -> int:
    return int.from_bytes(hashlib.sha256(str(value).encode()).digest()[:8], "little")


@dataclass
class DemoSummary:
    """What :func:`generate_demo` wrote."""

    home: Path
    demo_dir: Path
    sources_dir: Path
    served_dir: Path
    ground_truth_path: Path
    readme_path: Path
    base_url: str
    seed: int
    scale: float
    records: dict[str, int]
    defects: dict[str, int]
    defects_by_source: dict[str, dict[str, int]]
    source_paths: dict[str, Path]
    seconds: float = 0.0


class _Generator:
    def __init__(self, seed: int, scale: float, base_url: str) -> None:
        self.seed = seed
        self.scale = scale
        self.base_url = base_url.rstrip("/")
        self.records: dict[str, list[Record]] = {}
        self.signatures: set[tuple] = set()
        self.used_originals: set[tuple[str, int]] = set()

    def rng(self, *key: object) -> np.random.Generator:
        return np.random.default_rng([self.seed, *(_seed_part(k) for k in key)])

    # ------------------------------------------------------------------ visuals

    def _unique_scene(self, rng: np.random.Generator, **kwargs) -> Scene:
        for _ in range(200):
            scene = scenes.random_scene(rng, **kwargs)
            if scene.signature() not in self.signatures:
                self.signatures.add(scene.signature())
                return scene
        raise RuntimeError("scene space exhausted")  # pragma: no cover

    def _unique_chart(self, rng: np.random.Generator) -> Chart:
        for _ in range(200):
            chart = charts.random_chart(rng)
            if chart.signature() not in self.signatures:
                self.signatures.add(chart.signature())
                return chart
        raise RuntimeError("chart space exhausted")  # pragma: no cover

    def clean_visual(
        self, rng: np.random.Generator, kind: str = "scene", fmt: str = "jpeg", big: bool = False
    ) -> Visual:
        for _ in range(20):
            if kind == "chart":
                content: Scene | Chart = self._unique_chart(rng)
                size = charts.random_chart_size(rng)
                img = charts.render_chart(content, size, rng)
            else:
                content = self._unique_scene(rng)
                if big:
                    long = int(rng.integers(2400, 3001))
                    short = int(long / rng.uniform(1.2, 1.6))
                    size = (long, short) if rng.random() < 0.5 else (short, long)
                else:
                    size = scenes.random_size(rng)
                img = scenes.render_scene(content, size, rng)
            data = images.encode(img, fmt, 90)
            if images.check(data, img).clean:
                return Visual(data, fmt, size, content)
        raise RuntimeError("could not draw a clean image")  # pragma: no cover

    def small_visual(self, rng: np.random.Generator) -> Visual:
        """A valid image of at least 224 px whose file is under 5 KB (flat colours, low quality)."""
        scene = self._unique_scene(rng, max_groups=1)
        scene = Scene(scene.groups, scene.background, "plain")
        side = int(rng.integers(224, 257))
        img = scenes.render_scene(scene, (side, side), rng, noise=0.0)
        for quality in (60, 45, 30, 20, 10):
            data = images.encode(img, "jpeg", quality)
            if len(data) <= images.MAX_SMALL_BYTES:
                return Visual(data, "jpeg", (side, side), scene)
        raise RuntimeError("small image too large")  # pragma: no cover

    def watermarked_visual(self, rng: np.random.Generator) -> tuple[Visual, str]:
        """A clean scene with a visible watermark (:func:`images.watermark`) that still passes
        cleaning, so only ``pwatermark`` tells it apart; and the watermark's description."""
        for _ in range(20):
            vis = self.clean_visual(rng, "scene")
            img, described = images.watermark(images.decode(vis.data), rng)
            data = images.encode(img, "jpeg", 90)
            if images.check(data, img).clean:
                return Visual(data, "jpeg", img.size, vis.content), described
        raise RuntimeError("could not draw a clean watermarked image")  # pragma: no cover

    def banner_visual(self, rng: np.random.Generator) -> Visual:
        """Aspect ratio 4–5.5, otherwise a clean image well above 5 KB."""
        scene = self._unique_scene(rng, banner=True)
        h = int(rng.integers(256, 321))
        w = int(h * rng.uniform(4.2, 5.5))
        img = scenes.render_scene(scene, (w, h), rng)
        return Visual(images.encode(img, "jpeg", 90), "jpeg", (w, h), scene)

    def copy_of(self, original: Visual, transform: str, rng: np.random.Generator) -> Visual | None:
        """A transformed copy that still passes cleaning, or None when this original can't."""
        content = original.content
        w, h = original.size
        if transform in ("crop", "flip") and not isinstance(content, Scene):
            return None
        if transform == "resize" and min(w, h) < 336:
            return None
        if transform == "crop" and min(w, h) < 300:
            return None
        if transform == "none":
            return original
        img = images.decode(original.data)
        if transform == "resize":
            img = images.resize_copy(img, rng)
        elif transform == "crop":
            img = images.crop_copy(img, rng)
        elif transform == "flip":
            img = images.flip_copy(img)
            content = content.flipped()  # type: ignore[union-attr]
        if transform == "jpeg":
            q = images.jpeg_quality_for_copy(rng)
            for quality in range(q, 61, 5):
                data = images.encode(img, "jpeg", quality)
                if images.check(data).clean:
                    return Visual(data, "jpeg", img.size, content)
            return None
        data = images.encode(img, "jpeg", 90)
        if not images.check(data).clean:
            return None
        return Visual(data, "jpeg", img.size, content)

    # ------------------------------------------------------------------ text

    @staticmethod
    def caption_for(content: Scene | Chart, rng: np.random.Generator) -> str:
        if isinstance(content, Chart):
            return charts.caption(content, rng)
        return scenes.caption(content, rng)

    @staticmethod
    def qa_for(content: Scene | Chart, rng: np.random.Generator, short: bool = False) -> list:
        if isinstance(content, Chart):
            return charts.qa_pairs(content, rng, short=short)
        return scenes.qa_pairs(content, rng, short=short)

    def donor(self, content: Scene | Chart, rng: np.random.Generator) -> Scene | Chart:
        """Content clearly different from ``content`` (no shared shape or background / domain)."""
        if isinstance(content, Chart):
            return charts.random_chart(rng, avoid_domain=content.domain)
        return scenes.random_scene(
            rng, avoid_shapes=content.shapes, avoid_background=content.background
        )

    # ------------------------------------------------------------------ planning

    def slots(self, source: str, n: int) -> list[str | None]:
        plan: list[str | None] = []
        for defect, rate in DEFECT_RATES.get(source, {}).items():
            plan += [defect] * defect_count(rate, n)
        if len(plan) > n // 2:
            raise ValueError(f"{source}: too many defects for {n} records")
        plan += [None] * (n - len(plan))
        order = self.rng(source, "slots").permutation(n)
        return [plan[int(i)] for i in order]

    def pick_original(
        self, source: str, transform: str, rng: np.random.Generator, *, pool: str
    ) -> tuple[Record, Visual] | None:
        """An unused clean original: ``pool`` is 'bench', 'other' (another source) or 'near'
        (this source half of the time, another otherwise)."""
        if pool == "bench":
            candidates = [r for r in self.records[BENCH_VQA]]
        else:
            others = [
                r
                for s in (CAULDRON, LLAVA, WDS, LAION, FOLDER)
                for r in self.records.get(s, [])
                if r.original and (s != source)
            ]
            same = [r for r in self.records.get(source, []) if r.original]
            candidates = others
            if pool == "near" and same and rng.random() < 0.5:
                candidates = same
        candidates = [r for r in candidates if (r.source, r.index) not in self.used_originals]
        for i in rng.permutation(len(candidates)):
            rec = candidates[int(i)]
            copy = self.copy_of(rec.visuals[0], transform, rng)
            if copy is not None:
                self.used_originals.add((rec.source, rec.index))
                return rec, copy
        return None

    # ------------------------------------------------------------------ phase 1: clean records

    def build_clean(self, source: str, n: int) -> None:
        slots = self.slots(source, n)
        recs = []
        n_big = max(1, round(4 * self.scale)) if source == FOLDER else 0
        for i, defect in enumerate(slots):
            rec = Record(source, i, defect)
            recs.append(rec)
            if defect is not None:
                continue
            rng = self.rng(source, i, "clean")
            if source == CAULDRON:
                kind = "chart" if rng.random() < 0.6 else "scene"
                n_images = 2 if rng.random() < 0.08 else 1
                rec.visuals = [self.clean_visual(rng, kind) for _ in range(n_images)]
                if n_images == 1:
                    rec.turns = self.qa_for(rec.visuals[0].content, rng)[: int(rng.integers(1, 4))]
                    rec.original = True
                else:
                    for k, ordinal in enumerate(("first", "second")):
                        q, a = self.qa_for(rec.visuals[k].content, rng)[0]
                        rec.turns.append((f"In the {ordinal} image: {q[0].lower()}{q[1:]}", a))
            elif source == BENCH_VQA:
                kind = "chart" if rng.random() < 0.4 else "scene"
                rec.visuals = [self.clean_visual(rng, kind)]
                rec.turns = self.qa_for(rec.visuals[0].content, rng, short=True)[:1]
            elif source == LLAVA:
                rec.visuals = [self.clean_visual(rng, "scene")]
                rec.turns = self.qa_for(rec.visuals[0].content, rng)[: int(rng.integers(1, 4))]
                rec.original = True
            elif source in (WDS, LAION, FOLDER):
                big = source == FOLDER and n_big > 0
                if source == WDS:
                    fmt = ("jpeg", "jpeg", "jpeg", "png", "webp")[int(rng.integers(5))]
                elif source == FOLDER:
                    fmt = "jpeg" if big or rng.random() < 0.7 else "png"
                else:
                    fmt = "jpeg"
                rec.visuals = [self.clean_visual(rng, "scene", fmt=fmt, big=big)]
                rec.caption = scenes.caption(rec.visuals[0].content, rng)  # type: ignore[arg-type]
                rec.original = fmt != "webp" and not big
                n_big -= int(big)
        self.records[source] = recs

    # ------------------------------------------------------------------ phase 2: defects

    def fill_defects(self, source: str) -> None:
        for rec in self.records[source]:
            if rec.defect is None:
                continue
            rng = self.rng(source, rec.index, rec.defect)
            self._fill(rec, rng)

    def _texts_for(self, rec: Record, content: Scene | Chart, rng: np.random.Generator) -> None:
        if rec.source in (WDS, LAION, FOLDER):
            rec.caption = self.caption_for(content, rng)
        else:
            rec.turns = self.qa_for(content, rng)[: int(rng.integers(1, 4))]

    def _mismatched_texts(
        self, rec: Record, content: Scene | Chart, rng: np.random.Generator
    ) -> None:
        """A caption, or one Q&A turn, written for clearly different content: only positive claims
        (no counts or "no" answers that could happen to hold for the real image too)."""
        donor = self.donor(content, rng)
        if rec.source in (WDS, LAION, FOLDER):
            rec.caption = self.caption_for(donor, rng)
            return
        for q, a in self.qa_for(donor, rng):
            if q.startswith("How many") or "sum" in q or "difference" in q or a in ("No.", "no"):
                continue
            rec.turns = [(q, a)]
            return
        raise RuntimeError("no positive claim about the donor")  # pragma: no cover

    def _fill(self, rec: Record, rng: np.random.Generator) -> None:
        d = rec.defect
        src = rec.source
        if d in (CORRUPT, TRUNCATED):
            kind = "chart" if src == CAULDRON and rng.random() < 0.5 else "scene"
            vis = self.clean_visual(rng, kind)
            data = images.corrupt_bytes(rng) if d == CORRUPT else images.truncate(vis.data, rng)
            rec.visuals = [Visual(data, "jpeg", vis.size, None)]
            self._texts_for(rec, vis.content, rng)  # type: ignore[arg-type]
        elif d == SMALL:
            rec.visuals = [self.small_visual(rng)]
            self._texts_for(rec, rec.visuals[0].content, rng)  # type: ignore[arg-type]
        elif d == ASPECT:
            rec.visuals = [self.banner_visual(rng)]
            self._texts_for(rec, rec.visuals[0].content, rng)  # type: ignore[arg-type]
        elif d in (MISSING, MALFORMED, BROKEN_URL, NOAI, MISMATCH, SHORT, FOREIGN):
            vis = self.clean_visual(
                rng, "chart" if src == CAULDRON and rng.random() < 0.5 else "scene"
            )
            rec.visuals = [vis]
            content = vis.content
            if d == MISMATCH:
                self._mismatched_texts(rec, content, rng)  # type: ignore[arg-type]
            elif d == SHORT:
                rec.caption = SHORT_TEXTS[int(rng.integers(len(SHORT_TEXTS)))]
            elif d == FOREIGN:
                lang = scenes.LANGUAGES[int(rng.integers(len(scenes.LANGUAGES)))]
                text = scenes.foreign_caption(content, lang)  # type: ignore[arg-type]
                if src == LLAVA:
                    rec.turns = [(scenes.DESCRIBE_PROMPT[lang], text)]
                else:
                    rec.caption = text
                rec.extra["language"] = lang
            else:
                self._texts_for(rec, content, rng)  # type: ignore[arg-type]
        elif d in (EXACT, BENCH) or d in NEAR_DUPLICATES:
            if d == EXACT:
                transforms, pool = ["none"], "other"
            elif d == BENCH:
                transforms, pool = (
                    [str(t) for t in rng.permutation(["resize", "jpeg", "crop", "flip"])],
                    "bench",
                )
            else:
                transforms, pool = [NEAR_DUPLICATES[d]], "near"
            for transform in transforms:
                picked = self.pick_original(src, transform, rng, pool=pool)
                if picked is not None:
                    break
            else:
                raise RuntimeError(f"{src}: no original available for {d}")
            original, vis = picked
            rec.visuals = [vis]
            rec.of = (original.source, original.origin_key)
            rec.transform = transform
            for _ in range(10):
                self._texts_for(rec, vis.content, rng)  # type: ignore[arg-type]
                if not rec.answers & original.answers:
                    break
        elif d == WATERMARK:
            vis, rec.transform = self.watermarked_visual(rng)
            rec.visuals = [vis]
            self._texts_for(rec, vis.content, rng)  # type: ignore[arg-type]
        elif d == GUI_BAD:
            pass  # GUI sources handle their own records
        else:  # pragma: no cover - programming error
            raise ValueError(d)

    # ------------------------------------------------------------------ phase 3: PII

    def plant_pii(self, source: str) -> None:
        """Append a planted PII sentence or hard negative to some clean records' caption or
        last answer (:func:`fineharbor.demo.pii.planted_cases`)."""
        clean = [  # the originals of planted copies stay clean: their copies are the defect
            rec
            for rec in self.records[source]
            if rec.defect is None and (source, rec.index) not in self.used_originals
        ]
        rng = self.rng(source, "pii")
        count = min(len(clean), defect_count(PII_RATE, len(self.records[source])))
        chosen = sorted(int(i) for i in rng.choice(len(clean), size=count, replace=False))
        for rec, case in zip(
            (clean[i] for i in chosen), pii.planted_cases(rng, count), strict=True
        ):
            if rec.caption is not None:
                rec.caption = f"{rec.caption} {case.sentence}"
            else:
                question, answer = rec.turns[-1]
                rec.turns[-1] = (question, f"{answer} {case.sentence}")
            rec.defect = PII if case.types else PII_NEGATIVE
            rec.transform = ",".join(case.types) if case.types else case.kind

    # ------------------------------------------------------------------ keys

    def assign_keys(self, source: str) -> None:
        recs = self.records[source]
        n = len(recs)
        half = math.ceil(n / 2)
        for rec in recs:
            i = rec.index
            if source == CAULDRON:
                f, row = (0, i) if i < half else (1, i - half)
                rec.origin_key = f"train-0000{f}-of-00002.parquet:{row}"
            elif source == BENCH_VQA:
                rec.origin_key = f"test-00000-of-00001.parquet:{i}"
            elif source == LLAVA:
                rec.origin_key = f"data.jsonl:{i}" if rec.defect == MALFORMED else f"llava-{i:06d}"
            elif source == WDS:
                rec.origin_key = f"shard-0000{0 if i < half else 1}.tar/{i:06d}"
            elif source == LAION:
                rec.origin_key = f"{i:09d}"
            elif source == FOLDER:
                ext = rec.visuals[0].ext if rec.visuals else "jpg"
                rec.origin_key = f"img_{i:04d}.{ext}"

    # ------------------------------------------------------------------ GUI sources

    def build_aguvis(self, n: int) -> list[dict]:
        slots = self.slots(AGUVIS, n)
        rows = []
        for i, defect in enumerate(slots):
            rng = self.rng(AGUVIS, i, "screen")
            img, widgets, _ = gui.render_desktop(rng)
            instruction, action = gui.desktop_step(rng, widgets, img.size)
            data = images.encode(img, "png")
            if defect == GUI_BAD:
                action = gui.BAD_PYAUTOGUI[int(rng.integers(len(gui.BAD_PYAUTOGUI)))]
            elif defect == TRUNCATED:
                data = images.truncate(data, rng)
            rows.append(
                {
                    "id": f"aguvis-{i:06d}",
                    "image": f"screens/{i:06d}.png",
                    "instruction": instruction,
                    "action": action,
                    "_bytes": data,
                    "_defect": defect,
                }
            )
        return rows

    def build_android(self, n_episodes: int) -> list[dict]:
        rows = []
        for e in range(n_episodes):
            goal, steps = gui.phone_episode(self.rng(ANDROID, e, "episode"))
            for j, (screen, action) in enumerate(steps):
                rows.append(
                    {
                        "step_id": f"ep{e:04d}-step{j}",
                        "episode_id": f"ep{e:04d}",
                        "goal": goal,
                        "action": gui.android_action_json(action),
                        "_image": screen.image,
                        "_defect": None,
                    }
                )
        n = len(rows)
        slots = self.slots(ANDROID, n)
        for i, (row, defect) in enumerate(zip(rows, slots, strict=True)):
            rng = self.rng(ANDROID, i, "defect")
            data = images.encode(row.pop("_image"), "png")
            if defect == GUI_BAD:
                row["action"] = gui.BAD_ANDROID[int(rng.integers(len(gui.BAD_ANDROID)))]
            elif defect == CORRUPT:
                data = images.corrupt_bytes(rng)
            row["_bytes"] = data
            row["_defect"] = defect
        return rows


# --------------------------------------------------------------------------- writers


def _parquet(path: Path, columns: dict[str, pa.Array | list], schema: pa.Schema) -> None:
    table = pa.table(columns, schema=schema)
    pq.write_table(table, path, row_group_size=64, compression="snappy")


def _images_column(recs: list[Record]) -> list:
    return [[{"bytes": v.data, "path": None} for v in r.visuals] for r in recs]


def _texts_column(recs: list[Record]) -> list:
    return [[{"user": q, "assistant": a} for q, a in r.turns] for r in recs]


FINEVISION_SCHEMA = pa.schema(
    [("images", pa.list_(IMAGE_STRUCT)), ("texts", pa.list_(TURN_STRUCT)), ("source", pa.string())]
)


def _write_finevision(path: Path, recs: list[Record], source_value: str) -> None:
    _parquet(
        path,
        {
            "images": _images_column(recs),
            "texts": _texts_column(recs),
            "source": [source_value] * len(recs),
        },
        FINEVISION_SCHEMA,
    )


def _write_cauldron(root: Path, recs: list[Record]) -> None:
    half = math.ceil(len(recs) / 2)
    _write_finevision(root / "train-00000-of-00002.parquet", recs[:half], CAULDRON)
    _write_finevision(root / "train-00001-of-00002.parquet", recs[half:], CAULDRON)


def _conversation(rec: Record) -> list[dict]:
    conv = []
    for k, (q, a) in enumerate(rec.turns):
        conv.append({"from": "human", "value": f"<image>\n{q}" if k == 0 else q})
        conv.append({"from": "gpt", "value": a})
    return conv


def _write_llava(root: Path, recs: list[Record], rng: np.random.Generator) -> None:
    (root / "images").mkdir()
    lines = []
    for rec in recs:
        i = rec.index
        vis = rec.visuals[0]
        image = f"images/{i:06d}.{vis.ext}"
        obj = {"id": f"llava-{i:06d}", "image": image, "conversations": _conversation(rec)}
        line = json.dumps(obj, ensure_ascii=False)
        if rec.defect == MALFORMED:
            style = int(rng.integers(3))
            if style == 0:
                line = line[: int(len(line) * rng.uniform(0.3, 0.8))]
            elif style == 1:
                line = line.replace('"conversations":', '"conversations"', 1)
            else:
                line = (
                    "{'id': "
                    + repr(obj["id"])
                    + ", 'image': "
                    + repr(image)
                    + ", 'conversations': [}"
                )
        elif rec.defect != MISSING:
            (root / image).write_bytes(vis.data)
        lines.append(line)
    (root / "data.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")


def _tar_add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def _write_wds(root: Path, recs: list[Record]) -> None:
    half = math.ceil(len(recs) / 2)
    for shard, part in enumerate((recs[:half], recs[half:])):
        with tarfile.open(root / f"shard-0000{shard}.tar", "w", format=tarfile.USTAR_FORMAT) as tar:
            for rec in part:
                key = f"{rec.index:06d}"
                vis = rec.visuals[0]
                _tar_add(tar, f"{key}.{vis.ext}", vis.data)
                _tar_add(tar, f"{key}.txt", (rec.caption or "").encode())
                meta = {"key": key, "width": vis.size[0], "height": vis.size[1]}
                _tar_add(tar, f"{key}.json", json.dumps(meta).encode())


def _write_laion(root: Path, recs: list[Record], base_url: str) -> None:
    served = root / "_served"
    served.mkdir()
    keys, urls, caps = [], [], []
    for rec in recs:
        vis = rec.visuals[0]
        name = (
            f"{rec.origin_key}_noai.{vis.ext}"
            if rec.defect == NOAI
            else f"{rec.origin_key}.{vis.ext}"
        )
        if rec.defect != BROKEN_URL:
            (served / name).write_bytes(vis.data)
        keys.append(rec.origin_key)
        urls.append(f"{base_url}/{name}")
        caps.append(rec.caption)
    schema = pa.schema([("key", pa.string()), ("url", pa.string()), ("caption", pa.string())])
    _parquet(root / "urls.parquet", {"key": keys, "url": urls, "caption": caps}, schema)


def _write_folder(root: Path, recs: list[Record]) -> None:
    for rec in recs:
        (root / rec.origin_key).write_bytes(rec.visuals[0].data)
        (root / f"img_{rec.index:04d}.txt").write_text(rec.caption or "", encoding="utf-8")


def _write_aguvis(root: Path, rows: list[dict]) -> None:
    (root / "screens").mkdir()
    lines = []
    for row in rows:
        (root / row["image"]).write_bytes(row["_bytes"])
        lines.append(
            json.dumps({k: v for k, v in row.items() if not k.startswith("_")}, ensure_ascii=False)
        )
    (root / "steps.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")


def _write_android(root: Path, rows: list[dict]) -> None:
    schema = pa.schema(
        [
            ("step_id", pa.string()),
            ("episode_id", pa.string()),
            ("screenshot", IMAGE_STRUCT),
            ("goal", pa.string()),
            ("action", pa.string()),
        ]
    )
    columns = {
        "step_id": [r["step_id"] for r in rows],
        "episode_id": [r["episode_id"] for r in rows],
        "screenshot": [{"bytes": r["_bytes"], "path": f"{r['step_id']}.png"} for r in rows],
        "goal": [r["goal"] for r in rows],
        "action": [r["action"] for r in rows],
    }
    _parquet(root / "train-00000-of-00001.parquet", columns, schema)


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


# --------------------------------------------------------------------------- entry point

SOURCE_LOCATIONS = {
    CAULDRON: CAULDRON,
    LLAVA: f"{LLAVA}/data.jsonl",
    WDS: WDS,
    LAION: f"{LAION}/urls.parquet",
    FOLDER: FOLDER,
    AGUVIS: f"{AGUVIS}/steps.jsonl",
    ANDROID: ANDROID,
    BENCH_VQA: BENCH_VQA,
    DOCS: f"{DOCS}/{DOCUMENTS_FILE}",
}


def _build_gui(seed: int, scale: float, base_url: str) -> tuple[list[dict], list[dict]]:
    g = _Generator(seed, scale, base_url)
    return g.build_aguvis(record_count(AGUVIS, scale)), g.build_android(
        record_count(ANDROID, scale)
    )


_WORKER_CODE = (
    "import pickle, sys\n"
    "from fineharbor.demo.generate import _build_gui\n"
    "out, seed, scale, base_url = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]\n"
    "rows = _build_gui(seed, scale, base_url)\n"
    "with open(out + '.part', 'wb') as f:\n"
    "    pickle.dump(rows, f, protocol=pickle.HIGHEST_PROTOCOL)\n"
    "import os; os.replace(out + '.part', out)\n"
)


def _start_gui_worker(demo: Path, seed: int, scale: float, base_url: str):
    """A plain child interpreter (no multiprocessing: nothing of the caller's ``__main__`` is
    re-imported, and no fork of a threaded process)."""
    out = demo / ".gui_rows.pickle"
    env = dict(os.environ)
    package_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    try:
        proc = subprocess.Popen(
            [sys.executable, "-c", _WORKER_CODE, str(out), str(seed), repr(scale), base_url],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
    except OSError:
        return None
    return proc, out


def _finish_gui_worker(worker) -> tuple[list[dict], list[dict]] | None:
    """The worker's rows, or None (then the caller draws them in process)."""
    proc, out = worker
    try:
        proc.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return None
    try:
        if proc.returncode != 0 or not out.exists():
            return None
        with open(out, "rb") as f:
            return pickle.load(f)
    finally:
        out.unlink(missing_ok=True)
        out.with_name(out.name + ".part").unlink(missing_ok=True)


# The pretraining corpus mixes content and text the way the demo's caption-bearing sources do.
_CORPUS_KINDS = (("scene", "caption", 0.55), ("scene", "qa", 0.25), ("chart", "qa", 0.20))


def pretraining_corpus(count: int, seed: int) -> list[tuple[bytes, list[dict]]]:
    """``count`` clean (image, turns) samples drawn like the demo's image-text sources (scene
    captions, scene and chart Q&A) but from a seed of their own and without defects: the demo's
    stand-in for the web-scale data a real CLIP is pretrained on. Turns are unified
    ``{"user", "assistant"}`` dicts (a caption is an answer with no question)."""
    g = _Generator(seed, 1.0, "")
    weights = np.array([w for _, _, w in _CORPUS_KINDS])
    samples = []
    for i in range(count):
        rng = g.rng("pretraining", i)
        kind, text, _ = _CORPUS_KINDS[int(rng.choice(len(_CORPUS_KINDS), p=weights))]
        visual = g.clean_visual(rng, kind)
        if text == "caption":
            turns = [{"user": None, "assistant": g.caption_for(visual.content, rng)}]  # type: ignore[arg-type]
        else:
            qa = g.qa_for(visual.content, rng)[: int(rng.integers(1, 4))]  # type: ignore[arg-type]
            turns = [{"user": q, "assistant": a} for q, a in qa]
        samples.append((visual.data, turns))
    return samples


def generate_demo(
    home: Path, base_url: str, *, seed: int = 0, scale: float = 1.0, workers: int | None = None
) -> DemoSummary:
    """Write the demo sources, ``ground_truth.parquet`` and ``README.md`` under ``home/demo``.

    ``base_url`` is where the loopback server will serve ``sources/laion_urls/_served`` (see
    :func:`fineharbor.demo.server.serve_directory`); it is baked into ``urls.parquet``.
    ``workers`` (default: 2 when the machine has 2 cores or more) > 1 draws the GUI sources in a
    second process; the output is the same either way.
    """
    if workers is None:
        workers = min(2, os.cpu_count() or 1)
    if scale <= 0:
        raise ValueError("scale must be positive")
    demo = Path(home) / "demo"
    demo.mkdir(parents=True, exist_ok=True)
    # one generator per home at a time: a second caller waits instead of clobbering the staging
    with open(demo / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            return _generate(Path(home), demo, base_url, seed, scale, workers)
        except BaseException:
            shutil.rmtree(demo / ".sources.staging", ignore_errors=True)
            raise
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _generate(
    home: Path, demo: Path, base_url: str, seed: int, scale: float, workers: int
) -> DemoSummary:
    started = time.perf_counter()
    sources = demo / "sources"
    staging = demo / ".sources.staging"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()

    g = _Generator(seed, scale, base_url)
    # The GUI sources share nothing with the others: draw them in a second process meanwhile.
    gui_worker = _start_gui_worker(demo, seed, scale, base_url) if workers > 1 else None
    # phase 1: the benchmark and every clean record (the pool of originals)
    for source in (BENCH_VQA, CAULDRON, LLAVA, WDS, LAION, FOLDER):
        g.build_clean(source, record_count(source, scale))
        g.assign_keys(source)
    # phase 2: defects, some of which copy clean records of phase 1
    for source in (CAULDRON, LLAVA, WDS, LAION, FOLDER):
        g.fill_defects(source)
        g.assign_keys(source)
    # phase 3: PII sentences in clean records' texts
    for source in PII_SOURCES:
        g.plant_pii(source)
    gui_rows = _finish_gui_worker(gui_worker) if gui_worker is not None else None
    aguvis_rows, android_rows = gui_rows or _build_gui(seed, scale, base_url)
    document_rows = build_documents(g, record_count(DOCS, scale), DEFECT_RATES[DOCS])

    for source in SOURCES:
        (staging / source).mkdir()
    _write_cauldron(staging / CAULDRON, g.records[CAULDRON])
    _write_llava(staging / LLAVA, g.records[LLAVA], g.rng(LLAVA, "malformed"))
    _write_wds(staging / WDS, g.records[WDS])
    _write_laion(staging / LAION, g.records[LAION], g.base_url)
    _write_folder(staging / FOLDER, g.records[FOLDER])
    _write_aguvis(staging / AGUVIS, aguvis_rows)
    _write_android(staging / ANDROID, android_rows)
    write_documents(staging / DOCS, document_rows)
    _write_finevision(
        staging / BENCH_VQA / "test-00000-of-00001.parquet", g.records[BENCH_VQA], BENCH_VQA
    )

    # ground truth
    gt: list[dict] = []
    for source in (CAULDRON, LLAVA, WDS, LAION, FOLDER):
        for rec in g.records[source]:
            if rec.defect is not None:
                gt.append(
                    {
                        "source": source,
                        "origin_key": rec.origin_key,
                        "defect": rec.defect,
                        "of_source": rec.of[0] if rec.of else None,
                        "of_origin_key": rec.of[1] if rec.of else None,
                        "transform": rec.transform,
                    }
                )
    keyed = (
        (AGUVIS, aguvis_rows, "id"),
        (ANDROID, android_rows, "step_id"),
        (DOCS, document_rows, "id"),
    )
    for source, rows, key in keyed:
        for row in rows:
            if row["_defect"] is not None:
                gt.append(
                    {
                        "source": source,
                        "origin_key": row[key],
                        "defect": row["_defect"],
                        "of_source": None,
                        "of_origin_key": None,
                        "transform": None,
                    }
                )
    records = {s: len(g.records[s]) for s in (CAULDRON, LLAVA, WDS, LAION, FOLDER)}
    records[AGUVIS] = len(aguvis_rows)
    records[ANDROID] = len(android_rows)
    records[DOCS] = len(document_rows)
    records[BENCH_VQA] = len(g.records[BENCH_VQA])
    records = {s: records[s] for s in SOURCES}
    by_source: dict[str, dict[str, int]] = {s: {} for s in SOURCES}
    for row in gt:
        by_source[row["source"]][row["defect"]] = by_source[row["source"]].get(row["defect"], 0) + 1
    totals = Counter(row["defect"] for row in gt)
    defects = {d: totals[d] for d in DEFECTS if totals[d]}

    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(gt, schema=GT_SCHEMA), buf)
    gt_path = demo / "ground_truth.parquet"
    readme_path = demo / "README.md"
    readme = _readme(records, defects, by_source, seed, scale, g.base_url)

    # swap the finished sources into place, then the truth that describes them
    if sources.exists():
        shutil.rmtree(sources)
    os.replace(staging, sources)
    _atomic_write(gt_path, buf.getvalue())
    _atomic_write(readme_path, readme.encode())
    return DemoSummary(
        home=home,
        demo_dir=demo,
        sources_dir=sources,
        served_dir=sources / LAION / "_served",
        ground_truth_path=gt_path,
        readme_path=readme_path,
        base_url=g.base_url,
        seed=seed,
        scale=scale,
        records=records,
        defects=defects,
        defects_by_source={s: v for s, v in by_source.items() if v},
        source_paths={s: sources / SOURCE_LOCATIONS[s] for s in SOURCES},
        seconds=time.perf_counter() - started,
    )


def _readme(records, defects, by_source, seed, scale, base_url) -> str:
    lines = [
        "# fineharbor demo data",
        "",
        f"Generated by `fineharbor.demo.generate_demo` (seed {seed}, scale {scale:g}).",
        "",
        "Images are PIL-drawn scenes (coloured shapes at named positions on textured backgrounds),",
        "bar and pie charts with labelled values, and desktop and phone GUI screenshots; captions,",
        "Q&A and agent actions truly describe them.",
        "",
        f"The URL-list source points at `{base_url}`, which must serve",
        "`sources/laion_urls/_served/` (`fineharbor.demo.server.serve_directory`).",
        "",
        "`ground_truth.parquet` has one row per planted defect: `source`, `origin_key`,",
        "`defect`, and for duplicates and benchmark copies `of_source`, `of_origin_key`,",
        "`transform`; for watermarks `transform` is the overlay (`kind:position:opacity`), for",
        "`pii` the planted types and for `pii_negative` the kind of look-alike.",
        "",
        "## Records per source",
        "",
        "| source | records | planted defects |",
        "|---|---:|---:|",
    ]
    for source, n in records.items():
        lines.append(f"| {source} | {n} | {sum(by_source[source].values())} |")
    lines += ["", "## Planted defects", "", "| defect | count | sources |", "|---|---:|---|"]
    for defect, n in defects.items():
        where = ", ".join(s for s in SOURCES if defect in by_source[s])
        lines.append(f"| {defect} | {n} | {where} |")
    return "\n".join(lines) + "\n"
