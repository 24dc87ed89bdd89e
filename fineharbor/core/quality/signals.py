"""Image safety and quality signals, one column each on ``scored_samples``:

* ``punsafe`` — LAION's CLIP-based NSFW detector: an MLP on L2-normalised CLIP ViT-L/14 image
  embeddings, sigmoid output (1 = unsafe), as LAION-5B tags its rows;
* ``aesthetic_score`` — LAION aesthetic predictor v2 (``sac+logos+ava1-l14-linearMSE.pth``): a
  linear MLP on L2-normalised CLIP ViT-L/14 image embeddings, about 1-10;
* ``pwatermark`` — LAION-5B's watermark classifier (``watermark_model_v1.pt``: timm
  EfficientNet-B3a with a 1536-625-256-2 head on 256 x 256 ImageNet-normalised pixels), or any
  TorchScript module mapping such pixels to two logits (the demo's detector).

The two heads read a PyTorch ``state_dict`` (``torch.save``) or a ``.safetensors`` file whose
Linear layers are ``layers.N.weight`` / ``layers.N.bias`` of an ``nn.Sequential``. Where the
index jumps by more than one between two Linear layers the NSFW head has a ReLU there (the gap is
its ReLU + Dropout), exactly the published PyTorch port's layout; the aesthetic MLP has no
activations (Dropout only). Nothing is downloaded: every file is named in ``stages.signals``.

A sample with several images takes its worst image: ``punsafe`` and ``pwatermark`` the maximum,
``aesthetic_score`` the minimum; a sample with no decodable image is null.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from torch import nn

from fineharbor.core.quality.clip_score import ImageTextEmbedder, embed_sample_images, image_bytes
from fineharbor.core.quality.faces import FaceDetector, face_columns, face_detector
from fineharbor.core.quality.params import SignalParams
from fineharbor.core.quality.pixels import WATERMARK, BatchPixels, ImagePrep

PUNSAFE = "punsafe"
AESTHETIC = "aesthetic_score"
PWATERMARK = "pwatermark"
SIGNAL_COLUMNS = (PUNSAFE, AESTHETIC, PWATERMARK)

_LAYER_KEY = re.compile(r"^(?:.*\.)?layers\.(\d+)\.(weight|bias)$")


class SignalLoadError(ValueError):
    """A signal model file that exists but is not of the expected format."""


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a ``.safetensors`` file or a ``torch.save``d state_dict (unwrapping a
    ``{"state_dict": ...}`` checkpoint), on the CPU; never unpickles arbitrary objects."""
    path = Path(path).expanduser()
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        loaded = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for a file that is not a checkpoint
        raise SignalLoadError(f"{path} is not a PyTorch state_dict ({error})") from error
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict) or not all(
        isinstance(v, torch.Tensor) for v in loaded.values()
    ):
        raise SignalLoadError(f"{path} holds no state_dict of tensors")
    return loaded


class EmbeddingHead(nn.Module):
    """An MLP on CLIP image embeddings rebuilt from its state_dict's ``layers.N`` Linear layers."""

    def __init__(self, state: dict[str, torch.Tensor], *, relu_on_gaps: bool, sigmoid: bool):
        super().__init__()
        weights: dict[int, torch.Tensor] = {}
        biases: dict[int, torch.Tensor] = {}
        for key, tensor in state.items():
            if match := _LAYER_KEY.match(key):
                kind = weights if match.group(2) == "weight" else biases
                kind[int(match.group(1))] = tensor
        indices = sorted(weights)
        if not indices:
            raise SignalLoadError("no layers.N.weight Linear layers in the state_dict")
        modules: list[nn.Module] = []
        previous: int | None = None
        for position, index in enumerate(indices):
            weight = weights[index]
            if weight.ndim != 2:
                raise SignalLoadError(f"layers.{index}.weight has shape {tuple(weight.shape)}")
            if previous is not None and weight.shape[1] != previous:
                raise SignalLoadError(
                    f"layers.{index} takes {weight.shape[1]} inputs, the layer before gives "
                    f"{previous}"
                )
            linear = nn.Linear(weight.shape[1], weight.shape[0], bias=index in biases)
            with torch.no_grad():
                linear.weight.copy_(weight.float())
                if index in biases:
                    linear.bias.copy_(biases[index].float())
            if position and relu_on_gaps and index - indices[position - 1] > 1:
                modules.append(nn.ReLU())
            modules.append(linear)
            previous = int(weight.shape[0])
        if previous != 1:
            raise SignalLoadError(f"the last layer gives {previous} outputs, not 1")
        self.dim = int(weights[indices[0]].shape[1])
        self.net = nn.Sequential(*modules)
        self.sigmoid = sigmoid

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        out = self.net(embeddings).squeeze(-1)
        return torch.sigmoid(out) if self.sigmoid else out


