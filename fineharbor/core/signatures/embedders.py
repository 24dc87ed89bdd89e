"""Image embedders: an SSCD copy-detection TorchScript model and open_clip CLIP models.

Both load their model once per object, run on ``cuda`` when available (fp16 autocast there,
fp32 on CPU), batch, and return L2-normalised float32 vectors. Their ``transform`` (PIL image ->
tensor) is a plain picklable object so DataLoader workers can run it while the model works on
the previous batch (see :mod:`fineharbor.core.signatures.loader`).

Nothing here downloads: models load from local files, open_clip's pretrained tags and Hub names
from the local caches only (:func:`fineharbor.core.models.hub_offline`). A model that is named
but cannot be found raises :class:`ModelNotFoundError` naming the project-file field, where it
was looked for and how to provide it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from PIL import Image

from fineharbor.core.models import (
    SIGNATURE_CLIP,
    SSCD_HOW,
    WITHOUT_SIGNATURE_CLIP,
    WITHOUT_SSCD,
    ClipFields,
    hub_cache_dir,
    hub_cached,
    hub_offline,
    looks_like_file,
    not_found,
    open_clip_problem,
    report_once,
    without,
)
from fineharbor.core.signatures.hashing import ImageDecodeError, decode_rgb
from fineharbor.core.signatures.loader import stream_batches

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SSCD_DEFAULT_INPUT = 320  # FineVision and the SSCD README: Resize([320, 320]), skewing

COPY_EMBEDDING = "copy_embedding"
CLIP_EMBEDDING = "clip_embedding"


class ModelNotFoundError(FileNotFoundError):
    """A configured model whose file or name cannot be found; the message says how to fix it."""


class ModelLoadError(RuntimeError):
    """A model file that exists but cannot be loaded as what it was configured to be."""


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present; asking for ``cuda`` without one is an error, not a
    silent CPU run that would take hours."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was requested but torch sees no CUDA device")
    return torch.device(device)


def l2_normalise(vectors: np.ndarray) -> np.ndarray:
    """Row-wise unit length in float32; all-zero rows stay zero instead of becoming NaN."""
    out = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return out / np.maximum(norms, 1e-12)


class SquareResize:
    """SSCD preprocessing: skewing resize to ``size`` x ``size`` (bicubic), [0, 1], ImageNet
    mean/std. A class, not a lambda, so it pickles into DataLoader workers."""

    def __init__(self, size: int, mean: Sequence[float] = IMAGENET_MEAN, std=IMAGENET_STD):
        self.size = int(size)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        rgb = image if image.mode == "RGB" else image.convert("RGB")
        resized = rgb.resize((self.size, self.size), Image.Resampling.BICUBIC)
        array = np.asarray(resized, dtype=np.float32) / 255.0
        tensor = torch.from_numpy(array).permute(2, 0, 1)
        return (tensor - self.mean) / self.std


@runtime_checkable
class Embedder(Protocol):
    """What the signature stage needs from an image embedder."""

    name: str  # output column, e.g. "copy_embedding"
    dim: int
    device: torch.device
    batch_size: int
    # PIL RGB image -> model input tensor; runs in DataLoader workers, so it must pickle.
    transform: Callable[[Image.Image], torch.Tensor]

    def embed_tensors(self, pixels: torch.Tensor) -> np.ndarray:
        """A batch of transformed images -> (n, dim) float32, L2-normalised."""
        ...


def _decode_and_transform(transform, item: bytes | Image.Image) -> torch.Tensor | None:
    try:
        image = item if isinstance(item, Image.Image) else decode_rgb(item)
    except ImageDecodeError:
        return None
    return transform(image)


class _Prepare:
    """Worker-side work of :meth:`_TorchEmbedder.embed_images` (picklable)."""

    def __init__(self, transform) -> None:
        self.transform = transform

    def __call__(self, item: bytes | Image.Image) -> torch.Tensor | None:
        return _decode_and_transform(self.transform, item)


def _collate_optional(tensors: list[torch.Tensor | None]) -> tuple[torch.Tensor | None, list[bool]]:
    ok = [t is not None for t in tensors]
    present = [t for t in tensors if t is not None]
    return (torch.stack(present) if present else None), ok


class _TorchEmbedder:
    """Shared batching, device placement and fp16 autocast of the two embedders."""

    name: str
    dim: int
    transform: Callable[[Image.Image], torch.Tensor]

    def __init__(self, *, device: str, batch_size: int, num_workers: int, half: bool) -> None:
        self.device = resolve_device(device)
        self.batch_size = batch_size
        self.num_workers = num_workers
        # fp16 only where it is fast and supported: CPU half matmuls are slow or missing.
        self.half = half and self.device.type == "cuda"

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.half:
            return torch.autocast(device_type="cuda", dtype=torch.float16)
        return contextlib.nullcontext()

    def _forward(self, pixels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @torch.inference_mode()
    def embed_tensors(self, pixels: torch.Tensor) -> np.ndarray:
        """Embed already transformed images in chunks of ``batch_size``."""
        out = []
        for start in range(0, pixels.shape[0], self.batch_size):
            chunk = pixels[start : start + self.batch_size].to(self.device, non_blocking=True)
            with self._autocast():
                features = self._forward(chunk)
            out.append(features.float().cpu().numpy())
        if not out:
            return np.zeros((0, self.dim), dtype=np.float32)
        return l2_normalise(np.concatenate(out))

    def embed_images(self, images: Iterable[bytes | Image.Image]) -> np.ndarray:
        """Embed encoded or decoded images; decoding overlaps the model through a DataLoader.

        Returns (n, dim) float32 in input order; rows of undecodable images are NaN.
        """
        rows: list[np.ndarray] = []
        for pixels, ok in stream_batches(
            images,
            _Prepare(self.transform),
            _collate_optional,
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
        ):
            block = np.full((len(ok), self.dim), np.nan, dtype=np.float32)
            if pixels is not None:
                block[np.flatnonzero(ok)] = self.embed_tensors(pixels)
            rows.append(block)
        return np.concatenate(rows) if rows else np.zeros((0, self.dim), dtype=np.float32)


# --------------------------------------------------------------------------- SSCD


def _module_input_size(module: torch.jit.ScriptModule) -> int | None:
    """The demo copy detector records its input side as an ``input_size`` attribute; the
    published SSCD files have none (they take 320)."""
    try:
        value = module.input_size
    except AttributeError:
        return None
    return int(value) if isinstance(value, int) and value > 0 else None


class SscdEmbedder(_TorchEmbedder):
    """Copy-detection descriptor from an SSCD TorchScript file (FineVision's dedup model).

    Input: skewing resize to ``input_size``² (the module's ``input_size`` attribute when it has
    one, else 320), ImageNet mean/std. Output: L2-normalised, 512-d for ``sscd_disc_mixup``; the
    dimension is read from a probe forward pass, not assumed.
    """

    name = COPY_EMBEDDING

    def __init__(
        self,
        path: str | Path,
        *,
        input_size: int | None = None,
        device: str = "auto",
        batch_size: int = 64,
        num_workers: int = 0,
        half: bool = True,
    ) -> None:
        super().__init__(device=device, batch_size=batch_size, num_workers=num_workers, half=half)
        self.path = Path(path).expanduser()
        if not self.path.is_file():
            raise ModelNotFoundError(
                not_found("stages.signatures.sscd_path", str(self.path), SSCD_HOW)
            )
        try:
            with warnings.catch_warnings():
                # torch marks torch.jit deprecated, but SSCD is published as TorchScript only
                warnings.simplefilter("ignore", FutureWarning)
                self.model = torch.jit.load(str(self.path), map_location=self.device).eval()
        except (RuntimeError, ValueError) as error:
            raise ModelLoadError(
                f"{self.path} is not a loadable TorchScript module ({error}); SSCD models are the "
                "*.torchscript.pt files of the SSCD releases"
            ) from error
        self.input_size = input_size or _module_input_size(self.model) or SSCD_DEFAULT_INPUT
        self.transform = SquareResize(self.input_size)
        self.dim = self._probe_dim()

    def _probe_dim(self) -> int:
        probe = torch.zeros(1, 3, self.input_size, self.input_size, device=self.device)
        with torch.inference_mode(), self._autocast():
            out = self.model(probe)
        if out.ndim != 2 or out.shape[0] != 1:
            raise ModelLoadError(
                f"{self.path} returned shape {tuple(out.shape)} for one image; a copy-detection "
                "model must return (batch, dim)"
            )
        return int(out.shape[1])

    def _forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model(pixels)


# --------------------------------------------------------------------------- open_clip


def _split_schema(model_name: str) -> str | None:
    for prefix in ("hf-hub:", "local-dir:"):
        if model_name.startswith(prefix):
            return prefix[:-1]
    return None


def register_open_clip_config(path: str | Path, field: str = SIGNATURE_CLIP.config) -> None:
    """Register a JSON model config (file or directory) with open_clip, once per path."""
    import open_clip

    config = Path(path).expanduser()
    if not config.exists():
        how = "Give the JSON model config written with the model (embed_dim, vision_cfg, text_cfg)"
        raise ModelNotFoundError(not_found(field, str(config), how))
    from open_clip import factory

    if config not in factory._MODEL_CONFIG_PATHS:
        open_clip.add_model_config(config)


def _cached_tag_weights(model: str, tag: str) -> tuple[Path | None, bool, str, str]:
    """Where open_clip keeps a pretrained tag's weights on this machine: (local file or None,
    whether open_clip reaches it through the tag, where it looked, how to fetch them). The
    Hub copy comes first, as open_clip prefers it; then open_clip's URL cache."""
    import open_clip
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    cfg = open_clip.get_pretrained_cfg(model, tag)
    places, fetch = [], []
    if cfg.get("hf_hub"):
        repo, filename = os.path.split(cfg["hf_hub"])  # "org/repo/" names the default file
        filename = filename or HF_WEIGHTS_NAME
        safe = HF_SAFE_WEIGHTS_NAME if filename == HF_WEIGHTS_NAME else None
        if filename.endswith((".bin", ".pth")) and filename != HF_WEIGHTS_NAME:
            safe = filename[:-4] + ".safetensors"
        for name in (safe, filename):
            found = hub_cached(repo, name) if name else None
            if found is not None:
                return found, True, "", ""
        places.append(f"{repo} in the Hugging Face cache {hub_cache_dir()}")
        fetch.append(f"`hf download {repo} {filename}`")
    if cfg.get("url"):
        path = Path("~/.cache/clip").expanduser() / os.path.basename(cfg["url"])
        if path.is_file():
            return path, False, "", ""
        places.append(str(path))
        fetch.append(f"download {cfg['url']} to {path}")
    return None, False, " and ".join(places) or "nowhere", " or ".join(fetch) or "none known"


