"""Benchmark what fusion buys: RepVGG-A0 and RepVGG-B0 at 224x224, Ultralytics YOLOv8n at 640x640, unfused vs
fused, in one run.

For each model (zoo weights are random, seeded, with randomized BN statistics so every branch counts):
  * PyTorch CPU latency of the unfused (training-form, eval mode) model vs `edgerep.fuse`'s fused model;
  * ONNX Runtime CPU latency of the unfused model's ONNX export vs the fused model's export (same exporter,
    same opset; ORT's own graph optimizations are on, so the unfused graph gets ORT's conv+BN folding but
    not the branch merging);
  * the speedups unfused/fused, and the numbers behind them (ops, params, FLOPs, fusion error and time).
`ultralytics:CFG` builds `ultralytics.nn.tasks.DetectionModel(CFG)` from the yaml Ultralytics ships (random
weights, randomized BN, nothing downloaded; `pip install ultralytics`); its Detect head is put in export mode
(one output tensor) for both forms. It is fused module by module (fx cannot trace YOLO's layer walk), and
Ultralytics' own `fuse()` is timed and checked beside it as a second route.
Latency: time.perf_counter_ns around each call, `--warmup` untimed calls first; the four runners are
interleaved over `--rounds` rounds (so load drifts hit all alike); each round's median, then the median
of the rounds. One intra-op thread by default (see --threads). JSON to --out, a table on stdout.

    python scripts/bench_fuse.py [--out bench/fuse.json] [--rounds 5] [--iterations 10] [--warmup 3] [--threads 1]
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np


def randomize_bn(model: Any, seed: int = 0) -> Any:
    """Random BN running statistics and affines: with identity stats every branch would fuse trivially."""
    import torch
    import torch.nn as nn

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.bias.shape, generator=g) - 0.5)
    return model


def median_latency_ms(runners: dict[str, Callable[[], Any]], *, rounds: int, warmup: int, iterations: int
                      ) -> dict[str, dict[str, Any]]:
    """Interleave the runners over `rounds`; per runner: median of the per-round medians, and the rounds."""
    per_round: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(rounds):
        for name, fn in runners.items():
            for _ in range(warmup):
                fn()
            times = []
            for _ in range(iterations):
                t0 = time.perf_counter_ns()
                fn()
                times.append((time.perf_counter_ns() - t0) / 1e6)
            per_round[name].append(statistics.median(times))
    return {name: {"median_ms": statistics.median(v), "round_medians_ms": v} for name, v in per_round.items()}


def build_model(spec: str, shape: tuple[int, ...]) -> tuple[Any, str]:
    """(model in eval mode with randomized BN, a file-safe name)."""
    import torch

    torch.manual_seed(0)
    if spec.startswith("ultralytics:"):
        from ultralytics.nn.tasks import DetectionModel

        cfg = spec.split(":", 1)[1]
        model = DetectionModel(cfg, verbose=False)
        model.model[-1].export = True  # the head returns one tensor (boxes and class scores), as when exported
        return randomize_bn(model).eval(), Path(cfg).stem
    from edgerep.models.specs import load_model

    info = load_model(spec, input_shape=shape)
    return randomize_bn(info.module).eval(), info.name


def ultralytics_route(model: Any, x: Any, fused: Any) -> dict:
    """Ultralytics' own fuse() on the same model: its time and how far it is from ours."""
    import copy

    import torch

    theirs = copy.deepcopy(model)
    t0 = time.perf_counter()
    theirs.fuse(verbose=False)
    seconds = time.perf_counter() - t0
    with torch.no_grad():
        a, b = fused(x), theirs(x)
    err = float((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-12))
    same_keys = set(fused.state_dict()) == set(theirs.state_dict())
    return {"fuse_seconds": seconds, "max_rel_err_vs_edgerep": err, "same_state_dict_keys": same_keys}


