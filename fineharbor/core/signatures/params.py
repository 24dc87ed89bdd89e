"""Parameters of the ``image_signatures`` stage (``stages.signatures`` in ``fineharbor.yaml``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from fineharbor.core.strict import StrictModel

Device = Literal["auto", "cpu", "cuda"]


class SignatureParams(StrictModel):
    """Which signatures to compute per image, and how the embedders run.

    Hashes need no model and are on by default. The two embeddings are on only when a model is
    configured: ``sscd_path`` for the copy-detection embedding (FineVision's dedup descriptor),
    ``clip_model`` for the CLIP image embedding.
    """

    byte_hash: bool = Field(True, description="sha256 of the encoded bytes")
    pixel_hash: bool = Field(
        True, description="sha256 of the decoded RGB pixels and size: matches lossless re-encodes"
    )
    perceptual_hash: bool = Field(
        True, description="imagehash 64-bit phash of the image and of its mirror image"
    )
    sscd_path: str | None = Field(
        None,
        description="SSCD TorchScript file (e.g. sscd_disc_mixup.torchscript.pt, FineVision's "
        "choice) or the demo copy detector; None = no copy-detection embedding",
    )
    sscd_input_size: int | None = Field(
        None,
        ge=16,
        le=1024,
        description="square input side; None = the module's `input_size` attribute if it has one, "
        "else 320 (FineVision / SSCD: Resize([320, 320]), a skewing resize)",
    )
    clip_model: str | None = Field(
        None,
        description="open_clip model name (ViT-B-32, or 'local-dir:/path', 'hf-hub:org/repo'); "
        "None = no CLIP embedding",
    )
    clip_pretrained: str | None = Field(
        None, description="open_clip pretrained tag (e.g. laion2b_s34b_b79k) or a checkpoint path"
    )
    clip_model_config: str | None = Field(
        None,
        description="JSON model config file (or directory of them) to register with open_clip "
        "before loading, for architectures it does not ship (e.g. a small demo CLIP)",
    )
    batch_size: int = Field(
        64, ge=1, le=8192, description="images per forward pass; 256-1024 suit a large GPU"
    )
    num_workers: int = Field(
        2,
        ge=0,
        le=256,
        description="DataLoader worker processes that decode, hash and preprocess images while "
        "the model runs; 0 = decode in the calling process",
    )
    prefetch_factor: int = Field(
        4, ge=1, le=64, description="batches each worker keeps ready ahead of the model"
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="auto = cuda when available, else cpu"
    )
    half_precision: bool = Field(True, description="fp16 autocast on CUDA (never on CPU)")
    output_rows: int = Field(
        4096, ge=1, description="rows per output table: bounds memory, keeps Parquet groups large"
    )

    @model_validator(mode="after")
    def _pretrained_needs_model(self) -> SignatureParams:
        if self.clip_pretrained is not None and self.clip_model is None:
            raise ValueError("clip_pretrained is set but clip_model is not")
        return self
