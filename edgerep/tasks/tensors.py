"""Tensor error metrics of engine outputs against reference outputs: what every task reports per output."""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np


def tensor_metrics(ref: np.ndarray, out: np.ndarray) -> dict[str, Any]:
    """max_abs_err, mean_abs_err, cosine (mean over samples of the per-sample cosine), cosine_min, sqnr_db
    (10*log10(signal power / error power); None when identical) and num_samples; first axis = samples."""
    ref = np.asarray(ref, dtype=np.float64)
    out = np.asarray(out, dtype=np.float64)
    if ref.shape != out.shape:
        raise ValueError(f"engine output shape {out.shape} differs from the reference {ref.shape}")
    n = ref.shape[0]
    r2, o2 = ref.reshape(n, -1), out.reshape(n, -1)
    diff = o2 - r2
    dot = np.sum(r2 * o2, axis=1)
    norms = np.linalg.norm(r2, axis=1) * np.linalg.norm(o2, axis=1)
    # Two all-zero vectors are the same vector (cosine 1); one zero and one not are unrelated (0).
    both_zero = (np.linalg.norm(r2, axis=1) == 0) & (np.linalg.norm(o2, axis=1) == 0)
    cos = np.where(norms > 0, dot / np.where(norms > 0, norms, 1.0), np.where(both_zero, 1.0, 0.0))
    noise = float(np.sum(diff * diff))
    signal = float(np.sum(r2 * r2))
    if noise == 0.0:
        sqnr = None
    elif signal == 0.0:
        sqnr = -math.inf
    else:
        sqnr = 10.0 * math.log10(signal / noise)
    return {
        "max_abs_err": float(np.max(np.abs(diff))) if diff.size else 0.0,
        "mean_abs_err": float(np.mean(np.abs(diff))) if diff.size else 0.0,
        "cosine": float(np.mean(cos)) if cos.size else 1.0,
        "cosine_min": float(np.min(cos)) if cos.size else 1.0,
        "sqnr_db": sqnr,
        "num_samples": int(n),
    }


OUTPUT_KEYS = ("max_abs_err", "mean_abs_err", "cosine", "sqnr_db")


def output_errors(refs: Sequence[np.ndarray], outs: Sequence[np.ndarray], names: Sequence[str]) -> list[dict[str, Any]]:
    """Per output: {name, shape, max_abs_err, mean_abs_err, cosine, sqnr_db} of the engine's i-th output against
    the reference's i-th (ONNX order). Outputs the engine did not return are listed with `missing`."""
    rows: list[dict[str, Any]] = []
    for i, ref in enumerate(refs):
        name = names[i] if i < len(names) else f"output{i}"
        row: dict[str, Any] = {"name": name, "shape": list(np.shape(ref))}
        if i < len(outs):
            out = np.asarray(outs[i])
            n = min(len(ref), len(out))
            m = tensor_metrics(ref[:n], out[:n].reshape(np.shape(ref[:n])))
            row.update({k: m[k] for k in OUTPUT_KEYS})
        else:
            row.update({k: None for k in OUTPUT_KEYS})
            row["missing"] = "the engine's runner returned fewer outputs"
        rows.append(row)
    return rows
