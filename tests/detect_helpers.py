"""Detection inputs for the tests of several rooms (data/, tasks/, pipeline/): a copy of part of the shipped detection
set to edit, synthetic scenes whose boxes are known exactly, and an Ultralytics-layout head that decodes to them."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from tests.paths import DIGITS_DET


def copy_split(tmp_path: Path, n: int = 4) -> Path:
    """tmp_path/split: the first n images and labels of calib/digits_det/val (YOLO layout), free to change."""
    root = tmp_path / "split"
    for sub, ext in (("images", "png"), ("labels", "txt")):
        (root / sub).mkdir(parents=True)
        for i in range(n):
            shutil.copy(DIGITS_DET / "val" / sub / f"val_{i:04d}.{ext}", root / sub)
    return root


def random_scenes(seed: int, images: int, per_image: int, *, num_classes: int, x_max: float, pitch: float,
                  size: tuple[float, float], score: tuple[float, float]) -> list:
    """`images` scenes of `per_image` square boxes (xyxy), box i on row i (`pitch` px apart, so none overlap) at a
    random x in [0, x_max), its side drawn from `size`; scores drawn from `score`, classes from range(num_classes)."""
    from edgerep.data.detections import Detections

    rng = np.random.default_rng(seed)
    scenes = []
    for _ in range(images):
        boxes = []
        for row in range(per_image):
            x, s = rng.uniform(0, x_max), rng.uniform(*size)
            boxes.append([x, row * pitch, x + s, row * pitch + s])
        scenes.append(Detections(np.array(boxes), rng.uniform(*score, per_image),
                                 rng.integers(0, num_classes, per_image)))
    return scenes


def ultralytics_head(dets: list, num_classes: int, anchors: int, *, shift: float = 0.0,
                     max_score: float | None = None) -> np.ndarray:
    """An Ultralytics-layout head (B, 4+nc, N) float32 holding `dets` (image b's box i on anchor i as cx, cy, w, h,
    moved by `shift` px; its class score, capped at `max_score`), every other anchor empty."""
    out = np.zeros((len(dets), 4 + num_classes, anchors), np.float32)
    for b, d in enumerate(dets):
        for i, ((x1, y1, x2, y2), s, c) in enumerate(zip(d.boxes, d.scores, d.classes)):
            out[b, :4, i] = [(x1 + x2) / 2 + shift, (y1 + y2) / 2 + shift, x2 - x1, y2 - y1]
            out[b, 4 + int(c), i] = s if max_score is None else min(float(s), max_score)
    return out