def resolve_open_clip(
    model_name: str,
    pretrained: str | None,
    model_config: str | Path | None = None,
    fields: ClipFields = SIGNATURE_CLIP,
) -> str | None:
    """Check that an open_clip model and its weights are on this machine, and return the
    ``pretrained`` value to load them with: a tag whose weights open_clip finds in its caches,
    or a file. Raises :class:`ModelNotFoundError` naming the field, where the weights were
    looked for and how to fetch them; never downloads."""
    import open_clip

    problem = open_clip_problem(
        model_name, pretrained, None if model_config is None else str(model_config), fields
    )
    if problem is not None:
        raise ModelNotFoundError(problem)
    if model_config is not None:
        register_open_clip_config(model_config, fields.config)
    if _split_schema(model_name) is not None:
        return None  # open_clip reads config and weights from the directory or the Hub cache
    cleaned = model_name.replace("/", "-")
    if open_clip.get_model_config(cleaned) is None:
        close = [m for m in open_clip.list_models() if cleaned.lower()[:5] in m.lower()][:8]
        raise ModelNotFoundError(
            f"{fields.model}: open_clip has no model config named {model_name!r} (similar: "
            f"{close or 'none'}). Use a name from open_clip.list_models(), 'local-dir:/path' for "
            f"a saved model directory, or set {fields.config} to the JSON config file of a "
            "custom architecture"
        )
    if pretrained is None or looks_like_file(pretrained):
        return None if pretrained is None else str(Path(pretrained).expanduser())
    tags = open_clip.list_pretrained_tags_by_model(cleaned)
    if pretrained not in tags:
        raise ModelNotFoundError(
            f"{fields.pretrained}: open_clip checkpoint for {model_name!r} not found: "
            f"{pretrained!r} is neither a file nor a known pretrained tag (tags: "
            f"{tags or 'none'}). Give the path of a checkpoint saved with "
            "torch.save(model.state_dict()), or a tag whose weights are cached"
        )
    found, via_tag, where, fetch = _cached_tag_weights(cleaned, pretrained)
    if found is None:
        raise ModelNotFoundError(
            f"{fields.pretrained}: the {pretrained!r} weights of open_clip {model_name!r} are "
            f"not on this machine (looked in {where}); nothing is downloaded at run time. Fetch "
            f"them once where there is internet ({fetch}), or set {fields.pretrained} to a "
            f"checkpoint file, or {fields.model} to null to turn this model off"
        )
    # Hub weights load through the tag (open_clip then applies the tag's preprocessing) from
    # the offline cache; weights only in the URL cache load as a file.
    return pretrained if via_tag else str(found)


