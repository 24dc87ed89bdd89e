"""A near-duplicate photo set with ground truth: what a user calls copies, and what is not.

Real near-duplicate test sets hold photographs, not flat charts: texture everywhere, lighting
gradients, objects with shading, camera grain. The generator draws such scenes from noise:

* a scene is a sky/ground backdrop (multi-octave noise over a colour gradient) and a few
  objects (textured, shaded ellipses and boxes) standing at different depths;
* a *photo* renders the scene from a camera position: objects shift by parallax (near ones
  more), the whole frame is perspective-warped, light and grain change;
* each original photo is then copied with every transform a user calls a copy (:data:`COPIES`),
  and the same scene is photographed again from another angle (:data:`OTHER_ANGLE`), which is
  *not* a copy: same objects, another photo.

``copy_set(...)`` returns the files (encoded bytes) with their ground truth; ``write_copy_set``
puts them in a folder, one image per file, as a user would hand them over. Deterministic for a
seed.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

ORIGINAL = "original"
OTHER_ANGLE = "other_angle"
# transform name -> what it does (each is a copy of the original photo)
COPIES = {
    "exact": "the same file again",
    "flip": "horizontal mirror",
    "resize_aspect": "resized to 55% width and 85% height (the aspect ratio changes)",
    "resize_small": "resized to 40%",
    "grayscale": "converted to 8-bit grayscale",
    "rot90": "rotated by 90 degrees",
    "rot180": "rotated by 180 degrees",
    "rot270": "rotated by 270 degrees",
    "bmp": "re-encoded as BMP",
    "png": "re-encoded as PNG",
    "jpeg": "re-encoded as JPEG, quality 60",
    "webp": "re-encoded as lossy WebP, quality 70",
    "alpha": "given an (opaque) alpha channel, saved as RGBA PNG",
}
SIZES = ((480, 360), (360, 480), (512, 512), (600, 338), (400, 300))


@dataclass(frozen=True)
class CopyFile:
    """One file of the set and its ground truth."""

    name: str
    data: bytes
    scene: int  # objects photographed: photos of one scene show the same objects
    photo: str  # the photo it shows: an original and its copies share it
    transform: str  # ORIGINAL, OTHER_ANGLE or a key of COPIES


# --------------------------------------------------------------------------- textures


def _noise(rng: np.random.Generator, height: int, width: int, octaves: int = 5) -> np.ndarray:
    """Fractal noise in [0, 1]: random grids of growing resolution, upsampled and summed with
    falling weights (1/f-like, as natural images are)."""
    out = np.zeros((height, width), np.float32)
    total = 0.0
    for octave in range(octaves):
        cells = 2 ** (octave + 2)
        grid = rng.random((cells, cells)).astype(np.float32)
        layer = Image.fromarray(grid, mode="F").resize((width, height), Image.Resampling.BICUBIC)
        weight = 0.55**octave
        out += weight * np.asarray(layer, np.float32)
        total += weight
    out /= total
    return (out - out.min()) / max(float(np.ptp(out)), 1e-6)


def _textured(rng: np.random.Generator, h: int, w: int, colour: np.ndarray) -> np.ndarray:
    """An (h, w, 3) float image: a colour modulated by noise, with a light-to-shadow gradient."""
    texture = _noise(rng, h, w)[..., None]
    shade = np.linspace(1.15, 0.75, h, dtype=np.float32)[:, None, None]
    return colour[None, None, :] * (0.6 + 0.7 * texture) * shade


@dataclass(frozen=True)
class _Object:
    shape: str  # "ellipse" or "box"
    x: float  # centre, share of the frame width
    y: float
    size: float  # share of the frame's shorter side
    depth: float  # 1 = near (moves most with the camera), 0 = background
    colour: tuple[float, float, float]
    seed: int


@dataclass(frozen=True)
class Scene:
    """What is photographed: a backdrop and a few objects at depths."""

    seed: int
    sky: tuple[float, float, float]
    ground: tuple[float, float, float]
    horizon: float
    objects: tuple[_Object, ...]


def random_scene(rng: np.random.Generator, seed: int) -> Scene:
    objects = tuple(
        _Object(
            shape=str(rng.choice(["ellipse", "box"])),
            x=float(rng.uniform(0.2, 0.8)),
            y=float(rng.uniform(0.45, 0.8)),
            size=float(rng.uniform(0.18, 0.35)),
            depth=float(rng.uniform(0.3, 1.0)),
            colour=tuple(float(c) for c in rng.uniform(40, 230, 3)),
            seed=int(rng.integers(1 << 30)),
        )
        for _ in range(int(rng.integers(3, 6)))
    )
    return Scene(
        seed=seed,
        sky=tuple(float(c) for c in rng.uniform([90, 120, 160], [170, 200, 250])),
        ground=tuple(float(c) for c in rng.uniform([60, 50, 20], [160, 150, 100])),
        horizon=float(rng.uniform(0.35, 0.55)),
        objects=objects,
    )


def photograph(scene: Scene, size: tuple[int, int], camera: float = 0.0, shot: int = 0) -> Image:
    """Render ``scene`` at ``size`` from a camera moved sideways by ``camera`` (share of the
    frame width; 0 = the reference view). A moved camera shifts near objects more than far ones,
    tilts the frame by a perspective warp and changes the light; ``shot`` draws the grain."""
    width, height = size
    rng = np.random.default_rng(scene.seed)
    sky_rows = round(height * scene.horizon)
    frame = np.empty((height, width, 3), np.float32)
    frame[:sky_rows] = _textured(rng, sky_rows, width, np.array(scene.sky, np.float32))
    frame[sky_rows:] = _textured(rng, height - sky_rows, width, np.array(scene.ground, np.float32))
    image = Image.fromarray(np.clip(frame, 0, 255).astype(np.uint8))
    short = min(width, height)
    # far objects first so near ones cover them
    for obj in sorted(scene.objects, key=lambda o: o.depth):
        r = obj.size * short / 2
        cx = (obj.x - camera * obj.depth) * width
        cy = obj.y * height
        box = (round(cx - r), round(cy - r * 0.8), round(cx + r), round(cy + r * 0.8))
        ow, oh = box[2] - box[0], box[3] - box[1]
        if ow < 2 or oh < 2:
            continue
        fill = _textured(np.random.default_rng(obj.seed), oh, ow, np.array(obj.colour, np.float32))
        patch = Image.fromarray(np.clip(fill, 0, 255).astype(np.uint8))
        mask = Image.new("L", (ow, oh), 0)
        draw = ImageDraw.Draw(mask)
        if obj.shape == "ellipse":
            draw.ellipse((0, 0, ow - 1, oh - 1), fill=255)
        else:
            draw.rectangle((0, 0, ow - 1, oh - 1), fill=255)
        image.paste(patch, box[:2], mask.filter(ImageFilter.GaussianBlur(1)))
    if camera:
        # perspective: the side the camera moved to comes closer
        squeeze = abs(camera) * 0.6 * height
        near, far = (0.0, squeeze) if camera > 0 else (squeeze, 0.0)
        quad = (0, near, 0, height - near, width, height - far, width, far)
        image = image.transform(size, Image.Transform.QUAD, quad, Image.Resampling.BICUBIC)
    pixels = np.asarray(image, np.float32)
    light = 1.0 + 0.25 * camera
    grain = np.random.default_rng((scene.seed, shot)).normal(0, 4, pixels.shape)
    pixels = pixels * light + grain
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).filter(
        ImageFilter.GaussianBlur(0.6)
    )


# --------------------------------------------------------------------------- copies


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def copy_of(photo: Image.Image, original_bytes: bytes, transform: str) -> tuple[bytes, str]:
    """(encoded bytes, file suffix) of ``transform`` (a key of :data:`COPIES`) of ``photo``."""
    w, h = photo.size
    transpose = Image.Transpose
    if transform == "exact":
        return original_bytes, "jpg"
    if transform == "flip":
        return encode(photo.transpose(transpose.FLIP_LEFT_RIGHT), "JPEG", quality=90), "jpg"
    if transform == "resize_aspect":
        resized = photo.resize((round(w * 0.55), round(h * 0.85)), Image.Resampling.LANCZOS)
        return encode(resized, "JPEG", quality=90), "jpg"
    if transform == "resize_small":
        resized = photo.resize((round(w * 0.4), round(h * 0.4)), Image.Resampling.LANCZOS)
        return encode(resized, "JPEG", quality=90), "jpg"
    if transform == "grayscale":
        return encode(photo.convert("L"), "PNG"), "png"
    if transform in ("rot90", "rot180", "rot270"):
        turn = {"rot90": transpose.ROTATE_90, "rot180": transpose.ROTATE_180}
        rotated = photo.transpose(turn.get(transform, transpose.ROTATE_270))
        return encode(rotated, "JPEG", quality=90), "jpg"
    if transform == "bmp":
        return encode(photo, "BMP"), "bmp"
    if transform == "png":
        return encode(photo, "PNG"), "png"
    if transform == "jpeg":
        return encode(photo, "JPEG", quality=60), "jpeg"
    if transform == "webp":
        return encode(photo, "WEBP", quality=70), "webp"
    if transform == "alpha":
        # as editors and screenshot tools export a photo: an opaque alpha channel. (A copy faded
        # to transparency is another picture once cleaning flattens it on white, as trained on.)
        rgba = photo.convert("RGBA")
        rgba.putalpha(255)
        return encode(rgba, "PNG"), "png"
    raise ValueError(f"unknown transform {transform!r}; expected one of {sorted(COPIES)}")


def copy_set(
    scenes: int = 6,
    *,
    seed: int = 0,
    transforms: tuple[str, ...] = tuple(COPIES),
    other_angles: tuple[float, ...] = (0.12, -0.2),
    scale: float = 1.0,
) -> list[CopyFile]:
    """Per scene: its original photo (JPEG, quality 92), one copy per transform, and one photo
    per camera move in ``other_angles`` (each a distinct photo of the same objects). Sizes cycle
    through :data:`SIZES` (times ``scale``)."""
    rng = np.random.default_rng(seed)
    files: list[CopyFile] = []
    for index in range(scenes):
        scene = random_scene(rng, seed * 100_003 + index)
        w, h = SIZES[index % len(SIZES)]
        size = (max(32, round(w * scale)), max(32, round(h * scale)))
        photo_id = f"s{index:03d}_view0"
        photo = photograph(scene, size)
        original = encode(photo, "JPEG", quality=92)
        files.append(CopyFile(f"{photo_id}.jpg", original, index, photo_id, ORIGINAL))
        for transform in transforms:
            data, suffix = copy_of(photo, original, transform)
            name = f"{photo_id}_{transform}.{suffix}"
            files.append(CopyFile(name, data, index, photo_id, transform))
        for k, camera in enumerate(other_angles, start=1):
            other = photograph(scene, size, camera=camera, shot=k)
            view = f"s{index:03d}_view{k}"
            data = encode(other, "JPEG", quality=92)
            files.append(CopyFile(f"{view}.jpg", data, index, view, OTHER_ANGLE))
    return files


def write_copy_set(folder: Path, files: list[CopyFile]) -> Path:
    """Write every file under ``folder`` and ``<folder>_ground_truth.jsonl`` beside it (outside
    the folder, so an image-folder source over ``folder`` sees images only); returns its path."""
    folder.mkdir(parents=True, exist_ok=True)
    for item in files:
        (folder / item.name).write_bytes(item.data)
    truth = folder.parent / f"{folder.name}_ground_truth.jsonl"
    truth.write_text(
        "".join(
            json.dumps(
                {"name": f.name, "scene": f.scene, "photo": f.photo, "transform": f.transform}
            )
            + "\n"
            for f in files
        )
    )
    return truth


def score_clusters(files: list[CopyFile], cluster_of: dict[str, str]) -> dict[str, dict]:
    """Recall and precision per transform of a clustering (file name -> cluster id; files
    missing from the map are singletons).

    A copy is *found* when it shares its original's cluster. A pair of files in one cluster is
    *wrong* when they show different photos (another scene, or the same scene from another
    angle); each transform is charged the wrong pairs its files are in, ``other_angle`` the pairs
    that merge an other-angle photo with anything of another photo.
    """
    by_photo_original = {f.photo: f.name for f in files if f.transform == ORIGINAL}
    members: dict[str, list[CopyFile]] = {}
    for f in files:
        if f.name in cluster_of:
            members.setdefault(cluster_of[f.name], []).append(f)
    wrong: dict[str, int] = {}
    for group in members.values():
        for a_index, a in enumerate(group):
            for b in group[a_index + 1 :]:
                if a.photo != b.photo:
                    for t in {a.transform, b.transform}:
                        wrong[t] = wrong.get(t, 0) + 1
    out: dict[str, dict] = {}
    for transform in (*COPIES, OTHER_ANGLE):
        mine = [f for f in files if f.transform == transform]
        if not mine:
            continue
        found = 0
        if transform != OTHER_ANGLE:
            for f in mine:
                original = by_photo_original[f.photo]
                c = cluster_of.get(f.name)
                found += c is not None and c == cluster_of.get(original)
        in_clusters = sum(f.name in cluster_of for f in mine)
        out[transform] = {
            "files": len(mine),
            "recall": found / len(mine) if transform != OTHER_ANGLE else None,
            "wrong_pairs": wrong.get(transform, 0),
            "clustered": in_clusters,
        }
    return out


# --------------------------------------------------------------------------- look-alikes


def templated_charts(count: int, *, seed: int = 0, size: tuple[int, int] = (400, 300)) -> list:
    """``count`` bar charts from one template (a dense neighbourhood of look-alikes: same axes,
    palette and layout, bar heights and a label changing a little), as RGB images. Perceptual
    hashes and copy embeddings put most of them within the duplicate threshold of each other;
    none is a copy of another."""
    rng = np.random.default_rng(seed)
    width, height = size
    base = rng.uniform(0.3, 0.9, 6)
    palette = [(66, 133, 244), (219, 68, 55), (244, 180, 0), (15, 157, 88), (171, 71, 188)]
    images = []
    for k in range(count):
        image = Image.new("RGB", size, (250, 250, 250))
        draw = ImageDraw.Draw(image)
        left, bottom, top = 40, height - 30, 30
        draw.line((left, top, left, bottom), fill=(40, 40, 40), width=2)
        draw.line((left, bottom, width - 10, bottom), fill=(40, 40, 40), width=2)
        heights = base.copy()
        heights[rng.integers(6)] += rng.choice([-1, 1]) * rng.uniform(0.08, 0.15)
        bar = (width - left - 20) // 6
        for b, share in enumerate(heights):
            x0 = left + 8 + b * bar
            y0 = bottom - round(share * (bottom - top))
            draw.rectangle((x0, y0, x0 + bar - 12, bottom - 1), fill=palette[b % len(palette)])
        draw.text((left + 10, 8), f"Quarterly report #{k:04d}", fill=(20, 20, 20))
        images.append(image)
    return images
