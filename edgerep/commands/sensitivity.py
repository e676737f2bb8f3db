"""`edgerep sensitivity`: per-layer INT8 sensitivity, range statistics and a calibration study for one model.

Writes DIR/sensitivity.json (everything), DIR/sensitivity.md (the tables) and DIR/sensitivity.png (the bar
plot), atomically, and prints the worst layers, the range outliers and the calibration study.
"""
from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from edgerep.errors import UserError
from edgerep.files.output_lock import locks_output
from edgerep.tasks import task_named


@locks_output("output")  # one writer per folder, taken before anything loads
def run_sensitivity(*, model: str, weights: Path | None = None, input_shape: str | None = None,
                    num_classes: int | None = None, trust_pickle: bool = False, target: str = "openvino-cpu",
                    calib: Path | None = None, val: Path | None = None, calib_samples: int | None = None,
                    calib_method: str | None = None, val_samples: int | None = None, top: int = 10,
                    study: bool = True, output: Path = Path("sensitivity"), as_json: bool = False, isa: str | None = None,
                    task: str | None = None, score_threshold: float | None = None, iou_threshold: float | None = None,
                    keep_float: list[str] | None = None, out: Any = None, console: Any = None) -> int:
    """Run the analysis; returns the exit code (0). `keep_float`: layers (ONNX nodes or module paths) that stay in
    float in every measurement, as `edgerep build --keep-float` keeps them."""
    import torch

    from edgerep.backends import backend_for
    from edgerep.export.pipeline import export_pipeline
    from edgerep.files.artifacts import write_json_atomic
    from edgerep.fuse import fuse
    from edgerep.models.specs import load_model
    from edgerep.quant.evaluate import drop_unit
    from edgerep.quant.layers import module_names_of, resolve_keep_float
    from edgerep.quant.plot import plot_sensitivity
    from edgerep.quant.qdq import METHODS, weights_for
    from edgerep.quant.ranges import range_stats
    from edgerep.quant.sensitivity import calibration_study, layer_sensitivity
    from edgerep.targets import load_target
    from edgerep.tasks import resolve_task
    from edgerep.validate.engine import compute_reference

    t0 = time.perf_counter()
    profile = load_target(target, isa=isa)
    style = backend_for(profile).capabilities.qdq_style
    method = calib_method or profile.calibration.method or "minmax"
    if method not in METHODS:
        raise UserError(f"--calib-method {method}: not one of {', '.join(METHODS)}")
    num = calib_samples or profile.calibration.num_samples
    if num < 1:
        raise UserError(f"--calib-samples {num}: must be a positive integer")
    if top < 1:
        raise UserError(f"--top {top}: must be a positive integer")
    torch.manual_seed(0)
    from edgerep.data.sources import array_input_shape

    info = load_model(model, weights=weights, input_shape=input_shape, num_classes=num_classes, trust_pickle=trust_pickle,
                      fallback_shape=array_input_shape(calib, val) if input_shape is None else None)
    scorer = resolve_task(info, task, score_threshold=score_threshold, iou_threshold=iou_threshold)
    calib_source, val_source = _open_data(info, calib, val)
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    _say(console, f"fusing and exporting {info.spec} (opset {profile.opset})")
    fused = fuse(info.module, torch.randn(*info.input_shape, generator=torch.Generator().manual_seed(0)))
    exported = export_pipeline(info, fused.model, output / "onnx", opset=profile.opset,
                               dynamic_batch=profile.dynamic_batch)
    onnx_path = Path(exported.sim_path)
    names = module_names_of(fused.model) | module_names_of(info.module)
    fixed = resolve_keep_float(keep_float, onnx_path, module_names_of(info.module)) if keep_float else []
    reference = compute_reference(info.module, val_source, limit=val_samples, task=scorer)
    if not reference.scorer.can_budget(reference):
        _say(console, f"task {reference.task} ({reference.scorer.note or 'tensor metrics only'}): sensitivity is "
                      f"reported as output noise only")
    work = output / ".work"
    try:
        _say(console, f"measuring each layer ({style} Q/DQ placement, {method} calibration, {num} samples)")
        weight_format = weights_for(style, profile)
        sens = layer_sensitivity(onnx_path, calib_source, reference, work / "layers", style=style, method=method,
                                 num_samples=num, module_names=names, weights=weight_format, keep_float=fixed,
                                 progress=(lambda m: _say(console, m, dim=True)) if console is not None else None)
        _say(console, "range statistics")
        ranges = range_stats(onnx_path, calib_source, num_samples=min(num, 128), module_names=names)
        studied = calibration_study(onnx_path, calib_source, reference, work / "study", style=style,
                                    num_samples=num, weights=weight_format) if study else []
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {
        "schema": 1, "model": {"spec": info.spec, "weights": info.weights, "input_shape": list(info.input_shape)},
        "target": profile.name, "onnx": str(onnx_path), "reference": {"kind": "pytorch-unfused",
                                                                     "num_samples": int(reference.outputs.shape[0]),
                                                                     "top1": reference.top1,
                                                                     **reference.report_fields()},
        "task": reference.task, "drop_unit": drop_unit({**sens.all_int8, "task": reference.task}),
        "keep_float": fixed, "sensitivity": sens.to_dict(), "ranges": ranges, "calibration_study": studied,
        "seconds": time.perf_counter() - t0,
    }
    write_json_atomic(output / "sensitivity.json", result)
    plot_sensitivity(sens.to_dict(), output / "sensitivity.png", ranges=ranges)
    _write_markdown(output / "sensitivity.md", result, top)
    if as_json:
        sys.stdout.write(json.dumps(result, default=str) + "\n")
    elif out is not None:
        _print_tables(out, result, top)
        out.print(f"written: {output / 'sensitivity.json'}  {output / 'sensitivity.md'}  {output / 'sensitivity.png'}",
                  highlight=False)
    return 0


