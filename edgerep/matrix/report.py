"""The matrix report: matrix.json (a stable schema), matrix.md (models x target/precision), matrix.png (a heatmap
of the key metric) and the terminal summary table.

matrix.json, schema version 1 (keys always present; more may be added, none removed):
  schema: 1, matrix: path of the matrix file, created, run: {mode, workers | address, ...},
  latency: {how: sentence}, summary: {cells, records, passed, failed, errors, reused_cells},
  cells: [{model, target, status, reason, seconds, reused, report}],
  records: [{model, spec, target, backend, precision, status (ok|failed|error|crashed|unsupported),
             passed (true|false|null), accuracy: {cosine, top1_agreement, top1, top1_drop, max_abs_err},
             latency_ms: {p50, p99}, throughput_ips, key_metric: {name, value, unit}, reason,
             report (the cell's report.json, relative to the matrix folder), reused}]
The key metric is the accuracy lost against the unfused PyTorch model, in points: the labelled top-1 drop where the
validation data has labels, else 100 - top-1 agreement (else 100 * (1 - cosine) for outputs that are not scores).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edgerep.tasks import task_named

SCHEMA_VERSION = 1
ACCURACY_KEYS = ("cosine", "top1_agreement", "top1", "top1_drop", "max_abs_err", "task", "map_agreement",
                 "labelled_map", "labelled_map_drop")
FAILED_STATUSES = ("failed", "error", "crashed")


def key_metric(accuracy: dict[str, Any]) -> dict[str, Any]:
    """The heat map's figure of one engine, as its task reads it (tasks.base.Task.key_metric)."""
    return task_named(accuracy.get("task")).key_metric(accuracy)


def cell_records(cell: Any, outcome: dict[str, Any], out_dir: Path, cell_dir: Path) -> list[dict[str, Any]]:
    """One record per precision of the cell (built, failed, or not built by this target)."""
    report = None
    if outcome.get("report") and (cell_dir / "report.json").is_file():
        report = json.loads((cell_dir / "report.json").read_text())
    engines = {e["precision"]: e for e in (report or {}).get("engines", []) if not e.get("prediction")}
    rel = str((cell_dir / "report.json").relative_to(out_dir)) if report is not None else None
    spec = cell.options.get("model") or "zoo:repvgg_digits"
    records = []
    for precision in cell.precisions + cell.unsupported:
        rec: dict[str, Any] = {"model": cell.model, "spec": spec, "target": cell.target, "backend": cell.backend,
                               "precision": precision, "status": None, "passed": None,
                               "accuracy": {k: None for k in ACCURACY_KEYS}, "latency_ms": {"p50": None, "p99": None},
                               "throughput_ips": None, "key_metric": key_metric({}), "reason": None, "report": rel,
                               "reused": bool(outcome.get("reused"))}
        eng = engines.get(precision)
        if precision in cell.unsupported:
            rec.update(status="unsupported", reason=f"{cell.target} does not build {precision}")
        elif eng is None:
            rec.update(status=outcome.get("status") if outcome.get("status") != "ok" else "error", passed=False,
                       reason=outcome.get("reason") or "not built")
        else:
            acc = eng.get("accuracy") or {}
            rec["accuracy"] = {k: acc.get(k) for k in ACCURACY_KEYS}
            lat = eng.get("latency_ms") or {}
            rec["latency_ms"] = {"p50": lat.get("p50"), "p99": lat.get("p99")}
            rec["throughput_ips"] = eng.get("throughput_ips")
            rec["key_metric"] = key_metric(acc)
            ok = eng.get("status") == "ok" and bool(eng.get("passed"))
            rec.update(status="ok" if ok else "failed", passed=ok, reason=eng.get("reason"))
        records.append(rec)
    return records