@dataclass
class HeadScorer:
    """A loaded head and the file it came from."""

    head: EmbeddingHead
    path: str

    @property
    def dim(self) -> int:
        return self.head.dim

    @torch.inference_mode()
    def score(self, embeddings: np.ndarray) -> np.ndarray:
        """(n,) float32 for (n, dim) embeddings (L2-normalised again here: LAION's heads were
        trained on unit vectors)."""
        if embeddings.shape[0] == 0:
            return np.zeros(0, np.float32)
        x = torch.from_numpy(np.ascontiguousarray(embeddings, dtype=np.float32))
        x = x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
        return self.head.eval()(x).float().numpy()


def load_nsfw_head(path: str | Path) -> HeadScorer:
    """LAION's NSFW detector (ReLU between Linear layers, sigmoid output)."""
    return HeadScorer(
        EmbeddingHead(read_state_dict(path), relu_on_gaps=True, sigmoid=True), str(path)
    )


def load_aesthetic_head(path: str | Path) -> HeadScorer:
    """LAION aesthetic predictor v2 (Linear and Dropout only, raw regression output)."""
    return HeadScorer(
        EmbeddingHead(read_state_dict(path), relu_on_gaps=False, sigmoid=False), str(path)
    )


def laion_watermark_model(arch: str = "efficientnet_b3a") -> nn.Module:
    """LAION-5B-WatermarkDetection's network: a timm backbone whose classifier is replaced by
    Linear(features, 625)-ReLU-Dropout(0.3)-Linear(625, 256)-ReLU-Linear(256, 2)."""
    import timm

    model = timm.create_model(arch, pretrained=False, num_classes=2)
    features = model.num_features
    model.classifier = nn.Sequential(
        nn.Linear(features, 625),
        nn.ReLU(),
        nn.Dropout(p=0.3),
        nn.Linear(625, 256),
        nn.ReLU(),
        nn.Linear(256, 2),
    )
    return model


class WatermarkScorer:
    """``pwatermark`` per image: softmax of the two logits, the probability of
    ``watermark_class`` (LAION's model: index 0). Reads a TorchScript module or LAION's
    state_dict; square resize to ``image_size`` (LAION: 256), ImageNet mean/std."""

    def __init__(self, params: SignalParams) -> None:
        from fineharbor.core.signatures.embedders import SquareResize, resolve_device

        assert params.watermark_path
        self.path = str(Path(params.watermark_path).expanduser())
        self.device = resolve_device(params.device)
        self.batch_size = params.batch_size
        self.index = params.watermark_class
        self.model = self._load(params).to(self.device).eval()
        self.transform = SquareResize(params.watermark_image_size)

    def _load(self, params: SignalParams) -> nn.Module:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation notice
                return torch.jit.load(self.path, map_location="cpu")
        except (RuntimeError, ValueError):
            pass  # not TorchScript: a state_dict of LAION's architecture
        model = laion_watermark_model(params.watermark_arch)
        try:
            model.load_state_dict(read_state_dict(self.path))
        except RuntimeError as error:
            raise SignalLoadError(
                f"{self.path} is neither TorchScript nor a state_dict of LAION's watermark model "
                f"on timm {params.watermark_arch!r} ({str(error).splitlines()[0]})"
            ) from error
        return model

    @torch.inference_mode()
    def score_pixels(self, pixels: torch.Tensor) -> np.ndarray:
        """(n,) float32 for transformed images, ``batch_size`` per forward pass."""
        out = []
        for start in range(0, pixels.shape[0], self.batch_size):
            chunk = pixels[start : start + self.batch_size].to(self.device, non_blocking=True)
            logits = self.model(chunk).float()
            out.append(torch.softmax(logits, dim=1)[:, self.index].cpu().numpy())
        return np.concatenate(out) if out else np.zeros(0, np.float32)

    def score(self, images: Sequence[bytes], pixels: BatchPixels | None = None) -> np.ndarray:
        """(n,) float32; NaN for an image that does not decode. ``pixels``: the images already
        prepared by the scored stage's loader; else they are decoded here."""
        if pixels is None or WATERMARK not in pixels:
            pixels = BatchPixels.here(images, ImagePrep({WATERMARK: self.transform}))
        scores = pixels.embed(WATERMARK, images, lambda x: self.score_pixels(x)[:, None], 1)
        return scores.reshape(-1)


