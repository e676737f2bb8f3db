"""Scoring an INT8 candidate against the reference: the metrics of the reference's task (edgerep.tasks) plus the
numbers the search works with, `drop` (the budgeted quantity, in the task's unit: points of top-1 for
classifiers, points of mAP@0.5:0.95 for detectors), its standard error `drop_se` (drop_stderr) and `nsr` (a smooth
error for ranking)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgerep.tasks import task_named
from edgerep.tasks.base import Task

DYNAMIC_EVAL_BATCH = 32
BOOTSTRAP_DRAWS = 20  # mAP's standard error: resamples of the images (each one a full rescoring, so few)
BOOTSTRAP_SEED = 0


def _task_of(metrics: dict[str, Any]) -> Task:
    return task_named(metrics.get("task"))


def drop_of(metrics: dict[str, Any]) -> float:
    """Points lost in the task's unit (tasks.Task.drop): classify: labelled top-1 drop where labels exist, else
    100 - top-1 agreement; detect: labelled mAP@0.5:0.95 drop, else 100 * (1 - agreement mAP@0.5:0.95).
    ValueError when the metrics carry nothing to budget (task raw)."""
    return _task_of(metrics).drop(metrics)


def drop_metric(metrics: dict[str, Any]) -> str | None:
    """The metric drop_of used: top1, top1_agreement, labelled_map or map_agreement."""
    return _task_of(metrics).drop_metric(metrics)


# The metric's own value in points (higher is better), whose difference between two models is drop_of's.
_VALUE = {"top1": ("top1", 1.0), "top1_agreement": ("top1_agreement", 1.0), "labelled_map": ("labelled_map", 100.0),
          "map_agreement": ("map_agreement", 100.0)}


def value_of(metrics: dict[str, Any]) -> float:
    """The budgeted metric itself in points (top-1 in percent, mAP x 100): what NNCF's validation function returns."""
    key, scale = _VALUE[drop_metric(metrics) or "top1_agreement"]
    return scale * float(metrics[key])


def drop_unit(metrics: dict[str, Any]) -> str:
    """The unit of drop_of in words, e.g. "points of labelled mAP@0.5:0.95"."""
    return {"top1": "points of labelled top-1", "top1_agreement": "points of top-1 agreement with the reference",
            "labelled_map": "points of labelled mAP@0.5:0.95",
            "map_agreement": "points of agreement mAP@0.5:0.95 with the reference"}.get(
        drop_metric(metrics) or "", "no unit (tensor metrics only)")


def nsr_of(metrics: dict[str, Any]) -> float:
    """Noise-to-signal ratio of the outputs (error power / reference power), from the SQNR."""
    sqnr = metrics.get("sqnr_db")
    if sqnr is None:
        return 0.0
    if not np.isfinite(sqnr):
        return float("inf")
    return float(10.0 ** (-sqnr / 10.0))


def score(reference: Any, outputs: Any, *, bootstrap: bool = False) -> dict[str, Any]:
    """The reference's task's metrics of `outputs` (every output in ONNX order, or the first as one array) against
    a validate.Reference, with `drop` (None when the task has nothing to budget), `drop_metric` and `nsr` added."""
    outs = [outputs] if isinstance(outputs, np.ndarray) else list(outputs)
    metrics = reference.scorer.score(reference, outs)
    metrics["nsr"] = nsr_of(metrics)
    try:
        metrics["drop"] = reference.scorer.drop(metrics)
        metrics["drop_metric"] = reference.scorer.drop_metric(metrics)
    except ValueError:
        metrics["drop"], metrics["drop_metric"] = None, None
    metrics["n"] = int(np.asarray(outs[0]).shape[0])
    # the classifiers' error is a closed form; a detector's is a bootstrap of full rescorings, done only on request
    wanted = metrics["drop"] is not None and (bootstrap or reference.task == "classify")
    metrics["drop_se"] = drop_stderr(reference, outs, metrics) if wanted else None
    return metrics


