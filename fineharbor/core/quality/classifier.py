"""A UniFilter-style learned quality score (0-3) on frozen CLIP features.

UniFilter trains a quality classifier on semi-synthetic data: real images paired with texts
deliberately written at four quality levels, then scores captions and interleaved documents.
Here:

* :func:`build_quality_training_set` pairs each real sample's images with texts at levels
  3 (true), 2 (one attribute wrong), 1 (vague or generic) and 0 (another image's text), made by
  the rules of :mod:`fineharbor.core.quality.perturb`, and each interleaved document (a row
  with ``segments``) with documents at the four levels, its layout kept in ``order``
  (:func:`document_levels`); an optional ``rewrite`` hook (e.g.
  :func:`llm_rewriter` around the configured judge's text model) rewrites the synthetic levels
  1 and 2 in the LLM's own words, as the paper had Claude write them.
* :func:`train_quality_classifier` embeds images and texts once with a frozen CLIP and fits a
  two-layer MLP on ``[img, txt, img*txt, |img-txt|]`` — regression on the level with MSE (the
  released UniFilter script uses ``num_labels = 1`` + MSE) or 4-way classification. It reports
  held-out accuracy (rounded prediction == level) and the per-level confusion matrix, with
  whole images held out so no held-out image was seen in training.
* :func:`score_quality` scores any sample, interleaved documents included: the image feature is
  the mean of its decodable images' normalised embeddings (re-normalised); the text feature is
  the mean of the embeddings of its segments packed into chunks of ``chunk_words`` words (see
  :func:`fineharbor.core.quality.text.pack_segments`), so a long document is read in full.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from torch import nn

from fineharbor.core.quality.clip_score import (
    ImageTextEmbedder,
    embed_sample_images,
    embed_unique_texts,
    image_bytes,
)
from fineharbor.core.quality.metrics import confusion_matrix
from fineharbor.core.quality.params import LEVELS, MAX_LEVEL, QualityClassifierParams
from fineharbor.core.quality.perturb import boilerplate_paragraph, perturb_attribute, vague_text
from fineharbor.core.quality.text import clean_text, pack_segments, sample_segments

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
WEIGHTS_FILE = "quality_classifier.pt"
META_FILE = "quality_classifier.json"

Rewrite = Callable[[Sequence[str], Sequence[int]], Sequence[str | None]]
"""(texts, their levels) -> the rewritten texts, None where one could not be rewritten."""
REWRITTEN_LEVELS = (1, 2)  # the synthetic texts; 3 and 0 are real texts and stay as written
REWRITE_PROMPT_VERSION = "rewrite-v1"
_REWRITE_SYSTEM = (
    "You rewrite texts that go with images, for training a data-quality classifier. Reply with "
    "the rewritten text only, no preamble."
)
_REWRITE_TASK = {
    2: "Rewrite this image description in your own words. Keep every claim exactly as stated, "
    "including claims that may be wrong.",
    1: "Rewrite this text as a vague, generic remark that could go with almost any image and "
    "states no specific detail.",
}
Samples = pa.Table | pa.RecordBatch | Iterable[pa.Table | pa.RecordBatch]

EXAMPLE_SCHEMA = pa.schema(
    [
        pa.field("sample", pa.int32(), nullable=False),  # index into QualityTrainingSet.images
        pa.field("sample_id", pa.string()),
        pa.field("level", pa.int8(), nullable=False),
        pa.field("rule", pa.string(), nullable=False),  # how the text was made
        pa.field("segments", pa.list_(pa.string()), nullable=False),
        # documents only (null for captions and Q&A): the layout, per position an index into the
        # sample's images or TEXT for the next of `segments`
        pa.field("order", pa.list_(pa.int32())),
    ]
)
TEXT = -1
ORDER_ONLY_RULES = frozenset({"shuffled_images"})
"""Rules whose text is the true one with the images moved: a scorer that pools a sample's
images (the CLIP-MLP) sees the true pair there, so only order-aware scorers train on them."""
KINDS = ("captions", "documents")


# --------------------------------------------------------------------------- training data


@dataclass
class QualityTrainingSet:
    """Real images and, per image, texts at the four levels.

    Images are stored once per source sample (``images[i]`` holds sample ``i``'s encoded
    images) and referenced by ``examples.sample``, so each is embedded once.
    """

    images: list[list[bytes]]
    examples: pa.Table
    rewrite_failures: int = 0

    def level_counts(self) -> dict[int, int]:
        levels = self.examples.column("level").to_pylist()
        return {level: levels.count(level) for level in LEVELS}

    def rule_counts(self) -> dict[str, int]:
        rules = self.examples.column("rule").to_pylist()
        return {rule: rules.count(rule) for rule in sorted(set(rules))}

    def kind_counts(self) -> dict[str, dict]:
        """Per kind (``captions``: pairs and Q&A; ``documents``: interleaved), the real samples,
        the examples per level and their balance (smallest level count over the largest)."""
        rows = self.examples.select(["sample", "level", "order"]).to_pylist()
        out = {}
        for kind in KINDS:
            mine = [r for r in rows if (r["order"] is not None) == (kind == "documents")]
            levels = [r["level"] for r in mine]
            counts = {str(level): levels.count(level) for level in LEVELS}
            out[kind] = {
                "real_samples": len({r["sample"] for r in mine}),
                "examples": len(mine),
                "by_level": counts,
                "balance": round(min(counts.values()) / max(counts.values()), 3)
                if max(counts.values())
                else 0.0,
            }
        return out


def _iter_tables(samples: Samples) -> Iterable[pa.Table | pa.RecordBatch]:
    if isinstance(samples, (pa.Table, pa.RecordBatch)):
        yield samples
    else:
        yield from samples


def _question_of(texts: Sequence[dict] | None) -> str | None:
    first = (texts or [None])[0]
    question = clean_text(first.get("user")) if first else ""
    return question or None


def llm_rewriter(backend) -> Rewrite:
    """A :data:`Rewrite` that asks a chat model (a :class:`~fineharbor.core.judge.JudgeBackend`:
    transformers in process or an OpenAI-compatible server) in one batched call."""
    from fineharbor.core.judge.backend import JudgeRequest

    def rewrite(texts: Sequence[str], levels: Sequence[int]) -> list[str | None]:
        requests = [
            JudgeRequest(_REWRITE_SYSTEM, f"{_REWRITE_TASK[level]}\n\nText: {text}")
            for text, level in zip(texts, levels, strict=True)
        ]
        return backend.complete(requests)

    return rewrite


def _apply_rewrite(columns: dict[str, list], rewrite: Rewrite) -> int:
    """Rewrite the segments of levels 1 and 2 in place; an empty or failed reply keeps the
    rule-based text and is counted, so one bad LLM reply never loses a training example."""
    slots = [
        (row, k)
        for row, level in enumerate(columns["level"])
        if level in REWRITTEN_LEVELS
        for k in range(len(columns["segments"][row]))
    ]
    if not slots:
        return 0
    replies = rewrite(
        [columns["segments"][row][k] for row, k in slots],
        [columns["level"][row] for row, _ in slots],
    )
    failures = 0
    for (row, k), reply in zip(slots, replies, strict=True):
        if isinstance(reply, str) and reply.strip():
            columns["segments"][row][k] = reply.strip()
        else:
            failures += 1
    return failures


def build_quality_training_set(
    samples: Samples,
    seed: int = 0,
    *,
    rewrite: Rewrite | None = None,
    max_samples: int | None = None,
) -> QualityTrainingSet:
    """Semi-synthetic four-level data from real unified samples (``images``, ``texts``).

    Per sample with at least one image and one non-empty turn: level 3 its own segments; level 2
    the same with one attribute made wrong in one segment (skipped when no segment has a
    colour, shape, count, position, yes/no or number to change); level 1 a vague text (generic
    caption, or the first question with a non-answer); level 0 the segments of another sample of
    the same ``source`` when the samples have that column (an off-topic text from the same kind
    of data, so the model cannot tell level 0 by its style alone), else of any sample.
    An interleaved document (a row with ``segments``) gets :func:`document_levels` instead, its
    paragraphs as segments and its layout in ``order``.
    ``rewrite`` (e.g. :func:`llm_rewriter`) rewrites the segments of levels 1 and 2 in one
    batched call; keep it None for the rule-based texts. ``max_samples`` caps how many real
    samples are used (the set holds their image bytes in memory).
    """
    rng = np.random.default_rng(seed)
    images: list[list[bytes]] = []
    sample_ids: list[str | None] = []
    groups: list[str | None] = []
    true_segments: list[list[str]] = []
    questions: list[str | None] = []
    orders: list[list[int] | None] = []
    for table in _iter_tables(samples):
        names = table.schema.names
        wanted = ("sample_id", "source", "images", "texts", "segments")
        rows = table.select([n for n in wanted if n in names])
        for row in rows.to_pylist():
            if row.get("segments") is not None:
                data, segments, order = document_parts(row["segments"], row.get("images"))
            else:
                data, segments = image_bytes(row.get("images")), sample_segments(row.get("texts"))
                order = None
            if not data or not segments:
                continue
            images.append(data)
            orders.append(order)
            sample_ids.append(row.get("sample_id"))
            groups.append(row.get("source"))
            true_segments.append(segments)
            questions.append(_question_of(row.get("texts")))
            if max_samples is not None and len(images) >= max_samples:
                break
        if max_samples is not None and len(images) >= max_samples:
            break

    columns: dict[str, list] = {name: [] for name in EXAMPLE_SCHEMA.names}

    def add(
        index: int, level: int, rule: str, segments: list[str], order: list[int] | None = None
    ) -> None:
        columns["sample"].append(index)
        columns["sample_id"].append(sample_ids[index])
        columns["level"].append(level)
        columns["rule"].append(rule)
        columns["segments"].append(segments)
        columns["order"].append(order)

    members: dict[str | None, list[int]] = {}
    for i, group in enumerate(groups):
        members.setdefault(group, []).append(i)
    for i, segments in enumerate(true_segments):
        pool = members[groups[i]] if len(members[groups[i]]) > 1 else range(len(images))
        order = orders[i]
        if order is not None:
            draw = _paragraph_drawer(i, pool, true_segments, rng)
            for level, rule, texts, layout in document_levels(segments, order, draw, rng):
                add(i, level, rule, texts, layout)
            continue
        add(i, 3, "true", list(segments))
        # Level 2: try segments in random order until one has an attribute to change.
        for k in rng.permutation(len(segments)):
            perturbed = perturb_attribute(segments[int(k)], rng)
            if perturbed is not None:
                text, kind = perturbed
                wrong = list(segments)
                wrong[int(k)] = text
                add(i, 2, kind, wrong)
                break
        add(i, 1, "vague", [vague_text(rng, questions[i])])
        # Level 0: a random other sample whose text differs (duplicates can share texts).
        for _ in range(10):
            j = int(pool[int(rng.integers(len(pool)))])
            if j != i and true_segments[j] != segments:
                add(i, 0, "other_image", list(true_segments[j]))
                break
    failures = _apply_rewrite(columns, rewrite) if rewrite is not None else 0
    examples = pa.table(columns, schema=EXAMPLE_SCHEMA)
    return QualityTrainingSet(images=images, examples=examples, rewrite_failures=failures)


def document_parts(
    segments: Sequence[dict], images: Sequence[dict | None] | None
) -> tuple[list[bytes], list[str], list[int]]:
    """(image bytes, paragraphs, order) of a unified document: ``order`` per position an index
    into the returned images or :data:`TEXT`; images without bytes and empty paragraphs are
    left out."""
    images = list(images or [])
    data: list[bytes] = []
    index_of: dict[int, int] = {}
    texts: list[str] = []
    order: list[int] = []
    for segment in segments:
        if segment["image"] is None:
            text = clean_text(segment["text"])
            if text:
                texts.append(text)
                order.append(TEXT)
            continue
        k = segment["image"]
        entry = images[k] if 0 <= k < len(images) else None
        if not entry or not entry.get("bytes"):
            continue
        if k not in index_of:
            index_of[k] = len(data)
            data.append(entry["bytes"])
        order.append(index_of[k])
    return data, texts, order


def _described(order: Sequence[int]) -> list[int]:
    """Indices (among the paragraphs) of the paragraphs most likely to describe an image: those
    right after one (where web pages put captions), else right before one, else all."""
    after, before, k = [], [], 0
    for position, entry in enumerate(order):
        if entry == TEXT:
            if position > 0 and order[position - 1] != TEXT:
                after.append(k)
            elif position + 1 < len(order) and order[position + 1] != TEXT:
                before.append(k)
            k += 1
    return after or before or list(range(k))


def _paragraph_drawer(
    i: int, pool: Sequence[int], texts: Sequence[list[str]], rng: np.random.Generator
) -> Callable[[], str | None]:
    """Draws a paragraph of a random other sample of ``pool`` that sample ``i`` does not hold
    (None after ten misses: duplicates can share texts)."""

    def draw() -> str | None:
        for _ in range(10):
            j = int(pool[int(rng.integers(len(pool)))])
            if j != i and texts[j]:
                paragraph = texts[j][int(rng.integers(len(texts[j])))]
                if paragraph not in texts[i]:
                    return paragraph
        return None

    return draw


def document_levels(
    paragraphs: list[str],
    order: list[int],
    other: Callable[[], str | None],
    rng: np.random.Generator,
) -> list[tuple[int, str, list[str], list[int]]]:
    """A document's rule-based examples ``(level, rule, paragraphs, order)``:

    * 3 ``true``: the document as it is;
    * 2 ``mismatched_paragraph``: one paragraph after an image replaced by a paragraph of
      another sample (``other()`` draws one, None when there is none), or with one attribute
      made wrong when the document has a single paragraph or there is no other sample (skipped
      when neither works);
    * 1 ``boilerplate``: every paragraph replaced by page chrome;
    * 0 ``shuffled_images`` (the images rotated across their positions, each paragraph now next
      to another image) or ``other_paragraphs`` (every paragraph taken from other samples), one
      of the two at random where both can be made.
    """
    out = [(3, "true", list(paragraphs), list(order))]
    near = _described(order)
    k = near[int(rng.integers(len(near)))]
    replacement = other() if len(paragraphs) > 1 else None
    if replacement is not None:
        wrong = list(paragraphs)
        wrong[k] = replacement
        out.append((2, "mismatched_paragraph", wrong, list(order)))
    else:
        perturbed = perturb_attribute(paragraphs[k], rng)
        if perturbed is not None:
            wrong = list(paragraphs)
            wrong[k] = perturbed[0]
            out.append((2, perturbed[1], wrong, list(order)))
    out.append((1, "boilerplate", [boilerplate_paragraph(rng) for _ in paragraphs], list(order)))
    slots = [p for p, entry in enumerate(order) if entry != TEXT]
    placed = [order[p] for p in slots]
    drawn = [other() for _ in paragraphs]
    unrelated = None if None in drawn else [p for p in drawn if p is not None]
    if len(set(placed)) > 1 and (unrelated is None or rng.random() < 0.5):
        shift = int(rng.integers(1, len(placed)))
        rotated = placed[shift:] + placed[:shift]
        if rotated == placed:  # repeated images can rotate into the same layout
            rotated = placed[1:] + placed[:1]
        moved = list(order)
        for p, entry in zip(slots, rotated, strict=True):
            moved[p] = entry
        out.append((0, "shuffled_images", list(paragraphs), moved))
    elif unrelated is not None:
        out.append((0, "other_paragraphs", unrelated, list(order)))
    return out


# --------------------------------------------------------------------------- features


def pair_features(image: np.ndarray, text: np.ndarray) -> np.ndarray:
    """``[img, txt, img*txt, |img-txt|]`` for (n, d) normalised rows -> (n, 4d) float32."""
    image = np.asarray(image, dtype=np.float32)
    text = np.asarray(text, dtype=np.float32)
    return np.concatenate([image, text, image * text, np.abs(image - text)], axis=1)


def _normalise(vector: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(vector))
    return (vector / norm).astype(np.float32) if norm > 0 else vector.astype(np.float32)


def pooled_image_features(
    embedder: ImageTextEmbedder, images_per_sample: Sequence[Sequence[bytes]]
) -> list[np.ndarray | None]:
    """Per sample, the re-normalised mean of its decodable images' embeddings (None if none)."""
    out: list[np.ndarray | None] = []
    for vectors in embed_sample_images(embedder, images_per_sample):
        out.append(_normalise(vectors.mean(axis=0)) if vectors.shape[0] else None)
    return out