def _cache_miss(error: BaseException | None) -> bool:
    """Whether a load failed because the offline Hub had no copy of a file (anywhere in the
    exception chain: open_clip and transformers wrap it)."""
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

    seen = 0
    while error is not None and seen < 16:
        if isinstance(error, LocalEntryNotFoundError | OfflineModeIsEnabled):
            return True
        error, seen = error.__cause__ or error.__context__, seen + 1
    return False


class OpenClipEmbedder(_TorchEmbedder):
    """CLIP image (and text) embeddings through ``open_clip.create_model_and_transforms``."""

    name = CLIP_EMBEDDING

    def __init__(
        self,
        model_name: str,
        pretrained: str | None = None,
        *,
        model_config: str | Path | None = None,
        device: str = "auto",
        batch_size: int = 64,
        num_workers: int = 0,
        half: bool = True,
        fields: ClipFields = SIGNATURE_CLIP,
    ) -> None:
        import open_clip

        super().__init__(device=device, batch_size=batch_size, num_workers=num_workers, half=half)
        pretrained = resolve_open_clip(model_name, pretrained, model_config, fields)
        if pretrained is None and _split_schema(model_name) is None:
            warnings.warn(
                f"open_clip model {model_name!r} has no pretrained weights configured: its "
                "embeddings are random (fine for tests, useless for curation)",
                stacklevel=2,
            )
        try:
            with hub_offline():
                model, _, preprocess = open_clip.create_model_and_transforms(
                    model_name, pretrained=pretrained, device=self.device
                )
                self.tokenizer = open_clip.get_tokenizer(model_name)
        except (RuntimeError, OSError, ValueError) as error:
            if _cache_miss(error):  # e.g. a tokenizer repository the model config names
                raise ModelNotFoundError(
                    f"{fields.model}: open_clip {model_name!r} needs files that are not in the "
                    f"local caches ({error}). Nothing is downloaded at run time: fetch them once "
                    "where there is internet (`hf download REPO`) or use a local-dir: model"
                ) from error
            raise ModelLoadError(
                f"{fields.model}: open_clip could not load {model_name!r} with "
                f"pretrained={pretrained!r} from local files: {error}"
            ) from error
        self.model_name = model_name
        self.pretrained = pretrained
        self.model = model.eval()
        self.transform = preprocess
        self.dim = int(self._embed_dim())

    def _embed_dim(self) -> int:
        size = self.model.visual.image_size
        side = size if isinstance(size, int) else size[0]
        probe = torch.zeros(1, 3, side, side, device=self.device)
        with torch.inference_mode(), self._autocast():
            return self.model.encode_image(probe).shape[1]

    def _forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixels)

    @torch.inference_mode()
    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """(n, dim) float32 L2-normalised text embeddings, for CLIP image-text scores."""
        out = []
        for start in range(0, len(texts), self.batch_size):
            tokens = self.tokenizer(list(texts[start : start + self.batch_size]))
            with self._autocast():
                features = self.model.encode_text(tokens.to(self.device))
            out.append(features.float().cpu().numpy())
        if not out:
            return np.zeros((0, self.dim), dtype=np.float32)
        return l2_normalise(np.concatenate(out))


def build_embedders(params) -> list[Embedder]:
    """The embedders a :class:`~fineharbor.core.signatures.params.SignatureParams` asks for,
    each loaded once (the Dagster resource calls this once per process). A model that is named
    but not on this machine is left out, and logged once: its column stays null."""
    common = {
        "device": params.device,
        "batch_size": params.batch_size,
        "num_workers": params.num_workers,
        "half": params.half_precision,
    }
    embedders: list[Embedder] = []
    try:
        if params.sscd_path is not None:
            embedders.append(
                SscdEmbedder(params.sscd_path, input_size=params.sscd_input_size, **common)
            )
    except ModelNotFoundError as missing:
        report_once(without(str(missing), WITHOUT_SSCD))
    try:
        if params.clip_model is not None:
            embedders.append(
                OpenClipEmbedder(
                    params.clip_model,
                    params.clip_pretrained,
                    model_config=params.clip_model_config,
                    **common,
                )
            )
    except ModelNotFoundError as missing:
        report_once(without(str(missing), WITHOUT_SIGNATURE_CLIP))
    return embedders