def summarize(records: list[dict[str, Any]], cells: list[dict[str, Any]]) -> dict[str, Any]:
    return {"cells": len(cells), "records": len(records),
            "passed": sum(1 for r in records if r["passed"] is True),
            "failed": sum(1 for r in records if r["status"] == "failed"),
            "errors": sum(1 for r in records if r["status"] in ("error", "crashed")),
            "unsupported": sum(1 for r in records if r["status"] == "unsupported"),
            "reused_cells": sum(1 for c in cells if c.get("reused"))}


def write_matrix_report(out_dir: Path, doc: dict[str, Any], models: list[str], targets: list[str],
                        precisions: list[str]) -> tuple[Path, Path, Path]:
    """matrix.json, matrix.md and matrix.png in `out_dir`, each written atomically."""
    from edgerep.files.artifacts import atomic_path
    from edgerep.pipeline.report import normalize

    out_dir = Path(out_dir)
    doc = normalize({**doc, "engines": []})  # only for its finite-float and Path cleaning
    doc.pop("engines", None)
    for key in ("model", "target", "reference"):
        doc.pop(key, None)
    paths = out_dir / "matrix.json", out_dir / "matrix.md", out_dir / "matrix.png"
    with atomic_path(paths[0]) as tmp:
        tmp.write_text(json.dumps(doc, indent=2) + "\n")
    with atomic_path(paths[1]) as tmp:
        tmp.write_text(render_markdown(doc, models, targets, precisions))
    with atomic_path(paths[2]) as tmp:
        plot_heatmap(doc, models, targets, precisions, tmp)
    return paths


def _columns(doc: dict[str, Any], targets: list[str], precisions: list[str]) -> list[tuple[str, str]]:
    present = {(r["target"], r["precision"]) for r in doc["records"] if r["status"] != "unsupported"}
    return [(t, p) for t in targets for p in precisions if (t, p) in present]


def _lookup(doc: dict[str, Any]) -> dict[tuple[str, str, str], dict[str, Any]]:
    return {(r["model"], r["target"], r["precision"]): r for r in doc["records"]}


def cell_text(rec: dict[str, Any] | None, *, markdown: bool = True, compact: bool = False) -> str:
    """pass/FAIL with the key metric and latency p50, e.g. 'pass 0.28 pp, 0.31 ms' ('pass 0.28pp 0.31ms' compact)."""
    if rec is None or rec["status"] == "unsupported":
        return "-"
    if rec["status"] in ("error", "crashed"):
        return rec["status"].upper()
    verdict = "pass" if rec["passed"] else ("**FAIL**" if markdown else "FAIL")
    km, p50 = rec["key_metric"], rec["latency_ms"].get("p50")
    parts = [verdict]
    unit_gap = "" if compact else " "
    if km.get("value") is not None:
        parts.append(f"{km['value']:.2f}{unit_gap}pp")
    if p50 is not None:
        parts.append(f"{p50:.2f}{unit_gap}ms")
    if compact:  # two short lines: verdict and metric, then latency
        return " ".join(p for p in parts if not p.endswith("ms")) + "".join("\n" + p for p in parts if p.endswith("ms"))
    return " ".join(parts[:1]) + (" " + ", ".join(parts[1:]) if parts[1:] else "")