def drop_stderr(reference: Any, outs: list[Any], metrics: dict[str, Any]) -> float | None:
    """The standard error of `drop` in points, over the validation images.

    Classifiers: the drop is the mean over images of a paired difference d_i (labelled: reference correct minus
    engine correct, in {-1, 0, 1}; agreement: 1 where the engine's class differs from the reference's), so its
    error is sd(d) / sqrt(n): for agreement that is the binomial sqrt(q (1 - q) / n) of the disagreement rate q;
    labelled, it counts only the images the two models disagree on, which is far smaller than the error of two
    separate top-1 figures (most images are right in both). Detectors: a bootstrap over images (BOOTSTRAP_DRAWS
    resamples, fixed seed) of the whole drop, reference and engine rescored on each resample."""
    first = np.asarray(outs[0])
    n = int(first.shape[0])
    if n < 2:
        return None
    if reference.task == "classify":
        ref = np.asarray(reference.outputs[:n])
        eng = first.reshape(ref.shape).argmax(axis=1)
        ref_cls = ref.argmax(axis=1)
        if metrics.get("drop_metric") == "top1":
            labels = np.asarray(reference.labels[:n]).reshape(-1)
            d = (ref_cls == labels).astype(np.float64) - (eng == labels).astype(np.float64)
        else:
            d = (eng != ref_cls).astype(np.float64)
        return float(100.0 * d.std(ddof=1) / np.sqrt(n))
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    drops = []
    for _ in range(BOOTSTRAP_DRAWS):
        idx = rng.integers(0, n, size=n)
        sub = subset_view(reference, idx)  # carries the reference's detections; its labelled mAP is rescored
        try:
            drops.append(float(reference.scorer.drop(reference.scorer.score(sub, [np.asarray(o)[idx] for o in outs]))))
        except (ValueError, KeyError, TypeError):
            return None
    return float(np.std(drops, ddof=1)) if len(drops) > 1 else None


def resolution(n: int) -> float:
    """Points one validation image is worth (100 / n): no drop can be measured finer than that."""
    return 100.0 / max(int(n), 1)


def subset_view(reference: Any, indices: Any) -> Any:
    """A reference restricted to the samples `indices` (same scorer), for scoring a subset of the validation data."""
    from types import SimpleNamespace

    idx = np.asarray(indices, dtype=np.int64)
    labels = reference.labels
    if labels is not None:
        labels = [labels[i] for i in idx] if isinstance(labels, list) else np.asarray(labels)[idx]
    dets = [reference.detections[i] for i in idx] if getattr(reference, "detections", None) is not None else None
    return SimpleNamespace(outputs=reference.outputs[idx], outputs_all=[o[idx] for o in reference.outputs_all],
                           output_names=reference.output_names, labels=labels, detections=dets, info={},
                           scorer=reference.scorer, task=reference.task, top1=None)


def eval_batch(onnx_path: Path) -> int:
    """The batch to run a model at: its fixed batch, or DYNAMIC_EVAL_BATCH for a dynamic one."""
    from edgerep.files.onnx_files import onnx_input

    _, shape = onnx_input(Path(onnx_path))
    return int(shape[0]) if shape and shape[0] is not None else DYNAMIC_EVAL_BATCH


def evaluate_runner(runner: Any, reference: Any, batch: int, *, bootstrap: bool = False) -> dict[str, Any]:
    from edgerep.validate.engine import engine_outputs_all

    return score(reference, engine_outputs_all(runner, reference.source, batch, limit=reference.limit),
                 bootstrap=bootstrap)


def evaluate_onnx(onnx_path: Path, reference: Any, batch: int | None = None, *,
                  bootstrap: bool = False) -> dict[str, Any]:
    """Run an ONNX (e.g. Q/DQ) model in ONNX Runtime on the CPU over the reference's data and score it.

    Q/DQ runs as simulated (float) quantization, so the score is the same on every CPU: this evaluates a
    quantization choice, not this machine's integer kernels (see OrtRunner)."""
    from edgerep.backends.onnxruntime.runner import OrtRunner

    with OrtRunner(Path(onnx_path), simulate_qdq=True) as runner:
        return evaluate_runner(runner, reference, batch or eval_batch(onnx_path), bootstrap=bootstrap)


def brief(metrics: dict[str, Any]) -> dict[str, Any]:
    """The metrics worth keeping per candidate in a report."""
    keys = ("drop", "drop_se", "drop_se_from", "n", "drop_metric",
            "nsr", "cosine", "sqnr_db", "top1", "ref_top1", "top1_drop", "top1_agreement",
            "max_abs_err")
    out = {k: metrics.get(k) for k in keys}
    out.update({k: metrics.get(k) for k in _task_of(metrics).plan_keys})
    return out
