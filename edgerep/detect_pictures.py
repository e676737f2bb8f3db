"""A picture a person looks at: the reference's and each engine's boxes on a few images, side by side (PNG).

One row per image, one column per source (e.g. "pytorch (reference)", "openvino int8"); each panel is the
original image, enlarged so small objects stay visible, with that source's boxes, class and score drawn
in the source's colour. Written atomically (edgerep.artifacts.atomic_path).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .artifacts import atomic_path

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
    """Draw `columns[name][i]` (edgerep.tasks.detect.Detections, boxes in image i's pixels) on image i.

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
    from .detect_data import load_rgb

    return load_rgb(Path(image))
