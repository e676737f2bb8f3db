"""What inflates an engine's latency when it is timed inside the build (issue 18 point 1's "find out first").

    python scripts/bench_timing_context.py [--model zoo:repvgg_a0] [--shape 1x3x224x224] [--repeats 3]
        [--out bench/timing_context.json]

One FP32 engine per runtime (OpenVINO IR, ONNX Runtime ONNX, dynamic batch, as the shipped profiles build them)
is timed at batch 1 (warm-up 10, 50 calls, the old in-build protocol) under each condition below, the conditions
interleaved and repeated --repeats times, each condition's p50 the median of its repeats:

  fresh            a child process that imports only the runtime (validate.timing's protocol);
  quiet            this process, the engine loaded and timed before any PyTorch work;
  after_reference  this process, right after the unfused PyTorch model ran over 360 inputs in batches of 32 (the
                   build's reference stage) - PyTorch's OpenMP threads are then spinning or just asleep;
  after_sleep      as after_reference, then 2 s idle before timing (lets PyTorch's threads go to sleep);
  after_val32      the engine's own session first ran the validation at batch 32 (the old protocol: timed right
                   after its validation), then batch 1.

Writes --out (date, machine, command, per runtime and condition: the repeats' p50s, their median, and the ratio
to `fresh`) and prints a table.
"""
from __future__ import annotations

import argparse
import platform
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
CONDITIONS = ("fresh", "quiet", "after_reference", "after_sleep", "after_val32")


def build_engines(model: str, shape: tuple[int, ...], work: Path) -> tuple[Any, dict[str, Any]]:
    import torch

    from edgerep.backends import get_backend
    from edgerep.export.pipeline import export_pipeline
    from edgerep.models.specs import load_model
    from edgerep.targets import load_target

    torch.manual_seed(0)
    info = load_model(model, input_shape=shape)
    export = export_pipeline(info, info.module, work / "onnx", opset=17, dynamic_batch=True)
    engines = {}
    for target in ("openvino-cpu", "onnxruntime-cpu"):
        profile = load_target(target)
        backend = get_backend(profile.backend)
        if backend.available() is None:
            engines[profile.backend] = backend.build(export.sim_path, "fp32", out_dir=work / target, profile=profile)
    return info.module, engines


def old_protocol(runner: Any, batch: np.ndarray) -> float:
    return float(np.median(runner.latency(batch, 10, 50)))


def condition(name: str, artifact: Any, module: Any, sample: np.ndarray, val: np.ndarray) -> float:
    from edgerep.backends import get_backend
    from edgerep.validate.timing import time_engines

    if name == "fresh":
        out = time_engines({"e": Path(artifact.path)}, sample, batch_sizes=[1], engine_batch=1, dynamic_batch=True,
                           rounds=1, warmup=10, iterations=50)
        return float(out["e"]["latency_ms"]["p50"])
    backend = get_backend(artifact.backend)
    if name in ("after_reference", "after_sleep"):
        import torch

        with torch.inference_mode():
            for i in range(0, len(val), 32):
                module(torch.from_numpy(val[i:i + 32]))
        if name == "after_sleep":
            time.sleep(2.0)
    with backend.load(artifact) as runner:
        if name == "after_val32":
            for i in range(0, len(val), 32):
                runner.run(val[i:i + 32])
        return old_protocol(runner, sample)


def machine() -> dict[str, Any]:
    from edgerep.cpu.isa import host_cpu

    return {**host_cpu().to_dict(), "platform": platform.platform(), "python": platform.python_version()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="zoo:repvgg_a0")
    ap.add_argument("--shape", default="1x3x224x224")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--val", type=int, default=360)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "timing_context.json")
    args = ap.parse_args(argv)
    shape = tuple(int(v) for v in args.shape.split("x"))
    work = Path(tempfile.mkdtemp(prefix="timing-context-"))
    module, engines = build_engines(args.model, shape, work)
    rng = np.random.default_rng(0)
    sample = rng.standard_normal(shape).astype(np.float32)
    val = rng.standard_normal((args.val, *shape[1:])).astype(np.float32)
    runs: dict[str, dict[str, list[float]]] = {b: {c: [] for c in CONDITIONS} for b in engines}
    for r in range(args.repeats):
        for backend, artifact in engines.items():
            order = CONDITIONS[r % len(CONDITIONS):] + CONDITIONS[:r % len(CONDITIONS)]
            for name in order:
                runs[backend][name].append(condition(name, artifact, module, sample, val))
                print(f"repeat {r + 1} {backend:<12} {name:<16} {runs[backend][name][-1]:.3f} ms", file=sys.stderr)
    results: dict[str, Any] = {}
    for backend, by_cond in runs.items():
        fresh = statistics.median(by_cond["fresh"])
        results[backend] = {c: {"p50_ms": v, "median_ms": statistics.median(v),
                                "vs_fresh": statistics.median(v) / fresh} for c, v in by_cond.items()}
    from edgerep.files.artifacts import package_versions, write_json_atomic

    body = {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine(),
            "command": shlex.join(["python", "scripts/bench_timing_context.py",
                                   *(argv if argv is not None else sys.argv[1:])]),
            "settings": {"model": args.model, "shape": list(shape), "repeats": args.repeats, "val_inputs": args.val,
                         "protocol": "warm-up 10, median of 50 calls at batch 1"},
            "versions": package_versions("edgerep", "torch", "openvino", "onnxruntime"), "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out, body)
    print(f"{'runtime':<12} {'condition':<16} {'median ms':>9} {'vs fresh':>8}  repeats")
    for backend, by_cond in results.items():
        for c, v in by_cond.items():
            print(f"{backend:<12} {c:<16} {v['median_ms']:>9.3f} {v['vs_fresh']:>7.2f}x  "
                  + " ".join(f"{x:.2f}" for x in v["p50_ms"]))
    print(f"wrote {args.out}")
    return 0



if __name__ == "__main__":
    sys.exit(main())
