"""Range repairs on the float ONNX before INT8: cross-layer equalization (exact in float) and bias correction.

`apply_repairs` is the one entry point every backend's INT8 build calls (through backends.common.int8_source) with
the same inputs, so the repaired model is the same bytes on OpenVINO, ONNX Runtime and TensorRT; edgerep.quant.repair
re-exports it for the INT8 search. It lives in the backends room because a backend may not import quant (the
layer rule of scripts/check_layers.py); it needs onnx, numpy, onnxruntime (float runs) and torch (conv means).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from edgerep.backends.repair.graph import DEFAULT_SAMPLES, output_difference, run_outputs
from edgerep.errors import UserError

REPAIR_OPTION = "range_repair"  # build option: a list of repair names, applied in this order
REPAIRS = ("equalize", "bias_correction")
# Which backends the search may try each repair on. OpenVINO has no "bias_correction" here: NNCF already corrects
# biases there (its own `bias_correction` option, fast or full), and a second correction would double it.
_CAPABLE = {"equalize": ("openvino", "onnxruntime", "tensorrt"), "bias_correction": ("onnxruntime", "tensorrt")}
EXACT = ("equalize",)  # repairs that must leave the float function unchanged


def check_repairs(repairs: Sequence[str] | None, *, backend_name: str | None = None) -> list[str]:
    """The repair names, each known (and, given `backend_name`, offered on that backend)."""
    names = [repairs] if isinstance(repairs, str) else [str(r) for r in (repairs or [])]
    unknown = [r for r in names if r not in REPAIRS]
    if unknown:
        raise UserError(f"{REPAIR_OPTION}: unknown repair {', '.join(unknown)} (known: {', '.join(REPAIRS)})")
    if len(set(names)) != len(names):
        raise UserError(f"{REPAIR_OPTION}: {', '.join(names)} names a repair twice; list each once")
    if backend_name is not None:
        refused = [r for r in names if backend_name not in _CAPABLE[r]]
        if refused:
            hint = " (it has NNCF's: the `bias_correction` build option)" if backend_name == "openvino" else ""
            raise UserError(f"{REPAIR_OPTION}: {', '.join(refused)} is not offered on {backend_name}{hint}; "
                            f"this backend takes {', '.join(repair_capable(backend_name)) or 'none'}")
    return names


def repair_capable(backend_name: str) -> tuple[str, ...]:
    """The repairs the INT8 search may try on a backend, in the order they are applied."""
    return tuple(r for r in REPAIRS if backend_name in _CAPABLE[r])


def apply_repairs(onnx_path: Path, out_path: Path, repairs: Sequence[str], *, calib: Any, weights: str = "s8",
                  num_samples: int = DEFAULT_SAMPLES, per_channel: bool = True,
                  float_nodes: Sequence[str] = ()) -> dict[str, Any]:
    """Write `onnx_path` with `repairs` applied (in that order) to `out_path`, atomically; return the report.

    `weights` ("s8", "s7", "u8"), `per_channel` and `float_nodes` only matter to bias_correction: the backend's
    weight quantizer whose rounding it cancels, and the layers the plan keeps in float (left uncorrected).
    Report: {"repairs", "equalize": {"pairs", "layers", "absorbed_bias", "float_check", ...},
    "bias_correction": {"layers", "float_shift", ...}, "float_check": {"max_abs_err", "max_rel_err", "ok"}}.
    A repair whose float check fails (equalize) is skipped and says so; float_check.ok is then False."""
    import onnx

    from edgerep.backends.repair.bias_correction import WEIGHTS, bias_correction
    from edgerep.backends.repair.equalize import TOLERANCE, equalize
    from edgerep.files.onnx_files import onnx_sha256, save_onnx

    names = check_repairs(repairs)
    if calib is None:
        raise UserError(f"{REPAIR_OPTION}: the repairs need calibration data; pass --calib")
    if weights not in WEIGHTS:
        raise UserError(f"int8_weights {weights!r}: use one of {', '.join(WEIGHTS)}")
    onnx_path, out_path = Path(onnx_path), Path(out_path)
    original = onnx.load(str(onnx_path))
    model = original
    report: dict[str, Any] = {"repairs": names, "source": str(onnx_path), "source_sha256": onnx_sha256(onnx_path)}
    ok = True
    for name in names:
        if name == "equalize":
            model, part = equalize(model, calib, num_samples=num_samples)
            ok = ok and bool(part["float_check"]["ok"])
        else:
            model, part = bias_correction(model, calib, weights=weights, num_samples=num_samples,
                                          per_channel=per_channel, float_nodes=float_nodes)
        report[name] = part
    diff = output_difference(run_outputs(original, calib, num_samples), run_outputs(model, calib, num_samples))
    exact = all(n in EXACT for n in names)
    # ok: every exact repair held (a refused one was skipped); with bias_correction the float output moves by
    # design, and max_*_err is that shift.
    report["float_check"] = {**diff, "ok": ok and (diff["max_rel_err"] <= TOLERANCE or not exact), "exact": exact,
                             "tolerance": TOLERANCE}
    save_onnx(model, out_path)
    report["onnx"] = str(out_path)
    report["onnx_sha256"] = onnx_sha256(out_path)
    return report


__all__ = ["REPAIRS", "REPAIR_OPTION", "apply_repairs", "check_repairs", "repair_capable"]
