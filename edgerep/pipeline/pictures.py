"""The build's picture stage for detectors: the reference's and each engine's boxes on a few validation images,
side by side (DIR/detections.png, linked from report.md).

The engines are re-run on those few images only (a handful of single-image calls, cheap next to validation);
the reference's outputs are the ones validation already holds. A picture that cannot be drawn never fails the
build: the stage says why and the report goes without it.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

if TYPE_CHECKING:

    from edgerep.backends.base import Backend, Runner
    from edgerep.models.specs import ModelInfo
    from edgerep.targets import TargetProfile
    from edgerep.validate.engine import Reference

PICTURE_IMAGES = 3  # rows of the picture
_CANDIDATES = 16  # the first samples looked at for images with boxes in them


def pictures_stage(log: Any, backend: Backend, artifacts: Mapping[str, Any], reference: Reference, info: ModelInfo,
                   profile: TargetProfile,
                   out_dir: Path, *, k: int = PICTURE_IMAGES) -> dict[str, Any] | None:
    """Draw DIR/detections.png; returns report.json's `pictures` entry ({"detections": file name, "images",
    "columns"}) or None when it could not be drawn (the stage's detail says why)."""
    with log.stage("pictures", "drawing the reference's and each engine's boxes") as st:
        try:
            result = _draw(backend, artifacts, reference, info, profile, Path(out_dir), k)
        except Exception as exc:  # a picture is a courtesy: never a reason for a failed build
            text = str(exc).strip().splitlines()
            st["status"], st["detail"] = "skipped", f"not drawn: {type(exc).__name__}: {text[0] if text else ''}"
            return None
        st["detail"] = f"{result['detections']} ({len(result['images'])} images, {len(result['columns'])} columns)"
    return result


def _decode_options(reference: Reference, info: ModelInfo) -> dict[str, Any]:
    """How validation decoded the head (the reference's task when it has one), else what the model says."""
    scorer = getattr(reference, "scorer", None)
    layout = getattr(scorer, "layout", None) or getattr(info, "head_layout", None) or "auto"
    num_classes = getattr(scorer, "num_classes", None) or getattr(info, "num_classes", None)
    options: dict[str, Any] = {"layout": layout, "num_classes": num_classes}
    for key in ("score_threshold", "iou_threshold"):
        if getattr(scorer, key, None) is not None:
            options[key] = float(getattr(scorer, key))
    return options


def _draw(backend: Backend, artifacts: Mapping[str, Any], reference: Reference, info: ModelInfo,
          profile: TargetProfile, out_dir: Path,
          k: int) -> dict[str, Any]:
    from edgerep.data.detect_source import DetectionSource
    from edgerep.tasks.detect_pictures import detection_pictures, pick_images

    source = reference.source
    if not isinstance(source, DetectionSource):
        raise ValueError("the validation data are not letterboxed images (arrays have no image to draw on)")
    options = _decode_options(reference, info)
    head = np.asarray(reference.outputs, dtype=np.float32)
    n = min(len(head), _CANDIDATES)
    labels = source.labels if source.has_labels else None
    indices = pick_images(head[:n], k, labels=labels, decode_options={
        key: options[key] for key in ("layout", "num_classes", "score_threshold", "iou_threshold") if key in options})
    inputs = next(source.iter_batches(n, limit=n))[0][indices]
    static_batch = 1 if profile.dynamic_batch else int(info.input_shape[0])
    engines: dict[str, np.ndarray] = {}
    for precision, artifact in artifacts.items():
        if getattr(artifact, "status", None) != "ok" or getattr(artifact, "path", None) is None:
            continue  # failed, or built on the device (TensorRT): nothing to run here
        try:
            with backend.load(artifact) as runner:
                engines[f"{backend.name} {precision}"] = _run_each(runner, inputs, static_batch)
        except Exception:  # an engine that crashes here crashed in validation too, where its record says so
            continue
    if not engines:
        raise ValueError("no engine could run here")
    path = detection_pictures(out_dir, source, head[indices], engines, indices=indices,
                              class_names=getattr(info, "class_names", None), **options)
    return {"detections": path.name, "images": [str(source.files[i]) for i in indices],
            "columns": (["labels"] if labels is not None else []) + ["pytorch (reference)", *engines]}


def _run_each(runner: Runner, inputs: np.ndarray, static_batch: int) -> np.ndarray:
    """The engine's first output on each input alone (repeated to a fixed-batch engine's batch, then cut)."""
    outs = []
    for x in inputs:
        xb = np.ascontiguousarray(np.repeat(x[None], static_batch, axis=0), dtype=np.float32)
        outs.append(np.asarray(runner.run_all(xb)[0], dtype=np.float32)[:1])
    return np.concatenate(outs)
