"""Faces: count them per image and blur them on release (DataComp blurs every detected face in
the images it releases).

The detector is OpenCV's frontal-face Haar cascade, the XML file that ships inside
``opencv-python-headless`` (``cv2.data.haarcascades``): it runs offline on the CPU and needs no
download. It finds frontal faces of ``face_min_size`` pixels and more; it misses profiles and
small faces that a learned detector (DataComp used SCRFD) would find, so ``face_count`` is a
lower bound and ``release.blur_faces`` blurs what it found.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
from PIL import Image, ImageFilter

from fineharbor.core.quality.clip_score import image_bytes
from fineharbor.core.quality.params import SignalParams

if TYPE_CHECKING:
    from fineharbor.core.quality.pixels import BatchPixels

FACE_COUNT = "face_count"
FACE_BOXES = "face_boxes"
BOX_TYPE = pa.struct([("x", pa.int32()), ("y", pa.int32()), ("w", pa.int32()), ("h", pa.int32())])
# one list of boxes per image of the sample, aligned with ``images``
BOXES_TYPE = pa.list_(pa.list_(BOX_TYPE))
CASCADE = "haarcascade_frontalface_default.xml"
# Larger images are searched at this longest side (boxes scaled back): the cascade's cost grows
# with the pixel count, ~1.3 s for 2048 x 1536 against ~0.1 s here, and faces a release must
# blur are not the few-pixel ones a full-size search adds.
DETECT_SIDE = 640


@dataclass(frozen=True)
class FaceDetector:
    """OpenCV's Haar cascade with the stage's parameters (one per process: loading is cheap)."""

    min_size: int = 24
    min_neighbors: int = 5

    def __post_init__(self) -> None:
        import cv2

        cascade = cv2.CascadeClassifier(cv2.data.haarcascades + CASCADE)
        if cascade.empty():
            raise RuntimeError(f"OpenCV could not load {cv2.data.haarcascades + CASCADE}")
        object.__setattr__(self, "_cascade", cascade)

    def __reduce__(self):
        # the OpenCV cascade does not pickle; a loader worker loads its own
        return (FaceDetector, (self.min_size, self.min_neighbors))

    def detect(self, image: Image.Image) -> list[dict[str, int]]:
        """Boxes ``{x, y, w, h}`` in the image's pixels, sorted top-left first."""
        import cv2

        gray = image.convert("L")
        scale = min(1.0, DETECT_SIDE / max(gray.size))
        if scale < 1.0:
            size = (max(1, round(gray.width * scale)), max(1, round(gray.height * scale)))
            gray = gray.resize(size, Image.Resampling.BILINEAR)
        side = max(20, round(self.min_size * scale))  # the cascade's window is 24 px
        found = self._cascade.detectMultiScale(  # type: ignore[attr-defined]
            cv2.equalizeHist(np.asarray(gray)),
            scaleFactor=1.1,
            minNeighbors=self.min_neighbors,
            minSize=(side, side),
        )
        boxes = [
            dict(zip("xywh", (round(int(v) / scale) for v in box), strict=True)) for box in found
        ]
        return sorted(boxes, key=lambda b: (b["y"], b["x"]))


def face_detector(params: SignalParams) -> FaceDetector | None:
    return FaceDetector(params.face_min_size, params.face_min_neighbors) if params.faces else None


def face_columns(
    samples: pa.Table, detector: FaceDetector | None, pixels: BatchPixels | None = None
) -> dict[str, pa.Array]:
    """``face_count`` (faces over the sample's decodable images) and ``face_boxes`` (per image;
    an undecodable image has no boxes); both null without a detector. ``pixels``: boxes the
    scored stage's loader workers found already (:mod:`fineharbor.core.quality.pixels`)."""
    from fineharbor.core.quality.pixels import BatchPixels, ImagePrep

    rows = samples.num_rows
    if detector is None:
        return {FACE_COUNT: pa.nulls(rows, pa.int32()), FACE_BOXES: pa.nulls(rows, BOXES_TYPE)}
    per_sample = [image_bytes(images) for images in samples.column("images").to_pylist()]
    if pixels is None or not pixels.has_faces:
        flat = [data for images in per_sample for data in images]
        pixels = BatchPixels.here(flat, ImagePrep({}, detector))
    counts, boxes = [], []
    for images in per_sample:
        per_image = [pixels.boxes(data) for data in images]
        boxes.append(per_image)
        counts.append(sum(len(b) for b in per_image))
    return {
        FACE_COUNT: pa.array(counts, pa.int32()),
        FACE_BOXES: pa.array(boxes, BOXES_TYPE),
    }


def blur_boxes(data: bytes, boxes: Sequence[dict[str, int]], *, radius_share: float = 0.2) -> bytes:
    """The image with each box Gaussian-blurred (radius a share of the box's shorter side, so a
    face is unrecognisable at any size), re-encoded in its own format; the bytes unchanged when
    there is no box."""
    if not boxes:
        return data
    with Image.open(io.BytesIO(data)) as opened:
        fmt = opened.format or "PNG"
        image = opened.convert("RGB") if opened.mode not in ("RGB", "L") else opened.copy()
    for box in boxes:
        x, y, w, h = (int(box[k]) for k in "xywh")
        region = (max(0, x), max(0, y), min(image.width, x + w), min(image.height, y + h))
        if region[2] <= region[0] or region[3] <= region[1]:
            continue
        radius = max(2.0, radius_share * min(w, h))
        image.paste(image.crop(region).filter(ImageFilter.GaussianBlur(radius)), region[:2])
    out = io.BytesIO()
    if fmt.upper() in ("JPEG", "MPO"):
        image.save(out, "JPEG", quality=95)
    else:
        image.save(out, fmt if fmt.upper() in ("PNG", "WEBP") else "PNG")
    return out.getvalue()
