"""A tiny CLIP trained on the demo's own image-caption pairs, so demo CLIP scores mean something
without downloading weights.

Real deployments name a pretrained model (``stages.clip_score.model: ViT-B-32`` with
``pretrained: openai``, LAION's choice). The demo cannot download one, so ``fineharbor demo``
calls :func:`train_demo_clip` to train a small open_clip model from scratch on the demo's pairs
(CPU, fixed steps and seed, a time budget as a safety stop) and saves it in open_clip's
local-directory layout::

    out_dir/open_clip_config.json        {"model_cfg": ..., "preprocess_cfg": ...}
    out_dir/open_clip_pytorch_model.bin  state dict
    out_dir/training.json                config, seed, steps, loss, time, data counts

which loads like any local open_clip model: ``stages.clip_score.model: local-dir:<out_dir>``.

The demo CLIP plays the part of a model pretrained elsewhere: it learns from a corpus drawn from
the demo's generators with a seed of its own (:func:`pretraining_pairs`), never from the demo's
samples, and nothing of the demo's ground truth decides what it learns. :func:`demo_clip_aucs`
reads the demo sources with the project's readers and mappings (:func:`demo_pairs`) and measures
how well the CLIP score ranks the planted ``mismatched_caption`` samples below the true pairs.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
import warnings
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from pydantic import Field

from fineharbor.core.strict import StrictModel

CONFIG_FILE = "open_clip_config.json"
WEIGHTS_FILE = "open_clip_pytorch_model.bin"
TRAINING_FILE = "training.json"
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
MISMATCH = "mismatched_caption"


class DemoClipConfig(StrictModel):
    """Architecture and schedule of the demo CLIP.

    Chosen by measurement on the demo at scale 1.0 (seed 0, one thread; ROC AUC of the planted
    mismatches against the true pairs of their sources). Trained on the demo's own pairs (a
    fifth held out, as earlier versions did), a ModifiedResNet image tower (width 16, one block
    per stage) at 32 px with a 1-layer text transformer, 300 steps, took ~90 CPU-seconds for
    0.85 on held-out pairs; 64 px with 2 text layers cost 215 CPU-seconds for the same; a ViT
    (patch 8, 32 px, 500 steps) reached 0.80. On 3,000 pretraining pairs (:func:`pretraining_pairs`)
    the same model reaches 0.98 on image-caption pairs and 0.84 over all samples in 300 steps,
    0.98 and 0.88 in 600 (twice the time); chart Q&A stays near 0.5 at 32 px, where labels are
    unreadable. The demo's captions are mostly about colours, backgrounds, counts and places.
    """

    pretraining_pairs: int = Field(
        3000, ge=2, le=100_000, description="pairs drawn for training (pretraining_pairs)"
    )
    image_size: int = Field(32, ge=32, le=224)
    vision: Literal["resnet", "vit"] = "resnet"
    vision_width: int = Field(16, ge=8, le=512, description="ResNet stem width / ViT width")
    vision_layers: int = Field(1, ge=1, le=12, description="blocks per ResNet stage / ViT layers")
    patch_size: int = Field(8, ge=2, le=32, description="ViT only")
    text_width: int = Field(64, ge=32, le=512)
    text_layers: int = Field(1, ge=1, le=12)
    context_length: int = Field(64, ge=16, le=77, description="tokens; demo texts fit in 64")
    embed_dim: int = Field(64, ge=16, le=1024)
    batch_size: int = Field(128, ge=8, le=4096)
    steps: int = Field(300, ge=1, description="optimiser steps (fixed, for determinism)")
    learning_rate: float = Field(2e-3, gt=0)
    weight_decay: float = Field(0.1, ge=0)
    warmup_steps: int = Field(30, ge=0)
    flip_augment: bool = Field(
        True, description="add mirrored images with 'left'/'right' swapped in their texts"
    )
    threads: int = Field(
        1,
        ge=1,
        le=64,
        description="torch threads while training: one gives the same weights on any machine "
        "and stays fast on a busy one (measured: 2 threads on a loaded 2-core machine ran 5x "
        "slower per step than 1)",
    )
    crop_min: float = Field(
        0.8, gt=0, le=1.0, description="random crops keep at least this share of each side"
    )
    sub_captions: bool = Field(
        True,
        description="also train on each caption's clauses (split at commas, 'and', sentence "
        "ends), as long-caption CLIP training samples sub-captions: a clause that names one "
        "object but not the background cannot be matched by background colour alone, so the "
        "model has to learn the objects",
    )


def open_clip_model_cfg(config: DemoClipConfig) -> dict:
    """open_clip's ``model_cfg`` for ``config`` (what ``open_clip.CLIP(**cfg)`` takes)."""
    if config.vision == "resnet":
        vision = {
            "image_size": config.image_size,
            "layers": [config.vision_layers] * 4,
            "width": config.vision_width,
            "patch_size": None,
        }
    else:
        vision = {
            "image_size": config.image_size,
            "layers": config.vision_layers,
            "width": config.vision_width,
            "patch_size": config.patch_size,
            "head_width": 32,
        }
    text = {
        "context_length": config.context_length,
        "vocab_size": 49408,  # open_clip's SimpleTokenizer: no custom tokenizer to ship
        "width": config.text_width,
        "heads": max(1, config.text_width // 32),
        "layers": config.text_layers,
    }
    return {"embed_dim": config.embed_dim, "vision_cfg": vision, "text_cfg": text}


def preprocess_cfg(config: DemoClipConfig) -> dict:
    """Squash-resize to a square: a centre crop would cut the shapes drawn near the left and
    right edges of the demo's wide images, and the captions say where shapes are."""
    return {
        "size": config.image_size,
        "mode": "RGB",
        "mean": list(OPENAI_MEAN),
        "std": list(OPENAI_STD),
        "interpolation": "bicubic",
        "resize_mode": "squash",
    }


# --------------------------------------------------------------------------- training

_LEFT_RIGHT = re.compile(r"\b(left|right|Left|Right)\b")
_SWAP = {"left": "right", "right": "left", "Left": "Right", "Right": "Left"}


def mirror_text(text: str) -> str:
    """The text of the mirrored image: 'left' and 'right' swapped."""
    return _LEFT_RIGHT.sub(lambda m: _SWAP[m.group(1)], text)


@dataclass
class TrainingReport:
    seed: int
    pairs: int
    images: int
    undecodable: int
    texts: int
    steps_planned: int
    steps_done: int
    stopped_by_budget: bool
    final_loss: float
    seconds: float
    cpu_seconds: float
    threads: int


def _group_pairs(samples: Iterable[tuple[bytes, str]]) -> tuple[list[bytes], list[list[str]], int]:
    """Distinct images, each with its distinct captions (an image appears once per batch, so
    two captions of one image never act as each other's negatives)."""
    index: dict[str, int] = {}
    images: list[bytes] = []
    captions: list[list[str]] = []
    pairs = 0
    for data, caption in samples:
        text = (caption or "").strip()
        if not data or not text:
            continue
        pairs += 1
        key = hashlib.sha256(data).hexdigest()
        if key not in index:
            index[key] = len(images)
            images.append(data)
            captions.append([])
        if text not in captions[index[key]]:
            captions[index[key]].append(text)
    return images, captions, pairs


def _random_crops(
    pixels: torch.Tensor, size: int, crop_min: float, generator: torch.Generator
) -> torch.Tensor:
    """Per image, a random square crop of ``crop_min``-1.0 of the side, resized to ``size``."""
    side = pixels.shape[-1]
    out = []
    for image in pixels:
        scale = float(torch.empty(1).uniform_(crop_min, 1.0, generator=generator))
        crop = max(1, round(side * scale))
        x = int(torch.randint(side - crop + 1, (1,), generator=generator))
        y = int(torch.randint(side - crop + 1, (1,), generator=generator))
        patch = image[None, :, y : y + crop, x : x + crop]
        out.append(
            F.interpolate(patch, size=(size, size), mode="bilinear", antialias=True)[0]
            if crop != size
            else patch[0]
        )
    return torch.stack(out)


def train_demo_clip(
    samples: Iterable[tuple[bytes, str]],
    out_dir: str | Path,
    seed: int = 0,
    minutes_budget: float = 5.0,
    config: DemoClipConfig | None = None,
) -> Path:
    """Train the demo CLIP on ``(image bytes, caption)`` pairs and save it under ``out_dir``.

    Undecodable images are skipped. Training runs ``config.steps`` steps on ``config.threads``
    threads (same seed: same weights); ``minutes_budget`` is a safety stop on slow machines,
    recorded in ``training.json`` when it cuts training short. Returns ``out_dir``, loadable as
    ``"local-dir:" + str(out_dir)``.
    """
    import open_clip
    from open_clip.transform import PreprocessCfg, image_transform_v2

    from fineharbor.core.signatures.hashing import ImageDecodeError, decode_rgb

    config = config or DemoClipConfig()
    started, cpu_started = time.perf_counter(), time.process_time()
    out = Path(out_dir)
    images, captions, n_pairs = _group_pairs(samples)

    # Decode once at 1.25x the model's side, so random crops keep detail (resize happens after).
    store = round(config.image_size * 1.25)
    pp = preprocess_cfg(config)
    transform = image_transform_v2(PreprocessCfg(**{**pp, "size": store}), is_train=False)
    pixels, texts, undecodable = [], [], 0
    for data, caps in zip(images, captions, strict=True):
        try:
            pixels.append(transform(decode_rgb(data)))
        except ImageDecodeError:
            undecodable += 1
            continue
        texts.append(caps)
    if len(pixels) < 2:
        raise ValueError(f"need at least 2 decodable images to train a CLIP, got {len(pixels)}")
    if config.sub_captions:
        texts = [_with_clauses(caps) for caps in texts]
    x = torch.stack(pixels)
    if config.flip_augment:
        x = torch.cat([x, x.flip(-1)])
        texts = texts + [[mirror_text(t) for t in caps] for caps in texts]
    vocabulary = sorted({t for caps in texts for t in caps})
    position = {t: i for i, t in enumerate(vocabulary)}
    tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=config.context_length)
    tokens = tokenizer(vocabulary)
    text_ids = [[position[t] for t in caps] for caps in texts]

    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = open_clip.CLIP(**open_clip_model_cfg(config))
    loss_fn = open_clip.loss.ClipLoss()
    optimiser = torch.optim.AdamW(
        model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    n = x.shape[0]
    batch = min(config.batch_size, n)
    order, cursor = torch.randperm(n, generator=generator), 0
    deadline = started + minutes_budget * 60.0
    loss_value, steps_done, stopped = float("nan"), 0, False
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        model.train()
        for step in range(config.steps):
            if time.perf_counter() > deadline:
                stopped = True
                break
            if cursor + batch > n:
                order, cursor = torch.randperm(n, generator=generator), 0
            chosen = order[cursor : cursor + batch]
            cursor += batch
            picks = [
                text_ids[int(i)][
                    int(torch.randint(len(text_ids[int(i)]), (1,), generator=generator))
                ]
                for i in chosen
            ]
            for group in optimiser.param_groups:
                group["lr"] = config.learning_rate * _lr_factor(step, config)
            image_in = _random_crops(x[chosen], config.image_size, config.crop_min, generator)
            image_features, text_features, logit_scale = model(image_in, tokens[picks])[:3]
            loss = loss_fn(image_features, text_features, logit_scale)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            with torch.no_grad():  # CLIP's clamp: temperature at most 100
                model.logit_scale.clamp_(0, math.log(100))
            loss_value, steps_done = float(loss.item()), step + 1
    finally:
        torch.set_num_threads(previous_threads)

    report = TrainingReport(
        seed=seed,
        pairs=n_pairs,
        images=len(pixels),
        undecodable=undecodable,
        texts=len(vocabulary),
        steps_planned=config.steps,
        steps_done=steps_done,
        stopped_by_budget=stopped,
        final_loss=loss_value,
        seconds=time.perf_counter() - started,
        cpu_seconds=time.process_time() - cpu_started,
        threads=config.threads,
    )
    if stopped:
        warnings.warn(
            f"demo CLIP training stopped by its {minutes_budget} min budget after {steps_done} of "
            f"{config.steps} steps: the machine is slower than planned and scores will be weaker",
            stacklevel=2,
        )
    save_demo_clip(model.eval(), config, out, report)
    return out


_CLAUSE_BREAK = re.compile(r",\s+|;\s+|\.\s+|\s+and\s+|\s+with\s+")


def clauses(text: str, min_words: int = 3) -> list[str]:
    """The clauses of a caption, split at commas, semicolons, sentence ends, 'and', 'with'
    (fragments under ``min_words`` words are dropped)."""
    parts = [p.strip(" .") for p in _CLAUSE_BREAK.split(text)]
    return [p for p in parts if len(p.split()) >= min_words]


def _with_clauses(captions: list[str]) -> list[str]:
    out = list(captions)
    for caption in captions:
        for clause in clauses(caption):
            if clause not in out and clause != caption:
                out.append(clause)
    return out


def _lr_factor(step: int, config: DemoClipConfig) -> float:
    """Linear warm-up, then cosine decay to zero (open_clip's schedule)."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    span = max(1, config.steps - config.warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * (step - config.warmup_steps) / span))


def save_demo_clip(
    model: torch.nn.Module, config: DemoClipConfig, out_dir: Path, report: TrainingReport
) -> None:
    """Write the local-directory layout open_clip loads with ``local-dir:`` (module docstring)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out_dir / WEIGHTS_FILE)
    config_json = {
        "model_cfg": open_clip_model_cfg(config),
        "preprocess_cfg": preprocess_cfg(config),
    }
    (out_dir / CONFIG_FILE).write_text(json.dumps(config_json, indent=2))
    report_json = {"config": config.model_dump(), "report": asdict(report)}
    (out_dir / TRAINING_FILE).write_text(json.dumps(report_json, indent=2))


