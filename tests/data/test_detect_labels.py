"""Letterbox preprocessing and YOLO / COCO detection labels (edgerep.data.detect_labels)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edgerep.data.detect_labels import (
    PAD_VALUE,
    check_letterbox_size,
    letterbox,
    letterboxed_batches,
    read_coco_labels,
    read_yolo_labels,
)
from edgerep.errors import UserError
from tests.detect_helpers import copy_split
from tests.paths import DIGITS_DET

VAL = DIGITS_DET / "val"


def _ink_box(img: np.ndarray, threshold: int = 128) -> np.ndarray:
    ys, xs = np.nonzero(img.max(axis=2) > threshold)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float32)


@pytest.mark.parametrize("shape, size", [((50, 100), (64, 64)), ((120, 80), (64, 96)), ((37, 53), (128, 128))])
def test_letterbox_keeps_aspect_pads_with_114_and_maps_boxes_both_ways(shape, size) -> None:
    h, w = shape
    img = np.zeros((h, w, 3), np.uint8)
    box = np.array([w * 0.2, h * 0.3, w * 0.7, h * 0.9]).round()
    x1, y1, x2, y2 = box.astype(int)
    img[y1:y2, x1:x2] = 255
    out, meta = letterbox(img, size)
    assert out.shape == (*size, 3) and out.dtype == np.uint8
    # Aspect ratio kept (up to whole pixels), the image centred, the rest the pad value.
    content_h, content_w = round(h * meta.scale_y), round(w * meta.scale_x)
    assert abs(content_w / content_h - w / h) < 2 / min(content_h, content_w)
    assert (content_h == size[0]) or (content_w == size[1])  # one side fills the input
    inner = np.zeros(size, bool)
    inner[meta.pad_top:meta.pad_top + content_h, meta.pad_left:meta.pad_left + content_w] = True
    assert np.all(out[~inner] == PAD_VALUE) and not np.any(out[inner] == PAD_VALUE)
    assert abs(meta.pad_left - (size[1] - content_w - meta.pad_left)) <= 1
    assert abs(meta.pad_top - (size[0] - content_h - meta.pad_top)) <= 1
    # The white rectangle lands where to_input says (within the 1 px a bilinear edge blurs), and back.
    np.testing.assert_allclose(_ink_box(out), meta.to_input(box)[0], atol=1.0)
    np.testing.assert_allclose(meta.to_original(meta.to_input(box)), box[None], atol=1e-3)
    # Boxes past the content area are clipped to the original image.
    assert meta.to_original(np.array([[-50, -50, 500, 500]])).tolist() == [[0, 0, w, h]]


def test_letterbox_size_must_be_a_multiple_of_the_stride() -> None:
    assert check_letterbox_size((128, 96), 32) == (128, 96)
    with pytest.raises(UserError, match=r"--input-shape 130x128: .*multiple of the model's stride 32.*use 160x128"):
        check_letterbox_size((130, 128), 32)
    with pytest.raises(UserError, match="stride 8"):
        letterbox(np.zeros((10, 10, 3), np.uint8), (100, 100), stride=8)
    with pytest.raises(UserError, match="stride 16"):
        next(letterboxed_batches([], (100, 96), 4, stride=16))


def test_reads_the_shipped_yolo_split() -> None:
    items = read_yolo_labels(VAL, num_classes=10)
    assert len(items) == 100 and sum(len(i.boxes) for i in items) == 326
    first = items[0]
    assert first.path.name == "val_0000.png" and first.boxes.shape[1] == 4
    assert np.all(first.boxes[:, 2:] > first.boxes[:, :2])
    assert np.all(first.boxes >= 0) and np.all(first.boxes[:, 2] <= first.width + 1e-3)
    # Same result when handed the images/ folder itself.
    again = read_yolo_labels(VAL / "images")
    np.testing.assert_array_equal(again[5].boxes, items[5].boxes)
    # Batches: letterboxed model inputs in [0, 1], boxes map back onto the labels' image.
    x, metas = next(letterboxed_batches(items[:3], (128, 128), 2, stride=32))
    assert x.shape == (2, 3, 128, 128) and x.dtype == np.float32 and 0 <= x.min() and x.max() <= 1
    assert metas[0].original == (first.height, first.width)
    assert x[0, 0, 0, 0] == pytest.approx(PAD_VALUE / 255) or first.width == first.height


def test_labels_that_do_not_match_the_images_name_the_first_file(tmp_path: Path) -> None:
    root = copy_split(tmp_path)
    assert len(read_yolo_labels(root)) == 4
    (root / "labels" / "val_0001.txt").unlink()
    with pytest.raises(UserError, match=r"images/val_0001.png: no label file .*val_0001.txt; write an empty one"):
        read_yolo_labels(root)
    (root / "labels" / "val_0001.txt").write_text("")  # an image without objects
    assert len(read_yolo_labels(root)[1].boxes) == 0
    (root / "labels" / "zzz_orphan.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    with pytest.raises(UserError, match=r"labels/zzz_orphan.txt: no image zzz_orphan\.\*"):
        read_yolo_labels(root)
    (root / "labels" / "zzz_orphan.txt").unlink()
    (root / "labels" / "val_0002.txt").write_text("3 0.5 0.5 0.1 0.1\n3 0.5 0.5\n")
    with pytest.raises(UserError, match=r"val_0002.txt:2: expected 'class cx cy w h'"):
        read_yolo_labels(root)
    (root / "labels" / "val_0002.txt").write_text("12 0.5 0.5 0.1 0.1\n")
    with pytest.raises(UserError, match=r"val_0002.txt:1: class 12 is outside the model's 10 classes"):
        read_yolo_labels(root, num_classes=10)
    (root / "labels" / "val_0002.txt").write_text("1 150 40 20 30\n")  # pixels, not normalised
    with pytest.raises(UserError, match=r"val_0002.txt:1: box .* not inside \[0, 1\]"):
        read_yolo_labels(root)
    with pytest.raises(UserError, match="no images/ folder"):
        read_yolo_labels(tmp_path)


def _to_coco(items, category_ids: list[int]) -> dict:
    images, anns = [], []
    for i, item in enumerate(items):
        images.append({"id": 100 + i, "file_name": item.path.name, "width": item.width, "height": item.height})
        for (x1, y1, x2, y2), c in zip(item.boxes.tolist(), item.classes.tolist()):
            anns.append({"id": len(anns) + 1, "image_id": 100 + i, "category_id": category_ids[c],
                         "bbox": [x1, y1, x2 - x1, y2 - y1], "iscrowd": 0})
    return {"images": images, "annotations": anns,
            "categories": [{"id": cid, "name": str(c)} for c, cid in enumerate(category_ids)]}


def test_coco_json_reads_the_same_boxes_as_yolo_labels(tmp_path: Path) -> None:
    root = copy_split(tmp_path)
    items = read_yolo_labels(root)
    category_ids = [2 * c + 1 for c in range(10)]  # non-contiguous ids map to classes 0..9 in order
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(_to_coco(items, category_ids)))
    coco, ids = read_coco_labels(root / "images", path, num_classes=10)
    assert ids == category_ids
    for a, b in zip(coco, items):
        assert a.path == b.path
        np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-4)
        np.testing.assert_array_equal(a.classes, b.classes)
    # An image on disk that the json does not list, and a json entry with no file.
    shutil.copy(VAL / "images" / "val_0010.png", root / "images")
    with pytest.raises(UserError, match=r"images/val_0010.png: not listed in .*instances.json"):
        read_coco_labels(root / "images", path)
    (root / "images" / "val_0010.png").unlink()
    (root / "images" / "val_0003.png").unlink()
    with pytest.raises(UserError, match=r"image 'val_0003.png' is not in"):
        read_coco_labels(root / "images", path)
    path.write_text("{not json")
    with pytest.raises(UserError, match="not a COCO json"):
        read_coco_labels(root / "images", path)