def bench_model(spec: str, shape: tuple[int, ...], work: Path, args: argparse.Namespace, console: Any) -> dict:
    import onnxruntime as ort
    import torch

    from edgerep.export.onnx_export import export_onnx
    from edgerep.fuse import fuse

    model, name = build_model(spec, shape)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    console.print(f"{spec}: fusing at {'x'.join(map(str, shape))}")
    t0 = time.perf_counter()
    result = fuse(model, x)
    fuse_s = time.perf_counter() - t0
    fused = result.model.eval()
    second_route = ultralytics_route(model, x, fused) if spec.startswith("ultralytics:") else None

    console.print(f"{spec}: exporting both forms to ONNX (opset {args.opset})")
    folder = work / name
    paths = {}
    for form, module in (("unfused", model), ("fused", fused)):
        paths[form] = export_onnx(module, x, folder / f"{form}.onnx", opset=args.opset)

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if args.threads:
        opts.intra_op_num_threads = args.threads
    sessions = {form: ort.InferenceSession(str(p), opts, providers=["CPUExecutionProvider"]) for form, p in paths.items()}
    feed = x.numpy()
    names = {form: s.get_inputs()[0].name for form, s in sessions.items()}
    with torch.no_grad():
        ref = model(x).numpy()
    errors = {}
    for form, sess in sessions.items():
        out = sess.run(None, {names[form]: feed})[0]
        errors[form] = float(np.abs(out - ref).max() / max(np.abs(ref).max(), 1e-12))

    def torch_runner(module):
        def run():
            with torch.no_grad():
                module(x)
        return run

    def ort_runner(form):
        sess, name = sessions[form], names[form]
        return lambda: sess.run(None, {name: feed})

    console.print(f"{spec}: timing ({args.rounds} rounds x {args.iterations} calls, {args.warmup} warm-up calls each)")
    lat = median_latency_ms({
        "torch_unfused": torch_runner(model), "torch_fused": torch_runner(fused),
        "ort_unfused": ort_runner("unfused"), "ort_fused": ort_runner("fused"),
    }, rounds=args.rounds, warmup=args.warmup, iterations=args.iterations)
    rep = result.report
    return {
        "model": spec,
        "input_shape": list(shape),
        "fuse_method": rep.method,
        "ultralytics_fuse": second_route,
        "params_before": rep.params_before, "params_after": rep.params_after,
        "gflops_before": rep.flops_before / 1e9, "gflops_after": rep.flops_after / 1e9,
        "ops_before": rep.ops_before, "ops_after": rep.ops_after,
        "fuse_max_rel_err": rep.max_rel_err,
        "onnx_max_rel_err_vs_torch_unfused": errors,
        "fuse_seconds": fuse_s,
        "latency_ms": lat,
        "speedup_torch": lat["torch_unfused"]["median_ms"] / lat["torch_fused"]["median_ms"],
        "speedup_ort": lat["ort_unfused"]["median_ms"] / lat["ort_fused"]["median_ms"],
        # The ratio within each round (the runners are interleaved, so a load change hits both), then the median:
        # steadier than the ratio of medians on a shared machine.
        "speedup_torch_per_round": _round_ratio(lat, "torch"),
        "speedup_ort_per_round": _round_ratio(lat, "ort"),
    }