def load_demo_clip(directory: str | Path, *, device: str = "cpu", batch_size: int = 128):
    """The saved demo CLIP as an :class:`OpenClipEmbedder`, through the user's local-dir path."""
    from fineharbor.core.signatures.embedders import ModelNotFoundError, OpenClipEmbedder

    path = Path(directory).expanduser().resolve()
    if not (path / CONFIG_FILE).is_file() or not (path / WEIGHTS_FILE).is_file():
        raise ModelNotFoundError(
            f"no demo CLIP in {path} (expected {CONFIG_FILE} and {WEIGHTS_FILE}); train it with "
            "`fineharbor demo` (stages.clip_score.model: local-dir:<this directory>)"
        )
    return OpenClipEmbedder(f"local-dir:{path}", None, device=device, batch_size=batch_size)


# --------------------------------------------------------------------------- demo data


@dataclass
class DemoPairs:
    """One entry per demo sample with exactly one image and some text (the pairs a CLIP reads).

    ``mismatched`` comes from the demo's ground truth; ``caption`` marks image-caption pairs (one
    turn, no question) as opposed to question-answer turns.
    """

    images: list[bytes]
    texts: list[str]
    sources: list[str]
    mismatched: list[bool]
    caption: list[bool]


def pretraining_pairs(count: int, seed: int) -> list[tuple[bytes, str]]:
    """The demo CLIP's training data: ``count`` clean pairs drawn like the demo's but from a seed
    of their own (:func:`fineharbor.demo.generate.pretraining_corpus`), text made as the CLIP
    score reads it. The demo CLIP stands in for a model pretrained elsewhere, so it never sees
    the demo's samples, and no ground truth decides what it learns from."""
    from fineharbor.core.quality.text import sample_segments
    from fineharbor.demo.generate import pretraining_corpus

    corpus_seed = int.from_bytes(hashlib.sha256(f"demo-clip/{seed}".encode()).digest()[:4], "big")
    return [
        (image, " ".join(sample_segments(turns)))
        for image, turns in pretraining_corpus(count, corpus_seed)
    ]


