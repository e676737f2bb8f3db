"""`edgerep matrix MATRIX.toml`: build and validate every model on every target at every precision, locally in a
process pool or on Ray, with one report (matrix.json, matrix.md, matrix.png) and a summary table.

Exit codes: 0 every engine passed, 1 some engine failed its gate or some cell failed (bad model, crash),
2 a bad matrix file or --ray problem (one line, no traceback)."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from edgerep.errors import UserError
from edgerep.files.output_lock import locks_output

LOCAL_HOW = ("after every cell was built, one cell at a time on this machine, in one process with the runtimes' "
             "default threads (no other cell running)")
RAY_HOW = ("after every cell was built, on the node that built it, as a Ray task holding all of that node's CPUs "
           "(one cell per node at a time)")


def output_folder(matrix_file: Path, output: Path | None) -> Path:
    """-o, or runs/matrix-<file name>."""
    return Path(output) if output is not None else Path("runs") / f"matrix-{Path(matrix_file).stem}"


# One writer per folder, taken before anything is written. The cells are this run's own writers (its pool's
# processes, or Ray tasks whose files this driver writes), so its lock covers them.
@locks_output(lambda kw: output_folder(kw["matrix_file"], kw["output"]))
def run_matrix(*, matrix_file: Path, output: Path | None = None, workers: int | None = None, ray: bool = False,
               ray_address: str | None = None, force: bool = False, out: Any = None, console: Any = None) -> int:
    from edgerep.matrix.cells import cell_keys, finish_cell, latency_job, load_matrix, reusable
    from edgerep.matrix.executors import LocalExecutor, RayExecutor
    from edgerep.matrix.report import cell_records, summarize, summary_table, write_matrix_report

    if ray_address is not None and not ray:
        raise UserError(f"{ray_address}: an address only goes with --ray (edgerep matrix FILE --ray {ray_address})")
    if workers is not None and workers < 1:
        raise UserError(f"--workers {workers}: must be >= 1")
    matrix = load_matrix(matrix_file)
    out_dir = output_folder(matrix_file, output)
    try:
        (out_dir / "cells").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"-o {out_dir}: cannot create the output folder ({exc.strerror or exc})") from None
    out_dir = out_dir.resolve()
    executor = (RayExecutor(ray_address, num_cpus=matrix.ray.get("num_cpus", 1.0),
                            num_gpus=matrix.ray.get("num_gpus", 1.0)) if ray else LocalExecutor(workers))
    t0 = time.perf_counter()
    cell_keys(matrix)
    by_name = {c.name: c for c in matrix.cells}
    cell_dir = {c.name: out_dir / "cells" / c.name for c in matrix.cells}
    outcomes: dict[str, dict[str, Any]] = {}
    to_build, to_time = [], []
    for cell in matrix.cells:
        state = reusable(cell, cell_dir[cell.name], force=force)
        if state is not None:
            outcomes[cell.name] = {**state, "reused": True}
            continue
        prior = None if force else _accuracy_done(cell, cell_dir[cell.name])
        if prior is not None:  # built before a kill, never timed: time it only
            outcomes[cell.name] = prior
            to_time.append(cell.name)
            continue
        to_build.append({"cell": cell.name, "key": cell.key, "cell_dir": str(cell_dir[cell.name]),
                         "options": cell.options, "target_arg": cell.target_arg, "precisions": cell.precisions,
                         "backend": cell.backend, "force": force})
    how = RAY_HOW if ray else LOCAL_HOW

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("[dim]{task.fields[last]}"), console=console, disable=console is None,
                  transient=False) as progress:
        building = progress.add_task("build + accuracy", total=len(matrix.cells), last="")
        progress.update(building, advance=len(matrix.cells) - len(to_build))  # reused or built before

        def built(outcome: dict[str, Any]) -> None:
            outcomes[outcome["cell"]] = outcome
            if outcome.get("report"):
                to_time.append(outcome["cell"])
            else:
                finish_cell(by_name[outcome["cell"]], cell_dir[outcome["cell"]], outcome, None, how)
            progress.update(building, advance=1, last=f"{outcome['cell']}: {outcome['status']}")

        t_build = time.perf_counter()
        executor.build(to_build, built)
        t_build = time.perf_counter() - t_build
        jobs = []
        for name in to_time:
            job = latency_job(by_name[name], cell_dir[name], outcomes[name])
            if job is None:
                finish_cell(by_name[name], cell_dir[name], outcomes[name], None, how)
            else:
                jobs.append(job)
        timing = progress.add_task("latency (one at a time)", total=len(jobs), last="")

        def timed(result: dict[str, Any]) -> None:
            name = result["cell"]
            finish_cell(by_name[name], cell_dir[name], outcomes[name], result, how)
            progress.update(timing, advance=1, last=f"{name}" + (f": {result['reason']}" if result.get("reason") else ""))

        t_time = time.perf_counter()
        executor.time(jobs, timed)
        t_time = time.perf_counter() - t_time

    records, cells = [], []
    for cell in matrix.cells:
        outcome = outcomes[cell.name]
        records += cell_records(cell, outcome, out_dir, cell_dir[cell.name])
        cells.append({"model": cell.model, "target": cell.target, "status": outcome.get("status"),
                      "reason": outcome.get("reason"), "seconds": outcome.get("seconds"),
                      "reused": bool(outcome.get("reused")), "key": cell.key,
                      "report": f"cells/{cell.name}/report.json" if outcome.get("report") else None,
                      "stages": [{k: s.get(k) for k in ("name", "status", "seconds")} for s in outcome.get("stages") or []]})
    doc = {"schema": 1, "matrix": str(matrix.path), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
           "run": {**executor.describe(), "force": force, "seconds": time.perf_counter() - t0,
                   "build_phase_seconds": t_build, "latency_phase_seconds": t_time},
           "latency": {"how": how}, "summary": summarize(records, cells), "cells": cells, "records": records}
    paths = write_matrix_report(out_dir, doc, matrix.models, matrix.targets, matrix.precisions)
    if out is not None:
        out.print(summary_table(doc, matrix.models, matrix.targets, matrix.precisions))
        out.print(f"report: {paths[0]}  {paths[1]}  {paths[2]}", highlight=False, soft_wrap=True)
    if console is not None:
        from rich.markup import escape

        for rec in records:
            if rec["status"] in ("failed", "error", "crashed"):
                console.print(f"[bold red]{rec['status'].upper()}[/] {rec['model']} on {rec['target']} {rec['precision']}: "
                              f"{escape(str(rec['reason']))}", highlight=False, soft_wrap=True)
    bad = [r for r in records if r["status"] in ("failed", "error", "crashed")]
    return 1 if bad else 0


def _accuracy_done(cell: Any, cell_dir: Path) -> dict[str, Any] | None:
    """A cell whose build finished (same key) but whose timing did not (the run was killed in between)."""
    from edgerep.matrix.cells import read_cell_state

    state = read_cell_state(cell_dir)
    if state and state.get("key") == cell.key and state.get("phase") == "accuracy" and (cell_dir / "report.json").is_file():
        return {k: v for k, v in state.items() if k not in ("phase", "schema")}
    return None