@dataclass
class SignalModels:
    """The loaded signal models of one process (any may be None: its column stays null).
    ``embedder`` is the CLIP the heads read; ``shares_scoring_clip`` says it is the scoring
    CLIP itself, so a batch's images are embedded once for both."""

    embedder: ImageTextEmbedder | None = None
    shares_scoring_clip: bool = False
    nsfw: HeadScorer | None = None
    aesthetic: HeadScorer | None = None
    watermark: WatermarkScorer | None = None
    faces: FaceDetector | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def any(self) -> bool:
        return any((self.nsfw, self.aesthetic, self.watermark))

    def columns(
        self,
        samples: pa.Table,
        embedder: ImageTextEmbedder | None,
        pixels: BatchPixels | None = None,
    ) -> dict:
        """Every signal column of ``samples`` (see :func:`signal_columns` and
        :func:`fineharbor.core.quality.faces.face_columns`)."""
        return {
            **signal_columns(samples, self, embedder, pixels),
            **face_columns(samples, self.faces, pixels),
        }


def load_signal_models(
    params: SignalParams, scoring, scoring_embedder: ImageTextEmbedder | None
) -> SignalModels:
    """Load what ``stages.signals`` names. A missing file or CLIP leaves its column null with a
    note (reported once, like every missing model); a file of the wrong format raises."""
    from fineharbor.core.models import SIGNAL_CLIP, report_once
    from fineharbor.core.signatures.embedders import ModelNotFoundError, OpenClipEmbedder

    models = SignalModels(faces=face_detector(params))
    for attr, path, loader in (
        ("nsfw", params.nsfw_path, load_nsfw_head),
        ("aesthetic", params.aesthetic_path, load_aesthetic_head),
    ):
        if path and Path(path).expanduser().is_file():
            setattr(models, attr, loader(Path(path).expanduser()))
    if params.watermark_path and Path(params.watermark_path).expanduser().is_file():
        models.watermark = WatermarkScorer(params)
    if models.nsfw or models.aesthetic:
        if params.shares_clip(scoring):
            models.embedder, models.shares_scoring_clip = scoring_embedder, True
        elif params.clip_model:
            try:
                models.embedder = OpenClipEmbedder(
                    params.clip_model,
                    params.clip_pretrained,
                    model_config=params.clip_model_config,
                    device=params.device,
                    batch_size=params.batch_size,
                    half=True,
                    fields=SIGNAL_CLIP,
                )
            except ModelNotFoundError as missing:
                models.notes.append(str(missing))
        if models.embedder is None:
            models.nsfw = models.aesthetic = None
            models.notes.append("punsafe and aesthetic_score stay null: no reference CLIP")
        else:
            for head in (models.nsfw, models.aesthetic):
                if head is not None and head.dim != models.embedder.dim:
                    raise SignalLoadError(
                        f"{head.path} takes {head.dim}-d embeddings but the CLIP it reads "
                        f"({params.clip_model}) gives {models.embedder.dim}-d: LAION's heads "
                        "need ViT-L/14 (768-d)"
                    )
    for note in models.notes:
        report_once(note)
    return models


def _per_sample(values: np.ndarray, counts: list[int], reduce) -> pa.Array:
    out: list[float | None] = []
    start = 0
    for count in counts:
        block = values[start : start + count]
        start += count
        block = block[~np.isnan(block)]
        out.append(float(reduce(block)) if block.size else None)
    return pa.array(out, type=pa.float32())


def signal_columns(
    samples: pa.Table,
    models: SignalModels,
    embedder: ImageTextEmbedder | None = None,
    pixels: BatchPixels | None = None,
) -> dict[str, pa.Array]:
    """``punsafe``, ``aesthetic_score`` and ``pwatermark`` for each row (null where the model is
    absent or the sample has no decodable image). ``embedder`` overrides ``models.embedder``
    (the scoring stage passes its per-batch memo); ``pixels``: the watermark model's input
    prepared by the scored stage's loader."""
    rows = samples.num_rows
    columns = {name: pa.nulls(rows, pa.float32()) for name in SIGNAL_COLUMNS}
    if not models.any:
        return columns
    per_sample = [image_bytes(images) for images in samples.column("images").to_pylist()]
    clip = embedder or models.embedder
    if clip is not None and (models.nsfw or models.aesthetic):
        vectors = embed_sample_images(clip, per_sample)
        counts = [v.shape[0] for v in vectors]
        flat = np.concatenate(vectors) if sum(counts) else np.zeros((0, clip.dim), np.float32)
        if models.nsfw is not None:
            columns[PUNSAFE] = _per_sample(models.nsfw.score(flat), counts, np.max)
        if models.aesthetic is not None:
            columns[AESTHETIC] = _per_sample(models.aesthetic.score(flat), counts, np.min)
    if models.watermark is not None:
        flat_images = [data for images in per_sample for data in images]
        scores = models.watermark.score(flat_images, pixels)
        columns[PWATERMARK] = _per_sample(scores, [len(i) for i in per_sample], np.max)
    return columns