def demo_pairs(config, truth_path: str | Path) -> DemoPairs:
    """Pairs of the demo's local train sources, read and mapped with the project's own readers
    and mappings (the URL list is skipped: it needs the demo's HTTP server). The text of a
    sample is what the CLIP score reads (``all_turns``: every turn joined)."""
    from fineharbor.core.mapping import map_batch
    from fineharbor.core.quality.clip_score import image_bytes
    from fineharbor.core.quality.text import clean_text, sample_segments
    from fineharbor.core.readers import read_source

    truth = pq.read_table(truth_path, columns=["source", "origin_key", "defect"]).to_pylist()
    planted = {(r["source"], r["origin_key"]) for r in truth if r["defect"] == MISMATCH}
    pairs = DemoPairs([], [], [], [], [])
    for source in config.sources:
        if source.role != "train" or source.reader == "url_list":
            continue
        for raw, _ in read_source(source, config.stages.ingest):
            unified, _ = map_batch(raw, source.mapping)
            for row in unified.select(["origin_key", "images", "texts"]).to_pylist():
                images, segments = image_bytes(row["images"]), sample_segments(row["texts"])
                if len(images) != 1 or not segments:
                    continue
                turns = row["texts"]
                pairs.images.append(images[0])
                pairs.texts.append(" ".join(segments))
                pairs.sources.append(source.name)
                pairs.mismatched.append((source.name, row["origin_key"]) in planted)
                pairs.caption.append(len(turns) == 1 and not clean_text(turns[0].get("user")))
    return pairs


