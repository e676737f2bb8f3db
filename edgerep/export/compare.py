"""Numeric checks of an ONNX file against PyTorch (or the file before it), every output on its own scale."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn

from edgerep.errors import UserError, one_line


def ort_session(onnx_path: Path) -> Any:
    """An ONNX Runtime CPU session (intra-op threads left to ORT)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])


def torch_reference(model: nn.Module) -> Callable[[np.ndarray], list[np.ndarray]]:
    """A numpy-in function running `model` in eval mode without gradients; returns every output as float32
    numpy arrays in ONNX order (edgerep.models.outputs)."""
    from edgerep.models.outputs import to_numpy_list

    model.eval()

    def run(x: np.ndarray) -> list[np.ndarray]:
        with torch.no_grad():
            return to_numpy_list(model(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))))

    return run


def compare_onnx(onnx_path: Path, reference: Callable[[np.ndarray], Any] | nn.Module,
                 inputs: list[np.ndarray], *, stage: str, tol: float, reference_name: str = "PyTorch") -> dict:
    """Run the ONNX file in ONNX Runtime (CPU) and compare every output with `reference` on each input.

    `reference(x)` returns the outputs in ONNX order (a list of arrays, or one array for a one-output model).
    Each output's error is relative to its own largest reference magnitude: max|ort - ref| / max|ref|, so one
    tolerance fits logits, scores and box coordinates alike. Raises UserError naming `stage` and the output
    when one exceeds `tol`, a count or shape differs or an output is not finite; else returns the numbers:
    max_abs_err / max_rel_err (the worst output's, today's keys) and `per_output`
    [{name, shape, max_abs_err, max_rel_err}].
    """
    from edgerep.models.output_errors import describe_failures, merge_errors, output_errors, worst_output

    ref_fn = torch_reference(reference) if isinstance(reference, nn.Module) else reference
    try:
        session = ort_session(Path(onnx_path))
    except Exception as exc:
        raise UserError(f"stage {stage}: ONNX Runtime cannot load {Path(onnx_path).name} ({one_line(exc)})") from None
    input_name = session.get_inputs()[0].name
    names = [o.name for o in session.get_outputs()]
    per_output: list[dict] = []
    shapes = []
    for x in inputs:
        x = np.ascontiguousarray(x, dtype=np.float32)
        try:
            outs = session.run(None, {input_name: x})
        except Exception as exc:
            raise UserError(f"stage {stage}: ONNX Runtime fails on input {list(x.shape)} ({one_line(exc)})") from None
        ref = ref_fn(x)
        refs = [ref] if isinstance(ref, np.ndarray) else list(ref)
        for name, out in zip(names, outs):
            if not np.all(np.isfinite(out)):
                raise UserError(f"stage {stage}: ONNX Runtime output '{name}' holds NaN/Inf on input {list(x.shape)}")
        try:
            found = output_errors(refs, outs, names, where=f"stage {stage}: ONNX")
        except UserError as exc:
            raise UserError(f"{exc.message} ({reference_name}, input {list(x.shape)})") from None
        per_output = merge_errors(per_output, found)
        shapes.append(list(x.shape))
    worst = worst_output(per_output)
    max_rel = worst["max_rel_err"] if worst else 0.0
    max_abs = max((r["max_abs_err"] for r in per_output), default=0.0)
    result = {"stage": stage, "reference": reference_name, "onnx": Path(onnx_path).name, "max_abs_err": max_abs,
              "max_rel_err": max_rel, "tol": tol, "shapes": shapes, "passed": max_rel <= tol,
              "per_output": per_output}
    if not result["passed"] or math.isnan(max_rel):
        raise UserError(f"stage {stage}: ONNX Runtime output differs from {reference_name}: "
                        f"{describe_failures(per_output, tol)}; the {stage} step changed the numbers")
    return result


def check_inputs(shape: tuple[int, ...], *, dynamic_batch: bool, seed: int = 0) -> list[np.ndarray]:
    """Random normal inputs for the stage checks: two at the model's shape, one more at batch 2 if dynamic."""
    rng = np.random.default_rng(seed)
    shapes = [tuple(shape), tuple(shape)]
    if dynamic_batch:
        shapes.append((shape[0] + 1, *shape[1:]))
    return [rng.standard_normal(s).astype(np.float32) for s in shapes]
