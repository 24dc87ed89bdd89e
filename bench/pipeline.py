"""The whole pipeline at scale: raw to release on a generated corpus, three sizes, one table.

    python -m bench.pipeline [--sizes 10000,30000,100000] [--workdir DIR] [--keep]
                             [--threads 1] [--timeout 3600] [--json FILE]

For each size N, a fresh process writes a corpus of N samples and runs every stage of
``fineharbor.core.pipeline.STAGES`` in pipeline order, each stage (all its source partitions) in
its own fresh process, through the stage's Dagster asset (``dg.materialize``, the asset's checks
included): what ``fineharbor materialize`` runs, without the plan and the run storage, so the
figures of one stage are its own: wall seconds, CPU seconds (the process and the worker
processes it waited for), samples/s, peak RSS (``VmHWM``, and the children's ``ru_maxrss``),
the RSS after imports, and the bytes it wrote under ``data/<stage>/`` (plus ``releases/`` for
the release). The corpus and what each stage reads never leave the disk between stages.

The corpus (:func:`write_corpus`), deterministic for N and a seed:

* three sources in the Hugging Face Parquet layout (``images``, ``texts``): ``web`` caption
  pairs, ``vqa`` question/answer samples with one or two turns, and ``bench``, a benchmark test
  set (1% of N, role benchmark);
* small images really encoded, in five sizes from 96x72 to 160x160, 60% JPEG, 20% PNG, 20% WebP:
  a colour gradient, shapes and grain, so they pass the cleaning rules (the bench project lowers
  DataComp's 200 px minimum side to 48 px: everything else is the default configuration);
* planted duplicates, each with its original: exact copies (1% of N, same bytes, in the same or
  the other source) and near copies (2% of N: re-encoded to another format, resized to 75%,
  cropped by 4% on each side, mirrored);
* benchmark copies (0.5% of N: a train sample whose image is a benchmark image, the same bytes
  or re-encoded) and benchmark questions (0.2% of N: a train question that is a benchmark one);
* a dense neighbourhood (2% of N): bar charts from a few templates (``testing.copies.
  templated_charts``), look-alikes that the perceptual hash proposes as candidates by the
  hundred and the pixel verification must refute; none is a copy of another.

Signals: hashes only (byte and pixel sha256, perceptual hash with its mirror and turns, pixel
verification of hash candidates). No copy-detection embedding or CLIP model is configured: a
tiny random-weight embedder would cost more decode-and-resize time per image than every hash
together and find nothing a random projection would not, so the scale figures are those of the
hash pipeline; ``duplicate_clusters``'s memory with an embedding is measured by
``bench/global_memory.py`` against the formula in docs/scale.md. No CLIP also means no quality
classifier is trained and ``scored_samples`` adds null scores.

Recall is measured at every size: a planted copy is found when it and its original are in one
duplicate cluster; a benchmark copy when decontamination rejects it as ``benchmark_match``.
Copies whose original or copy was rejected before (cleaning) are not counted. Conservation:
for every per-source stage and partition, the rows it read = rows kept + rows rejected.

Growth: each stage's exponent of wall seconds (and of CPU seconds) against N between the
smallest and the largest size, with n log n's exponent between the same sizes beside it. The
extrapolation to FineVision (24.3M samples, 17.3M images) applies each stage's measured CPU
exponent from the largest size, scales bytes linearly (per sample at these image sizes, and as
the measured multiple of the source bytes for a corpus of ``--fv-source-tb``), and each global
stage's peak RSS linearly in N from its two extreme sizes (its RSS after imports held fixed).

``run(size)`` is the suite's ``pipeline`` stage (``python -m bench --stages pipeline``): one
size, a Measurement per stage.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a script: make the `bench` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import Measurement, growth_exponent, n_log_n_exponent, within_n_log_n
from fineharbor.core.pipeline import CLEANED, DECONTAMINATED, DEDUPLICATED, DUPLICATES

REPO = Path(__file__).resolve().parents[1]
MARKER = "PIPELINE-RESULT "
DEFAULT_SIZES = (10_000, 30_000, 100_000)
SIZES = {"tiny": 300, "small": 1_000, "large": 5_000}  # the suite's sizes (bench/suite.py)
TOLERANCE = 0.15  # as bench/suite.py: exponent noise allowed above n log n
FINEVISION_SAMPLES = 24_300_000
FINEVISION_IMAGES = 17_300_000
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")

IMAGE_SIZES = ((96, 72), (128, 96), (160, 120), (120, 160), (144, 144))
FORMATS = ("JPEG", "JPEG", "JPEG", "PNG", "WEBP")  # 60% / 20% / 20%
NEAR_TRANSFORMS = ("reencode", "resize", "crop", "flip")
CHARTS_PER_TEMPLATE = 200
_VOCABULARY = (
    "apple bridge candle river mountain garden window harbor lantern market village forest "
    "meadow castle engine violin pencil blanket orchard station tunnel island desert "
    "valley canyon glacier compass rocket saddle kettle mirror ladder basket bottle "
    "feather helmet jacket pillow ribbon rubber silver timber velvet wagon yellow purple "
    "orange golden bright quiet sudden gentle narrow broad heavy light early late small "
    "large ancient modern rusty wooden stone paper glass metal plastic cotton woolen "
    "painted broken shiny dusty frozen sleeping running jumping flying sitting standing "
    "walking reading writing cooking singing dancing fishing painting building carrying "
    "holding pulling pushing watching waiting children farmer sailor doctor teacher artist "
    "driver baker student soldier traveler neighbor dog cat horse rabbit sparrow eagle "
    "salmon turtle beetle donkey goat sheep camel morning evening winter summer autumn "
    "spring sunset midnight afternoon weekend holiday street corner roof chimney fence "
    "gate porch balcony stairway hallway kitchen library museum theater stadium airport "
    "factory warehouse bakery pharmacy school hospital church "
)
WORDS = tuple(_VOCABULARY.split())


# --------------------------------------------------------------------------- the corpus


@dataclass
class Truth:
    """What was planted: (copy id, original id, kind) pairs, benchmark copies, chart ids."""

    duplicates: list[tuple[str, str, str]] = field(default_factory=list)
    benchmark: list[tuple[str, str, str]] = field(default_factory=list)
    dense: list[str] = field(default_factory=list)
    source_bytes: int = 0
    samples: int = 0

    def as_dict(self) -> dict:
        return {
            "duplicates": self.duplicates,
            "benchmark": self.benchmark,
            "dense": self.dense,
            "source_bytes": self.source_bytes,
            "samples": self.samples,
        }


def _photo(seed: int):
    """A small photo-like image for a seed: gradient, shapes, grain (passes blur and entropy)."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    width, height = IMAGE_SIZES[seed % len(IMAGE_SIZES)]
    top, bottom = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    ramp = np.linspace(0.0, 1.0, height)[:, None, None]
    pixels = top * (1 - ramp) + bottom * ramp + rng.normal(0, 10, (height, width, 3))
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(3):
        x0, y0 = int(rng.integers(0, width - 20)), int(rng.integers(0, height - 20))
        x1, y1 = x0 + int(rng.integers(12, width // 2)), y0 + int(rng.integers(12, height // 2))
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=colour)
    return image


def _encode(image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def _original(seed: int) -> bytes:
    return _encode(_photo(seed), FORMATS[(seed // len(IMAGE_SIZES)) % len(FORMATS)], quality=90)


def _near_copy(seed: int, transform: str) -> bytes:
    """A copy a user calls a copy: another encoding, a resize, a small crop, a mirror."""
    from PIL import Image

    photo = _photo(seed)
    w, h = photo.size
    if transform == "reencode":  # to a format other than the original's
        fmt = FORMATS[(seed // len(IMAGE_SIZES)) % len(FORMATS)]
        return _encode(photo, "PNG") if fmt != "PNG" else _encode(photo, "WEBP", quality=80)
    if transform == "resize":
        resized = photo.resize((round(w * 0.75), round(h * 0.75)), Image.Resampling.LANCZOS)
        return _encode(resized, "JPEG", quality=90)
    if transform == "crop":
        dx, dy = round(w * 0.04), round(h * 0.04)
        return _encode(photo.crop((dx, dy, w - dx, h - dy)), "JPEG", quality=90)
    if transform == "flip":
        return _encode(photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT), "JPEG", quality=90)
    raise ValueError(transform)


def _words(rng: np.random.Generator, low: int, high: int) -> str:
    return " ".join(WORDS[i] for i in rng.integers(0, len(WORDS), int(rng.integers(low, high))))


def _caption(rng: np.random.Generator) -> list[dict]:
    return [{"user": "", "assistant": _words(rng, 8, 18).capitalize() + "."}]


def _qa(rng: np.random.Generator, question: str | None = None) -> list[dict]:
    turns = []
    for t in range(1 + int(rng.random() < 0.3)):
        asked = question if (question and t == 0) else _words(rng, 7, 14).capitalize() + "?"
        turns.append({"user": asked, "assistant": _words(rng, 3, 9).capitalize() + "."})
    return turns


class _Writer:
    """One source's Parquet shards of ``rows_per_file`` rows, in row groups of ``batch``."""

    def __init__(self, folder: Path, rows_per_file: int = 20_000, batch: int = 2_000) -> None:
        import pyarrow as pa

        from fineharbor.core.schema import IMAGE_TYPE, TURN_TYPE

        self.folder, self.rows_per_file, self.batch = folder, rows_per_file, batch
        folder.mkdir(parents=True, exist_ok=True)
        self.schema = pa.schema(
            [("key", pa.string()), ("images", pa.list_(IMAGE_TYPE)), ("texts", pa.list_(TURN_TYPE))]
        )
        self.rows: list[dict] = []
        self.count = 0
        self.writer = None

    def add(self, key: str, image: bytes, texts: list[dict]) -> None:
        self.rows.append({"key": key, "images": [{"bytes": image, "path": None}], "texts": texts})
        self.count += 1
        if len(self.rows) >= self.batch or self.count % self.rows_per_file == 0:
            self._write()

    def _write(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self.rows:
            if self.writer is None:
                path = self.folder / f"train-{(self.count - 1) // self.rows_per_file:05d}.parquet"
                self.writer = pq.ParquetWriter(path, self.schema)
            self.writer.write_table(pa.Table.from_pylist(self.rows, schema=self.schema))
            self.rows = []
        if self.writer is not None and self.count % self.rows_per_file == 0:
            self.close()

    def close(self) -> None:
        if self.rows:
            self._write()
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _image_bytes(task: tuple) -> bytes:
    """One planted image: ``("original", seed)`` or ``("near", seed, transform)``."""
    return _original(task[1]) if task[0] == "original" else _near_copy(task[1], task[2])


def _chart_template(template: int) -> list[bytes]:
    """The PNGs of one template of look-alike charts, in the order the corpus takes them."""
    from fineharbor.testing.copies import templated_charts

    charts = templated_charts(CHARTS_PER_TEMPLATE, seed=template)
    return [_encode(chart, "PNG") for chart in reversed(charts)]


def write_corpus(root: Path, n: int, seed: int = 0, processes: int | None = None) -> Truth:
    """The sources of an N-sample corpus under ``root/sources`` and the project file
    ``root/fineharbor.yaml``; returns what was planted (sample ids as the readers make them).
    Images are encoded by ``processes`` workers (default: every CPU), in order: the corpus is
    the same bytes whatever their number."""
    import multiprocessing

    with multiprocessing.get_context("forkserver").Pool(processes or os.cpu_count()) as pool:
        return _write_corpus(root, n, seed, pool)


def _write_corpus(root: Path, n: int, seed: int, pool) -> Truth:
    from fineharbor.core.schema import make_sample_id

    rng = np.random.default_rng(seed)
    n_bench = max(20, n // 100)
    n_exact, n_near = max(4, n // 100), max(4, n // 50)
    n_bench_images, n_bench_texts = max(4, n // 200), max(4, n // 500)
    n_dense = max(20, n // 50)
    n_originals = n - n_bench - n_exact - n_near - n_bench_images - n_bench_texts - n_dense
    assert n_originals > n_exact + n_near, f"N={n} is too small for the planted copies"

    # every train sample's recipe, then shuffled within each source so copies are spread out
    specs: list[tuple] = [("photo", s) for s in range(n_originals)]
    chosen = rng.choice(n_originals, n_exact + n_near, replace=False)
    specs += [("exact", int(s)) for s in chosen[:n_exact]]
    specs += [("near", int(s), NEAR_TRANSFORMS[i % 4]) for i, s in enumerate(chosen[n_exact:])]
    bench_seeds = [10_000_000 + b for b in range(n_bench)]
    picks = rng.choice(n_bench, n_bench_images + n_bench_texts, replace=False)
    specs += [("bench_image", int(b), i % 2) for i, b in enumerate(picks[:n_bench_images])]
    specs += [("bench_text", int(b)) for b in picks[n_bench_images:]]
    specs += [("chart", c) for c in range(n_dense)]
    home_of = rng.random(len(specs)) < 0.55  # True: web (captions), False: vqa (Q&A)
    order = rng.permutation(len(specs))

    root.mkdir(parents=True, exist_ok=True)
    writers = {"web": _Writer(root / "sources" / "web"), "vqa": _Writer(root / "sources" / "vqa")}
    truth = Truth(samples=n)
    bench_questions = [_words(rng, 14, 20).capitalize() + "?" for _ in range(n_bench)]
    where: dict[int, str] = {}  # original photo seed -> its sample id
    pending: list[tuple[str, int, str]] = []  # (copy id, original seed, kind)
    rows: list[tuple[str, str, list[dict], tuple | int]] = []  # source, key, texts, image
    counts = dict.fromkeys(writers, 0)
    charts = 0
    for index in order:
        spec = specs[index]
        source = "web" if home_of[index] else "vqa"
        key = f"{source}-{counts[source]:07d}"
        counts[source] += 1
        sample_id = make_sample_id(source, key)
        kind = spec[0]
        texts = _caption(rng) if source == "web" else _qa(rng)
        image: tuple | int
        if kind == "photo":
            image = ("original", spec[1])
            where[spec[1]] = sample_id
        elif kind == "exact":
            image = ("original", spec[1])
            pending.append((sample_id, spec[1], "exact"))
        elif kind == "near":
            image = ("near", spec[1], spec[2])
            pending.append((sample_id, spec[1], spec[2]))
        elif kind == "bench_image":
            bench_seed = bench_seeds[spec[1]]
            image = ("original", bench_seed) if spec[2] == 0 else ("near", bench_seed, "reencode")
            bench_id = make_sample_id("bench", f"bench-{spec[1]:07d}")
            truth.benchmark.append(
                (sample_id, bench_id, "image_exact" if spec[2] == 0 else "image_reencode")
            )
        elif kind == "bench_text":
            image = ("original", 20_000_000 + spec[1])
            texts = _qa(rng, bench_questions[spec[1]])
            bench_id = make_sample_id("bench", f"bench-{spec[1]:07d}")
            truth.benchmark.append((sample_id, bench_id, "question"))
        else:  # a chart of the dense neighbourhood: templates of CHARTS_PER_TEMPLATE look-alikes
            image = charts  # the chart's number: its template's PNGs are made in one task
            charts += 1
            truth.dense.append(sample_id)
        rows.append((source, key, texts, image))
    templates = range(-(-charts // CHARTS_PER_TEMPLATE))
    chart_pngs = [png for pngs in pool.map(_chart_template, templates) for png in pngs]
    photos = pool.imap(_image_bytes, (r[3] for r in rows if isinstance(r[3], tuple)), 64)
    for source, key, texts, image in rows:
        data = next(photos) if isinstance(image, tuple) else chart_pngs[image]
        writers[source].add(key, data, texts)
    truth.duplicates = [(copy, where[seed], kind) for copy, seed, kind in pending]

    bench = _Writer(root / "sources" / "bench")
    originals = pool.imap(_image_bytes, [("original", s) for s in bench_seeds], 64)
    for b, image in enumerate(originals):
        texts = [{"user": bench_questions[b], "assistant": _words(rng, 2, 5).capitalize() + "."}]
        bench.add(f"bench-{b:07d}", image, texts)
    for writer in (*writers.values(), bench):
        writer.close()
    truth.source_bytes = sum(p.stat().st_size for p in (root / "sources").rglob("*.parquet"))
    (root / "fineharbor.yaml").write_text(PROJECT.format(root=root))
    (root / "truth.json").write_text(json.dumps(truth.as_dict()))
    return truth


PROJECT = """\
name: scalebench
sources:
  - {{name: web, reader: hf_parquet, location: {root}/sources/web,
     mapping: {{preset: cauldron, origin_key: key}}, priority: 20}}
  - {{name: vqa, reader: hf_parquet, location: {root}/sources/vqa,
     mapping: {{preset: cauldron, origin_key: key}}, priority: 10}}
  - {{name: bench, reader: hf_parquet, location: {root}/sources/bench,
     mapping: {{preset: finevision, origin_key: key}}, role: benchmark}}
stages:
  clean:
    min_side: 48  # the corpus's images are 72-160 px: small, to fit 100k samples in minutes
  clip_score: {{model: null}}  # hash signals only (see bench/pipeline.py)
release:
  name: scalebench
  require_review: false
"""


# --------------------------------------------------------------------------- one stage


def _vm(name: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1]) / 1024
    return math.nan


class TreeMonitor:
    """Peak summed RSS and CPU seconds of this process and every descendant (the cleaning pool's
    forkserver workers and the verifier's spawned ones are not children this process waits
    for, so ``RUSAGE_CHILDREN`` misses them), sampled from /proc every ``every_s`` seconds."""

    def __init__(self, every_s: float = 0.25) -> None:
        import threading

        self.every_s = every_s
        self.peak_kb = 0
        self.ticks: dict[int, int] = {}  # descendant pid -> the most CPU ticks seen
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> TreeMonitor:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            self.sample()

    def sample(self) -> None:
        me, page_kb = os.getpid(), os.sysconf("SC_PAGE_SIZE") // 1024
        stats: dict[int, tuple[int, int, int]] = {}  # pid -> (ppid, rss pages, cpu ticks)
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                text = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            fields = text[text.rindex(")") + 2 :].split()
            stats[int(entry)] = (int(fields[1]), int(fields[21]), int(fields[11]) + int(fields[12]))
        tree, frontier = {me}, [me]
        children: dict[int, list[int]] = {}
        for pid, (ppid, _, _) in stats.items():
            children.setdefault(ppid, []).append(pid)
        while frontier:
            for child in children.get(frontier.pop(), []):
                if child not in tree:
                    tree.add(child)
                    frontier.append(child)
        self.peak_kb = max(self.peak_kb, sum(stats[p][1] * page_kb for p in tree if p in stats))
        for pid in tree - {me}:
            if pid in stats:
                self.ticks[pid] = max(self.ticks.get(pid, 0), stats[pid][2])

    @property
    def descendants_cpu_s(self) -> float:
        return sum(self.ticks.values()) / os.sysconf("SC_CLK_TCK")


def _jsonable(value):
    value = getattr(value, "value", value)  # a Dagster MetadataValue
    try:
        json.dumps(value)
    except TypeError:
        return str(value)
    return value


KEPT_METADATA = ("candidates", "verification", "max_candidates_per_item", "signatures")


def stage_worker(name: str, root: Path) -> dict:
    """Materialize one stage (every source partition of a per-source stage) in this process
    through its Dagster asset; its figures."""
    os.environ["FINEHARBOR_CONFIG"] = str(root / "fineharbor.yaml")
    os.environ["FINEHARBOR_HOME"] = str(root / "home")
    import dagster as dg

    from fineharbor.core.config import load_config
    from fineharbor.core.pipeline import stage
    from fineharbor.defs.jobs import ASSETS, stage_resources
    from fineharbor.defs.partitions import source_partitions
    from fineharbor.defs.resources import FineharborProject

    config = load_config(root / "fineharbor.yaml")
    (asset,) = [a for a in ASSETS if isinstance(a, dg.AssetsDefinition) and name in
                {k.to_user_string() for k in a.keys}]  # fmt: skip
    resources = stage_resources(
        FineharborProject(config_path=str(root / "fineharbor.yaml"), home=str(root / "home"))
    )
    instance = dg.DagsterInstance.ephemeral()
    partitions = config.partition_keys if stage(name).per_source else [None]
    if stage(name).per_source:
        instance.add_dynamic_partitions(source_partitions.name, partitions)
    base_mb = _vm("VmRSS")
    own = resource.getrusage(resource.RUSAGE_SELF)
    cpu0 = own.ru_utime + own.ru_stime
    started = time.perf_counter()
    metadata: dict = {}
    with TreeMonitor() as monitor:
        for partition in partitions:
            _materialize_one(dg, asset, partition, instance, resources, name, metadata)
    seconds = time.perf_counter() - started
    own = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "stage": name,
        "seconds": seconds,
        "cpu_s": own.ru_utime + own.ru_stime - cpu0 + monitor.descendants_cpu_s,
        "base_mb": base_mb,
        "peak_mb": max(monitor.peak_kb / 1024, _vm("VmHWM")),
        "own_peak_mb": _vm("VmHWM"),
        "metadata": metadata,
    }


def _materialize_one(dg, asset, partition, instance, resources, name, metadata) -> None:
    result = dg.materialize(
        [asset], partition_key=partition, instance=instance, resources=resources,
        raise_on_error=False,
    )  # fmt: skip
    if not result.success:
        failure = [e.message for e in result.all_events if e.is_failure]
        raise RuntimeError(f"{name} {partition or ''} failed: {failure[-1:]}")
    for event in result.get_asset_materialization_events():
        for key, value in event.materialization.metadata.items():
            if key in KEPT_METADATA:
                metadata[key] = _jsonable(value)


def _python_path() -> str:
    return os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))


def _run_stage(name: str, root: Path, timeout: float, threads: int) -> dict:
    capped = {v: str(threads) for v in THREAD_VARIABLES} if threads > 0 else {}
    env = {**os.environ, **capped, "PYTHONPATH": _python_path()}
    command = [sys.executable, "-m", "bench.pipeline", "--stage-worker", name, str(root)]
    done = subprocess.run(
        command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith(MARKER)]
    if done.returncode != 0 or not lines:
        tail = " | ".join((done.stderr or done.stdout).strip().splitlines()[-4:])
        raise RuntimeError(f"stage {name} failed (exit {done.returncode}): {tail}")
    return json.loads(lines[-1][len(MARKER) :])


# --------------------------------------------------------------------------- one size


def _bytes_under(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def _rows(folder: Path, partition: str | None = None) -> int:
    import pyarrow.parquet as pq

    if partition is not None:
        folder = folder / f"source={partition}"
    if not folder.exists():
        return 0
    return sum(pq.ParquetFile(p).metadata.num_rows for p in folder.rglob("*.parquet"))


def _ids(folder: Path, column: str = "sample_id", where: tuple[str, str] | None = None) -> set:
    import pyarrow.dataset as ds

    if not folder.exists() or not any(folder.rglob("*.parquet")):
        return set()
    dataset = ds.dataset(folder, format="parquet", partitioning="hive")
    if where is not None:
        table = dataset.to_table(columns=[column], filter=ds.field(where[0]) == where[1])
    else:
        table = dataset.to_table(columns=[column])
    return set(table.column(column).to_pylist())


def conservation(home: Path, sources: list[str], truth_samples: dict[str, int]) -> dict:
    """Per per-source stage and partition: rows read = kept + rejected (read = the upstream
    stage's kept rows, or the source's records for raw_samples). Returns the violations."""
    from fineharbor.core.pipeline import STAGES

    problems = {}
    for spec in STAGES:
        if not spec.per_source or not (home / "data" / spec.name).exists():
            continue
        upstream = next((u for u in spec.upstream if _is_per_source(u)), None)
        for source in sources:
            kept = _rows(home / "data" / spec.name, source)
            rejected = _rows(home / "rejects" / spec.name, source)
            read = (
                truth_samples[source]
                if upstream is None
                else _rows(home / "data" / upstream, source)
            )
            if kept + rejected != read:
                problems[f"{spec.name}/{source}"] = {
                    "read": read,
                    "kept": kept,
                    "rejected": rejected,
                }
    return problems


def _is_per_source(name: str) -> bool:
    from fineharbor.core.pipeline import stage

    return stage(name).per_source


def recall(home: Path, truth: dict) -> dict:
    """Planted duplicates found (copy and original in one cluster) per kind, and benchmark
    copies rejected as benchmark_match, among those both ends of which passed cleaning."""
    import pyarrow.dataset as ds

    cleaned_out = _ids(home / "rejects" / CLEANED)
    cluster_of: dict[str, str] = {}
    folder = home / "data" / DUPLICATES
    if folder.exists() and any(folder.rglob("*.parquet")):
        table = ds.dataset(folder, format="parquet").to_table(columns=["sample_id", "cluster_id"])
        ids, clusters = table.column("sample_id"), table.column("cluster_id")
        cluster_of = dict(zip(ids.to_pylist(), clusters.to_pylist(), strict=True))
    found: dict[str, list[int]] = {}
    for copy, original, kind in truth["duplicates"]:
        if copy in cleaned_out or original in cleaned_out:
            continue
        hit = copy in cluster_of and cluster_of.get(copy) == cluster_of.get(original)
        counts = found.setdefault(kind, [0, 0])
        counts[0] += hit
        counts[1] += 1
    deduplicated_out = _ids(home / "rejects" / DEDUPLICATED)
    matched = _ids(home / "rejects" / DECONTAMINATED, where=("reason", "benchmark_match"))
    for copy, _bench, kind in truth["benchmark"]:
        if copy in cleaned_out or copy in deduplicated_out:
            continue
        counts = found.setdefault("benchmark_" + kind, [0, 0])
        counts[0] += copy in matched
        counts[1] += 1
    dense = set(truth["dense"])
    dense_merged = sum(1 for sample in dense if sample in cluster_of)
    return {
        "recall": {
            k: {"found": f, "planted": p, "recall": f / p if p else math.nan}
            for k, (f, p) in sorted(found.items())
        },
        "dense_charts": len(dense),
        "dense_charts_clustered": dense_merged,
    }


def one_size(
    n: int, workdir: Path, timeout: float, threads: int, seed: int = 0, in_process: bool = False
) -> dict:
    """Write the corpus of N samples and run every stage on it, each in a fresh process
    (``in_process``: all in this one, for tests: then peak memory is not per stage)."""
    from fineharbor.core.pipeline import RELEASE, STAGES

    root = workdir / f"n{n}"
    if root.exists():
        shutil.rmtree(root)
    started = time.perf_counter()
    truth = write_corpus(root, n, seed)
    generated_s = time.perf_counter() - started
    home = root / "home"
    stages = []
    for spec in STAGES:
        if in_process:
            result = stage_worker(spec.name, root)
        else:
            result = _run_stage(spec.name, root, timeout, threads)
        result["bytes"] = _bytes_under(home / "data" / spec.name)
        if spec.name == RELEASE:
            result["release_bytes"] = _bytes_under(home / "releases")
        result["per_source"] = spec.per_source
        stages.append(result)
        print(f"    n={n:,} {spec.name}: {result['seconds']:.1f} s", file=sys.stderr, flush=True)
    truth_dict = truth.as_dict()
    samples = {s: _rows_in_source(root / "sources" / s) for s in ("web", "vqa", "bench")}
    return {
        "n": n,
        "images": n,  # one image per sample
        "generate_s": generated_s,
        "source_bytes": truth.source_bytes,
        "data_bytes": _bytes_under(home / "data"),
        "release_bytes": _bytes_under(home / "releases"),
        "stages": stages,
        "conservation": conservation(home, list(samples), samples),
        **recall(home, truth_dict),
    }


def _rows_in_source(folder: Path) -> int:
    return _rows(folder)


# --------------------------------------------------------------------------- the report


def _growth(results: list[dict], stage: str, key: str) -> tuple[float | None, float]:
    small, large = results[0], results[-1]
    s = next(x for x in small["stages"] if x["stage"] == stage)
    b = next(x for x in large["stages"] if x["stage"] == stage)
    exponent = growth_exponent(small["n"], max(s[key], 1e-3), large["n"], max(b[key], 1e-3))
    return exponent, n_log_n_exponent(small["n"], large["n"])


def _mib(value: float) -> str:
    return f"{value / 2**20:,.1f}"


def table(results: list[dict]) -> str:
    """The per-stage table (markdown) at every size, with growth on the largest size's rows."""
    header = ["stage", "n", "seconds", "CPU s", "samples/s", "peak MB", "RSS after imports MB",
              "MiB written", "exponent (wall)", "exponent (CPU)", "n log n", "verdict",
              "peak ÷ smallest size's"]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    multi = len(results) > 1 and results[-1]["n"] > results[0]["n"]
    names = [s["stage"] for s in results[0]["stages"]]
    for name in names:
        for r in results:
            s = next(x for x in r["stages"] if x["stage"] == name)
            cells = [name, f"{r['n']:,}", f"{s['seconds']:.1f}", f"{s['cpu_s']:.1f}",
                     f"{r['n'] / s['seconds']:,.0f}", f"{s['peak_mb']:,.0f}",
                     f"{s['base_mb']:,.0f}", _mib(s["bytes"] + s.get("release_bytes", 0)),
                     "", "", "", "", ""]  # fmt: skip
            if multi and r is results[-1]:
                wall, bound = _growth(results, name, "seconds")
                cpu, _ = _growth(results, name, "cpu_s")
                cells[8] = "-" if wall is None else f"{wall:.2f}"
                cells[9] = "-" if cpu is None else f"{cpu:.2f}"
                cells[10] = f"{bound:.2f}"
                ok = within_n_log_n(cpu, results[0]["n"], r["n"], TOLERANCE)
                cells[11] = "≤ n log n" if ok else "> n log n"
                first = next(x for x in results[0]["stages"] if x["stage"] == name)
                cells[12] = f"{s['peak_mb'] / first['peak_mb']:.2f}x"
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def totals(results: list[dict]) -> str:
    header = ["n", "source MiB", "data/ MiB", "data/ ÷ source", "release MiB", "pipeline s",
              "pipeline CPU s", "conservation"]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in results:
        wall = sum(s["seconds"] for s in r["stages"])
        cpu = sum(s["cpu_s"] for s in r["stages"])
        conserved = "holds" if not r["conservation"] else f"BROKEN {r['conservation']}"
        lines.append(
            f"| {r['n']:,} | {_mib(r['source_bytes'])} | {_mib(r['data_bytes'])} | "
            f"{r['data_bytes'] / r['source_bytes']:.2f}x | {_mib(r['release_bytes'])} | "
            f"{wall:,.1f} | {cpu:,.1f} | {conserved} |"
        )
    return "\n".join(lines)


def recall_falls(first: dict, last: dict) -> tuple[bool, float]:
    """Whether recall at the largest size is significantly below the smallest's (one-sided
    Fisher exact test on found / missed, p < 0.05), and p: a miss rate of 1 in 500 shows at
    100k and not in the 50 copies of 10k without recall falling with N."""
    from scipy.stats import fisher_exact

    table = [
        [first["found"], first["planted"] - first["found"]],
        [last["found"], last["planted"] - last["found"]],
    ]
    p = float(fisher_exact(table, alternative="greater").pvalue)
    return p < 0.05, p


def recall_table(results: list[dict]) -> str:
    kinds = sorted({k for r in results for k in r["recall"]})
    header = ["planted", *[f"n={r['n']:,}" for r in results], "falls as N grows (Fisher p)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for kind in kinds:
        cells = [kind]
        for r in results:
            c = r["recall"].get(kind)
            cells.append("-" if c is None else f"{c['recall']:.3f} ({c['found']}/{c['planted']})")
        first, last = results[0]["recall"].get(kind), results[-1]["recall"].get(kind)
        if first and last and first["planted"] and last["planted"]:
            falls, p = recall_falls(first, last)
            cells.append(f"{'YES' if falls else 'no'} (p = {p:.2f})")
        else:
            cells.append("-")
        lines.append("| " + " | ".join(cells) + " |")
    cells = ["dense charts in a cluster (should be 0)"]
    cells += [f"{r['dense_charts_clustered']}/{r['dense_charts']}" for r in results]
    cells.append("")
    lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def candidates(results: list[dict]) -> str:
    lines = []
    for r in results:
        stage = next(s for s in r["stages"] if s["stage"] == DUPLICATES)
        meta = stage["metadata"]
        if meta.get("candidates"):
            lines.append(f"- n={r['n']:,}: candidates {json.dumps(meta['candidates'])}")
    return "\n".join(lines)


def _stage(result: dict, name: str) -> dict:
    return next(x for x in result["stages"] if x["stage"] == name)


def extrapolate(results: list[dict], fv_source_tb: float) -> str:
    """FineVision-size figures from the two largest sizes and each stage's measured exponent.

    CPU: the marginal CPU seconds per sample between the two largest sizes (what the fixed costs
    at these sizes, worker start-up and model loads, do not blur), grown as n log n to 24.3M
    samples, plus the fixed part; a stage whose measured exponent exceeds n log n's is
    extrapolated as its power law from the largest size instead. Memory of a global stage: its
    peak at the largest size plus the growth per sample of its main process's own peak between
    the two largest sizes (worker processes hold batch-bounded memory; their start is a step,
    not a slope)."""
    large = results[-1]
    n = large["n"]
    middle = results[-2] if len(results) > 1 and n > results[-2]["n"] else None
    header = [
        "stage",
        "CPU s per 1k samples (marginal)",
        "growth used",
        "CPU-hours at 24.3M",
        "GiB written at these image sizes",
        "peak memory GiB (global stages)",
    ]
    lines = [
        f"Extrapolation to FineVision ({FINEVISION_SAMPLES / 1e6:.1f}M samples, "
        f"{FINEVISION_IMAGES / 1e6:.1f}M images) from n={n:,}"
        + (f" and n={middle['n']:,}" if middle else " (one size: linear assumed)"),
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    total_cpu = 0.0
    log_growth = math.log(FINEVISION_SAMPLES) / math.log(n)
    for s in large["stages"]:
        name = s["stage"]
        before = _stage(middle, name) if middle else None
        marginal = s["cpu_s"] / n
        if before is not None:
            marginal = max(0.0, (s["cpu_s"] - before["cpu_s"]) / (n - middle["n"]))
        fixed = max(0.0, s["cpu_s"] - marginal * n)
        exponent = _growth(results, name, "cpu_s")[0] if len(results) > 1 else None
        if exponent is not None and not within_n_log_n(exponent, results[0]["n"], n, TOLERANCE):
            cpu_s, growth = s["cpu_s"] * (FINEVISION_SAMPLES / n) ** exponent, f"n^{exponent:.2f}"
        else:
            cpu_s, growth = fixed + marginal * FINEVISION_SAMPLES * log_growth, "n log n"
        total_cpu += cpu_s / 3600
        written = (s["bytes"] + s.get("release_bytes", 0)) * FINEVISION_SAMPLES / n / 2**30
        memory = "-"
        if not s["per_source"]:
            slope = 0.0
            if before is not None:
                slope = (s["own_peak_mb"] - before["own_peak_mb"]) / (n - middle["n"])
            peak = s["peak_mb"] + max(slope, 0.0) * (FINEVISION_SAMPLES - n)
            memory = f"{peak / 1024:,.1f}"
        lines.append(
            f"| {name} | {marginal * 1000:,.2f} | {growth} | {cpu_s / 3600:,.1f} | "
            f"{written:,.1f} | {memory} |"
        )
    ratio = large["data_bytes"] / large["source_bytes"]
    lines += [
        "",
        f"total: {total_cpu:,.0f} CPU-hours; data/ = {ratio:.2f}x the source bytes "
        f"({large['data_bytes'] * FINEVISION_SAMPLES / n / 2**40:,.2f} TiB at these image sizes; "
        f"{ratio * fv_source_tb:,.1f} TB for a {fv_source_tb:g} TB corpus). Hash signals only: "
        "with a 256-d embedding, duplicate_clusters' memory follows docs/scale.md's formula.",
    ]
    return "\n".join(lines)


def report(results: list[dict], fv_source_tb: float) -> str:
    return "\n\n".join(
        [
            table(results),
            totals(results),
            "Planted-copy recall (found / planted, among those cleaning kept):",
            recall_table(results),
            candidates(results),
            extrapolate(results, fv_source_tb),
        ]
    )


# --------------------------------------------------------------------------- suite entry


def run(size: int) -> list[Measurement]:
    """The suite's ``pipeline`` stage: every stage at one size (a fresh process per stage)."""
    with tempfile.TemporaryDirectory(prefix="fh-pipeline-") as workdir:
        result = one_size(size, Path(workdir), timeout=3600, threads=1)
    exact = result["recall"].get("exact", {}).get("recall", math.nan)
    measurements = [
        Measurement(
            f"pipeline/{s['stage']}",
            size,
            s["seconds"],
            "",
            None,
            unit="samples",
            note=f"peak {s['peak_mb']:,.0f} MB, {s['bytes'] / 2**20:,.1f} MiB written",
        )
        for s in result["stages"]
    ]
    ratio = result["data_bytes"] / result["source_bytes"]
    total = sum(s["seconds"] for s in result["stages"])
    note = f"data/ {ratio:.2f}x source; exact-copy recall {exact:.3f}"
    measurements.append(Measurement("pipeline", size, total, "", None, unit="samples", note=note))
    return measurements


# --------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default=",".join(map(str, DEFAULT_SIZES)))
    parser.add_argument("--workdir", type=Path, help="where the corpora go (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the corpora and stage data")
    parser.add_argument("--threads", type=int, default=1, help="OpenMP/BLAS threads per stage")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per stage")
    parser.add_argument("--json", type=Path, help="also write the raw figures here")
    parser.add_argument(
        "--fv-source-tb", type=float, default=5.0, help="FineVision's source size for the disk line"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--stage-worker", nargs=2, metavar=("STAGE", "ROOT"), help=argparse.SUPPRESS
    )
    parser.add_argument("--size-worker", nargs=2, metavar=("N", "WORKDIR"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.stage_worker:
        result = stage_worker(args.stage_worker[0], Path(args.stage_worker[1]))
        print(MARKER + json.dumps(result), flush=True)
        return 0
    if args.size_worker:
        n, workdir = int(args.size_worker[0]), Path(args.size_worker[1])
        result = one_size(n, workdir, args.timeout, args.threads, args.seed)
        if not args.keep:
            shutil.rmtree(workdir / f"n{n}", ignore_errors=True)
        print(MARKER + json.dumps(result), flush=True)
        return 0

    sizes = sorted(int(s) for s in args.sizes.split(",") if s.strip())
    print(f"cpus {os.cpu_count()}, loadavg {os.getloadavg()[0]:.2f}, sizes {sizes}", flush=True)
    temporary = None
    workdir = args.workdir
    if workdir is None:
        temporary = tempfile.TemporaryDirectory(prefix="fh-pipeline-")
        workdir = Path(temporary.name)
    results = []
    try:
        for n in sizes:  # each size in a fresh process
            started = time.perf_counter()
            command = [
                *(sys.executable, "-m", "bench.pipeline", "--size-worker", str(n), str(workdir)),
                *("--timeout", str(args.timeout), "--threads", str(args.threads)),
                *("--seed", str(args.seed), *(["--keep"] if args.keep else [])),
            ]
            env = {**os.environ, "PYTHONPATH": _python_path()}
            done = subprocess.run(command, cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)
            lines = [line for line in done.stdout.splitlines() if line.startswith(MARKER)]
            if done.returncode != 0 or not lines:
                print(f"  n={n:,}: FAILED (exit {done.returncode})", flush=True)
                return 1
            results.append(json.loads(lines[-1][len(MARKER) :]))
            print(f"  n={n:,}: {time.perf_counter() - started:.0f} s", flush=True)
    finally:
        if temporary is not None:
            temporary.cleanup()
    print(f"\nloadavg {os.getloadavg()[0]:.2f} at the end\n")
    print(report(results, args.fv_source_tb))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
