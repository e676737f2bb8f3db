"""Benchmark: edgerep's engines against Ultralytics' own exports of YOLOs trained by Ultralytics' own trainer.

    python scripts/bench_ultralytics.py [--models yolov8n,yolo11n] [--targets openvino-cpu,onnxruntime-cpu]
        [--rounds 10] [--out bench/ultralytics.json] [--work work/bench_ultralytics]

Per model: scripts/train_yolo_digits.py trains it (or reuses its cached best.pt) from Ultralytics' config on the
shipped detection data (calib/digits_det: 360 train / 100 val images). Per model and runtime, one `edgerep build`
of that best.pt (`--trust-pickle`: we trained it here) with `--calib calib/digits_det/data.yaml` (the train split)
and `--val` the same yaml (the val split). The build itself makes the rows this benchmark compares, in one process
and the same interleaved rounds (edgerep's latency protocol, validate.timing): edgerep FP32 and INT8, Ultralytics'
FP32 and INT8 exports of the same weights (its exporter, run by the build; its INT8 calibrated on the same train
images, not its default val split), the PyTorch original and the unfused model's plain export. Every engine is
scored by edgerep on the held-out val images (labelled mAP@0.5:0.95).

The profile is the shipped one with static batch 1 (Ultralytics' exports are static at batch 1; a dynamic axis
costs ONNX Runtime speed) and --rounds interleaved rounds. OpenVINO: the runtime's default config on this CPU is
read from OpenVINO (INFERENCE_PRECISION_HINT) and recorded; where it is f32 (no BF16/FP16 hardware), the "default
config" and "f32" columns of the issue are the same engines, measured once.

Writes --out (date, machine incl. BF16/VNNI, command, per model and runtime: every row, the ratios with their 95%
intervals, and the issue's targets with measured/met) and prints a table.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DATA_YAML = REPO / "calib" / "digits_det" / "data.yaml"
ROWS = ("fp32", "int8", "ultralytics-fp32", "ultralytics-int8", "pytorch", "onnx-unfused")
# Issue 18 point 4's targets: (name, engine, than, minimum speed-up)
SPEED_TARGETS = {
    "openvino": [("edgerep int8 vs Ultralytics int8", "int8", "ultralytics-int8", 1.1)],
    "onnxruntime": [("edgerep int8 vs edgerep fp32", "int8", "fp32", 1.5),
                    ("edgerep fp32 vs Ultralytics fp32", "fp32", "ultralytics-fp32", 1.0)],
}
MAP_SLACK = 0.3  # edgerep INT8's labelled mAP drop may exceed Ultralytics' INT8's by at most this many points


def bench_profile(target: str, rounds: int, work: Path) -> Path:
    """The shipped profile with static batch 1 and `rounds` interleaved rounds, written beside the runs."""
    text = (REPO / "targets" / f"{target}.toml").read_text()
    lines = text.splitlines()
    name = next(line.split("=", 1)[1].strip().strip('"') for line in lines if line.split("=")[0].strip() == "name")
    out = []
    for line in lines:
        key = line.split("=")[0].strip()
        if key == "name":
            line = f'name = "{name}-bench"'
        elif key == "dynamic_batch":
            line = "dynamic_batch = false"
        elif key == "batch_sizes":
            line = f"batch_sizes = [1]\nrounds = {rounds}"
        out.append(line)
    path = work / f"{target}-bench.toml"
    path.write_text("\n".join(out) + "\n")
    return path


def train(model: str, work: Path) -> tuple[Path, dict[str, Any]]:
    """best.pt of `model` from scripts/train_yolo_digits.py (trained once, then reused from its cache)."""
    cmd = [sys.executable, str(REPO / "scripts" / "train_yolo_digits.py"), "--models", model, "--work", str(work),
           "--out", "", "--zoo-weights", ""]
    subprocess.run(cmd, check=True, cwd=REPO)
    best = work / model / "best.pt"
    info = json.loads((work / model / "best.json").read_text()) if (work / model / "best.json").is_file() else {}
    return best, info


def build(best: Path, profile: Path, out: Path) -> dict[str, Any]:
    cmd = ["edgerep", "build", "--model", str(best), "--trust-pickle", "--target", str(profile),
           "--precision", "fp32,int8", "--calib", str(DATA_YAML), "--val", str(DATA_YAML), "-o", str(out)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if not (out / "report.json").is_file():
        raise SystemExit(f"edgerep build failed (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}")
    report: dict[str, Any] = json.loads((out / "report.json").read_text())
    report["_wall_s"] = time.perf_counter() - t0
    report["_command"] = shlex.join(["edgerep", *cmd[1:]])
    report["_exit"] = proc.returncode
    return report


def rows_of(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """name -> {p50_ms, spread_ms, map, map_drop, passed, status, reason}."""
    out = {}
    for rec in [*report["engines"], *report.get("baselines", [])]:
        name = rec.get("name") or rec["precision"]
        lat, acc = rec.get("latency_ms") or {}, rec.get("accuracy") or {}
        out[name] = {"status": rec.get("status"), "p50_ms": lat.get("p50"), "spread_ms": lat.get("spread"),
                     "labelled_map": acc.get("labelled_map"), "map_drop": acc.get("labelled_map_drop"),
                     "map_agreement": acc.get("map_agreement"), "passed": rec.get("passed"),
                     "reason": rec.get("reason"),
                     "round_p50": ((rec.get("latency_by_batch") or [{}])[0]).get("round_p50")}
    return out


def ratio(rows: dict[str, dict[str, Any]], fast: str, slow: str) -> dict[str, Any] | None:
    """How many times faster `fast` is than `slow`, with its 95% interval over the paired rounds."""
    from edgerep.pipeline.recommend import speedup_interval

    a, b = rows.get(fast) or {}, rows.get(slow) or {}
    if not a.get("round_p50") or not b.get("round_p50"):
        return None
    found = speedup_interval(b["round_p50"], a["round_p50"])
    if found is None:
        return None
    return {"speedup": found[0], "interval": [found[1], found[2]], "p50_ms": a["p50_ms"], "than_p50_ms": b["p50_ms"]}


def targets_met(backend: str, rows: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    checks = []
    for name, fast, slow, need in SPEED_TARGETS.get(backend, []):
        r = ratio(rows, fast, slow)
        checks.append({"target": f"{name} >= {need}x", "measured": r,
                       "met": bool(r and r["speedup"] >= need),
                       "measurably_met": bool(r and r["interval"][0] >= need)})
    mine, theirs = (rows.get("int8") or {}).get("map_drop"), (rows.get("ultralytics-int8") or {}).get("map_drop")
    if mine is not None and theirs is not None:
        checks.append({"target": f"edgerep int8 mAP drop <= Ultralytics int8's + {MAP_SLACK}",
                       "measured": {"edgerep": mine, "ultralytics": theirs}, "met": mine <= theirs + MAP_SLACK})
    return checks


def machine() -> dict[str, Any]:
    from edgerep.cpu.isa import host_cpu

    cpu = host_cpu()
    return {**cpu.to_dict(), "bf16_features": list(getattr(cpu, "bf16_features", []) or []),
            "cores": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}


def openvino_default_precision() -> str | None:
    try:
        import openvino as ov

        return str(ov.Core().get_property("CPU", "INFERENCE_PRECISION_HINT"))
    except Exception:  # openvino missing or too old to say
        return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="yolov8n,yolo11n")
    ap.add_argument("--targets", default="openvino-cpu,onnxruntime-cpu")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--work", type=Path, default=REPO / "work" / "bench_ultralytics")
    ap.add_argument("--train-work", type=Path, default=REPO / "work" / "yolo")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "ultralytics.json")
    ap.add_argument("--markdown", action="store_true", help="print --out's README table (Markdown) and stop")
    args = ap.parse_args(argv)
    if args.markdown:
        print(markdown_table(json.loads(args.out.read_text())))
        return 0
    args.work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    results: dict[str, Any] = {}
    for model in [m for m in args.models.split(",") if m]:
        best, trained = train(model, args.train_work)
        results[model] = {"trained": trained, "runtimes": {}}
        for target in [t for t in args.targets.split(",") if t]:
            profile = bench_profile(target, args.rounds, args.work)
            report = build(best, profile, args.work / f"{model}-{target}")
            backend = report["target"]["backend"]
            rows = rows_of(report)
            results[model]["runtimes"][backend] = {
                "target": target, "command": report["_command"], "exit": report["_exit"],
                "wall_s": report["_wall_s"], "rows": rows,
                "ratios": {f"{a} vs {b}": ratio(rows, a, b) for a, b in
                           (("int8", "ultralytics-int8"), ("fp32", "ultralytics-fp32"), ("int8", "fp32"),
                            ("ultralytics-int8", "ultralytics-fp32"), ("fp32", "onnx-unfused"), ("fp32", "pytorch"))},
                "targets": targets_met(backend, rows),
                "recommended": (report.get("recommended") or {}).get("reason"),
                "head_plan": next((e.get("head_plan") for e in report["engines"] if e.get("head_plan")), None),
                "baseline_notes": report.get("baseline_notes"),
            }
    from edgerep.files.artifacts import package_versions, write_json_atomic

    body = {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine(),
            "command": shlex.join(["python", "scripts/bench_ultralytics.py", *(argv if argv is not None else sys.argv[1:])]),
            "openvino_default_inference_precision": openvino_default_precision(),
            "settings": {"rounds": args.rounds, "batch": 1, "static_shapes": True, "data": "calib/digits_det",
                         "calibration": "train split (both edgerep and Ultralytics)", "scored_on": "val split, 100 images"},
            "versions": package_versions("edgerep", "ultralytics", "torch", "openvino", "nncf", "onnxruntime"),
            "wall_s": time.perf_counter() - t0, "models": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out, body)
    print_table(body)
    print(f"wrote {args.out}")
    return 0


def markdown_table(body: dict[str, Any]) -> str:
    """The README's detector table, from the JSON alone (every figure is the benchmark's)."""
    names = {"fp32": "edgerep FP32", "int8": "edgerep INT8", "ultralytics-fp32": "Ultralytics FP32 export",
             "ultralytics-int8": "Ultralytics INT8 export", "onnx-unfused": "plain ONNX export (unfused)",
             "pytorch": "PyTorch (eager)"}
    out = ["| model | runtime | engine | p50 ms (round range) | mAP@0.5:0.95 | drop (pts) |", "|---|---|---|---|---|---|"]
    for model, res in body["models"].items():
        for backend, run in res["runtimes"].items():
            for name in ROWS:
                row = run["rows"].get(name)
                if not row or row.get("p50_ms") is None:
                    continue
                lo, hi = row.get("spread_ms") or (row["p50_ms"], row["p50_ms"])
                m = f"{row['labelled_map']:.3f}" if row.get("labelled_map") is not None else "-"
                d = f"{row['map_drop']:+.2f}" if row.get("map_drop") is not None else "-"
                out.append(f"| {model} | {backend} | {names[name]} | {row['p50_ms']:.2f} ({lo:.2f}-{hi:.2f}) | {m} | {d} |")
    out += ["", "| model | runtime | target | measured | met |", "|---|---|---|---|---|"]
    for model, res in body["models"].items():
        for backend, run in res["runtimes"].items():
            for check in run["targets"]:
                m = check["measured"]
                text = (f"{m['speedup']:.2f}x (95% {m['interval'][0]:.2f}-{m['interval'][1]:.2f})" if m and "speedup" in m
                        else ", ".join(f"{k} {v:+.2f}" for k, v in (m or {}).items()))
                met = ("yes" + ("" if check.get("measurably_met", True) else ", not measurably")) if check["met"] else "no"
                out.append(f"| {model} | {backend} | {check['target']} | {text} | {met} |")
    return "\n".join(out)


def print_table(body: dict[str, Any]) -> None:
    print(f"{'model':<9} {'runtime':<12} {'row':<17} {'p50 ms':>8} {'range':>15} {'mAP':>7} {'drop':>6}")
    for model, res in body["models"].items():
        for backend, run in res["runtimes"].items():
            for name in ROWS:
                row = run["rows"].get(name)
                if not row:
                    continue
                spread = row.get("spread_ms") or [None, None]
                rng = f"{spread[0]:.2f}-{spread[1]:.2f}" if spread[0] is not None else "-"
                p50 = f"{row['p50_ms']:.3f}" if row.get("p50_ms") is not None else "-"
                m = f"{row['labelled_map']:.4f}" if row.get("labelled_map") is not None else "-"
                d = f"{row['map_drop']:+.2f}" if row.get("map_drop") is not None else "-"
                print(f"{model:<9} {backend:<12} {name:<17} {p50:>8} {rng:>15} {m:>7} {d:>6}")
            for check in run["targets"]:
                measured = check["measured"]
                text = (f"{measured['speedup']:.2f}x ({measured['interval'][0]:.2f}-{measured['interval'][1]:.2f})"
                        if measured and "speedup" in measured else json.dumps(measured))
                print(f"  {'met ' if check['met'] else 'MISS'} {check['target']}: {text}")


if __name__ == "__main__":
    sys.exit(main())
