"""Scoring an INT8 candidate against the reference: the metrics of edgerep.validate plus the two numbers the
search works with, `drop` (the budgeted quantity) and `nsr` (a smooth error for ranking)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

DYNAMIC_EVAL_BATCH = 32


def drop_of(metrics: dict[str, Any]) -> float:
    """Points lost: labelled top-1 drop where labels exist, else 100 - top-1 agreement with the reference."""
    if metrics.get("top1_drop") is not None:
        return float(metrics["top1_drop"])
    if metrics.get("top1_agreement") is not None:
        return 100.0 - float(metrics["top1_agreement"])
    raise ValueError("the outputs are not class scores: no top-1 to budget; --max-drop needs a classifier")


def drop_metric(metrics: dict[str, Any]) -> str:
    return "top1" if metrics.get("top1_drop") is not None else "top1_agreement"


def nsr_of(metrics: dict[str, Any]) -> float:
    """Noise-to-signal ratio of the outputs (error power / reference power), from the SQNR."""
    sqnr = metrics.get("sqnr_db")
    if sqnr is None:
        return 0.0
    if not np.isfinite(sqnr):
        return float("inf")
    return float(10.0 ** (-sqnr / 10.0))


def score(reference: Any, outputs: np.ndarray) -> dict[str, Any]:
    """accuracy_metrics of `outputs` against a validate.Reference, with `drop` and `nsr` added."""
    from ..validate import accuracy_metrics

    metrics = accuracy_metrics(reference.outputs, outputs.reshape(reference.outputs.shape), reference.labels)
    metrics["nsr"] = nsr_of(metrics)
    try:
        metrics["drop"] = drop_of(metrics)
    except ValueError:
        metrics["drop"] = None
    return metrics


def eval_batch(onnx_path: Path) -> int:
    """The batch to run a model at: its fixed batch, or DYNAMIC_EVAL_BATCH for a dynamic one."""
    from ..onnx_files import onnx_input

    _, shape = onnx_input(Path(onnx_path))
    return int(shape[0]) if shape and shape[0] is not None else DYNAMIC_EVAL_BATCH


def evaluate_runner(runner: Any, reference: Any, batch: int) -> dict[str, Any]:
    from ..validate import engine_outputs

    out = engine_outputs(runner, reference.source, batch, limit=reference.limit)
    return score(reference, out)


def evaluate_onnx(onnx_path: Path, reference: Any, batch: int | None = None) -> dict[str, Any]:
    """Run an ONNX (e.g. Q/DQ) model in ONNX Runtime on the CPU over the reference's data and score it.

    Q/DQ runs as simulated (float) quantization, so the score is the same on every CPU: this evaluates a
    quantization choice, not this machine's integer kernels (see OrtRunner)."""
    from ..backends.onnxruntime import OrtRunner

    runner = OrtRunner(Path(onnx_path), simulate_qdq=True)
    try:
        return evaluate_runner(runner, reference, batch or eval_batch(onnx_path))
    finally:
        runner.close()


def brief(metrics: dict[str, Any]) -> dict[str, Any]:
    """The metrics worth keeping per candidate in a report."""
    keys = ("drop", "nsr", "cosine", "sqnr_db", "top1", "ref_top1", "top1_drop", "top1_agreement", "max_abs_err")
    return {k: metrics.get(k) for k in keys}
