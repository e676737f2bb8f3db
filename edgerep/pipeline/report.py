"""The build report: report.json (a stable schema), report.md and a latency-vs-accuracy plot.

report.json, schema version 1 (keys below are always present; more may be added, none removed):
  schema: 1, model: {spec, name, input_shape, weights, ...}, target: {name, backend, ...},
  reference: {kind: "pytorch-unfused", data, num_samples, top1 (percent or null)},
  engines: [{backend, precision, path, status (ok|failed|skipped),
             accuracy: {max_abs_err, cosine, top1_agreement, top1, top1_drop, mean_abs_err, sqnr_db, ...},
             latency_ms: {p50, p90, p99}, throughput_ips, passed (true|false|null: not judged), reason}],
  recommended: {backend, precision, path, batch_size, p50_ms, speedup, baseline, reason, notes, not_faster, deferred}
             (edgerep.pipeline.recommend; precision null when nothing can be recommended, deferred "device" for a
             TensorRT device bundle), or null in reports written before it existed.
  reference.degenerate: one line when the reference outputs carry no signal (then every engine's passed is
             null, its reason says the gates are not meaningful, and gate_check keeps what they said).
  detectors (accuracy.task "detect"): accuracy also has tasks.detect_task.DETECT_ACCURACY_KEYS (agreement mAP@0.5 and @0.5:0.95
             with the reference's detections, 0..1; box counts; with labels labelled mAP and its drop in points)
             and `outputs` (per-output tensor errors); report.md shows them, the plot is agreement mAP vs latency.
  optional: fuse, export, stages, versions, created, pictures ({detections: PNG file name beside report.md,
             images, columns}: the boxes picture of a detector, edgerep.pipeline.pictures).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from edgerep.pipeline.recommend import format_recommendation, p50_at
from edgerep.tasks import task_named
from edgerep.tasks.base import Task, engine_verdict, fmt

SCHEMA_VERSION = 1
ENGINE_KEYS = ("backend", "precision", "path", "status", "accuracy", "latency_ms", "throughput_ips", "passed", "reason")
ACCURACY_KEYS = ("max_abs_err", "cosine", "top1_agreement", "top1", "top1_drop")


def report_task(report: dict[str, Any]) -> Task:
    """The task whose view the report takes: its reference's, else an engine's accuracy record's (classify when
    neither says)."""
    names = [(report.get("reference") or {}).get("task")] + [(e.get("accuracy") or {}).get("task")
                                                             for e in report.get("engines", [])]
    return task_named(next((n for n in names if n), None))


def engine_entry(backend: str, precision: str, *, path: str | None = None, status: str = "ok",
                 reason: str | None = None, **extra: Any) -> dict[str, Any]:
    """An engine record with every schema key present (null where unknown)."""
    entry: dict[str, Any] = {
        "backend": backend,
        "precision": precision,
        "path": path,
        "status": status,
        "accuracy": {k: None for k in ACCURACY_KEYS},
        "latency_ms": {"p50": None, "p90": None, "p99": None},
        "throughput_ips": None,
        "passed": False if status != "ok" else None,
        "reason": reason,
    }
    entry.update(extra)
    return entry


def normalize(report: dict[str, Any]) -> dict[str, Any]:
    """Fill the schema's keys and turn non-finite floats into null (JSON has no Infinity/NaN)."""
    report = dict(report)
    report.setdefault("schema", SCHEMA_VERSION)
    for key in ("model", "target", "reference", "recommended"):
        report.setdefault(key, None)
    if isinstance(report["reference"], dict):
        report["reference"] = {"degenerate": None, **report["reference"]}
    report["engines"] = [_full_entry(eng) for eng in report.get("engines", [])]
    report["baselines"] = [_full_entry(row) for row in report.get("baselines") or []]
    clean: dict[str, Any] = _finite(report)
    return clean


def _full_entry(eng: dict[str, Any]) -> dict[str, Any]:
    """An engine (or baseline) row with every schema key, its task's accuracy keys included."""
    full = engine_entry(eng.get("backend", "?"), eng.get("precision", "?"))
    full.update(eng)
    acc = {k: None for k in ACCURACY_KEYS}
    acc.update({k: None for k in task_named((full.get("accuracy") or {}).get("task")).accuracy_keys})
    acc.update(full.get("accuracy") or {})
    full["accuracy"] = acc
    full["latency_ms"] = {"p50": None, "p90": None, "p99": None, **(full.get("latency_ms") or {})}
    return full


