"""UniFilter's published quality classifier: vision tower + AvgPool projector + small causal LM.

The architecture of the paper's released model (SigLIP-SO400M, an average-pooling projector,
Qwen2.5-0.5B), built with transformers from any SigLIP or CLIP vision tower and any
``AutoModelForCausalLM``:

* each image goes through the frozen vision tower; its patch tokens are average-pooled to a
  ``side x side`` grid (``visual_tokens``) and a two-layer MLP maps them to the LM's width;
* a document is a list of segments (:data:`Segment`: an image's encoded bytes or a text), so a
  caption pair is ``[image, caption]`` and an interleaved web document keeps its own order; the
  LM reads text token embeddings with the visual tokens spliced in at each image's position
  (``inputs_embeds``), followed by an end-of-sequence token;
* a linear head on the last position's final hidden state regresses the level 0-3 with MSE,
  training the projector, the LM and the head.

Since the vision tower is frozen and pooling has no parameters, each image's pooled patch
tokens are computed once per training run and held in float16 (memory: images x
``visual_tokens`` x vision width x 2 bytes). Scores are clamped to [0, 3], like the CLIP-MLP's.
A saved classifier is a directory (``vision/``, ``language_model/``, the projector and head
weights, ``mllm_classifier.json``) that loads with :meth:`MllmQualityModel.load`.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from PIL import Image
from torch import nn

from fineharbor.core.models import hub_offline
from fineharbor.core.quality.classifier import (
    LEVELS,
    MAX_LEVEL,
    TEXT,
    QualityReport,
    QualityTrainingSet,
    split_images,
)
from fineharbor.core.quality.clip_score import image_bytes
from fineharbor.core.quality.metrics import confusion_matrix
from fineharbor.core.quality.params import MllmClassifierParams
from fineharbor.core.quality.pixels import MLLM_VISION, BatchPixels, ProcessorTransform
from fineharbor.core.quality.text import sample_segments
from fineharbor.core.signatures.hashing import ImageDecodeError, decode_rgb

Segment = bytes | str
"""One position of a document: an image's encoded bytes, or a text."""
Document = Sequence[Segment]

ARCHITECTURE = "mllm"
FORMAT_VERSION = 1
META_FILE = "mllm_classifier.json"
HEAD_FILE = "mllm_classifier_head.pt"
VISION_DIR = "vision"
LM_DIR = "language_model"


class MllmModelNotFoundError(FileNotFoundError):
    """A configured vision tower or LM that is neither a local directory nor in the Hub cache."""


# --------------------------------------------------------------------------- loading


def _vision_class(model_type: str):
    from transformers import CLIPVisionModel, SiglipVisionModel

    if model_type.startswith("siglip"):
        return SiglipVisionModel
    if model_type.startswith("clip"):
        return CLIPVisionModel
    raise ValueError(
        f"vision tower of model_type {model_type!r} is not supported: give a SigLIP or CLIP "
        "checkpoint (full model or vision model)"
    )


def _not_found(field_name: str, name: str, error: Exception) -> MllmModelNotFoundError:
    return MllmModelNotFoundError(
        f"stages.quality_classifier.mllm.{field_name}: {name!r} could not be loaded ({error}). "
        "Nothing is downloaded at run time: give a directory written by save_pretrained, or "
        f"download it once where there is internet (`hf download {name}`) into the Hugging "
        "Face cache (HF_HOME / HF_HUB_CACHE)"
    )


def load_vision_tower(name: str) -> tuple[nn.Module, object]:
    """(SigLIP/CLIP vision model, its image processor) from a directory or the Hub cache."""
    from transformers import AutoConfig, AutoImageProcessor

    try:
        with hub_offline():
            config = AutoConfig.from_pretrained(name, local_files_only=True)
            model = _vision_class(config.model_type).from_pretrained(name, local_files_only=True)
            processor = AutoImageProcessor.from_pretrained(name, local_files_only=True)
    except OSError as error:
        raise _not_found("vision_model", name, error) from error
    return model.eval(), processor


def load_language_model(name: str, *, saved: bool = False) -> tuple[nn.Module, object]:
    """(the decoder of a causal LM, its tokenizer). ``saved``: a decoder this module saved."""
    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

    try:
        with hub_offline():
            if saved:
                decoder = AutoModel.from_pretrained(name, local_files_only=True)
            else:
                # The LM head (vocabulary logits) is never used: only the hidden states are.
                decoder = AutoModelForCausalLM.from_pretrained(
                    name, local_files_only=True
                ).get_decoder()
            tokenizer = AutoTokenizer.from_pretrained(name, local_files_only=True)
    except OSError as error:
        raise _not_found("language_model", name, error) from error
    return decoder, tokenizer


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


