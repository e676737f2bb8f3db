"""Detection task: head decoding (both layouts), NMS, and COCO mAP of agreement and against labels."""
from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("pycocotools", reason="mAP needs pycocotools (pip install edgerep[detect])")
pytest.importorskip("torchvision", reason="NMS needs torchvision (pip install edgerep[detect])")
from torchvision.ops import box_iou  # noqa: E402

from edgerep.data.detections import Detections
from edgerep.errors import UserError  # noqa: E402
from edgerep.tasks.detect import HeadLayoutError, agreement, decode, detection_map, resolve_layout
from tests.detect_helpers import random_scenes, ultralytics_head

NC = 3
IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)


def _scene(seed: int = 0, images: int = 4, per_image: int = 5) -> list[Detections]:
    """Non-overlapping 20x20 .. 40x40 boxes on a 200x200 canvas, random classes and scores."""
    return random_scenes(seed, images, per_image, num_classes=NC, x_max=150, pitch=40.0, size=(20, 38),
                         score=(0.5, 0.99))


def _ultralytics_head(dets: list[Detections], anchors: int = 64) -> torch.Tensor:
    """Encode detections as an Ultralytics head (B, 4+nc, N): box i on anchor i, the rest empty."""
    return torch.from_numpy(ultralytics_head(dets, NC, anchors))


def _yolov5_head(dets: list[Detections], objectness: float, anchors: int = 64) -> torch.Tensor:
    """(B, N, 5+nc): class score s/objectness so that objectness x class = s."""
    u = _ultralytics_head(dets, anchors).transpose(1, 2)
    out = torch.zeros(len(dets), anchors, 5 + NC)
    out[..., :4] = u[..., :4]
    has_box = u[..., 4:].amax(-1) > 0
    out[..., 4] = torch.where(has_box, torch.tensor(objectness), torch.tensor(0.0))
    out[..., 5:] = torch.where(has_box[..., None], u[..., 4:] / objectness, u[..., 4:])
    return out


def _same(a: Detections, b: Detections) -> None:
    order_a, order_b = np.argsort(-a.scores), np.argsort(-b.scores)
    np.testing.assert_allclose(a.boxes[order_a], b.boxes[order_b], atol=1e-4)
    np.testing.assert_allclose(a.scores[order_a], b.scores[order_b], atol=1e-6)
    np.testing.assert_array_equal(a.classes[order_a], b.classes[order_b])


# --- decoding -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["ultralytics", "yolov5"])
def test_both_layouts_decode_back_to_the_boxes(layout: str) -> None:
    scene = _scene()
    head = _ultralytics_head(scene) if layout == "ultralytics" else _yolov5_head(scene, objectness=0.9)
    assert resolve_layout(head.shape, "auto", NC) == layout
    for explicit in ("auto", layout):
        decoded = decode(head.numpy(), layout=explicit, num_classes=NC, score_threshold=0.25)
        assert len(decoded) == len(scene)
        for got, want in zip(decoded, scene):
            _same(got, want)


def test_yolov5_scores_are_objectness_times_class() -> None:
    # A class score of 0.9 with objectness 0.2 is a 0.18 box: below a 0.25 threshold, above 0.1.
    scene = [Detections([[10, 10, 50, 50]], [0.18], [1])]
    head = _yolov5_head(scene, objectness=0.2)
    assert float(head[0, 0, 5 + 1]) == pytest.approx(0.9)
    assert len(decode(head, layout="yolov5", num_classes=NC, score_threshold=0.25)[0]) == 0
    kept = decode(head, layout="yolov5", num_classes=NC, score_threshold=0.1)[0]
    assert kept.scores.tolist() == pytest.approx([0.18])


def test_nms_is_per_class_and_keeps_the_best() -> None:
    a, a_shifted, far = [10, 10, 50, 50], [12, 10, 52, 50], [100, 100, 140, 140]  # IoU(a, a_shifted) = 0.905
    same_class = [Detections([a, a_shifted, far], [0.9, 0.8, 0.7], [0, 0, 0])]
    kept = decode(_ultralytics_head(same_class), num_classes=NC, iou_threshold=0.7)[0]
    assert sorted(kept.scores.tolist()) == pytest.approx([0.7, 0.9])
    other_class = [Detections([a, a_shifted, far], [0.9, 0.8, 0.7], [0, 1, 0])]
    assert len(decode(_ultralytics_head(other_class), num_classes=NC, iou_threshold=0.7)[0]) == 3
    assert len(decode(_ultralytics_head(other_class), num_classes=NC, iou_threshold=0.7, class_agnostic=True)[0]) == 2
    # max_det keeps the highest scores.
    capped = decode(_ultralytics_head(_scene(images=1)), num_classes=NC, max_det=2)[0]
    assert capped.scores.tolist() == sorted(_scene(images=1)[0].scores.tolist(), reverse=True)[:2]