def _finite(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalars
        return _finite(obj.item())
    return obj


def write_report(out_dir: Path, report: dict[str, Any]) -> tuple[Path, Path, Path]:
    """Write report.json, report.md and latency_accuracy.png into `out_dir`, each atomically."""
    from edgerep.files.artifacts import atomic_path

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = normalize(report)
    json_path, md_path, plot_path = out_dir / "report.json", out_dir / "report.md", out_dir / "latency_accuracy.png"
    with atomic_path(json_path) as tmp:
        tmp.write_text(json.dumps(report, indent=2, sort_keys=False) + "\n")
    with atomic_path(md_path) as tmp:
        tmp.write_text(render_markdown(report))
    with atomic_path(plot_path) as tmp:
        plot_latency_accuracy(report, tmp)
    return json_path, md_path, plot_path


# --- markdown --------------------------------------------------------------------------------------



def failure_lines(report: dict[str, Any]) -> list[str]:
    """What made the build fail, one line each (rich markup escaped): a degenerate reference is one line
    for the whole build, not a list of gates that compared against noise."""
    from rich.markup import escape

    degenerate = (report.get("reference") or {}).get("degenerate")
    failed = [e for e in report.get("engines", []) if not e.get("prediction") and e.get("status") != "skipped"
              and (e.get("status") != "ok" or not e.get("passed"))]
    if degenerate and failed:
        return [f"[bold red]FAILED[/] accuracy not checked: {escape(degenerate)}"]
    return [f"[bold red]FAILED[/] {e['backend']} {e['precision']}: {escape(str(e.get('reason')))}" for e in failed]


def engine_rows(report: dict[str, Any]) -> list[list[str]]:
    """One row of display strings per engine, in the report's task's columns (report_task(report).table_headers)."""
    task = report_task(report)
    return [task.table_row(eng) for eng in report["engines"]]


def render_markdown(report: dict[str, Any]) -> str:
    model, target, ref = report.get("model") or {}, report.get("target") or {}, report.get("reference") or {}
    lines = [f"# edgerep build: {model.get('spec', '?')} on {target.get('name', '?')}", ""]
    lines += [f"**{format_recommendation(report.get('recommended'))}**", ""]
    rec = report.get("recommended") or {}
    detail = [f"- {n['precision']} is not {'measurably ' if n.get('interval') else ''}faster than {n['than']} on "
              f"this machine: p50 {n['p50_ms']:.3g} vs {n['than_p50_ms']:.3g} ms at batch {rec.get('batch_size')} "
              f"({n['speedup']:.2f}x" + (f", interval {n['interval'][0]:.2f}-{n['interval'][1]:.2f}x over interleaved "
                                         f"rounds)" if n.get("interval") else ")")
              for n in rec.get("not_faster") or []] + [f"- {note}" for note in rec.get("notes") or []]
    lines += detail + ([""] if detail else [])
    if ref.get("degenerate"):
        lines += [f"**Accuracy gates not meaningful**: {ref['degenerate']}.", ""]
    if report.get("created"):
        lines += [f"Created {report['created']}.", ""]
    lines.append(f"- model: `{model.get('spec')}` input {model.get('input_shape')}, weights `{model.get('weights')}`")
    lines.append(f"- target: `{target.get('name')}` (backend {target.get('backend')})")
    task = report_task(report)
    lines.append(task.reference_line(report))
    fuse = report.get("fuse")
    if isinstance(fuse, dict) and fuse.get("max_rel_err") is not None:
        traced = f", traced by {fuse['method']}" if fuse.get("method") else ""
        lines.append(f"- fuse: {fuse.get('regions', '?')} region(s){traced}, max relative error {fuse['max_rel_err']:.3g}")
    headers, rows = task.table_headers, engine_rows(report)
    lines += ["", "| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in rows:
        lines.append("| " + " | ".join(cell.replace("|", "/") for cell in row) + " |")
    lines += ["", "Latency: every engine timed side by side after validation, in interleaved rounds in a fresh process; "
              "p50 is the median of the round medians (their range in brackets), p99 pooled, at the first batch size "
              "of the profile (the recommendation compares p50 at the deploy batch size, a lower precision only when "
              "its speed-up interval clears the threshold); "
              + task.table_note, ""]
    for eng in report["engines"]:
        if eng.get("path"):
            lines.append(f"- {eng['backend']} {eng['precision']}: `{eng['path']}`")
    lines += baseline_lines(report)
    lines += _compile_lines(report)
    lines += _pictures_lines(report)
    lines += _output_lines(report)
    lines += _isa_lines(report)
    lines += int8_plan_lines(report)
    lines += head_plan_lines(report)
    stages = report.get("stages")
    if isinstance(stages, list) and stages:
        lines += ["", "## Stages", "", "| stage | status | seconds |", "|---|---|---|"]
        for st in stages:
            lines.append(f"| {st.get('name')} | {st.get('status')} | {fmt(st.get('seconds'), '.2f')} |")
    return "\n".join(lines) + "\n"




def baseline_lines(report: dict[str, Any]) -> list[str]:
    """report.md's "Without edgerep" section: the baselines' rows (pipeline.baselines) in the engines' columns,
    then how edgerep's engines compare with them."""
    rows = report.get("baselines") or []
    if not rows:
        return []
    task = report_task(report)
    headers = task.table_headers
    lines = ["", "## Without edgerep", "",
             "What you would get without edgerep, validated against the same reference and timed in the same "
             "interleaved rounds as edgerep's engines:", "",
             "| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in rows:
        cells = task.table_row({**row, "backend": row.get("name") or row["backend"]})
        lines.append("| " + " | ".join(cell.replace("|", "/") for cell in cells) + " |")
    lines.append("")
    lines += [f"- {r['name']}: {r['title']}" + (f" (`{r['path']}`)" if r.get("path") else "") for r in rows]
    lines += [f"- {note}" for note in report.get("baseline_notes") or []]
    shown = key_comparisons(report)
    if shown:
        from edgerep.pipeline.comparisons import comparison_text

        lines += ["", f"At batch {shown[0]['batch_size']} (ratios: the baseline's p50 over the engine's; a 95% interval "
                  "that holds 1.0 is not measurably different):", ""]
        lines += [f"- {comparison_text(row)}" for row in shown]
    return lines


def key_comparisons(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The comparisons worth a line: the recommended engine against every baseline, and each engine against
    the baseline of its own precision made by another tool (Ultralytics' FP32 / INT8 export)."""
    rec = (report.get("recommended") or {}).get("precision")
    out = []
    for row in report.get("comparisons") or []:
        same_precision = row["baseline"].endswith("-" + row["engine"]) and row["baseline"].startswith("ultralytics")
        if row["engine"] == rec or same_precision:
            out.append(row)
    return out


def head_plan_lines(report: dict[str, Any]) -> list[str]:
    """report.md's account of the detector head search (quant.head_islands): each island's gain and cost."""
    out: list[str] = []
    for eng in report.get("engines") or []:
        plan = eng.get("head_plan")
        if not plan:
            continue
        if plan.get("error"):
            out += ["", f"## INT8 head ({eng['backend']})", "", f"The search failed, the fixed rule was kept: {plan['error']}"]
            continue
        out += ["", f"## INT8 head ({eng['backend']})", "",
                f"The decode ({len(plan['tail'])} nodes) stays in float. Each weighted head node before it was probed "
                f"on a real INT8 build (drop in {plan['metric']}; all of them quantized: drop {plan['base_drop']:.2f} pts, "
                f"p50 {plan['base_p50_ms']:.3g} ms) and kept in float only where it pays:", "",
                "| node | drop with it in float | gain | cost (p50 vs all quantized) | kept |", "|---|---|---|---|---|"]
        for isl in plan["islands"]:
            interval = isl.get("cost_interval")
            cost = f"{isl['cost']:.2f}x" + (f" ({interval[0]:.2f}-{interval[1]:.2f}x)" if interval else "")
            out.append(f"| `{isl['node']}` | {isl['drop']:.2f} | {isl['gain']:+.2f} | {cost} | "
                       f"{'yes' if isl['kept'] else 'no'}: {isl['why']} |")
    return out


def _compile_lines(report: dict[str, Any]) -> list[str]:
    """How to run the OpenVINO engines as they were validated: each one's compile.json (settings.compile_properties,
    backends.openvino.compile_props) and the Python that applies it, for the recommended engine or the first."""
    rows = [(e, Path(e["path"]).with_name(str(e["settings"]["compile_properties"]))) for e in report["engines"]
            if e.get("path") and isinstance(e.get("settings"), dict) and e["settings"].get("compile_properties")]
    if not rows:
        return []
    rec = report.get("recommended") or {}
    eng, config = next(((e, c) for e, c in rows if e["precision"] == rec.get("precision")
                        and e["backend"] == rec.get("backend")), rows[0])
    return ["", "Compiled without properties, OpenVINO picks its own inference precision (bf16 on a CPU with BF16); "
                "each engine was validated with the properties in the compile.json beside it:", "",
            *[f"- {e['backend']} {e['precision']}: `{c}` (INFERENCE_PRECISION_HINT "
              f"{e['settings'].get('inference_precision')})" for e, c in rows],
            "", "```python", "import json, openvino as ov",
            f"cfg = json.load(open({json.dumps(str(config))}))",  # json.dumps: a valid Python string literal
            f'compiled = ov.Core().compile_model({json.dumps(str(eng["path"]))}, cfg["device"], cfg["properties"])',
            "```"]


def _pictures_lines(report: dict[str, Any]) -> list[str]:
    """The boxes picture (edgerep.pipeline.pictures), linked from report.md when the build drew it."""
    pictures = report.get("pictures") or {}
    if not pictures.get("detections"):
        return []
    columns = ", ".join(pictures.get("columns") or [])
    return ["", "## Boxes", "",
            f"The reference's and each engine's boxes on {len(pictures.get('images') or [])} validation images "
            f"({columns}; boxes at the detect score threshold, mapped back onto the original images):", "",
            f"![boxes per engine]({pictures['detections']})"]


def _output_lines(report: dict[str, Any]) -> list[str]:
    """Every output of every engine against the reference's (accuracy.outputs), when there is more than one
    output or the task asks for them (a detector's table shows mAP, not each output's tensor errors)."""
    rows = [(e, o) for e in report["engines"] for o in (e.get("accuracy") or {}).get("outputs") or []]
    if not rows or (not report_task(report).lists_outputs and all(len(e["accuracy"].get("outputs") or []) < 2
                                                                  for e in report["engines"])):
        return []
    lines = ["", "## Outputs", "", "| engine | output | shape | max abs err | mean abs err | cosine | SQNR dB |",
             "|---|---|---|---|---|---|---|"]
    for eng, out in rows:
        shape = "x".join(str(d) for d in out.get("shape") or []) or "-"
        lines.append(f"| {eng['backend']} {eng['precision']} | {out.get('name')} | {shape} | "
                     f"{fmt(out.get('max_abs_err'), '.3g')} | {fmt(out.get('mean_abs_err'), '.3g')} | "
                     f"{fmt(out.get('cosine'), '.6f')} | {fmt(out.get('sqnr_db'), '.1f')} |")
    return lines


def _isa_lines(report: dict[str, Any]) -> list[str]:
    """Which CPU each engine was built for and measured on, and whether the result holds on the target's ISA."""
    rows = [(e, e["isa"]) for e in report["engines"] if isinstance(e.get("isa"), dict)]
    if not rows:
        return []
    lines = ["", "## CPU instruction set", "",
             "| engine | built for | measured on | on the target's ISA | result there |", "|---|---|---|---|---|"]
    for eng, isa in rows:
        acc = isa.get("accuracy") or {}
        there = ("-" if not acc else f"cosine {fmt(acc.get('cosine'), '.4f')}"
                 + (f", top-1 {fmt(acc.get('top1'), '.2f')}%" if acc.get("top1") is not None else "")
                 + (", pass" if isa.get("passed") else f", {isa.get('reason')}" if isa.get("passed") is None
                    else f", FAILED: {isa.get('reason')}"))
        lines.append(f"| {eng['backend']} {eng['precision']} | {isa.get('target')} | {isa.get('measured_on')} | "
                     f"{isa.get('method')}: {isa.get('note')} | {there} |")
    lines += ["", "Latency is that of the CPU measured on. An INT8 engine built for a CPU with VNNI (isa auto on such "
              "a machine) can lose accuracy on one without (int16 saturation); build with `--isa avx2` (or the "
              "`*-avx2` targets) for such devices."]
    return lines


def int8_plan_lines(report: dict[str, Any]) -> list[str]:
    """What `--max-drop` decided per INT8 engine: the layers kept in float, whether the budget holds at the speed
    floor (else the one-line verdict), every drop with its standard error, the frontier of candidates (drop vs
    speed-up, also plotted), the float MAC share, the repairs and the calibration that won."""
    lines: list[str] = []
    for eng in report["engines"]:
        plan = eng.get("int8_plan")
        if not isinstance(plan, dict):
            continue
        floats = eng.get("float_layers") or []
        floor = plan.get("min_speedup")
        met = "met" + (f" at >= {floor:g}x FP32" if floor is not None and plan.get("timed") else "")
        lines += ["", f"## INT8 plan: {eng['backend']} (--max-drop {plan.get('max_drop')})", "",
                  f"- budget {met if plan.get('met') else 'NOT met: ' + str(plan.get('verdict'))}; layers kept in "
                  "float: " + (", ".join(f"`{name}`" for name in floats) if floats else "none")]
        chosen = plan.get("chosen") or {}
        if chosen:
            lines.append(f"- chosen: {chosen.get('name')}, drop {_pm(chosen.get('metrics', {}).get('drop'), plan.get('drop_se'))}"
                         + (f", {_speed(chosen)} FP32" if chosen.get("speedup") is not None else "")
                         + (f", {plan['float_mac_share']:.0%} of the MACs in float"
                            if plan.get("float_mac_share") is not None else ""))
        for warning in plan.get("warnings") or []:
            lines.append(f"- **warning**: {warning}")
        if plan.get("drop_unit"):
            res = plan.get("resolution")
            lines.append(f"- drop measured in {plan['drop_unit']}" + (
                f" on {plan.get('num_samples')} samples (one sample = {res:.2f} pt); ± is the standard error over "
                f"the images (classifiers: of the paired per-image difference; detectors: a bootstrap)" if res else ""))
        if plan.get("stopped"):
            lines.append(f"- float-layer search {plan['stopped']}")
        calib = plan.get("calibration") or {}
        if calib.get("tried"):
            chosen_cal = ", ".join(f"{k}={v}" for k, v in (calib.get("chosen") or {}).items())
            lines.append(f"- calibration: tried {len(calib['tried'])} settings; the repairs and the float-layer search "
                         f"start from {chosen_cal} ({calib.get('rule', '')})")
        for note in calib.get("not_selectable") or []:
            lines.append(f"- {note}")
        repairs = plan.get("repairs") or {}
        if repairs.get("tried"):
            lines.append("- range repair before any float layer: " + "; ".join(
                f"{'+'.join(r['repairs'])} drop {_pm(r['drop'], r.get('drop_se'))}{_repair_detail(r.get('report'))}"
                for r in repairs["tried"]) + f"; kept {'+'.join(repairs['chosen']) if repairs.get('chosen') else 'none'}")
        elif repairs.get("note"):
            lines.append(f"- range repair: {repairs['note']}")
        latency = (eng.get("latency_ms") or {}).get("p50")
        if latency is not None:
            lines.append(f"- resulting latency p50 {latency:.3f} ms")
        rows = plan.get("frontier") or []
        if rows:
            lines += ["", "Candidates (every one a real engine of this backend, scored on the validation data"
                      + (" and timed against FP32 side by side at the deploy batch" if plan.get("timed") else "")
                      + "; * = on the Pareto frontier of drop vs speed-up):", "",
                      "| candidate | float layers | float MACs | drop (± s.e.) | speed-up over FP32 | |",
                      "|---|---|---|---|---|---|"]
            for r in rows:
                share = r.get("float_mac_share")
                lines.append(f"| {r['name']}{' *' if r.get('pareto') else ''} | {r['float_layers']} | "
                             f"{'-' if share is None else format(share, '.0%')} | {_pm(r['drop'], r.get('drop_se'))} | "
                             f"{_speed(r) if r.get('speedup') is not None else '-'} | {'chosen' if r.get('chosen') else ''} |")
        if plan.get("frontier_plot"):
            lines += ["", f"![INT8 plan frontier]({plan['frontier_plot']})"]
    return lines


def _repair_detail(rep: dict[str, Any] | None) -> str:
    """What a repair did, in brackets: pairs equalized with the worst range spread before -> after, biases corrected."""
    if not rep:
        return ""
    parts = []
    if rep.get("pairs"):
        spread = (f", spread {rep['spread_before']:.3g} -> {rep['spread_after']:.3g}"
                  if rep.get("spread_before") is not None and rep.get("spread_after") is not None else "")
        parts.append(f"{len(rep['pairs'])} pair(s) equalized{spread}")
    if rep.get("skipped"):
        parts.append(str(rep["skipped"]))
    if rep.get("bias_corrected"):
        parts.append(f"{rep['bias_corrected']} bias(es) corrected")
    return f" ({'; '.join(parts)})" if parts else ""


def _pm(value: Any, se: Any) -> str:
    if value is None:
        return "-"
    return f"{float(value):.2f}" + (f" ± {float(se):.2f}" if se is not None else "") + " pt"


def _speed(row: dict[str, Any]) -> str:
    interval = row.get("speedup_interval")
    return f"{row['speedup']:.2f}x" + (f" ({interval[0]:.2f}-{interval[1]:.2f})" if interval else "")


# --- plot ------------------------------------------------------------------------------------------


def plot_latency_accuracy(report: dict[str, Any], path: Path) -> Path:
    """Write latency_accuracy_figure(report) as a PNG."""
    import matplotlib.pyplot as plt

    fig = latency_accuracy_figure(report)
    fig.savefig(path, format="png")
    plt.close(fig)
    return Path(path)


def latency_accuracy_figure(report: dict[str, Any]) -> Any:
    """Latency p50 at the deploy batch size (x) against accuracy (y: labelled top-1 where labels exist, else top-1
    agreement, else cosine; a detector's agreement mAP@0.5:0.95 in percent: the task's plot_metric) per engine; the
    reference top-1 as a dashed line; the recommended engine ringed.
    Every engine label lies inside the axes and over no other label, legend or note."""
    import textwrap

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rec = report.get("recommended") or {}
    batch = rec.get("batch_size")

    def x_of(eng: dict[str, Any]) -> float | None:  # engines not measured at the deploy batch are left out
        return p50_at(eng, batch) if batch is not None else eng["latency_ms"].get("p50")

    measured = [(e, x) for e in report["engines"] if e["status"] == "ok" and (x := x_of(e)) is not None]
    engines = [e for e, _ in measured]
    metric, label, scale = report_task(report).plot_metric([e["accuracy"] for e in engines])
    ref_top1 = (report.get("reference") or {}).get("top1")
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=100)
    points: list[tuple[float, float, str]] = []
    for eng, x in sorted(measured, key=lambda pair: pair[1]):
        y = eng["accuracy"].get(metric)
        if y is None:
            continue
        y = y * scale
        chosen = rec.get("precision") == eng["precision"] and rec.get("backend") == eng["backend"]
        points.append((x, y, f"{eng['backend']} {eng['precision']}" + (" (recommended)" if chosen else "")))
        color = {True: "tab:green", False: "tab:red"}.get(eng["passed"], "tab:gray")
        spread = _spread_at(eng, batch)
        if spread is not None:  # the range of the round medians: how far this machine moved the engine
            ax.errorbar([x], [y], xerr=[[x - spread[0]], [spread[1] - x]], fmt="none", ecolor=color, capsize=3,
                        zorder=2)
        ax.scatter([x], [y], s=60, color=color, zorder=3)
        if chosen:
            ax.scatter([x], [y], s=260, facecolors="none", edgecolors="tab:blue", linewidths=2, zorder=4,
                       label="recommended")
    if points:
        ax.set_xlim(0, max(x for x, _, _ in points) * 1.15)
    if metric != "cosine" and points:
        low = min([y for _, y, _ in points] + ([ref_top1] if ref_top1 is not None else []))
        ax.set_ylim(max(0.0, low - max(2.0, (100 - low) * 0.2)), 101.0)
    elif points:
        lo, hi = min(y for _, y, _ in points), max(y for _, y, _ in points)
        pad = max((hi - lo) * 0.25, 1e-4)
        ax.set_ylim(lo - pad, hi + pad)
    if metric == "top1" and ref_top1 is not None:
        ax.axhline(ref_top1, color="gray", linestyle="--", linewidth=1, label=f"PyTorch reference {ref_top1:.2f}%")
    ax.set_xlabel(f"latency p50 (ms){f' at batch {batch}' if batch is not None else ''}")
    ax.set_ylabel(label)
    model, target = (report.get("model") or {}).get("spec", "?"), (report.get("target") or {}).get("name", "?")
    ax.set_title(textwrap.fill(f"{model} on {target}", 70), fontsize=10)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()  # before the labels: they are placed in the final axes
    avoid: list[Any] = []
    if ax.get_legend_handles_labels()[0]:
        avoid.append(ax.legend(loc="best", fontsize=8))
    degenerate = (report.get("reference") or {}).get("degenerate")
    if degenerate or not engines:
        note = textwrap.fill(f"accuracy not meaningful: {degenerate}", 60) if degenerate else "no engine was measured"
        avoid.append(ax.text(0.5, 0.5, note, ha="center", va="center", transform=ax.transAxes, fontsize=9,
                             color="tab:red" if degenerate else "black"))
    _place_labels(fig, ax, points, avoid=avoid)
    return fig


def _spread_at(eng: dict[str, Any], batch: int | None) -> tuple[float, float] | None:
    for lat in eng.get("latency_by_batch") or []:
        if (batch is None or lat.get("batch_size") == batch) and lat.get("spread"):
            return float(lat["spread"][0]), float(lat["spread"][1])
    return None


def _place_labels(fig: Any, ax: Any, points: list[tuple[float, float, str]], avoid: list[Any]) -> None:
    """Label each point at the first nearby spot (right or left of it, stepping up and down) where the text lies
    inside the axes and over no label placed before: engines with equal accuracy and latency stay readable."""
    renderer = fig.canvas.get_renderer()
    inside = ax.get_window_extent(renderer)
    placed: list[Any] = [artist.get_window_extent(renderer) for artist in avoid]
    offsets = [(dx, dy) for dy in (6, -6, 18, -18, 30, -30, 42, -42, 54, -54) for dx in (6, -6)]
    for x, y, text in points:
        ann = None
        for dx, dy in offsets:
            if ann is not None:
                ann.remove()
            ann = ax.annotate(text, (x, y), textcoords="offset points", xytext=(dx, dy), fontsize=8,
                              ha="left" if dx > 0 else "right", va="bottom" if dy > 0 else "top")
            box = ann.get_window_extent(renderer)
            fits = (box.x0 >= inside.x0 and box.x1 <= inside.x1 and box.y0 >= inside.y0 and box.y1 <= inside.y1)
            if fits and not any(box.overlaps(other) for other in placed):
                break
        if ann is not None:
            placed.append(ann.get_window_extent(renderer))




def summary_table(report: dict[str, Any]) -> Any:
    """A compact rich Table of the engines (fits 80 columns) for the end of `edgerep build`; report.md has
    every column, and the reasons of failed gates are printed as lines of their own."""
    from rich import box
    from rich.table import Table

    report = normalize(report)
    table = Table(title=f"{(report.get('model') or {}).get('spec')} on {(report.get('target') or {}).get('name')}",
                  box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    task = report_task(report)
    for c in task.summary_columns:
        table.add_column(c, no_wrap=True, justify="left" if c in ("engine", "gate") else "right")
    for eng in report["engines"]:
        acc, lat = eng["accuracy"], eng["latency_ms"]
        verdict = engine_verdict(eng)
        style = "green" if verdict == "pass" else ("red" if verdict in ("FAIL", "failed") else None)
        table.add_row(f"{eng['backend']} {eng['precision']}", verdict, *task.summary_cells(acc),
                      fmt(lat.get("p50"), ".3f"), fmt(lat.get("p99"), ".3f"),
                      fmt(eng.get("throughput_ips"), ".0f"), style=style)
    for row in report.get("baselines") or []:  # what the user gets without edgerep, dimmed
        acc, lat = row["accuracy"], row["latency_ms"]
        table.add_row(str(row.get("name")), "-" if row.get("status") == "ok" else row.get("status"),
                      *task.summary_cells(acc), fmt(lat.get("p50"), ".3f"), fmt(lat.get("p99"), ".3f"),
                      fmt(row.get("throughput_ips"), ".0f"), style="dim")
    return table


def build_summary(report: dict[str, Any]) -> Any:
    """The end of `edgerep build` on the terminal: the recommendation first (with what was not chosen and why),
    then the engines' table."""
    from rich.console import Group
    from rich.markup import escape
    from rich.text import Text

    from edgerep.pipeline.comparisons import comparison_text

    rec = report.get("recommended")
    head = [Text.from_markup(f"[bold]{escape(format_recommendation(rec))}[/]")]
    head += [Text(f"  {note}", style="dim") for note in (rec or {}).get("notes") or []]
    head += [Text(f"  {comparison_text(row)}") for row in key_comparisons(report)]
    return Group(*head, summary_table(report))
