"""The baselines' names, and how edgerep's engines compare with them (pipeline.baselines makes the rows): plain
report data in, plain data out, so report.py and stages.report_stage read it without the baselines' machinery."""
from __future__ import annotations

from typing import Any

PYTORCH = "pytorch"
ONNX_UNFUSED = "onnx-unfused"
ULTRALYTICS_FP32 = "ultralytics-fp32"
ULTRALYTICS_INT8 = "ultralytics-int8"
TITLES = {PYTORCH: "PyTorch original (eager, unfused)", ONNX_UNFUSED: "plain ONNX export of the unfused model, FP32",
          ULTRALYTICS_FP32: "Ultralytics' FP32 export", ULTRALYTICS_INT8: "Ultralytics' INT8 export"}


def comparisons(engines: list[dict[str, Any]], baselines: list[dict[str, Any]], *, batch: int) -> list[dict[str, Any]]:
    """Every edgerep engine that ran against every timed baseline at the deploy batch: the speed-up (baseline
    p50 / engine p50), its interval over the paired interleaved rounds, and whether it is measurable (the
    interval excludes 1)."""
    from edgerep.pipeline.recommend import p50_at, rounds_at, speedup_interval

    rows = []
    for e in engines:
        mine = p50_at(e, batch)
        if e.get("status") != "ok" or e.get("prediction") or mine is None or mine <= 0:
            continue
        for b in baselines:
            theirs = p50_at(b, batch)
            if b.get("status") != "ok" or theirs is None:
                continue
            slow, fast = rounds_at(b, batch), rounds_at(e, batch)
            found = speedup_interval(slow, fast) if slow and fast and len(slow) == len(fast) else None
            interval = [found[1], found[2]] if found else None
            ratio = theirs / mine
            measurable = interval is not None and (interval[0] > 1.0 or interval[1] < 1.0)
            rows.append({"engine": e["precision"], "baseline": b["name"], "speedup": ratio, "interval": interval,
                         "measurable": measurable, "batch_size": batch, "p50_ms": mine, "baseline_p50_ms": theirs,
                         "accuracy": _accuracy_text(e), "baseline_accuracy": _accuracy_text(b)})
    return rows


def _accuracy_text(record: dict[str, Any]) -> str:
    from edgerep.pipeline.recommend import accuracy_text

    return "the reference" if record.get("baseline") == PYTORCH else accuracy_text(record)


def comparison_text(row: dict[str, Any]) -> str:
    """'edgerep int8: 1.25x Ultralytics' INT8 export (95% 1.10-1.40x), mAP drop 0.10 pp vs 0.30 pp'."""
    title = TITLES.get(row["baseline"], row["baseline"])
    if row["interval"] and not row["measurable"]:
        low, high = row["interval"]
        speed = f"not measurably different from {title} ({row['speedup']:.2f}x, {low:.2f}-{high:.2f}x)"
    else:
        speed = f"{row['speedup']:.2f}x {title}"
        if row["interval"]:
            speed += f" (95% {row['interval'][0]:.2f}-{row['interval'][1]:.2f}x)"
    return f"edgerep {row['engine']}: {speed}, {row['accuracy']} vs {row['baseline_accuracy']}"
