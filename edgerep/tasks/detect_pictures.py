"""A picture a person looks at: the reference's and each engine's boxes on a few images, side by side (PNG).

One row per image, one column per source (e.g. "labels", "pytorch (reference)", "openvino int8"); each panel is
the original image, enlarged so small objects stay visible, with that source's boxes, class and score drawn
in the source's colour. Written atomically (edgerep.files.artifacts.atomic_path).

`detection_pictures` draws head outputs (the reference's and the engines' on the same few validation images,
decoded one way for all of them); edgerep.pipeline.pictures runs the engines and calls it from the build.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from edgerep.files.artifacts import atomic_path

# Distinct, colour-blind-friendly colours (Okabe-Ito), one per column.
COLUMN_COLOURS = [(0, 114, 178), (213, 94, 0), (0, 158, 115), (204, 121, 167), (230, 159, 0), (86, 180, 233)]
_TITLE_H = 16


def draw_detections_grid(
    images: Sequence[Any],
    columns: Mapping[str, Sequence[Any]],
    out_path: Path,
    *,
    class_names: Sequence[str] | None = None,
    panel_size: int = 256,
    min_score: float = 0.25,
) -> Path:
    """Draw `columns[name][i]` (edgerep.data.detections.Detections, boxes in image i's pixels) on image i.

    `images`: paths or HxWx3 uint8 arrays. Boxes scoring below `min_score` are left out (they are the
    low-confidence tail mAP is computed on, not what a person calls a detection).
    """
    from PIL import Image, ImageDraw

    names = list(columns)
    if not names:
        raise ValueError("draw_detections_grid: no columns to draw")
    for name in names:
        if len(columns[name]) != len(images):
            raise ValueError(f"draw_detections_grid: column {name!r} has {len(columns[name])} entries for "
                             f"{len(images)} images")
    sheet = Image.new("RGB", (panel_size * len(names), (panel_size + _TITLE_H) * len(images)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for row, image in enumerate(images):
        rgb = _as_rgb(image)
        h, w = rgb.shape[:2]
        scale = panel_size / max(h, w)
        panel = Image.fromarray(rgb).resize((max(1, round(w * scale)), max(1, round(h * scale))),
                                            Image.Resampling.NEAREST)
        top = row * (panel_size + _TITLE_H)
        for col, name in enumerate(names):
            colour = COLUMN_COLOURS[col % len(COLUMN_COLOURS)]
            left = col * panel_size
            sheet.paste(panel, (left, top + _TITLE_H))
            dets = columns[name][row]
            keep = np.asarray(dets.scores) >= min_score
            draw.text((left + 3, top + 2), f"{name}: {int(keep.sum())} boxes", fill=colour)
            for box, score, cls in zip(np.asarray(dets.boxes)[keep], np.asarray(dets.scores)[keep],
                                       np.asarray(dets.classes)[keep]):
                x1, y1, x2, y2 = (float(v) * scale for v in box)
                rect = [left + x1, top + _TITLE_H + y1, left + x2, top + _TITLE_H + y2]
                draw.rectangle(rect, outline=colour, width=2)
                label = class_names[int(cls)] if class_names is not None else str(int(cls))
                draw.text((rect[0] + 2, max(top + _TITLE_H, rect[1] - 11)), f"{label} {float(score):.2f}", fill=colour)
    out_path = Path(out_path)
    with atomic_path(out_path) as tmp:
        sheet.save(tmp, format="PNG")
    return out_path


def _as_rgb(image: Any) -> np.ndarray:
    if isinstance(image, np.ndarray):
        return np.ascontiguousarray(image[..., :3], dtype=np.uint8)
    from edgerep.data.detect_labels import load_rgb

    return load_rgb(Path(image))


PICTURE_NAME = "detections.png"


def pick_images(reference_outputs: np.ndarray, k: int = 3, *, labels: Sequence[Any] | None = None,
                decode_options: Mapping[str, Any] | None = None) -> list[int]:
    """Which of the first len(reference_outputs) samples to draw: the first `k` where the reference (or the
    labels) has a box at the drawing threshold, filled up with the first others (an empty panel shows nothing)."""
    from edgerep.tasks.detect import decode

    options = dict(decode_options or {})
    found = decode(_clip_scores(reference_outputs, options.get("layout", "auto"), options.get("num_classes")),
                   **options)
    busy = [i for i, d in enumerate(found) if len(d) or (labels is not None and len(labels[i]))]
    rest = [i for i in range(len(found)) if i not in busy]
    return sorted((busy + rest)[:k])


def detection_pictures(
    out_dir: Path,
    source: Any,
    reference_outputs: np.ndarray,
    engine_outputs: Mapping[str, np.ndarray],
    *,
    indices: Sequence[int] | None = None,
    layout: str = "auto",
    num_classes: int | None = None,
    score_threshold: float | None = None,
    iou_threshold: float | None = None,
    class_names: Sequence[str] | None = None,
    name: str = PICTURE_NAME,
) -> Path:
    """The reference's and each engine's boxes on a few validation images, side by side: out_dir/`name` (PNG).

    `source`: the validation DetectionSource (files, metas, labels); `reference_outputs` and each
    `engine_outputs[column]`: the head outputs (first output) on samples `indices` of it (default: the first
    len(reference_outputs)). Every column is decoded the same way (tasks.detect.decode at the detect score
    threshold, the family's NMS), its boxes mapped back through the letterbox onto the original image; a
    "labels" column comes first when the source has labels."""
    from edgerep.data.detections import Detections
    from edgerep.tasks.detect import DETECT_SCORE, NMS_IOU, decode

    reference_outputs = np.asarray(reference_outputs, dtype=np.float32)
    indices = list(range(len(reference_outputs))) if indices is None else list(indices)
    if len(indices) != len(reference_outputs):
        raise ValueError(f"detection_pictures: {len(reference_outputs)} reference outputs for {len(indices)} images")
    score = DETECT_SCORE if score_threshold is None else float(score_threshold)
    iou = NMS_IOU if iou_threshold is None else float(iou_threshold)

    def decoded(head: np.ndarray) -> list[Detections]:
        return decode(_clip_scores(head, layout, num_classes), layout=layout, num_classes=num_classes,
                      score_threshold=score, iou_threshold=iou)

    metas = [source.metas[i] for i in indices]

    def on_image(found: Sequence[Any]) -> list[Any]:
        return [Detections(meta.to_original(d.boxes), d.scores, d.classes) for d, meta in zip(found, metas)]

    columns: dict[str, list[Any]] = {}
    labels = getattr(source, "labels", None) if getattr(source, "has_labels", False) else None
    if labels is not None:
        columns["labels"] = on_image([labels[i] for i in indices])
    columns["pytorch (reference)"] = on_image(decoded(reference_outputs))
    for column, outputs in engine_outputs.items():
        columns[column] = on_image(decoded(np.asarray(outputs, dtype=np.float32).reshape(reference_outputs.shape)))
    return draw_detections_grid([source.files[i] for i in indices], columns, Path(out_dir) / name,
                                class_names=class_names, min_score=score)


def _clip_scores(head: np.ndarray, layout: str, num_classes: int | None) -> np.ndarray:
    """Score columns clipped to [0, 1]: reduced precision can put a sigmoid a hair outside it, which the decoder
    would take for logits; a picture should show the boxes, not refuse the engine."""
    from edgerep.tasks.detect import resolve_layout

    head = np.array(head, dtype=np.float32, copy=True)
    if resolve_layout(head.shape, layout, num_classes) == "ultralytics":
        head[:, 4:, :] = np.clip(head[:, 4:, :], 0.0, 1.0)
    else:
        head[:, :, 4:] = np.clip(head[:, :, 4:], 0.0, 1.0)
    return head
