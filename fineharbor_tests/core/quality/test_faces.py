"""Faces: OpenCV's shipped Haar cascade counts a drawn frontal face (it finds this pattern
deterministically), the boxes land on scored_samples per image, and ``release.blur_faces``
blurs exactly those boxes in the released bytes."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from fineharbor.core.quality.faces import FaceDetector, blur_boxes, face_columns
from fineharbor.core.release.writer import release_row
from fineharbor.testing.signals import draw_face
from fineharbor_tests.core.cleaning.helpers import encode, scene


def _pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.int16)


def test_the_detector_finds_a_drawn_face_and_nothing_in_a_scene():
    detector = FaceDetector()
    (box,) = detector.detect(draw_face(220, 100))
    # the box covers the face's centre
    assert box["x"] < 110 < box["x"] + box["w"] and box["y"] < 110 < box["y"] + box["h"]
    assert detector.detect(scene(220, 220, 3)) == []


def test_face_columns_count_per_sample_and_keep_boxes_per_image():
    face, plain = encode(draw_face(), "PNG"), encode(scene(120, 90, 1), "PNG")
    table = pa.table(
        {"images": [[{"bytes": face, "path": None}, {"bytes": plain, "path": None}],
                    [{"bytes": b"junk", "path": None}], []]}
    )  # fmt: skip
    columns = face_columns(table, FaceDetector())
    assert columns["face_count"].to_pylist() == [1, 0, 0]
    boxes = columns["face_boxes"].to_pylist()
    assert len(boxes[0]) == 2 and len(boxes[0][0]) == 1 and boxes[0][1] == []
    assert boxes[1:] == [[[]], []]
    off = face_columns(table, None)
    assert off["face_count"].null_count == 3 and off["face_boxes"].null_count == 3


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_blur_changes_only_the_boxes_and_hides_the_face(fmt):
    data = encode(draw_face(), fmt)
    (box,) = FaceDetector().detect(Image.open(io.BytesIO(data)).convert("RGB"))
    blurred = blur_boxes(data, [box])
    assert Image.open(io.BytesIO(blurred)).format == fmt
    before, after = _pixels(data), _pixels(blurred)
    x, y, w, h = box["x"], box["y"], box["w"], box["h"]
    inside = np.abs(before[y : y + h, x : x + w] - after[y : y + h, x : x + w]).mean()
    outside = np.abs(before[:, : x - 4] - after[:, : x - 4]).mean()
    assert inside > 5 and outside < (2 if fmt == "JPEG" else 0.01)
    assert FaceDetector().detect(Image.open(io.BytesIO(blurred)).convert("RGB")) == []
    assert blur_boxes(data, []) == data


def test_release_rows_blur_faces_only_when_asked():
    face, plain = encode(draw_face(), "PNG"), encode(scene(120, 90, 1), "PNG")
    boxes = [[{"x": 50, "y": 50, "w": 100, "h": 100}], []]
    row = {
        "sample_id": "s",
        "source": "photos",
        "images": [{"bytes": face, "path": "a.png"}, {"bytes": plain, "path": "b.png"}],
        "texts": [{"user": "", "assistant": "a face"}],
        "face_boxes": boxes,
    }
    kept = release_row(row, None, False)
    assert [i["bytes"] for i in kept["images"]] == [face, plain]
    blurred = release_row(row, None, False, blur_faces=True)
    assert blurred["images"][0]["bytes"] != face and blurred["images"][0]["path"] == "a.png"
    assert blurred["images"][1]["bytes"] == plain


def test_blurring_needs_the_face_stage():
    from fineharbor.core.config import ProjectConfig

    with pytest.raises(ValueError, match=r"stages\.signals\.faces"):
        ProjectConfig(sources=[], release={"blur_faces": True})
    assert ProjectConfig(
        sources=[], release={"blur_faces": True}, stages={"signals": {"faces": True}}
    ).release.blur_faces


def test_large_images_are_searched_downscaled_and_boxes_come_back_in_full_size():
    small = FaceDetector().detect(draw_face(220, 100))
    large = FaceDetector().detect(draw_face(220, 100).resize((1320, 1320)))  # 6x
    assert len(small) == len(large) == 1
    for k in "xywh":
        assert abs(large[0][k] - 6 * small[0][k]) <= 6 * 12, (k, small, large)
