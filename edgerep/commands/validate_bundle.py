"""`edgerep validate --bundle DIR --engine FILE`: validate an engine against a device bundle's reference,
without PyTorch (on the device). A .engine/.plan runs in TensorRT after the sidecar guard; an .onnx runs in
ONNX Runtime (the stand-in on machines without TensorRT). Exit 0 passes the gate, 1 fails it, 2 bad input.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edgerep.backends.tensorrt.host import engine_precision
from edgerep.errors import UserError
from edgerep.tasks import task_named


def load_engine_runner(engine: Path, bundle: Any) -> tuple[Any, dict[str, Any] | None, str]:
    """A runner for `engine`: ONNX Runtime for .onnx (the stand-in on machines without TensorRT), TensorRT for
    .engine/.plan/.trt after the sidecar guard. Returns (runner, sidecar or None, runtime name)."""
    from edgerep.backends import get_backend
    from edgerep.files.artifacts import read_sidecar

    engine = Path(engine)
    if not engine.is_file():
        raise UserError(f"--engine {engine}: file not found; give its path, or its name inside --bundle")
    if engine.suffix == ".onnx":  # a prediction of the device engine: Q/DQ simulated, as in the build's row
        from edgerep.backends.onnxruntime.runner import OrtRunner

        require = get_backend("onnxruntime").available()
        if require is not None:
            raise UserError(require)
        return OrtRunner(engine, simulate_qdq=True), read_sidecar(engine), "onnxruntime"
    if engine.suffix not in (".engine", ".plan", ".trt"):
        raise UserError(f"--engine {engine}: expected a TensorRT plan (.engine, .plan, .trt) or an .onnx stand-in")
    from edgerep.backends.tensorrt.adapter import BACKEND as TRT  # load_checked: the device guard, TensorRT's own

    reason = TRT.available()
    if reason is not None:
        raise UserError(f"--engine {engine}: {reason}")
    side = read_sidecar(engine)
    onnx_name = next((e["onnx"] for e in bundle.manifest.get("engines", []) if e["engine"] == engine.name), None)
    runner = TRT.load_checked(engine, side, onnx_sha256=bundle.manifest["files"].get(onnx_name) if onnx_name else None,
                              output_names=bundle.manifest.get("output_names") or None)
    return runner, side, "tensorrt"


def run_validate_bundle(*, bundle: Path, engine: Path | list[Path], precision: str | None = None,
                        as_json: bool = False, out: Any = None, console: Any = None) -> int:
    """Validate an engine against the bundle's reference (no PyTorch): 0 passes its gate, 1 fails, 2 bad input.

    Several engines (`--engine` repeated): each is validated, then the engine to ship on this device is
    recommended by edgerep.pipeline.recommend's rule (the host deferred that choice to the device)."""
    if isinstance(engine, (list, tuple)):
        if len(engine) != 1:
            return _validate_several(Path(bundle), [Path(e) for e in engine], as_json=as_json, out=out,
                                     console=console)
        engine = engine[0]
    return _validate_one(Path(bundle), Path(engine), precision=precision, as_json=as_json, out=out)[0]


def _validate_several(bundle: Path, engines: list[Path], *, as_json: bool, out: Any, console: Any) -> int:
    from edgerep.backends.tensorrt.bundle import load_bundle
    from edgerep.pipeline.recommend import format_recommendation, recommend_on_device

    if not engines:
        raise UserError("--engine: give at least one engine of the bundle")
    records = []
    for engine in engines:
        code, record = _validate_one(bundle, engine, as_json=False, out=None if as_json else out)
        records.append(record)
    rec = recommend_on_device(records, load_bundle(bundle).manifest["profile"])
    if out is not None:
        if as_json:
            out.print_json(json.dumps({"engines": records, "recommended": rec}, default=str))
        else:
            out.print(format_recommendation(rec), highlight=False)
    return 0 if all(r.get("passed") for r in records) else 1


