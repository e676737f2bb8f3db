"""`edgerep export`: load, fuse and export a model to checked, simplified ONNX, and print what was written."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch.nn as nn

from edgerep.errors import UserError
from edgerep.export.pipeline import export_pipeline
from edgerep.files.output_lock import locks_output


@locks_output("output")  # one writer per folder, taken before anything loads
def run_export(*, model: str, weights: Path | None, input_shape: str | None, num_classes: int | None,
               trust_pickle: bool, target: str, dynamic_batch: bool | None, simplifier: str, output: Path,
               tol: float, as_json: bool, out: Any, console: Any) -> int:
    """Load, fuse, export and simplify; print a summary (or JSON). Returns the exit code."""
    import json

    from edgerep.models.specs import load_model
    from edgerep.targets import load_target

    profile = load_target(target)
    info = load_model(model, weights=weights, input_shape=input_shape, num_classes=num_classes,
                      trust_pickle=trust_pickle)
    dynamic = profile.dynamic_batch if dynamic_batch is None else dynamic_batch
    fused, fuse_summary = _fused_model(info)
    try:
        result = export_pipeline(info, fused, Path(output), opset=profile.opset, dynamic_batch=dynamic,
                                 simplifier=simplifier, tol=tol, extra={"target": profile.name, "fuse": fuse_summary})
    except OSError as exc:  # read-only or full output folder: a bad -o, not a crash (writes are atomic)
        raise UserError(f"-o {output}: cannot write the ONNX files ({exc.strerror or exc}); "
                        f"pass a writable folder with -o") from None
    summary = {"model": info.spec, "target": profile.name, "fuse": fuse_summary, **result.to_dict()}
    if as_json:
        out.print_json(json.dumps(summary, default=str))
        return 0
    for note in result.notes:
        console.print(f"[yellow]warning:[/] {note}", highlight=False)
    if fuse_summary.get("note"):
        console.print(f"[yellow]note:[/] {fuse_summary['note']}", highlight=False)
    for check in result.checks:
        out.print(f"{check['stage']:<9} vs {check['reference']:<8} max rel err {check['max_rel_err']:.2e} "
                  f"(tol {check['tol']:g})  ok", highlight=False)
        if len(check.get("per_output") or []) > 1:
            for item in check["per_output"]:
                out.print(f"{'':<9}    {item['name']} {item['shape']}: max rel err {item['max_rel_err']:.2e}",
                          highlight=False)
    out.print(f"exported {info.spec} with the {result.exporter} exporter (opset {result.opset}, "
              f"{'dynamic' if dynamic else 'static'} batch), simplified with {result.simplifier}:", highlight=False)
    out.print(f"  {result.onnx_path}\n  {result.sim_path}", highlight=False)
    return 0


def _fused_model(info: Any) -> tuple[nn.Module, dict]:
    """The fused model (a deploy-form zoo model is already fused) and a short summary of the fusion."""
    from edgerep.models.specs import example_input

    x = example_input(info)  # a shape the model rejects is a user error naming --input-shape, not a trace crash
    if getattr(info, "deploy", False):
        return info.module, {"skipped": True, "note": "the weights are already in deploy (fused) form"}
    from edgerep.fuse import fuse

    result = fuse(info.module, x)
    rep = result.report
    return result.model, {"skipped": False, "method": rep.method, "max_rel_err": rep.max_rel_err,
                          "ops_before": rep.ops_before, "ops_after": rep.ops_after, "notes": rep.notes}
