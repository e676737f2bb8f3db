"""The boxes of one image (xyxy pixels, scores, classes): ground truth from labels and a model's detections alike."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class Detections:
    """The boxes of one image: xyxy in pixels (float32, (K, 4)), scores (K,), class indices (K,)."""

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray

    def __post_init__(self) -> None:
        self.boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        self.scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)
        self.classes = np.asarray(self.classes, dtype=np.int64).reshape(-1)
        if not (len(self.boxes) == len(self.scores) == len(self.classes)):
            raise ValueError(f"Detections: {len(self.boxes)} boxes, {len(self.scores)} scores, "
                             f"{len(self.classes)} classes")

    def __len__(self) -> int:
        return len(self.boxes)

    def above(self, score: float) -> "Detections":
        keep = self.scores >= score
        return Detections(self.boxes[keep], self.scores[keep], self.classes[keep])

    @classmethod
    def labels(cls, boxes: Any, classes: Any) -> "Detections":
        """Ground truth: boxes and classes, every score 1."""
        boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        return cls(boxes, np.ones(len(boxes), np.float32), classes)