@dataclass(frozen=True)
class DemoClipAuc:
    """ROC AUC of the CLIP score, true pairs against planted mismatches, with the counts."""

    kind: str
    auc: float
    true_pairs: int
    mismatched: int


def demo_clip_aucs(embedder, pairs: DemoPairs) -> list[DemoClipAuc]:
    """The CLIP score's ROC AUC over the demo: for image-caption pairs (what a CLIP score is
    for: LAION's and DanQing's filters), for question-answer samples (one claim about a chart or
    a scene in a short exchange; chart labels are unreadable at the demo CLIP's 32 px), and for
    all of them. True pairs are those of the sources with planted mismatches."""
    from fineharbor.core.quality.metrics import roc_auc

    with_mismatch = {s for s, m in zip(pairs.sources, pairs.mismatched, strict=True) if m}
    rows = [i for i, s in enumerate(pairs.sources) if s in with_mismatch]
    image = embedder.embed_images([pairs.images[i] for i in rows])
    text = embedder.embed_texts([pairs.texts[i] for i in rows])
    score = dict(zip(rows, (image * text).sum(axis=1).tolist(), strict=True))
    results = []
    for kind, keep in (
        ("captions", lambda i: pairs.caption[i]),
        ("question-answer", lambda i: not pairs.caption[i]),
        ("all", lambda i: True),
    ):
        true = [score[i] for i in rows if keep(i) and not pairs.mismatched[i]]
        bad = [score[i] for i in rows if keep(i) and pairs.mismatched[i]]
        if true and bad:
            results.append(DemoClipAuc(kind, roc_auc(true, bad), len(true), len(bad)))
    return results
