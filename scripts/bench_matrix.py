"""Benchmark `edgerep matrix` on an 8-cell matrix (4 models x openvino-cpu, onnxruntime-cpu; fp32 + int8):
serial (one worker with every core) vs 2 local workers (1 thread each) vs Ray on a local cluster (2 CPUs, 1 per
cell) vs Ray on two nodes started on this machine with `ray start` (1 CPU each, no folder shared with the driver:
every cell's files come back through the object store). Every run rebuilds everything (--force) into its own folder.

Reported per mode: wall time of the whole matrix, of the parallel build + accuracy phase and of the latency phase
(always one cell at a time), and the per-stage split (seconds summed over cells). The two-node row also has the
bytes moved to the driver and the driver's peak memory (its process's max RSS, from wait4). With --rounds > 1 the
modes are interleaved per round and the median of each figure is reported. Rows of modes not run this time are
kept from the existing --out file (each row says when and how it was measured).

    /work/heavy python scripts/bench_matrix.py [--rounds 3] [--modes serial,local-2,ray-local,ray-2-nodes]
        [--out bench/bench_matrix.json] [--work runs/bench-matrix]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: tests.matrix.matrix_files
from tests.matrix.matrix_files import local_ray, matrix_toml  # noqa: E402 (written as tests/matrix writes its own)

MODELS = ("repvgg_digits", "repvgg_a0_digits", "acb_resnet_tiny", "mobileone_tiny")
MATRIX = matrix_toml([{"name": name, "spec": f"zoo:{name}"} for name in MODELS], ["openvino-cpu", "onnxruntime-cpu"],
                     ["fp32", "int8"], calib_samples=100, val_samples=200)
MODES = ("serial", "local-2", "ray-local", "ray-2-nodes")


def run_mode(mode: str, toml: Path, work: Path) -> dict:
    from edgerep.commands.matrix import run_matrix

    out = work / mode
    extra: dict = {}
    t0 = time.perf_counter()
    if mode == "ray-2-nodes":
        code, wall, extra = run_two_nodes(toml, out)
    elif mode == "ray-local":
        with local_ray(num_cpus=2):
            code = run_matrix(matrix_file=toml, output=out, ray=True, force=True)
    else:
        code = run_matrix(matrix_file=toml, output=out, workers=1 if mode == "serial" else 2, force=True)
    if mode != "ray-2-nodes":
        wall = time.perf_counter() - t0
    doc = json.loads((out / "matrix.json").read_text())
    stages: dict[str, float] = {}
    for cell in doc["cells"]:
        for st in cell["stages"]:
            name = st["name"].split()[0]  # "build int8" -> "build", "latency fp32" -> "latency"
            stages[name] = stages.get(name, 0.0) + (st.get("seconds") or 0.0)
    return {"exit_code": code, "wall_s": wall, "build_phase_s": doc["run"]["build_phase_seconds"],
            "latency_phase_s": doc["run"]["latency_phase_seconds"], "stage_sum_s": stages,
            "passed": doc["summary"]["passed"], "records": doc["summary"]["records"],
            "p50_ms": {f"{r['model']} {r['target']} {r['precision']}": r["latency_ms"]["p50"] for r in doc["records"]},
            **extra, **({"transfer": doc["run"]["transfer"]} if "transfer" in doc["run"] else {})}


def run_two_nodes(toml: Path, out: Path) -> tuple[int, float, dict]:
    """The matrix from a driver process on a two-node cluster (1 CPU per node); returns the exit code, the
    driver's wall time (the cluster's start and stop not included) and its peak RSS."""
    from tests.matrix.ray_nodes import RAY_ENV, two_nodes

    repo = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, **RAY_ENV, "PYTHONPATH": os.pathsep.join(p for p in [repo, os.environ.get("PYTHONPATH")] if p)}
    cluster = two_nodes(head_cpus=1, worker_cpus=1)
    try:
        log = open(out.parent / f"{out.name}.driver.log", "w")
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "edgerep.cli", "matrix", str(toml), "--ray", cluster.address,
                                 "-o", str(out), "--force"], env=env, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        log.close()
    finally:
        cluster.stop()
    return os.waitstatus_to_exitcode(status), wall, {"driver_peak_rss_mb": usage.ru_maxrss / 1024, "nodes": 2,
                                   "cpus_per_node": 1}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--work", type=Path, default=Path("runs/bench-matrix"))
    ap.add_argument("--out", type=Path, default=Path("bench/bench_matrix.json"))
    ap.add_argument("--modes", default=",".join(MODES))
    args = ap.parse_args()
    from rich.console import Console
    from rich.table import Table

    from edgerep.files.artifacts import package_versions

    out = Console()
    modes = [m for m in args.modes.split(",") if m]
    args.work.mkdir(parents=True, exist_ok=True)
    toml = args.work / "matrix.toml"
    toml.write_text(MATRIX)
    runs: dict[str, list[dict]] = {m: [] for m in modes}
    for r in range(args.rounds):
        for mode in modes if r % 2 == 0 else modes[::-1]:  # alternate the order so load drift hits every mode
            runs[mode].append(run_mode(mode, toml, args.work))
            out.print(f"round {r + 1}/{args.rounds} {mode}: {runs[mode][-1]['wall_s']:.1f} s", highlight=False)

    def med(mode: str, key: str) -> float:
        return statistics.median(run[key] for run in runs[mode])

    date = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    command = " ".join([Path(sys.executable).name, *sys.argv])
    machine = {"cpus": os.cpu_count(), "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
               "processor": platform.processor() or platform.machine(), "python": platform.python_version(),
               "note": "a shared 2-core box; other jobs may run at the same time"}
    summary = {m: {"wall_s": med(m, "wall_s"), "build_phase_s": med(m, "build_phase_s"),
                   "latency_phase_s": med(m, "latency_phase_s"),
                   "stage_sum_s": {k: statistics.median(run["stage_sum_s"].get(k, 0.0) for run in runs[m])
                                   for k in runs[m][0]["stage_sum_s"]}} for m in modes}
    for m in modes:
        if "driver_peak_rss_mb" in runs[m][0]:
            summary[m]["driver_peak_rss_mb"] = med(m, "driver_peak_rss_mb")
        if "transfer" in runs[m][0]:
            summary[m]["bytes_moved"] = statistics.median(run["transfer"]["bytes"] for run in runs[m])
            summary[m]["files_moved"] = statistics.median(run["transfer"]["files"] for run in runs[m])
        if m == "ray-2-nodes":
            summary[m]["note"] = ("two Ray nodes of 1 CPU on the same 2 cores, started with `ray start` (own temp "
                                  "dirs and scratch roots); wall = the driver process, without the cluster's "
                                  "start/stop; the two nodes time their cells at the same time, on one machine")
    base = summary.get("serial", {}).get("wall_s")
    for m in modes:  # a ratio only between modes measured in the same run, side by side
        summary[m]["speedup_vs_serial"] = base / summary[m]["wall_s"] if base else None
        summary[m].update(date=date, command=command, rounds=args.rounds)
    previous = json.loads(args.out.read_text()) if args.out.is_file() else {}
    kept = {m: row for m, row in (previous.get("summary") or {}).items() if m not in summary}
    for row in kept.values():  # rows from an earlier run keep that run's date and command
        row.setdefault("date", previous.get("date"))
        row.setdefault("command", previous.get("command"))
        row.setdefault("rounds", previous.get("rounds"))
    result = {
        "benchmark": "bench_matrix", "date": date, "command": command, "machine": machine,
        "matrix": {"models": 4, "targets": 2, "precisions": ["fp32", "int8"], "cells": 8, "engines": 16,
                   "calib_samples": 100, "val_samples": 200, "text": MATRIX},
        "rounds": args.rounds, "statistic": "median over rounds",
        "summary": {**kept, **summary}, "runs": {**{m: r for m, r in (previous.get("runs") or {}).items()
                                                   if m in kept}, **runs},
        "versions": package_versions("edgerep", "torch", "openvino", "nncf", "onnxruntime", "ray"),
    }
    modes = list(result["summary"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")

    summary = result["summary"]
    t = Table(title="edgerep matrix, 8 cells / 16 engines, median over rounds: wall time (s)")
    for c in ("mode", "date", "whole", "build+accuracy", "latency", "vs serial", "moved MB", "driver RSS MB"):
        t.add_column(c, justify="left" if c in ("mode", "date") else "right")
    for m in modes:
        s = summary[m]
        t.add_row(m, str(s.get("date", ""))[:10], f"{s['wall_s']:.1f}", f"{s['build_phase_s']:.1f}",
                  f"{s['latency_phase_s']:.1f}", f"{s['speedup_vs_serial']:.2f}x" if s.get("speedup_vs_serial") else "-",
                  f"{s['bytes_moved'] / 2**20:.1f}" if "bytes_moved" in s else "-",
                  f"{s['driver_peak_rss_mb']:.0f}" if "driver_peak_rss_mb" in s else "-")
    out.print(t)
    names = list(dict.fromkeys(k for m in modes for k in summary[m]["stage_sum_s"]))
    t = Table(title="per-stage split: seconds summed over the 8 cells (CPU-seconds of work, not wall time)")
    t.add_column("stage")
    for m in modes:
        t.add_column(m, justify="right")
    for n in names:
        t.add_row(n, *(f"{summary[m]['stage_sum_s'].get(n, 0.0):.1f}" for m in modes))
    out.print(t)
    out.print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
