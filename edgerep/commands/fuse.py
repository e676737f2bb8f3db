"""`edgerep fuse`: load a model, fuse it, write the fused weights and a torch.export archive, print the report."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from edgerep.errors import UserError
from edgerep.files.output_lock import locks_output
from edgerep.fuse import FuseReport, FuseResult, fuse
from edgerep.models.specs import ModelInfo, example_input, load_model


def fuse_model(info: ModelInfo) -> tuple[FuseResult, torch.Tensor]:
    x = example_input(info)
    return fuse(info.module, x), x


def save_fused(result: FuseResult, example: torch.Tensor, out_dir: Path) -> dict[str, Path]:
    """Write fused.safetensors, fused.pt2 and fuse_report.json, each under a temporary name first."""
    import io

    from safetensors.torch import save

    from edgerep.files.artifacts import atomic_path, write_json_atomic

    paths = {"weights": out_dir / "fused.safetensors", "program": out_dir / "fused.pt2",
             "report": out_dir / "fuse_report.json"}
    state = {k: v.detach().contiguous() for k, v in result.model.state_dict().items()}
    program = torch.export.export(result.model, (example,))
    # Serialized in memory, written by Python: on a full disk torch.export.save aborts the process from C++
    # and safetensors raises its own error type; a plain write raises OSError, caught below.
    weights_bytes = save(state)
    program_buf = io.BytesIO()
    torch.export.save(program, program_buf)
    try:  # read-only, not a folder, disk full: a bad -o, not a crash (atomic_path leaves nothing behind)
        out_dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(paths["weights"]) as tmp:
            tmp.write_bytes(weights_bytes)
        with atomic_path(paths["program"]) as tmp:
            tmp.write_bytes(program_buf.getvalue())
        write_json_atomic(paths["report"], result.report.to_dict())
    except OSError as exc:
        raise UserError(f"-o {out_dir}: cannot write the fused model ({exc.strerror or exc}); "
                        f"pass a writable folder with -o") from None
    return paths


def report_table(report: FuseReport, tol: float) -> Table:
    table = Table(title="edgerep fuse", show_header=True)
    table.add_column("")
    table.add_column("before", justify="right")
    table.add_column("after", justify="right")
    kinds = sorted(set(report.ops_before) | set(report.ops_after))
    for kind in kinds:
        table.add_row(kind, str(report.ops_before.get(kind, 0)), str(report.ops_after.get(kind, 0)))
    table.add_section()
    table.add_row("params", f"{report.params_before:,}", f"{report.params_after:,}")
    table.add_row("GFLOPs", f"{report.flops_before / 1e9:.3f}", f"{report.flops_after / 1e9:.3f}")
    table.add_row("traced by", "", report.method)  # fx, export (torch.export) or modules (module by module)
    table.add_row("regions fused", "", str(len(report.regions)))
    table.add_section()
    verdict = "[green]ok[/]" if report.passed(tol) else f"[red]over --tol {tol:g}[/]"
    table.add_row("max abs err", "", f"{report.max_abs_err:.3g}")
    table.add_row("max rel err", verdict, f"{report.max_rel_err:.3g}")
    if len(report.per_output) > 1:  # one row per output: which of a detector's heads moved
        for item in report.per_output:
            table.add_row(f"  {item['name']} {list(item['shape'])}", "rel err", f"{item['max_rel_err']:.3g}")
    return table


@locks_output("output")  # one writer per folder: before the model loads, so a second run stops at once
def run_fuse(*, model: str, weights: Path | None, input_shape: str | None, num_classes: int | None,
             trust_pickle: bool, output: Path, tol: float, as_json: bool, out: Console, console: Console) -> int:
    info = load_model(model, weights=weights, input_shape=input_shape, num_classes=num_classes,
                      trust_pickle=trust_pickle)
    with console.status(f"fusing {info.spec}"):
        result, example = fuse_model(info)
    passed = result.report.passed(tol)
    if passed:
        paths = save_fused(result, example, output)
    else:  # never leave fused weights that look usable when they are not: the report only
        from edgerep.files.artifacts import write_json_atomic

        output.mkdir(parents=True, exist_ok=True)
        paths = {"report": output / "fuse_report.json"}
        write_json_atomic(paths["report"], result.report.to_dict())
    if as_json:
        payload: dict[str, Any] = {"model": info.spec, "tol": tol, "passed": passed,
                                   "outputs": {k: str(v) for k, v in paths.items()}, **result.report.to_dict()}
        out.print_json(json.dumps(payload))
    else:
        out.print(report_table(result.report, tol))
        for item in result.report.unfused:
            out.print(f"kept unfused: {item.node} ({item.op}): {item.reason}", highlight=False)
        for note in result.report.notes:
            out.print(f"note: {note}", highlight=False)
        if passed:
            out.print(f"wrote {paths['weights']} and {paths['program']}", highlight=False)
    if not passed:
        console.print(f"[bold red]error:[/] the fused model differs from the original by {result.report.max_rel_err:.3g} "
                      f"(relative), over --tol {tol:g} {result.report.failure(tol)}; nothing is wrong with your input: "
                      f"please report this model",
                      soft_wrap=True, highlight=False)
        return 1
    return 0