# --------------------------------------------------------------------------- model


class AvgPoolProjector(nn.Module):
    """Patch tokens (n, patches, d_vision) -> (n, side*side, d_lm): average pooling over the
    patch grid, then a two-layer GELU MLP. A leading CLS token (CLIP) is dropped first."""

    def __init__(self, vision_width: int, lm_width: int, side: int) -> None:
        super().__init__()
        self.side = side
        self.mlp = nn.Sequential(
            nn.Linear(vision_width, lm_width), nn.GELU(), nn.Linear(lm_width, lm_width)
        )

    def pool(self, patches: torch.Tensor) -> torch.Tensor:
        n, count, width = patches.shape
        grid = math.isqrt(count)
        if grid * grid != count:
            patches, grid = patches[:, 1:], math.isqrt(count - 1)
            if grid * grid != count - 1:
                raise ValueError(f"{count} patch tokens form no square grid")
        maps = patches.transpose(1, 2).reshape(n, width, grid, grid)
        pooled = nn.functional.adaptive_avg_pool2d(maps, self.side)
        return pooled.flatten(2).transpose(1, 2)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.mlp(pooled)


@dataclass
class MllmQualityModel:
    """A UniFilter classifier: score documents (:meth:`score_documents`) or unified rows
    (:meth:`score_samples`); save and load as a directory."""

    vision: nn.Module
    image_processor: object
    decoder: nn.Module
    tokenizer: object
    projector: AvgPoolProjector
    head: nn.Linear
    params: MllmClassifierParams
    sources: dict[str, str] = field(default_factory=dict)  # what the weights were built from
    report: QualityReport | None = None

    def __post_init__(self) -> None:
        self.device = _device(self.params.device)
        for module in self.modules():
            module.to(self.device)
        self.vision.requires_grad_(False)

    def modules(self) -> list[nn.Module]:
        return [self.vision, self.decoder, self.projector, self.head]

    def trainable(self) -> list[nn.Parameter]:
        return [p for m in (self.decoder, self.projector, self.head) for p in m.parameters()]

    def _autocast(self):
        enabled = self.device.type == "cuda" and self.params.bf16
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=enabled)

    # ----------------------------------------------------------------- inputs

    @torch.no_grad()  # not inference_mode: training backpropagates through the projector
    def pooled_images(
        self,
        images: Sequence[bytes],
        dtype: torch.dtype = torch.float32,
        pixels: BatchPixels | None = None,
    ) -> list[torch.Tensor | None]:
        """Per image, its pooled patch tokens (side*side, d_vision) on the CPU in ``dtype``;
        None when the bytes do not decode. ``pixels``: the images already decoded and
        processed by the scored stage's loader workers."""
        if pixels is not None and MLLM_VISION in pixels:
            return self._pooled_pixels(images, pixels, dtype)
        decoded: list[Image.Image | None] = []
        for data in images:
            try:
                decoded.append(decode_rgb(data))
            except ImageDecodeError:
                decoded.append(None)
        out: list[torch.Tensor | None] = [None] * len(images)
        ready = [i for i, img in enumerate(decoded) if img is not None]
        step = max(1, self.params.batch_size)
        for start in range(0, len(ready), step):
            chunk = ready[start : start + step]
            processed = self.image_processor(
                images=[decoded[i] for i in chunk], return_tensors="pt"
            )["pixel_values"]
            for i, row in zip(chunk, self._pool(processed, dtype), strict=True):
                out[i] = row
        return out

    def _pool(self, pixels: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        with self._autocast():
            patches = self.vision(pixel_values=pixels.to(self.device)).last_hidden_state
        return self.projector.pool(patches.float()).to("cpu", dtype)

    def _pooled_pixels(
        self, images: Sequence[bytes], pixels: BatchPixels, dtype: torch.dtype
    ) -> list[torch.Tensor | None]:
        out: list[torch.Tensor | None] = [None] * len(images)
        stack, ready = pixels.take(MLLM_VISION, images)
        step = max(1, self.params.batch_size)
        for start in range(0, len(ready), step):
            assert stack is not None
            pooled = self._pool(stack[start : start + step], dtype)
            for i, row in zip(ready[start : start + step], pooled, strict=True):
                out[i] = row
        return out

    def _embed(self, document: Sequence[torch.Tensor | str]) -> torch.Tensor:
        """LM input embeddings (length, d_lm) of one document whose images are already pooled:
        text token embeddings with each image's visual tokens at its position, cut to
        ``max_length - 1`` positions, then the end-of-sequence token the head reads."""
        table = self.decoder.get_input_embeddings()
        parts: list[torch.Tensor] = []
        for segment in document:
            if isinstance(segment, str):
                ids = self.tokenizer(segment, add_special_tokens=False)["input_ids"]
                if ids:
                    parts.append(table(torch.tensor(ids, device=self.device)))
            else:
                visual = self.projector(segment.to(self.device, torch.float32))
                parts.append(visual.to(table.weight.dtype))
        eos = self.tokenizer.eos_token_id
        if eos is None:
            eos = self.tokenizer.pad_token_id or 0
        body = torch.cat(parts)[: self.params.max_length - 1]
        return torch.cat([body, table(torch.tensor([eos], device=self.device))])

    def _forward(self, documents: Sequence[Sequence[torch.Tensor | str]]) -> torch.Tensor:
        """Raw regression outputs (n,) for pooled documents, right-padded into one batch."""
        embeds = [self._embed(doc) for doc in documents]
        lengths = torch.tensor([e.shape[0] for e in embeds], device=self.device)
        width = embeds[0].shape[1]
        batch = torch.zeros(len(embeds), int(lengths.max()), width, device=self.device)
        batch = batch.to(embeds[0].dtype)
        mask = torch.zeros(batch.shape[:2], dtype=torch.long, device=self.device)
        for i, e in enumerate(embeds):
            batch[i, : e.shape[0]] = e
            mask[i, : e.shape[0]] = 1
        with self._autocast():
            hidden = self.decoder(inputs_embeds=batch, attention_mask=mask).last_hidden_state
            last = hidden[torch.arange(len(embeds), device=self.device), lengths - 1]
            return self.head(last.float()).squeeze(-1).float()

    # ----------------------------------------------------------------- scoring

    def score_documents(
        self, documents: Sequence[Document], pixels: BatchPixels | None = None
    ) -> list[float | None]:
        """A score in [0, 3] per document; None when it has no decodable image or no text
        (the CLIP-MLP's rule, so both architectures null the same rows). ``pixels``: see
        :meth:`pooled_images`."""
        unique = list(dict.fromkeys(s for doc in documents for s in doc if isinstance(s, bytes)))
        pooled = dict(zip(unique, self.pooled_images(unique, pixels=pixels), strict=True))
        ready: list[tuple[int, list[torch.Tensor | str]]] = []
        for index, doc in enumerate(documents):
            resolved = [pooled[s] if isinstance(s, bytes) else s for s in doc]
            resolved = [s for s in resolved if s is not None and not (isinstance(s, str) and not s)]
            if any(isinstance(s, str) for s in resolved) and any(
                isinstance(s, torch.Tensor) for s in resolved
            ):
                ready.append((index, resolved))
        return self._score_resolved(ready, len(documents))

    @torch.inference_mode()
    def _score_resolved(
        self, ready: list[tuple[int, list[torch.Tensor | str]]], total: int
    ) -> list[float | None]:
        for module in self.modules():
            module.eval()
        scores: list[float | None] = [None] * total
        step = self.params.batch_size
        for start in range(0, len(ready), step):
            chunk = ready[start : start + step]
            out = self._forward([doc for _, doc in chunk]).clamp(0.0, float(MAX_LEVEL))
            for (index, _), value in zip(chunk, out.cpu().tolist(), strict=True):
                scores[index] = float(value)
        return scores

    def score_samples(
        self, samples: pa.Table | pa.RecordBatch, pixels: BatchPixels | None = None
    ) -> pa.Array:
        """float32 scores for unified rows (images, then the text segments), null as in
        :meth:`score_documents`. Pass a record batch at a time."""
        documents = sample_documents(samples)
        return pa.array(self.score_documents(documents, pixels), type=pa.float32())

    def image_transform(self) -> ProcessorTransform:
        """The vision tower's preprocess, one image at a time, for the scored stage's loader."""
        return ProcessorTransform(self.image_processor)

    # ----------------------------------------------------------------- persistence

    def save(self, directory: str | Path) -> Path:
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        self.vision.save_pretrained(path / VISION_DIR)
        self.image_processor.save_pretrained(path / VISION_DIR)
        self.decoder.save_pretrained(path / LM_DIR)
        self.tokenizer.save_pretrained(path / LM_DIR)
        state = {"projector": self.projector.state_dict(), "head": self.head.state_dict()}
        torch.save(state, path / HEAD_FILE)
        meta = {
            "architecture": ARCHITECTURE,
            "format_version": FORMAT_VERSION,
            "params": self.params.model_dump(),
            "vision_width": self.projector.mlp[0].in_features,
            "sources": self.sources,
            "report": asdict(self.report) if self.report else None,
        }
        (path / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        return path

    @classmethod
    def load(cls, directory: str | Path, device: str | None = None) -> MllmQualityModel:
        path = Path(directory)
        meta_path = path / META_FILE
        if not meta_path.is_file() or not (path / HEAD_FILE).is_file():
            raise FileNotFoundError(
                f"MLLM quality classifier not found in {path} (needs {META_FILE} and "
                f"{HEAD_FILE}): train one with train_mllm_classifier(...) and save it"
            )
        meta = json.loads(meta_path.read_text())
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"{meta_path}: format_version {meta.get('format_version')} is not supported "
                f"(this code reads {FORMAT_VERSION}); retrain the classifier"
            )
        params = MllmClassifierParams(**meta["params"])
        if device is not None:
            params = params.model_copy(update={"device": device})
        vision, processor = load_vision_tower(str(path / VISION_DIR))
        decoder, tokenizer = load_language_model(str(path / LM_DIR), saved=True)
        state = torch.load(path / HEAD_FILE, map_location="cpu", weights_only=True)
        projector, head = _new_heads(meta["vision_width"], decoder, params)
        projector.load_state_dict(state["projector"])
        head.load_state_dict(state["head"])
        report = QualityReport(**meta["report"]) if meta.get("report") else None
        return cls(
            vision,
            processor,
            decoder,
            tokenizer,
            projector,
            head,
            params,
            sources=meta.get("sources", {}),
            report=report,
        )


def _new_heads(
    vision_width: int, decoder: nn.Module, params: MllmClassifierParams
) -> tuple[AvgPoolProjector, nn.Linear]:
    lm_width = decoder.get_input_embeddings().weight.shape[1]
    projector = AvgPoolProjector(vision_width, lm_width, math.isqrt(params.visual_tokens))
    return projector, nn.Linear(lm_width, 1)


def build_mllm_classifier(params: MllmClassifierParams, seed: int = 0) -> MllmQualityModel:
    """A fresh classifier: the named vision tower and LM, a new projector and head."""
    vision, processor = load_vision_tower(params.vision_model)
    decoder, tokenizer = load_language_model(params.language_model)
    torch.manual_seed(seed)
    projector, head = _new_heads(vision.config.hidden_size, decoder, params)
    sources = {"vision_model": params.vision_model, "language_model": params.language_model}
    return MllmQualityModel(
        vision, processor, decoder, tokenizer, projector, head, params, sources=sources
    )


# --------------------------------------------------------------------------- documents


def sample_documents(samples: pa.Table | pa.RecordBatch) -> list[list[Segment]]:
    """Unified rows as documents: the sample's images first, then its text segments (a caption
    pair is ``[image, caption]``; a Q&A sample its images, then each turn); an interleaved
    document (``segments`` set) in its own order."""
    rows = samples.column("images").to_pylist()
    texts = [sample_segments(row) for row in samples.column("texts").to_pylist()]
    orders = (
        samples.column("segments").to_pylist()
        if "segments" in samples.schema.names
        else [None] * samples.num_rows
    )
    return [
        [*image_bytes(imgs), *segs] if order is None else _in_order(order, imgs or [])
        for imgs, segs, order in zip(rows, texts, orders, strict=True)
    ]


def _in_order(order: list[dict], images: list[dict | None]) -> list[Segment]:
    """A document's segments in document order (an image entry without bytes left out)."""
    out: list[Segment] = []
    for segment in order:
        if segment["image"] is None:
            out.append(segment["text"] or "")
        elif segment["image"] < len(images) and (images[segment["image"]] or {}).get("bytes"):
            out.append(images[segment["image"]]["bytes"])  # type: ignore[index]
    return out


def training_documents(train_set: QualityTrainingSet) -> list[list[Segment]]:
    """One document per training example: its real images, then its level's text segments; an
    interleaved one (``order`` set) laid out as its example says."""
    examples = train_set.examples
    samples = examples.column("sample").to_pylist()
    segments = examples.column("segments").to_pylist()
    orders = examples.column("order").to_pylist()
    out: list[list[Segment]] = []
    for s, segs, order in zip(samples, segments, orders, strict=True):
        if order is None:
            out.append([*train_set.images[s], *segs])
        else:
            texts = iter(segs)
            out.append([next(texts) if k == TEXT else train_set.images[s][k] for k in order])
    return out


def heldout_examples(train_set: QualityTrainingSet, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask over examples: those of whole held-out images, the CLIP-MLP's split (the
    same ``holdout_fraction`` and ``seed`` hold out the same images in both architectures)."""
    held_images = split_images(len(train_set.images), fraction, seed)
    return held_images[train_set.examples.column("sample").to_numpy()]


# --------------------------------------------------------------------------- training


def train_mllm_classifier(
    train_set: QualityTrainingSet,
    params: MllmClassifierParams,
    *,
    holdout_fraction: float = 0.2,
    seed: int = 0,
    model: MllmQualityModel | None = None,
) -> MllmQualityModel:
    """Fine-tune the projector, LM and head with MSE on the levels (vision tower frozen).

    The held-out split is :func:`heldout_examples`; the report has the same fields as the
    CLIP-MLP's (held-out accuracy of the rounded score, confusion, mean score per level).
    Examples whose images all fail to decode are left out, as in the CLIP-MLP.
    """
    started = time.perf_counter()
    model = model or build_mllm_classifier(params, seed)
    unique = list(dict.fromkeys(data for images in train_set.images for data in images))
    # float16 halves what the run holds: images x visual_tokens x vision width x 2 bytes
    # (20,000 images with SO400M's 1152 wide tokens, 144 each: 6.6 GB, as much as their bytes).
    pooled = dict(zip(unique, model.pooled_images(unique, torch.float16), strict=True))
    documents = []
    for doc in training_documents(train_set):
        resolved = [pooled[s] if isinstance(s, bytes) else s for s in doc]
        documents.append([s for s in resolved if s is not None])
    usable = np.array(
        [any(isinstance(s, torch.Tensor) for s in doc) and any(isinstance(s, str) for s in doc)
         for doc in documents],
        dtype=bool,
    )  # fmt: skip
    if not usable.any():
        raise ValueError("no training example has a decodable image and a text")
    levels = train_set.examples.column("level").to_numpy().astype(np.int64)
    held = heldout_examples(train_set, holdout_fraction, seed)
    train_idx = np.flatnonzero(usable & ~held)
    held_idx = np.flatnonzero(usable & held)

    optimiser = torch.optim.AdamW(model.trainable(), lr=params.learning_rate)
    generator = np.random.default_rng(seed)
    for module in (model.decoder, model.projector, model.head):
        module.train()
    for _ in range(params.epochs):
        order = generator.permutation(train_idx)
        for start in range(0, len(order), params.batch_size):
            batch = order[start : start + params.batch_size]
            out = model._forward([documents[i] for i in batch])
            target = torch.tensor(levels[batch], dtype=torch.float32, device=model.device)
            loss = nn.functional.mse_loss(out, target)
            optimiser.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.trainable(), 1.0)
            optimiser.step()

    def predict(indices: np.ndarray) -> np.ndarray:
        scored = model._score_resolved([(int(i), documents[i]) for i in indices], len(documents))
        return np.array([scored[int(i)] for i in indices], dtype=np.float32)

    train_pred, held_pred = predict(train_idx), predict(held_idx)
    y_train, y_held = levels[train_idx], levels[held_idx]
    rounded = np.rint(held_pred).astype(np.int64)
    model.report = QualityReport(
        n_images=len(train_set.images),
        n_train=len(train_idx),
        n_heldout=len(held_idx),
        train_accuracy=float((np.rint(train_pred) == y_train).mean()) if len(y_train) else 0.0,
        heldout_accuracy=float((rounded == y_held).mean()) if len(y_held) else None,
        heldout_mae=float(np.abs(held_pred - y_held).mean()) if len(y_held) else None,
        confusion=confusion_matrix(y_held, rounded, len(LEVELS)).tolist(),
        level_mean_score={
            str(level): float(held_pred[y_held == level].mean())
            for level in LEVELS
            if (y_held == level).any()
        },
        seconds=time.perf_counter() - started,
    )
    return model
