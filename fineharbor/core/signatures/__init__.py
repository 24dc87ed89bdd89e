"""Per-image signatures: byte/pixel hashes, perceptual hashes, copy-detection and CLIP
embeddings (the ``image_signatures`` stage core).

The hash helpers and parameters import eagerly; everything that needs torch (embedders, the
stage function) is resolved on first use, so model-free users such as the dedup stage do not
pay for importing torch (~0.5 GB of resident memory per process).
"""

from __future__ import annotations

from fineharbor.core.lazy import lazy_getattr
from fineharbor.core.signatures.hashing import (
    ImageDecodeError,
    ImageHashes,
    decode_rgb,
    dihedral_hashes,
    hamming64,
    image_hashes,
    perceptual_hashes,
    sha256_bytes,
    sha256_pixels,
)
from fineharbor.core.signatures.params import SignatureParams

_LAZY = {
    "EMBEDDING_COLUMNS": "compute",
    "SIGNATURE_SCHEMA": "compute",
    "compute_signatures": "compute",
    "iter_images": "compute",
    "CLIP_EMBEDDING": "embedders",
    "COPY_EMBEDDING": "embedders",
    "Embedder": "embedders",
    "ModelLoadError": "embedders",
    "ModelNotFoundError": "embedders",
    "OpenClipEmbedder": "embedders",
    "SscdEmbedder": "embedders",
    "build_embedders": "embedders",
    "resolve_device": "embedders",
}


__getattr__ = lazy_getattr(__name__, _LAZY)


__all__ = [
    "CLIP_EMBEDDING",
    "COPY_EMBEDDING",
    "EMBEDDING_COLUMNS",
    "SIGNATURE_SCHEMA",
    "Embedder",
    "ImageDecodeError",
    "ImageHashes",
    "ModelLoadError",
    "ModelNotFoundError",
    "OpenClipEmbedder",
    "SignatureParams",
    "SscdEmbedder",
    "build_embedders",
    "compute_signatures",
    "decode_rgb",
    "dihedral_hashes",
    "hamming64",
    "image_hashes",
    "iter_images",
    "perceptual_hashes",
    "resolve_device",
    "sha256_bytes",
    "sha256_pixels",
]