def render_markdown(doc: dict[str, Any], models: list[str], targets: list[str], precisions: list[str]) -> str:
    cols = _columns(doc, targets, precisions)
    look = _lookup(doc)
    s = doc["summary"]
    lines = [f"# edgerep matrix: {doc.get('matrix')}", "",
             f"Created {doc.get('created')}. {s['cells']} cells ({s['reused_cells']} reused), {s['records']} engines: "
             f"{s['passed']} passed, {s['failed']} failed, {s['errors']} errors.", "",
             "Each entry: gate verdict, accuracy lost against the unfused PyTorch model (labelled top-1 drop, else "
             "100 - top-1 agreement, in points), latency p50 at the target's first batch size.", "",
             f"Latency: {doc['latency']['how']}", "",
             "| model | " + " | ".join(f"{t} {p}" for t, p in cols) + " |",
             "|---|" + "---|" * len(cols)]
    for m in models:
        lines.append(f"| {m} | " + " | ".join(cell_text(look.get((m, t, p))) for t, p in cols) + " |")
    problems = [r for r in doc["records"] if r["status"] in FAILED_STATUSES]
    if problems:
        lines += ["", "## Failures", ""]
        for r in problems:
            lines.append(f"- {r['model']} on {r['target']} {r['precision']} ({r['status']}): "
                         f"{str(r.get('reason')).replace('|', '/')}")
    lines += ["", "## Cells", "", "| model | target | status | seconds | reused | report |", "|---|---|---|---|---|---|"]
    for c in doc["cells"]:
        secs = f"{c['seconds']:.1f}" if isinstance(c.get("seconds"), (int, float)) else "-"
        lines.append(f"| {c['model']} | {c['target']} | {c['status']} | {secs} | {'yes' if c.get('reused') else 'no'} "
                     f"| {c.get('report') or '-'} |")
    return "\n".join(lines) + "\n"


def plot_heatmap(doc: dict[str, Any], models: list[str], targets: list[str], precisions: list[str], path: Path) -> Path:
    """Models (rows) x target/precision (columns), coloured by the key metric (points lost, green = none);
    each square says pass/FAIL, the metric and the latency; errors and crashes are grey."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    cols = _columns(doc, targets, precisions) or [(t, p) for t in targets for p in precisions][:1]
    look = _lookup(doc)
    values = np.full((len(models), len(cols)), np.nan)
    for i, m in enumerate(models):
        for j, (t, p) in enumerate(cols):
            rec = look.get((m, t, p))
            if rec is not None and rec["key_metric"].get("value") is not None:
                values[i, j] = max(0.0, rec["key_metric"]["value"])
    top = max(2.0, float(np.nanmax(values)) if np.isfinite(values).any() else 2.0)
    fig, ax = plt.subplots(figsize=(2.2 + 1.45 * len(cols), 1.6 + 0.8 * len(models)), dpi=100)
    cmap = plt.get_cmap("RdYlGn_r").with_extremes(bad="#cccccc")
    im = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, vmin=0.0, vmax=top, aspect="auto")
    for i, m in enumerate(models):
        for j, (t, p) in enumerate(cols):
            rec = look.get((m, t, p))
            text = cell_text(rec, markdown=False).replace(" ", "\n", 1).replace(", ", "\n")
            failed = rec is not None and rec["status"] in FAILED_STATUSES
            ax.text(j, i, text, ha="center", va="center", fontsize=7,
                    fontweight="bold" if failed else "normal", color="black")
            if failed:
                ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2))
    ax.set_xticks(range(len(cols)), [f"{t}\n{p}" for t, p in cols], fontsize=7)
    ax.set_yticks(range(len(models)), models, fontsize=8)
    fig.colorbar(im, ax=ax, label="pp lost vs PyTorch", fraction=0.05)
    ax.set_title("edgerep matrix: accuracy lost (colour), gate, latency p50", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
    return Path(path)


def summary_table(doc: dict[str, Any], models: list[str], targets: list[str], precisions: list[str]) -> Any:
    """The terminal summary: one row per model and target, one column per precision (fits 80 columns), each
    entry pass/FAIL with the key metric and latency p50."""
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    look = _lookup(doc)
    s = doc["summary"]
    table = Table(title=f"edgerep matrix: {s['passed']}/{s['records'] - s['unsupported']} engines passed",
                  box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("model", no_wrap=True)
    table.add_column("target", no_wrap=True)
    for p in precisions:
        table.add_column(p, justify="right", no_wrap=True)
    for m in models:
        for t in targets:
            row = []
            for p in precisions:
                rec = look.get((m, t, p))
                text = escape(cell_text(rec, markdown=False, compact=True))
                style = "green" if rec and rec["passed"] else ("red" if rec and rec["status"] in FAILED_STATUSES else "")
                row.append(f"[{style}]{text}[/]" if style else text)
            table.add_row(m, t, *row)
    return table