def pooled_text_features(
    embedder: ImageTextEmbedder, segments_per_sample: Sequence[Sequence[str]], chunk_words: int
) -> list[np.ndarray | None]:
    """Per sample, the re-normalised mean embedding of its word-budgeted chunks (None if no
    text)."""
    chunks = [pack_segments(segments, chunk_words) for segments in segments_per_sample]
    vectors = embed_unique_texts(embedder, (c for per_sample in chunks for c in per_sample))
    return [
        _normalise(np.mean([vectors[c] for c in per_sample], axis=0)) if per_sample else None
        for per_sample in chunks
    ]


# --------------------------------------------------------------------------- model


class _Scorer(nn.Module):
    """Two-layer MLP: 1 output (regression on the level) or 4 (class logits)."""

    def __init__(self, in_dim: int, hidden: int, outputs: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, outputs)
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features)


@dataclass
class QualityReport:
    """What training measured; ``confusion[t][p]`` counts held-out texts of level t predicted p."""

    n_images: int
    n_train: int
    n_heldout: int
    train_accuracy: float
    heldout_accuracy: float | None
    heldout_mae: float | None
    confusion: list[list[int]]
    level_mean_score: dict[str, float]
    seconds: float

    def summary(self) -> str:
        acc = "n/a" if self.heldout_accuracy is None else f"{self.heldout_accuracy:.3f}"
        lines = [
            f"quality classifier: {self.n_train} training / {self.n_heldout} held-out texts "
            f"({self.n_images} images), held-out accuracy {acc}, "
            f"train accuracy {self.train_accuracy:.3f}, {self.seconds:.1f}s",
            "confusion (rows: true level 0-3, columns: predicted 0-3):",
        ]
        lines += [f"  {level}: {row}" for level, row in enumerate(self.confusion)]
        return "\n".join(lines)


