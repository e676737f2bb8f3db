"""Detection as a task: decode a YOLO-family head, run NMS, and score detections with COCO mAP.

Two head layouts are decoded, the two that YOLO-family exporters emit as one tensor:
  * ``ultralytics``: (B, 4+nc, N), rows cx, cy, w, h (input pixels) then nc class scores in [0, 1]
    (YOLOv8/11, YOLOv6 3.0's export, RT-DETR-free YOLOs, and our zoo detectors);
  * ``yolov5``: (B, N, 5+nc), columns cx, cy, w, h, objectness, nc class scores; a box's score is
    objectness x class score (YOLOv5, YOLOv7, YOLOv6 before 3.0).
Then per image: the best class of each candidate, a score threshold, class-aware NMS
(torchvision.ops.batched_nms) and a cap on the number of boxes, as the families' own NMS does.

mAP is pycocotools' COCOeval (the reference implementation; we only build its inputs in memory):
``detection_map`` against labels, ``agreement`` of an engine's detections with the unfused PyTorch
model's detections taken as ground truth (an engine that agrees at mAP@0.5:0.95 >= 0.95 is a
faithful copy whatever the labels say). pycocotools and torchvision are imported inside the functions:
they are the optional extra ``edgerep[detect]``.
"""
from __future__ import annotations

import contextlib
import io
from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

import numpy as np

from edgerep.data.detections import Detections
from edgerep.errors import UserError

LAYOUTS = ("ultralytics", "yolov5")
# Score thresholds: what a person would call "a detection" (Ultralytics' predict default), and the
# low one mAP is computed at (Ultralytics' and YOLOv5's val default), so the ranking covers the tail.
DETECT_SCORE = 0.25
MAP_SCORE = 0.001
NMS_IOU = 0.7
MAX_DET = 300
_SCORE_SLACK = 1e-3  # scores are sigmoid outputs; allow rounding of reduced-precision engines


class HeadLayoutError(UserError):
    """The output is not a head layout we can decode (the pipeline falls back to tensor metrics)."""




# --- decoding -----------------------------------------------------------------------------------------


def _shape_text(shape: Sequence[int]) -> str:
    return "(" + ", ".join(str(int(d)) for d in shape) + ")"


def resolve_layout(shape: Sequence[int], layout: str = "auto", num_classes: int | None = None) -> str:
    """Which layout a head output of `shape` has; HeadLayoutError (one line) when it fits neither.

    With `num_classes` the channel count must match (4+nc or 5+nc); without it, "auto" takes the smaller
    of the two trailing dimensions as the channels (a head has far more anchors than channels).
    """
    if layout not in ("auto", *LAYOUTS):
        raise UserError(f"--head-layout {layout!r}: use auto, {' or '.join(LAYOUTS)}")
    expected = "(B, 4+nc, N) (Ultralytics) or (B, N, 5+nc) (YOLOv5/6/7)"
    if len(shape) != 3:
        raise HeadLayoutError(f"detection head output {_shape_text(shape)}: expected one 3-d tensor, {expected}")
    _, d1, d2 = (int(d) for d in shape)
    fits = {
        "ultralytics": d1 >= 5 and (num_classes is None or d1 == 4 + num_classes),
        "yolov5": d2 >= 6 and (num_classes is None or d2 == 5 + num_classes),
    }
    if layout != "auto":
        if not fits[layout]:
            want = "(B, 4+nc, N)" if layout == "ultralytics" else "(B, N, 5+nc)"
            nc = f" with nc={num_classes}" if num_classes is not None else ""
            raise HeadLayoutError(f"detection head output {_shape_text(shape)}: not the {layout} layout "
                                  f"{want}{nc}; pass --head-layout auto or the model's layout")
        return layout
    candidates = [name for name, ok in fits.items() if ok]
    if len(candidates) == 2:
        return "ultralytics" if d1 < d2 else "yolov5"
    if not candidates:
        nc = f" for nc={num_classes}" if num_classes is not None else ""
        raise HeadLayoutError(f"detection head output {_shape_text(shape)}: fits neither {expected}{nc}")
    return candidates[0]