def _round_ratio(lat: dict, runtime: str) -> float:
    pairs = zip(lat[f"{runtime}_unfused"]["round_medians_ms"], lat[f"{runtime}_fused"]["round_medians_ms"])
    return statistics.median(u / f for u, f in pairs)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="zoo:repvgg_a0,zoo:repvgg_b0,ultralytics:yolov8n.yaml",
                    help="zoo:NAME, timm:NAME, ... or ultralytics:CFG.yaml (comma list)")
    ap.add_argument("--input-shape", default="1x3x224x224")
    ap.add_argument("--ultralytics-shape", default="1x3x640x640", help="input shape of the ultralytics: models")
    ap.add_argument("--opset", type=int, default=17)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--iterations", type=int, default=10)
    # One thread by default: on a shared 2-core machine, multi-threaded timings were dominated by contention
    # (round medians of one runner spread 14-67 ms); the fusion ratio is a property of the work, not of threading.
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads for PyTorch and ORT (0: their defaults)")
    ap.add_argument("--work", type=Path, default=Path("runs/bench-fuse"))
    ap.add_argument("--out", type=Path, default=Path("bench/fuse.json"))
    args = ap.parse_args()

    import platform
    import sys
    from datetime import datetime, timezone

    import torch
    from rich.console import Console
    from rich.table import Table

    from edgerep.cpu.isa import host_cpu
    from edgerep.files.artifacts import package_versions, write_json_atomic
    from edgerep.models.specs import parse_input_shape

    console, out = Console(stderr=True), Console()
    if args.threads:
        torch.set_num_threads(args.threads)
    shape = parse_input_shape(args.input_shape)
    yolo_shape = parse_input_shape(args.ultralytics_shape)
    results = [bench_model(spec, yolo_shape if spec.startswith("ultralytics:") else shape, args.work, args, console)
               for spec in args.models.split(",")]
    payload = {
        "benchmark": "bench_fuse",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python", *sys.argv]),
        "machine": {"cpu": host_cpu().brand, "arch": platform.machine(), "system": platform.platform()},
        "method": "median of per-round medians; runners interleaved; time.perf_counter_ns",
        "rounds": args.rounds, "warmup": args.warmup, "iterations": args.iterations, "opset": args.opset,
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "ort_threads": args.threads or "default",
        "load_average": list(os.getloadavg()),
        "versions": package_versions("edgerep", "torch", "onnxruntime", "onnx", "ultralytics"),
        "results": results,
    }
    write_json_atomic(args.out, payload)

    table = Table(title="edgerep fuse: median ms, CPU")
    # "a/b" cells: unfused/fused; "x": the speedup unfused/fused.
    for col in ("model", "input", "ops", "fuse s", "GFLOPs", "torch ms", "torch x", "round x", "ORT ms", "ORT x",
                "round x ", "rel err"):
        table.add_column(col, justify="left" if col == "model" else "right", no_wrap=True)
    for r in results:
        lat = r["latency_ms"]
        table.add_row(
            r["model"].removeprefix("zoo:"), "x".join(map(str, r["input_shape"][2:])),
            f"{sum(r['ops_before'].values())}/{sum(r['ops_after'].values())}", f"{r['fuse_seconds']:.1f}",
            f"{r['gflops_before']:.2f}/{r['gflops_after']:.2f}",
            f"{lat['torch_unfused']['median_ms']:.1f}/{lat['torch_fused']['median_ms']:.1f}",
            f"{r['speedup_torch']:.2f}", f"{r['speedup_torch_per_round']:.2f}",
            f"{lat['ort_unfused']['median_ms']:.1f}/{lat['ort_fused']['median_ms']:.1f}", f"{r['speedup_ort']:.2f}",
            f"{r['speedup_ort_per_round']:.2f}",
            f"{max(r['fuse_max_rel_err'], *r['onnx_max_rel_err_vs_torch_unfused'].values()):.0e}",
        )
    out.print(table)
    out.print("cells a/b: unfused/fused; x: speedup (unfused / fused) of the medians; round x: median of the "
              "per-round speedups")
    for r in results:
        if r["ultralytics_fuse"]:
            u = r["ultralytics_fuse"]
            out.print(f"{r['model']}: Ultralytics' own fuse() {u['fuse_seconds']:.2f} s, max rel diff to edgerep's "
                      f"{u['max_rel_err_vs_edgerep']:.1e}, same checkpoint keys: {u['same_state_dict_keys']}")
    out.print(f"load average {payload['load_average'][0]:.1f} on {payload['cpu_count']} cores; JSON: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
