"""Ultralytics' own YOLOv8n, trained here: `zoo:yolov8n_digits`, a real Ultralytics detector for tests and the demo.

The module is Ultralytics' DetectionModel built from its shipped `yolov8n.yaml` with nc=10 and the class names
'0'..'9'; the weights (edgerep/zoo/weights/yolov8n_digits.safetensors, the state dict of the best.pt that
Ultralytics' trainer wrote, stored in float16) were trained by `YOLO("yolov8n.yaml").train(...)` on calib/digits_det
at 160x160 (scripts/train_yolo_digits.py; its figures in bench/train_yolo.json). Loaded, it is treated as every
Ultralytics model is (edgerep.models.ultralytics.as_ultralytics_model): head in export form, one (B, 14, N) output,
letterboxed input, family "ultralytics".

Ultralytics is optional (`pip install 'edgerep[ultralytics]'`): it is imported when the model is built, never when
the zoo is imported or listed.
"""
from __future__ import annotations

from typing import Any

import torch.nn as nn

from edgerep.zoo.registry import register_model

YOLO_DIGITS_SIZE = 160
YOLO_DIGITS_WEIGHTS = "yolov8n_digits.safetensors"


@register_model(
    input_shape=(1, 3, YOLO_DIGITS_SIZE, YOLO_DIGITS_SIZE), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), num_classes=10,
    default_weights=YOLO_DIGITS_WEIGHTS, tags=("detect",),
)
def yolov8n_digits(*, num_classes: int = 10, deploy: bool = False, **kw: Any) -> nn.Module:
    """Ultralytics YOLOv8n (its yolov8n.yaml, nc=10) trained with Ultralytics' trainer on calib/digits_det at
    3x160x160 (RGB/255, letterboxed); ships trained weights; needs ultralytics."""
    # An Ultralytics model has no separate deploy form here: edgerep's fuser folds its BNs (`deploy` is ignored).
    from edgerep.models.ultralytics import build_detection_model

    if kw:
        raise TypeError(f"yolov8n_digits: unexpected arguments {', '.join(sorted(kw))}")
    names = {i: str(i) for i in range(num_classes)}
    return build_detection_model("yolov8n.yaml", num_classes, names=names, spec="zoo:yolov8n_digits")