@dataclass
class QualityModel:
    """A trained scorer and what it needs to be used again: feature dim and text chunking."""

    module: _Scorer
    dim: int
    objective: str
    hidden: int
    chunk_words: int
    embedder: str = ""
    report: QualityReport | None = None
    meta: dict = field(default_factory=dict)

    @torch.inference_mode()
    def predict(self, image: np.ndarray, text: np.ndarray) -> np.ndarray:
        """Scores in [0, 3] for (n, dim) normalised image and text features."""
        if image.shape[0] == 0:
            return np.zeros(0, dtype=np.float32)
        if image.shape[1] != self.dim or text.shape[1] != self.dim:
            raise ValueError(
                f"features of dim {image.shape[1]}/{text.shape[1]} given to a quality "
                f"classifier trained on dim {self.dim} ({self.embedder or 'unknown embedder'}): "
                "score with the CLIP model it was trained on"
            )
        self.module.eval()
        out = self.module(torch.from_numpy(pair_features(image, text)))
        return _to_score(out, self.objective).numpy()

    def save(self, directory: str | Path) -> Path:
        """Write ``quality_classifier.pt`` (state dict) and ``quality_classifier.json``."""
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        torch.save(self.module.state_dict(), path / WEIGHTS_FILE)
        meta = {
            "format_version": FORMAT_VERSION,
            "dim": self.dim,
            "objective": self.objective,
            "hidden": self.hidden,
            "chunk_words": self.chunk_words,
            "embedder": self.embedder,
            "report": asdict(self.report) if self.report else None,
            **self.meta,
        }
        (path / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        return path

    @classmethod
    def load(cls, directory: str | Path) -> QualityModel:
        path = Path(directory)
        meta_path, weights_path = path / META_FILE, path / WEIGHTS_FILE
        for needed in (meta_path, weights_path):
            if not needed.is_file():
                raise FileNotFoundError(
                    f"quality classifier file not found: {needed}. Train one with "
                    "train_quality_classifier(...) and save it with QualityModel.save(directory)"
                )
        meta = json.loads(meta_path.read_text())
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"{meta_path}: format_version {meta.get('format_version')} is not supported "
                f"(this code reads {FORMAT_VERSION}); retrain the classifier"
            )
        outputs = 1 if meta["objective"] == "mse" else len(LEVELS)
        module = _Scorer(4 * meta["dim"], meta["hidden"], outputs, dropout=0.0)
        module.load_state_dict(torch.load(weights_path, map_location="cpu", weights_only=True))
        report = QualityReport(**meta["report"]) if meta.get("report") else None
        known = {
            "format_version",
            "dim",
            "objective",
            "hidden",
            "chunk_words",
            "embedder",
            "report",
        }
        return cls(
            module=module.eval(),
            dim=meta["dim"],
            objective=meta["objective"],
            hidden=meta["hidden"],
            chunk_words=meta["chunk_words"],
            embedder=meta.get("embedder", ""),
            report=report,
            meta={k: v for k, v in meta.items() if k not in known},
        )