def _validate_one(bundle: Path, engine: Path, *, precision: str | None = None, as_json: bool = False,
                  out: Any = None) -> tuple[int, dict[str, Any]]:
    """One engine against the bundle's reference: (exit code, its record)."""
    from edgerep.backends.tensorrt.bundle import load_bundle, read_reference_all
    from edgerep.pipeline.report import engine_entry
    from edgerep.validate.engine import Reference, gate_to_dict, validate_runner

    b = load_bundle(Path(bundle))
    source, names, refs, labels = read_reference_all(b)
    ref = refs[0]
    engine = Path(engine)
    if not engine.is_file() and not engine.is_absolute() and (b.path / engine).is_file():
        engine = b.path / engine  # `--bundle DIR --engine model.onnx`: the engine's name inside the bundle
    runner, side, runtime = load_engine_runner(engine, b)
    with runner:
        require_outputs(runner, names, engine)
        prec = precision or engine_precision(b, Path(engine), side)
        task = (b.manifest.get("reference") or {}).get("task")
        gates = _task_gates(b.manifest["profile"], task)
        gate_name = prec if prec in gates else min(gates, key=lambda k: ("fp32", "fp16", "int8").index(k)) if gates else None
        gate = gates.get(gate_name) if gate_name else None
        engine_batch = check_batch(b.manifest)
        lat = b.manifest["profile"].get("latency") or {}
        reference = _reference(Reference, ref, refs, names, labels, source, task)
        record = engine_entry(runtime, prec, path=str(engine), status="ok", gate=gate_to_dict(gate),
                              gate_precision=gate_name, bundle=str(b.path))
        record.update(validate_runner(runner, reference, engine_batch=engine_batch, gate=gate,
                                      latency_batches=[engine_batch], warmup=int(lat.get("warmup", 10)),
                                      iterations=int(lat.get("iterations", 50)),
                                      dynamic_batch=bool(b.manifest["profile"].get("dynamic_batch"))))
    if side:
        record["sidecar"] = {k: side.get(k) for k in ("trt_version", "gpu_name", "compute_capability", "precision",
                                                       "dla_layers", "gpu_fallback_layers") if k in side}
    code = 0 if record.get("passed") else 1
    if as_json:
        if out is not None:
            out.print_json(json.dumps(record, default=str))
        return code, record
    if out is not None:
        acc, latency = record["accuracy"], record["latency_ms"]
        out.print(f"{engine} ({runtime}, {prec}) vs the bundle reference ({ref.shape[0]} samples, unfused PyTorch):",
                  highlight=False)
        for line in task_named(acc.get("task")).console_lines(acc):
            out.print(line, highlight=False)
        for item in acc.get("outputs") or []:
            if len(acc["outputs"]) > 1:
                out.print(f"  output {item['name']} {item.get('shape')}: max abs err {item['max_abs_err']:.3g}, "
                          f"cosine {item['cosine']:.6f}", highlight=False)
        if latency.get("p50") is not None:
            out.print(f"  latency p50 {latency['p50']:.3f} ms, p99 {latency['p99']:.3f} ms (batch {engine_batch})",
                      highlight=False)
        if side and side.get("dla_layers"):
            out.print(f"  DLA layers {len(side['dla_layers'])}, GPU fallback {len(side.get('gpu_fallback_layers') or [])}",
                      highlight=False)
        verdict = "[green]passes[/]" if code == 0 else f"[red]FAILS[/] ({record.get('reason')})"
        out.print(f"  {verdict} the {gate_name} gate of {b.manifest['profile']['name']}", highlight=False)
    return code, record


CHECK_BATCH_DEFAULT = 32  # a dynamic-batch bundle that records neither its profile nor its latency batches


def check_batch(manifest: dict[str, Any]) -> int:
    """The batch an engine of the bundle is checked at: the model's fixed batch; for a dynamic-batch bundle the
    largest the engine was built for: input.profile.max[0] (bundle.json), else max(profile.latency.batch_sizes)
    (the sizes the build's optimization profile spans), else CHECK_BATCH_DEFAULT. The bundle's check_engine.py
    has the same rule (check_batch there; tests compare the two)."""
    entry = manifest.get("input") or {}
    dims = entry.get("shape") or [1]
    if isinstance(dims[0], int) and dims[0] > 0:
        return int(dims[0])
    top = (entry.get("profile") or {}).get("max") or []
    if top and isinstance(top[0], int) and top[0] > 0:
        return int(top[0])
    sizes = [int(b) for b in ((manifest.get("profile") or {}).get("latency") or {}).get("batch_sizes") or []
             if int(b) > 0]
    return max(sizes) if sizes else CHECK_BATCH_DEFAULT


def _task_gates(profile: dict[str, Any], task: str | None) -> dict[str, Any]:
    """The bundle profile's gates for the bundle's task (Task.bundle_gates)."""
    return task_named(task).bundle_gates(profile)


def _reference(cls: Any, ref: Any, refs: list[Any], names: list[str], labels: Any, source: Any,
               task: str | None = None) -> Any:
    """A validate.Reference holding every output by name (outputs_all / output_names), given to the constructor
    when it takes them (so what it derives from them is computed), else set on it."""
    import dataclasses

    fields = {f.name for f in dataclasses.fields(cls) if f.init} if dataclasses.is_dataclass(cls) else set()
    extra = {"outputs_all": refs, "output_names": names}
    if {"outputs_all", "output_names"} <= fields:
        return cls(outputs=ref, labels=labels, source=source, limit=None, task=task, **extra)
    reference = cls(outputs=ref, labels=labels, source=source, limit=None)
    for key, value in extra.items():
        setattr(reference, key, value)
    return reference


def require_outputs(runner: Any, names: list[str], engine: Path) -> None:
    """The engine must have every reference output, by name (its run_all is then in the reference's order)."""
    have = list(getattr(runner, "output_names", None) or [])
    if have and have != names:
        if sorted(have) != sorted(names):
            raise UserError(f"--engine {engine}: its outputs {have} are not the bundle reference's {names}; "
                            f"build it from this bundle's ONNX")
        raise UserError(f"--engine {engine}: its outputs {have} come in another order than the bundle "
                        f"reference's {names}; build it from this bundle's ONNX")
