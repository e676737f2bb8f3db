"""Benchmark `edgerep build` on RepVGG-A0 at 224x224 (random weights, seeded).

In one run:
  * the wall time of each build stage and of the whole build, for openvino-cpu (fp32, fp16, int8) and
    onnxruntime-cpu (fp32, int8), every stage rebuilt (--force);
  * engine latency, batch 1 (and 8), for: the *unfused* model exported and simplified the same way (what you
    get without edgerep's fusion) vs edgerep's fused FP32, on OpenVINO and on ONNX Runtime; and INT8 vs FP32.
Latency: each engine's p50 over `--iterations` calls after `--warmup` calls, repeated `--rounds` times with
the engines interleaved (so machine load drifts hit all alike); the median of the rounds is reported.

    python scripts/bench_build.py [--out bench/bench_build.json] [--work runs/bench-build] [--rounds 5]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="zoo:repvgg_a0")
    ap.add_argument("--input-shape", default="1x3x224x224")
    ap.add_argument("--work", type=Path, default=Path("runs/bench-build"))
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "bench" / "bench_build.json")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--iterations", type=int, default=30)
    ap.add_argument("--batch-sizes", default="1,8")
    args = ap.parse_args()

    from rich.console import Console
    from rich.table import Table

    from edgerep.backends import get_backend
    from edgerep.export.onnx_export import export_onnx
    from edgerep.export.simplify import simplify_onnx
    from edgerep.files.artifacts import package_versions
    from edgerep.models.specs import load_model
    from edgerep.pipeline.build import BuildOptions, build
    from edgerep.targets import load_target

    console = Console(stderr=True)
    out = Console()
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]

    # --- 1. the builds, every stage timed (forced, so nothing is reused)
    builds: dict[str, dict] = {}
    for target, precisions in (("openvino-cpu", "fp32,fp16,int8"), ("onnxruntime-cpu", "fp32,int8")):
        console.rule(f"edgerep build {args.model} -t {target}")
        t0 = time.perf_counter()
        result = build(BuildOptions(model=args.model, input_shape=args.input_shape, target=target, precisions=precisions,
                                    force=True, output=args.work / target), console=console)
        total = time.perf_counter() - t0
        builds[target] = {
            "total_s": total,
            "stages": {s["name"]: round(s["seconds"], 3) for s in result.report["stages"]},
            "exit_code": result.exit_code,
            "engines": {e["precision"]: {"path": e["path"], "passed": e["passed"], "reason": e["reason"],
                                         "cosine": e["accuracy"]["cosine"], "top1_agreement": e["accuracy"]["top1_agreement"]}
                        for e in result.report["engines"]},
        }
        fuse = result.report.get("fuse") or {}
    # --- 2. the unfused baseline: same export, simplifier and backends, without fusion
    console.rule("unfused export (baseline)")
    import torch

    torch.manual_seed(0)  # the same random weights as the builds (they seed with 0 too)
    info = load_model(args.model, input_shape=args.input_shape)
    profile_ov, profile_ort = load_target("openvino-cpu"), load_target("onnxruntime-cpu")
    base = args.work / "unfused"
    t0 = time.perf_counter()
    raw = export_onnx(info.module, torch.randn(*info.input_shape), base / "model.onnx", opset=profile_ov.opset,
                      dynamic_batch=True)
    sim, used = simplify_onnx(raw, base / "model.sim.onnx", method="onnxsim")
    console.print(f"unfused export + {used}: {time.perf_counter() - t0:.1f} s")

    from edgerep.files.artifacts import load_artifact

    engines = {}  # label -> (backend, artifact)
    for backend_name, profile in (("openvino", profile_ov), ("onnxruntime", profile_ort)):
        backend = get_backend(backend_name)
        engines[f"{backend_name} unfused fp32"] = (backend, backend.build(sim, "fp32", out_dir=base / backend_name, profile=profile))
        target = f"{'openvino' if backend_name == 'openvino' else 'onnxruntime'}-cpu"
        for precision in ("fp32", "int8"):
            path = builds[target]["engines"][precision]["path"]
            engines[f"{backend_name} fused {precision}"] = (backend, load_artifact(Path(path)))

    # --- 3. latency, interleaved rounds, medians
    console.rule("latency")
    runners = {label: backend.load(art) for label, (backend, art) in engines.items()}
    rng = np.random.default_rng(0)
    batches = {bs: rng.standard_normal((bs, *info.input_shape[1:])).astype(np.float32) for bs in batch_sizes}
    p50s: dict[str, dict[int, list[float]]] = {label: {bs: [] for bs in batch_sizes} for label in runners}
    for r in range(args.rounds):
        for bs in batch_sizes:
            for label, runner in runners.items():
                times = runner.latency(batches[bs], args.warmup, args.iterations)
                p50s[label][bs].append(statistics.median(times))
        console.print(f"round {r + 1}/{args.rounds} done")
    for runner in runners.values():
        runner.close()
    latency = {label: {str(bs): statistics.median(v) for bs, v in per.items()} for label, per in p50s.items()}

    def ratio(a: str, b: str, bs: int) -> float:
        return latency[a][str(bs)] / latency[b][str(bs)]

    ratios = {}
    for be in ("openvino", "onnxruntime"):
        for bs in batch_sizes:
            ratios[f"{be} unfused/fused fp32 b{bs}"] = ratio(f"{be} unfused fp32", f"{be} fused fp32", bs)
            ratios[f"{be} fp32/int8 b{bs}"] = ratio(f"{be} fused fp32", f"{be} fused int8", bs)

    import os
    import platform
    import shlex

    from edgerep.cpu.isa import host_cpu

    result = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join(shlex.quote(a) for a in ["python", *sys.argv]),
        "model": args.model, "input_shape": args.input_shape, "weights": "random (seed 0)",
        "machine": {**host_cpu().to_dict(), "cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": sys.version.split()[0]},
        "settings": {"rounds": args.rounds, "warmup": args.warmup, "iterations": args.iterations,
                     "batch_sizes": batch_sizes, "statistic": "median over rounds of per-round p50 (ms)"},
        "fuse": {k: fuse.get(k) for k in ("regions", "ops_before_total", "ops_after_total", "params_before",
                                          "params_after", "flops_before", "flops_after", "max_rel_err")},
        "builds": builds,
        "latency_ms": latency,
        "speedup": ratios,
        "versions": package_versions("edgerep", "torch", "openvino", "nncf", "onnxruntime", "onnx", "onnxsim"),
    }
    from edgerep.files.artifacts import write_json_atomic

    write_json_atomic(args.out, result)

    # --- tables
    t = Table(title=f"edgerep build {args.model} {args.input_shape}: stage wall time (s)")
    names = list(dict.fromkeys(n for b in builds.values() for n in b["stages"]))
    t.add_column("stage")
    for target in builds:
        t.add_column(target, justify="right")
    for n in names:
        t.add_row(n, *(f"{builds[tg]['stages'][n]:.2f}" if n in builds[tg]["stages"] else "-" for tg in builds))
    t.add_row("[bold]whole build[/]", *(f"[bold]{builds[tg]['total_s']:.2f}[/]" for tg in builds))
    out.print(t)
    t = Table(title="engine latency, median p50 (ms)")
    t.add_column("engine")
    for bs in batch_sizes:
        t.add_column(f"batch {bs}", justify="right")
    for label in latency:
        t.add_row(label, *(f"{latency[label][str(bs)]:.3f}" for bs in batch_sizes))
    out.print(t)
    t = Table(title="latency ratios (>1: the second is faster)")
    t.add_column("ratio")
    t.add_column("value", justify="right")
    for k, v in ratios.items():
        t.add_row(k, f"{v:.2f}x")
    out.print(t)
    out.print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