def _open_data(info: Any, calib: Path | None, val: Path | None) -> tuple[Any, Any]:
    from edgerep.data.sources import default_data_paths, needs_preprocess, open_data, preprocess_for

    shape = tuple(info.input_shape)
    if calib is None or val is None:
        d_calib, d_val = default_data_paths(info)
        calib = calib if calib is not None else d_calib
        val = val if val is not None else (d_val or calib)

    def opened(path: Path, role: str) -> Any:
        path = Path(path)
        return open_data(path, preprocess_for(info) if needs_preprocess(path) else None, expect_shape=shape, role=role)

    return opened(calib, "calib"), opened(val, "val")


def _say(console: Any, text: str, dim: bool = False) -> None:
    if console is not None:
        console.print(f"[dim]{text}[/]" if dim else text, highlight=False)


def _fmt(v: Any, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def _rows(result: dict[str, Any], top: int) -> list[list[str]]:
    flags = {r["node"]: r.get("flags") or [] for r in result["ranges"]}
    rows = []
    for r in result["sensitivity"]["layers"][:top]:
        f, q = r["float_one"], r["quant_one"]
        rows.append([str(r["rank"]), r.get("module") or "?", r["node"], _fmt(r["score"], ".1e"),
                     f"{_fmt(f['nsr'], '.1e')} / {_fmt(f['drop'], '+.2f')}",
                     f"{_fmt(q['nsr'], '.1e')} / {_fmt(q['drop'], '+.2f')}",
                     "; ".join(flags.get(r["node"], []))])
    return rows


_HEAD = ["#", "module", "ONNX node", "score", "alone float: NSR / drop", "alone INT8: NSR / drop", "range flags"]


def _print_tables(out: Any, result: dict[str, Any], top: int) -> None:
    from rich import box
    from rich.table import Table

    sens = result["sensitivity"]
    a = sens["all_int8"]
    ref = result["reference"]
    ref_text = task_named(result.get("task")).reference_text(ref)
    out.print(f"all layers INT8: NSR {a['nsr']:.2e}, cosine {a['cosine']:.5f}, drop {_fmt(a['drop'], '.2f')} "
              f"({result.get('drop_unit')}); {ref_text}", highlight=False)
    table = Table(title=f"most sensitive layers (top {top})", box=box.SIMPLE_HEAD)
    for h in _HEAD:
        table.add_column(h, overflow="fold", no_wrap=h in ("#", "score"))
    for row in _rows(result, top):
        table.add_row(*row)
    out.print(table)
    if result["calibration_study"]:
        st = Table(title="calibration study (whole model INT8)", box=box.SIMPLE_HEAD)
        for h in ("method", "weights", "drop", "NSR", "cosine"):
            st.add_column(h)
        for r in result["calibration_study"]:
            st.add_row(r["calib_method"], "per-channel" if r["per_channel"] else "per-tensor", _fmt(r["drop"], "+.2f"),
                       _fmt(r["nsr"], ".2e"), _fmt(r["cosine"], ".5f"))
        out.print(st)


def _write_markdown(path: Path, result: dict[str, Any], top: int) -> None:
    from edgerep.files.artifacts import atomic_path

    sens = result["sensitivity"]
    lines = [f"# INT8 sensitivity: {result['model']['spec']} ({result['target']})", "",
             f"Settings: {sens['settings']}. Drop in {result.get('drop_unit')} ({sens['drop_metric']}); "
             f"NSR = output noise / signal "
             f"against the unfused PyTorch model.", "",
             "| " + " | ".join(_HEAD) + " |", "|" + "---|" * len(_HEAD)]
    lines += ["| " + " | ".join(row) + " |" for row in _rows(result, top)]
    flagged = [r for r in result["ranges"] if r.get("flags")]
    lines += ["", "## Range outliers", ""]
    lines += [f"- `{r['node']}` ({r.get('module')}): {'; '.join(r['flags'])}" for r in flagged] or ["none"]
    if result["calibration_study"]:
        lines += ["", "## Calibration study (whole model INT8)", "", "| method | weights | drop | NSR |", "|---|---|---|---|"]
        lines += [f"| {r['calib_method']} | {'per-channel' if r['per_channel'] else 'per-tensor'} | "
                  f"{_fmt(r['drop'], '+.2f')} | {_fmt(r['nsr'], '.2e')} |" for r in result["calibration_study"]]
    with atomic_path(Path(path)) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