def _split_head(t: Any, layout: str) -> tuple[Any, Any]:
    """(B, N, 4) cx,cy,w,h boxes and (B, N, nc) scores from a head tensor."""
    if layout == "ultralytics":
        t = t.transpose(1, 2)
        boxes, scores = t[..., :4], t[..., 4:]
    else:
        boxes, scores = t[..., :4], t[..., 5:] * t[..., 4:5]
        objectness = t[..., 4]
        if objectness.numel() and (objectness.min() < -_SCORE_SLACK or objectness.max() > 1 + _SCORE_SLACK):
            raise HeadLayoutError("detection head output: objectness outside [0, 1]; not a decoded "
                                  "YOLOv5-style head (raw logits, or another layout)")
    if scores.numel() and (scores.min() < -_SCORE_SLACK or scores.max() > 1 + _SCORE_SLACK):
        raise HeadLayoutError(f"detection head output read as {layout}: class scores outside [0, 1] "
                              f"(min {float(scores.min()):.3g}, max {float(scores.max()):.3g}); a wrong layout, "
                              f"or a head whose scores are logits")
    return boxes, scores


def decode(
    output: Any,
    *,
    layout: str = "auto",
    num_classes: int | None = None,
    score_threshold: float = DETECT_SCORE,
    iou_threshold: float = NMS_IOU,
    max_det: int = MAX_DET,
    class_agnostic: bool = False,
) -> list[Detections]:
    """Decode a head output (numpy array or tensor) into one Detections per image of the batch."""
    import torch
    from torchvision.ops import batched_nms, box_convert

    t = torch.as_tensor(np.asarray(output) if not isinstance(output, torch.Tensor) else output)
    t = t.detach().float().cpu()
    layout = resolve_layout(tuple(t.shape), layout, num_classes)
    boxes_all, scores_all = _split_head(t, layout)
    result = []
    for boxes, scores in zip(boxes_all, scores_all):
        best, cls = scores.max(dim=1)
        keep = best >= score_threshold
        boxes, best, cls = box_convert(boxes[keep], "cxcywh", "xyxy"), best[keep], cls[keep]
        idxs = torch.zeros_like(cls) if class_agnostic else cls
        order = batched_nms(boxes, best, idxs, iou_threshold)[:max_det]
        result.append(Detections(boxes[order].numpy(), best[order].numpy(), cls[order].numpy()))
    return result


# --- mAP ----------------------------------------------------------------------------------------------


@dataclass
class MapResult:
    map50: float
    map50_95: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def _xywh(boxes: np.ndarray) -> list[list[float]]:
    return [[float(x1), float(y1), float(x2 - x1), float(y2 - y1)] for x1, y1, x2, y2 in boxes]