def test_wrong_head_layout_is_a_clear_error() -> None:
    ultra = _ultralytics_head(_scene())
    with pytest.raises(HeadLayoutError, match=r"not the yolov5 layout \(B, N, 5\+nc\) with nc=3"):
        decode(ultra, layout="yolov5", num_classes=NC)
    # The yolov5 reading of the transposed tensor: boxes land where scores should be.
    with pytest.raises(HeadLayoutError, match="outside \\[0, 1\\]"):
        decode(ultra.transpose(1, 2), layout="ultralytics")
    with pytest.raises(HeadLayoutError, match="expected one 3-d tensor"):
        decode(torch.zeros(2, 10), num_classes=NC)
    with pytest.raises(HeadLayoutError, match="fits neither"):
        decode(torch.zeros(1, 9, 64), num_classes=NC)
    with pytest.raises(UserError, match="--head-layout 'yolov8'"):
        resolve_layout((1, 7, 64), "yolov8")
    assert issubclass(HeadLayoutError, UserError)  # one line, exit 2, and catchable to fall back to raw


# --- mAP -------------------------------------------------------------------------------------------------


def test_identical_detections_agree_fully() -> None:
    scene = _scene()
    result = agreement(scene, scene, NC)
    assert result.map50 == pytest.approx(1.0) and result.map50_95 == pytest.approx(1.0)
    assert result.box_count_diff == 0 and result.mean_abs_count_diff == 0
    assert result.reference_boxes == sum(len(d) for d in scene)


@pytest.mark.parametrize("shift", [2.0, 4.0, 6.0])
def test_shifted_boxes_score_what_their_iou_allows(shift: float) -> None:
    # Every box moved right by `shift` px (one class, boxes far apart): at an IoU threshold t a moved box
    # is a true positive when its IoU >= t. The expected AP is worked out here from the geometry
    # (torchvision's box_iou) and COCO's definition: precision envelope, sampled at 101 recall points.
    scene = _scene(images=1, per_image=5)
    ref = Detections.labels(scene[0].boxes, np.zeros(5, dtype=np.int64))
    moved = Detections(ref.boxes + np.array([shift, 0, shift, 0], np.float32), scene[0].scores, ref.classes)
    ious = box_iou(torch.from_numpy(ref.boxes), torch.from_numpy(moved.boxes)).diagonal().numpy()
    assert ious.min() < 0.95  # a real shift
    result = detection_map([ref], [moved], NC)
    aps = []
    order = np.argsort(-moved.scores)
    for t in IOU_THRESHOLDS:
        tp = (ious[order] >= t).astype(float)
        precision = np.cumsum(tp) / np.arange(1, 6)
        recall = np.cumsum(tp) / 5
        envelope = np.maximum.accumulate(precision[::-1])[::-1]  # COCO's monotone precision
        points = np.linspace(0, 1, 101)
        idx = np.searchsorted(recall, points, side="left")
        aps.append(np.mean([envelope[i] if i < len(envelope) else 0.0 for i in idx]))
    assert result.map50_95 == pytest.approx(np.mean(aps), abs=1e-6)
    assert result.map50 == pytest.approx(aps[0], abs=1e-6)
    assert result.map50_95 < 1.0


def test_more_shift_means_less_agreement() -> None:
    scene = _scene()
    values = []
    for shift in (0.0, 1.5, 3.0, 6.0):
        moved = [Detections(d.boxes + np.float32(shift), d.scores, d.classes) for d in scene]
        values.append(agreement(scene, moved, NC).map50_95)
    assert values[0] == pytest.approx(1.0)
    assert all(a > b for a, b in zip(values, values[1:])), values


def test_missed_and_extra_boxes_show_in_counts_and_map() -> None:
    scene = _scene()
    fewer = [Detections(d.boxes[:-2], d.scores[:-2], d.classes[:-2]) for d in scene]
    result = agreement(scene, fewer, NC)
    assert result.box_count_diff == -2 * len(scene) and result.mean_abs_count_diff == 2
    assert result.map50 < 1.0
    # Engine boxes below the count threshold do not count as boxes, but do not hurt mAP either.
    extra = [Detections(np.vstack([d.boxes, [[0, 0, 5, 5]]]), np.append(d.scores, 0.01), np.append(d.classes, 0))
             for d in scene]
    result = agreement(scene, extra, NC)
    assert result.box_count_diff == 0 and result.map50_95 == pytest.approx(1.0)


def test_wrong_classes_score_zero_and_empty_cases() -> None:
    scene = _scene()
    relabelled = [Detections(d.boxes, d.scores, (d.classes + 1) % NC) for d in scene]
    assert detection_map(scene, relabelled, NC).map50 == pytest.approx(0.0)
    empty = [Detections(np.zeros((0, 4)), [], []) for _ in scene]
    assert detection_map(scene, empty, NC).map50 == 0.0
    assert detection_map(empty, empty, NC).map50_95 == 1.0
    assert detection_map(empty, scene, NC).map50_95 == 0.0
