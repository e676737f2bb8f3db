"""`edgerep check --target PROFILE --model SPEC|file.onnx`: lint a model for the target's TensorRT parser.

A model spec is loaded, fused and exported as `edgerep build` would for that profile; an .onnx file is linted
as it is (edgerep.backends.tensorrt.lint). Prints a table (or JSON); exit 1 on errors, 0 otherwise, 2 on bad input.
"""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any

from edgerep.backends.tensorrt.host import lint_for_profile, profile_version
from edgerep.errors import UserError


def _export_for_check(spec: str, profile: Any, work: Path, *, weights: Path | None, input_shape: str | None,
                      num_classes: int | None, trust_pickle: bool) -> Path:
    """Load, fuse and export a model spec as `edgerep build` would for this profile; returns the simplified ONNX."""
    from edgerep.export.pipeline import export_pipeline
    from edgerep.models.specs import load_model

    info = load_model(spec, weights=weights, input_shape=input_shape, num_classes=num_classes, trust_pickle=trust_pickle)
    from edgerep.models.specs import example_input

    x = example_input(info)  # a shape the model rejects is a user error naming --input-shape, not a trace crash
    model = info.module
    if not info.deploy:
        from edgerep.fuse import fuse

        result = fuse(info.module, x)
        model = result.model
    with contextlib.redirect_stdout(io.StringIO()):
        exported = export_pipeline(info, model, work, opset=profile.opset, dynamic_batch=profile.dynamic_batch)
    return Path(exported.sim_path)


def run_check(*, target: str, model: str, weights: Path | None = None, input_shape: str | None = None,
              num_classes: int | None = None, trust_pickle: bool = False, as_json: bool = False,
              out: Any = None, console: Any = None) -> int:
    """`edgerep check`: lint for the target's TensorRT; prints a table (or JSON). 1 on errors, else 0."""
    import tempfile

    from edgerep.targets import load_target

    profile = load_target(target)
    profile_version(profile)
    path = Path(model)
    with tempfile.TemporaryDirectory(prefix="edgerep-check-") as tmp:
        if model.endswith(".onnx"):
            if not path.is_file():
                raise UserError(f"--model {model}: file not found")
            onnx_path = path
        else:
            onnx_path = _export_for_check(model, profile, Path(tmp), weights=weights, input_shape=input_shape,
                                          num_classes=num_classes, trust_pickle=trust_pickle)
        report = lint_for_profile(onnx_path, profile)
    report.model = model
    if as_json:
        if out is not None:
            out.print_json(json.dumps({"target": profile.name, **report.to_dict()}))
        return report.exit_code()
    if out is not None:
        print_lint(report, profile, out)
    return report.exit_code()


def print_lint(report: Any, profile: Any, out: Any) -> None:
    from rich.table import Table

    out.print(f"TensorRT {report.trt_version} ONNX parser (operators.md table {report.table}) - target {profile.name}, "
              f"model opset {report.opset}", highlight=False)
    for note in report.notes:
        out.print(f"[dim]note: {note}[/]", highlight=False)
    shown = [f for f in report.findings if f.severity != "info"]
    infos = [f for f in report.findings if f.severity == "info"]
    if shown:
        table = Table(show_lines=False)
        for col in ("severity", "node", "op", "problem", "fix"):
            table.add_column(col, overflow="fold")
        for f in shown:
            style = "red" if f.severity == "error" else "yellow"
            table.add_row(f"[{style}]{f.severity}[/]", f.node, f.op_type, f.message, f.fix)
        out.print(table)
    for f in infos:
        out.print(f"[dim]info: {f.node} {f.op_type}: {f.message}[/]", highlight=False)
    verdict = "[red]fails[/]" if report.errors else "[green]passes[/]"
    out.print(f"{verdict}: {len(report.errors)} error(s), {len(report.warnings)} warning(s)", highlight=False)