def detection_map(ground_truth: Sequence[Detections], detections: Sequence[Detections],
                  num_classes: int) -> MapResult:
    """COCO mAP@0.5 and mAP@0.5:0.95 (101-point, averaged over the classes that have ground truth).

    `ground_truth[i]` and `detections[i]` belong to image i (ground-truth scores are ignored).
    No ground truth at all: 1.0 when there are no detections either, else 0.0 (nothing to find, and the
    detector found something). Ground truth but no detections: 0.0.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if len(ground_truth) != len(detections):
        raise ValueError(f"detection_map: {len(ground_truth)} ground-truth images, {len(detections)} detected")
    n_gt = sum(len(g) for g in ground_truth)
    n_det = sum(len(d) for d in detections)
    if n_gt == 0:
        value = 1.0 if n_det == 0 else 0.0
        return MapResult(value, value)
    if n_det == 0:
        return MapResult(0.0, 0.0)
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []
    for image_id, (gt, det) in enumerate(zip(ground_truth, detections), start=1):
        images.append({"id": image_id})
        for box, cls in zip(_xywh(gt.boxes), gt.classes):
            # ids from 1: COCOeval marks "unmatched" with id 0.
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": int(cls) + 1,
                                "bbox": box, "area": box[2] * box[3], "iscrowd": 0})
        for box, score, cls in zip(_xywh(det.boxes), det.scores, det.classes):
            results.append({"image_id": image_id, "category_id": int(cls) + 1, "bbox": box, "score": float(score)})
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress on stdout
        coco_gt = COCO()
        coco_gt.dataset = {"images": images, "annotations": annotations,
                           "categories": [{"id": c + 1, "name": str(c)} for c in range(num_classes)]}
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(results)
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    # stats[0]: AP@[.5:.95], stats[1]: AP@.5, both area "all", maxDets 100.
    return MapResult(map50=max(0.0, float(ev.stats[1])), map50_95=max(0.0, float(ev.stats[0])))


@dataclass
class Agreement:
    """How far an engine's detections are from the reference's (the unfused PyTorch model's)."""

    map50: float
    map50_95: float
    reference_boxes: int  # boxes at or above count_threshold
    engine_boxes: int
    box_count_diff: int  # engine - reference
    mean_abs_count_diff: float  # per image
    count_threshold: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def agreement(reference: Sequence[Detections], engine: Sequence[Detections], num_classes: int, *,
              count_threshold: float = DETECT_SCORE) -> Agreement:
    """mAP of `engine` against `reference` taken as ground truth, and the difference in box counts.

    The reference's boxes at or above `count_threshold` are the ground truth; the engine's detections are
    scored at all their scores (decode them with a low threshold, MAP_SCORE, so a box the reference kept
    at 0.26 and the engine scored 0.24 still counts as found). Box counts compare both at `count_threshold`.
    """
    truth = [r.above(count_threshold) for r in reference]
    m = detection_map(truth, engine, num_classes)
    ref_counts = np.array([len(r) for r in truth])
    eng_counts = np.array([len(e.above(count_threshold)) for e in engine])
    return Agreement(
        map50=m.map50, map50_95=m.map50_95,
        reference_boxes=int(ref_counts.sum()), engine_boxes=int(eng_counts.sum()),
        box_count_diff=int(eng_counts.sum() - ref_counts.sum()),
        mean_abs_count_diff=float(np.abs(eng_counts - ref_counts).mean()) if len(ref_counts) else 0.0,
        count_threshold=count_threshold,
    )


# --- running a detector on images ---------------------------------------------------------------------


def detect_images(
    run: Callable[[np.ndarray], Any],
    items: Sequence[Any],
    size: Sequence[int],
    *,
    batch_size: int = 16,
    stride: int | None = None,
    layout: str = "auto",
    num_classes: int | None = None,
    score_threshold: float = MAP_SCORE,
    iou_threshold: float = NMS_IOU,
    max_det: int = MAX_DET,
) -> list[Detections]:
    """Detections of `run` (a batch of letterboxed inputs (B, 3, h, w) in [0, 1] -> head output) on each
    image of `items` (LabelledImage or paths), with boxes mapped back to the original image's pixels.

    `run` is any runtime: a torch model wrapped to take and give arrays, an ONNX Runtime session, an engine.
    """
    from edgerep.data.detect_labels import letterboxed_batches

    result: list[Detections] = []
    for x, metas in letterboxed_batches(items, size, batch_size, stride=stride):
        decoded = decode(run(x), layout=layout, num_classes=num_classes, score_threshold=score_threshold,
                         iou_threshold=iou_threshold, max_det=max_det)
        for det, meta in zip(decoded, metas):
            result.append(Detections(meta.to_original(det.boxes), det.scores, det.classes))
    return result


def label_truth(items: Sequence[Any]) -> list[Detections]:
    """Ground truth from labelled images (edgerep.data.detect_labels.LabelledImage)."""
    return [Detections.labels(item.boxes, item.classes) for item in items]