def _to_score(output: torch.Tensor, objective: str) -> torch.Tensor:
    if objective == "mse":
        return output.squeeze(-1).clamp(0.0, float(MAX_LEVEL))
    levels = torch.arange(len(LEVELS), dtype=output.dtype)
    return (output.softmax(-1) * levels).sum(-1)


def _embedder_name(embedder: ImageTextEmbedder) -> str:
    name = getattr(embedder, "model_name", None) or type(embedder).__name__
    pretrained = getattr(embedder, "pretrained", None)
    return f"{name} ({pretrained})" if pretrained else str(name)


def split_images(n_images: int, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of held-out images: whole images, so no held-out image is seen in training."""
    held = np.zeros(n_images, dtype=bool)
    n_held = round(n_images * fraction)
    if fraction > 0 and n_images >= 2:
        n_held = min(max(1, n_held), n_images - 1)
        held[np.random.default_rng(seed).permutation(n_images)[:n_held]] = True
    return held


def train_quality_classifier(
    train_set: QualityTrainingSet, embedder: ImageTextEmbedder, params: QualityClassifierParams
) -> QualityModel:
    """Embed the training set with the frozen CLIP ``embedder`` and fit the scorer (CPU, seconds).

    Examples whose images all fail to decode are dropped, and so are :data:`ORDER_ONLY_RULES`
    examples (pooled features cannot tell them from the true document). The report holds
    held-out accuracy and confusion over whole held-out images.
    """
    started = time.perf_counter()
    image_features = pooled_image_features(embedder, train_set.images)
    examples = train_set.examples
    text_features = pooled_text_features(
        embedder, examples.column("segments").to_pylist(), params.chunk_words
    )
    sample_index = examples.column("sample").to_numpy()
    levels = examples.column("level").to_numpy().astype(np.int64)
    rules = examples.column("rule").to_pylist()
    keep = np.array(
        [
            image_features[s] is not None and t is not None and rule not in ORDER_ONLY_RULES
            for s, t, rule in zip(sample_index, text_features, rules, strict=True)
        ],
        dtype=bool,
    )
    if not keep.any():
        raise ValueError("no training example has a decodable image and a text")
    img = np.stack([image_features[s] for s, k in zip(sample_index, keep, strict=True) if k])
    txt = np.stack([t for t, k in zip(text_features, keep, strict=True) if k])
    y = levels[keep]
    held_images = split_images(len(train_set.images), params.holdout_fraction, params.seed)
    held = held_images[sample_index[keep]]
    x = pair_features(img, txt)

    torch.manual_seed(params.seed)
    outputs = 1 if params.objective == "mse" else len(LEVELS)
    module = _Scorer(x.shape[1], params.hidden, outputs, params.dropout)
    _fit(module, x[~held], y[~held], params)

    model = QualityModel(
        module=module.eval(),
        dim=img.shape[1],
        objective=params.objective,
        hidden=params.hidden,
        chunk_words=params.chunk_words,
        embedder=_embedder_name(embedder),
    )
    train_pred = model.predict(img[~held], txt[~held])
    held_pred = model.predict(img[held], txt[held]) if held.any() else np.zeros(0, np.float32)
    rounded = np.rint(held_pred).astype(np.int64)
    model.report = QualityReport(
        n_images=int(sum(f is not None for f in image_features)),
        n_train=int((~held).sum()),
        n_heldout=int(held.sum()),
        train_accuracy=float((np.rint(train_pred) == y[~held]).mean()),
        heldout_accuracy=float((rounded == y[held]).mean()) if held.any() else None,
        heldout_mae=float(np.abs(held_pred - y[held]).mean()) if held.any() else None,
        confusion=confusion_matrix(y[held], rounded, len(LEVELS)).tolist(),
        level_mean_score={
            str(level): float(held_pred[y[held] == level].mean())
            for level in LEVELS
            if (y[held] == level).any()
        },
        seconds=time.perf_counter() - started,
    )
    return model


def _fit(module: _Scorer, x: np.ndarray, y: np.ndarray, params: QualityClassifierParams) -> None:
    features = torch.from_numpy(x)
    target = torch.from_numpy(y)
    optimiser = torch.optim.AdamW(
        module.parameters(), lr=params.learning_rate, weight_decay=params.weight_decay
    )
    generator = torch.Generator().manual_seed(params.seed)
    module.train()
    for _ in range(params.epochs):
        order = torch.randperm(len(target), generator=generator)
        for start in range(0, len(target), params.batch_size):
            batch = order[start : start + params.batch_size]
            out = module(features[batch])
            if params.objective == "mse":
                loss = nn.functional.mse_loss(out.squeeze(-1), target[batch].float())
            else:
                loss = nn.functional.cross_entropy(out, target[batch])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()


# --------------------------------------------------------------------------- scoring


def score_quality(
    samples: pa.Table | pa.RecordBatch, model: QualityModel, embedder: ImageTextEmbedder
) -> pa.Array:
    """One float32 quality score in [0, 3] per row (3 = the text truly describes the images);
    null where the sample has no decodable image or no text.

    Works for captions, multi-turn Q&A and interleaved documents alike: images are mean-pooled,
    text segments chunked and averaged (module docstring). Pass a record batch at a time.
    """
    images = [image_bytes(row) for row in samples.column("images").to_pylist()]
    segments = [sample_segments(row) for row in samples.column("texts").to_pylist()]
    image_features = pooled_image_features(embedder, images)
    text_features = pooled_text_features(embedder, segments, model.chunk_words)
    ready = [
        i
        for i, (a, b) in enumerate(zip(image_features, text_features, strict=True))
        if a is not None and b is not None
    ]
    scores: list[float | None] = [None] * len(images)
    if ready:
        predicted = model.predict(
            np.stack([image_features[i] for i in ready]),
            np.stack([text_features[i] for i in ready]),
        )
        for i, value in zip(ready, predicted, strict=True):
            scores[i] = float(value)
    return pa.array(scores, type=pa.float32())
