"""Per-output errors for the stage checks (fuse, export, simplify): one record per named output.

A stage check compares every output of a model with its reference, each against its own scale: a detector's
box coordinates (hundreds of pixels) and class scores (0..1) share no tolerance, so the relative error of an
output is max|out - ref| / max|ref| of that output. The stage's overall error is the worst output's, which for
a one-output model is today's number. Ground floor: numpy and edgerep.errors only.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from edgerep.errors import UserError


def output_errors(refs: list[np.ndarray], outs: list[np.ndarray], names: list[str], *,
                  where: str) -> list[dict[str, Any]]:
    """[{name, shape, max_abs_err, max_rel_err}] for outputs `outs` against `refs` (same order as `names`).

    `where` starts the UserError raised when the counts or a shape differ (e.g. "stage export: ONNX"), so the
    message names the stage and the output. A NaN/Inf output gives a NaN/Inf error, which fails every tolerance."""
    if len(outs) != len(refs):
        raise UserError(f"{where} gives {len(outs)} output(s) where the reference gives {len(refs)} "
                        f"({', '.join(names)}): outputs were lost or added on the way")
    records = []
    for name, ref, out in zip(names, refs, outs):
        ref64, out64 = np.asarray(ref, dtype=np.float64), np.asarray(out, dtype=np.float64)
        if ref64.shape != out64.shape:
            raise UserError(f"{where} output shape {list(out64.shape)} of '{name}' differs from the reference "
                            f"{list(ref64.shape)}")
        err = float(np.max(np.abs(out64 - ref64))) if out64.size else 0.0
        scale = max(float(np.max(np.abs(ref64))) if ref64.size else 0.0, 1e-12)
        records.append({"name": name, "shape": list(ref64.shape), "max_abs_err": err, "max_rel_err": err / scale})
    return records


def merge_errors(seen: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The worst of two runs per output (by name); the first run's shape is kept (checks run several shapes)."""
    if not seen:
        return [dict(r) for r in new]
    by_name = {r["name"]: r for r in new}
    merged = []
    for old in seen:
        cur = by_name.get(old["name"], old)
        merged.append({**old, "max_abs_err": max(old["max_abs_err"], cur["max_abs_err"]),
                       "max_rel_err": max(old["max_rel_err"], cur["max_rel_err"])})
    return merged


def worst_output(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The record with the largest relative error (NaN counts as the largest), None for no records."""
    if not records:
        return None
    return max(records, key=lambda r: math.inf if math.isnan(r["max_rel_err"]) else r["max_rel_err"])


def over_tolerance(records: list[dict[str, Any]], tol: float) -> list[dict[str, Any]]:
    """The outputs whose relative error exceeds `tol` (or is NaN), worst first."""
    bad = [r for r in records if math.isnan(r["max_rel_err"]) or r["max_rel_err"] > tol]
    return sorted(bad, key=lambda r: -math.inf if math.isnan(r["max_rel_err"]) else -r["max_rel_err"])


def describe_failures(records: list[dict[str, Any]], tol: float) -> str:
    """"relative error 0.31 > tol 0.0001 (max abs 0.2) in output 'scores'", worst first; names every bad output."""
    bad = over_tolerance(records, tol)
    parts = [f"relative error {r['max_rel_err']:.3g} > tol {tol:g} (max abs {r['max_abs_err']:.3g}) "
             f"in output '{r['name']}'" for r in bad]
    return "; ".join(parts)
