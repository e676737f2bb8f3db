"""`edgerep build`: the stages composed - load -> fuse -> export + simplify -> engines -> validate -> report.

Each stage that makes a file is keyed by a content hash of everything it depends on, recorded in a small
manifest (DIR/stages.json, written atomically after every finished stage):
  onnx:   model spec + a hash of the weights actually loaded + input shape + fuse/export settings + opset
          + torch/onnx versions;
  engine: the simplified ONNX's hash + backend + precision + (INT8) the calibration data's hash + options
          + the profile's build settings + the runtime's version.
A re-run whose key matches, and whose files still match their sidecars, reuses the stage; --force rebuilds.
Artifacts are written under temporary names and renamed, so a kill or a full disk never leaves a file that
looks finished; the next run resumes after the last finished stage.

Default output folder: runs/<model-name>-<target> (e.g. runs/repvgg_digits-openvino-cpu).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import time
import traceback
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from .errors import UserError

DEMO_MODEL = "zoo:repvgg_digits"
MANIFEST = "stages.json"
MANIFEST_SCHEMA = 1
VALID_PRECISIONS = ("fp32", "fp16", "int8")


@dataclass
class BuildOptions:
    """Everything `edgerep build` takes; the CLI fills it from flags."""

    model: str | None = None  # None: the demo (zoo:repvgg_digits with its shipped weights and data)
    weights: Path | None = None
    input_shape: str | tuple[int, ...] | None = None
    num_classes: int | None = None
    trust_pickle: bool = False
    target: str = "openvino-cpu"
    precisions: list[str] | str | None = None  # None: every precision of the target
    calib: Path | None = None
    val: Path | None = None
    force: bool = False
    output: Path | None = None  # None: runs/<model-name>-<target>
    # preprocessing overrides for image data (None: from the model spec)
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    resize: int | None = None
    interpolation: str | None = None
    channel_order: str | None = None
    calib_samples: int | None = None  # None: the profile's calibration.num_samples
    calib_method: str | None = None  # None: the profile's calibration.method
    val_samples: int | None = None  # None: every validation sample
    val_batch: int = 32
    simplifier: str = "onnxsim"
    fuse_tol: float = 1e-4
    export_tol: float = 1e-4
    seed: int = 0  # seeds random initialisation, so a model without weights is the same on every run
    backend_options: dict[str, Any] = field(default_factory=dict)  # e.g. {"ignored_nodes": [...]}
    max_drop: float | None = None  # INT8: keep the fewest sensitive layers in float until the drop is within this (points)
    isa: str | None = None  # CPU targets: the ISA the engines must hold on (None: the profile's `isa`)


@dataclass
class BuildResult:
    exit_code: int
    out_dir: Path
    report: dict[str, Any]
    paths: tuple[Path, Path, Path] | None = None


# --- progress --------------------------------------------------------------------------------------


class StageLog:
    """Prints one status line per stage on stderr (a spinner while it runs on a terminal) and records
    each stage's name, status (built | reused | done | failed) and wall time for the report."""

    def __init__(self, console: Any) -> None:
        self.console = console
        self.stages: list[dict[str, Any]] = []

    @contextmanager
    def stage(self, name: str, doing: str) -> Iterator[dict[str, Any]]:
        record: dict[str, Any] = {"name": name, "status": "done", "detail": ""}
        interactive = self.console is not None and self.console.is_terminal
        spinner = self.console.status(f"[bold]{name}[/]: {doing}...") if interactive else nullcontext()
        t0 = time.perf_counter()
        try:
            with spinner:
                yield record
        except BaseException:
            record["status"] = "failed"
            record["seconds"] = time.perf_counter() - t0
            self.stages.append(record)
            self._print("[red]x[/]", record)
            raise
        record["seconds"] = time.perf_counter() - t0
        self.stages.append(record)
        mark = {"reused": "[cyan]=[/]", "failed": "[red]x[/]"}.get(record["status"], "[green]✓[/]")
        self._print(mark, record)

    def _print(self, mark: str, record: dict[str, Any]) -> None:
        if self.console is None:
            return
        status = f" [cyan]({record['status']})[/]" if record["status"] in ("reused", "failed") else ""
        from rich.markup import escape

        self.console.print(f"{mark} {record['name']:<15} {escape(str(record['detail']))}{status}  [dim]{record['seconds']:.1f} s[/]",
                           highlight=False, soft_wrap=True)


# --- hashing ---------------------------------------------------------------------------------------


def state_sha256(module: Any) -> str:
    """Hash of every parameter and buffer (name, dtype, shape, bytes): the weights actually loaded."""
    import torch

    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _key(obj: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


# --- manifest --------------------------------------------------------------------------------------


def read_manifest(out_dir: Path) -> dict[str, Any]:
    path = Path(out_dir) / MANIFEST
    try:
        data = json.loads(path.read_text())
        if data.get("schema") == MANIFEST_SCHEMA:
            return data
    except (OSError, ValueError):
        pass
    return {"schema": MANIFEST_SCHEMA, "onnx": None, "engines": {}}


def _write_manifest(out_dir: Path, manifest: dict[str, Any]) -> None:
    from .artifacts import write_json_atomic

    _guard_io(lambda: write_json_atomic(Path(out_dir) / MANIFEST, manifest), Path(out_dir))


def _remove_stale_partials(out_dir: Path) -> None:
    """Drop temporaries of killed runs (name.partial-<pid>, with a pid that no longer runs)."""
    import shutil

    for path in list(out_dir.rglob("*.partial-*")):
        m = re.search(r"\.partial-(\d+)$", path.name)
        if not m or _pid_alive(int(m.group(1))):
            continue
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# --- parsing ---------------------------------------------------------------------------------------


def parse_precisions(value: list[str] | str | None, profile: Any, backend: Any) -> list[str]:
    """The precisions to build, checked against the target profile and its backend."""
    if value is None:
        items = list(profile.precisions)
    else:
        raw = value.split(",") if isinstance(value, str) else list(value)
        items = [p.strip().lower() for p in raw if p.strip()]
        if not items:
            raise UserError("--precision: empty; use e.g. fp32,fp16,int8")
    for p in items:
        if p not in VALID_PRECISIONS:
            raise UserError(f"--precision {p}: unknown precision; use fp32, fp16 or int8")
        if p not in backend.precisions or p not in profile.precisions:
            can = [q for q in profile.precisions if q in backend.precisions]
            raise UserError(f"--precision {p}: target {profile.name} ({profile.backend}) builds {', '.join(can)}; "
                            f"pick from those or another --target")
    return list(dict.fromkeys(items))


def parse_floats(text: str | None, flag: str) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        values = tuple(float(v) for v in re.split(r"[,\s]+", text.strip()) if v)
    except ValueError:
        values = ()
    if not values:
        raise UserError(f"{flag} {text!r}: expected numbers like 0.485,0.456,0.406")
    return values


def default_output(model_name: str, target: str) -> Path:
    return Path("runs") / f"{model_name}-{target}"


# --- the build -------------------------------------------------------------------------------------


def run_build(*, console: Any = None, out: Any = None, **kwargs: Any) -> int:
    """Run `edgerep build` with BuildOptions fields as keywords; print a summary table; return the exit code
    (0: every engine passed its gate, 1: some engine failed or the fuse check failed). UserErrors propagate."""
    result = build(BuildOptions(**kwargs), console=console)
    if out is not None and result.report.get("engines"):
        from .report import build_summary

        out.print(build_summary(result.report))
        if result.paths:
            out.print(f"report: {result.paths[0]}  {result.paths[1]}  {result.paths[2]}", highlight=False)
    return result.exit_code


def build(opts: BuildOptions, *, console: Any = None) -> BuildResult:
    """The stage composition behind `edgerep build`; returns the report and the exit code."""
    from .backends import get_backend
    from .targets import load_target

    log = StageLog(console)
    spec = opts.model or DEMO_MODEL

    # Cheap checks first: a bad target, precision or missing runtime fails before any work.
    profile = load_target(opts.target, isa=opts.isa)
    backend = get_backend(profile.backend)
    precisions = parse_precisions(opts.precisions, profile, backend)
    if opts.max_drop is not None:
        if opts.max_drop < 0:
            raise UserError(f"--max-drop {opts.max_drop:g}: must be >= 0 (points of top-1); pass e.g. --max-drop 0.5")
        if "int8" not in precisions and console is not None:
            console.print(f"[yellow]warning:[/] --max-drop applies to INT8 engines only; "
                          f"{', '.join(precisions)} build without it", highlight=False)
    tensorrt_only = sorted(k for k in opts.backend_options if k in ("int8_mode", "dla_core"))
    if tensorrt_only and profile.backend != "tensorrt":
        flag = "--" + tensorrt_only[0].replace("_", "-")
        raise UserError(f"{flag}: only for TensorRT targets, not {profile.name} ({profile.backend}); drop it or pick "
                        f"--target tensorrt / jetson-*")
    reason = backend.available()
    if reason is not None and not getattr(backend, "offline_build", False):  # TensorRT: device bundle instead
        raise UserError(reason)

    # --- load
    with log.stage("load", "loading the model") as st:
        import torch

        from .models import load_model

        torch.manual_seed(opts.seed)
        info = load_model(spec, weights=opts.weights, input_shape=opts.input_shape, num_classes=opts.num_classes,
                          trust_pickle=opts.trust_pickle)
        weights_hash = state_sha256(info.module)
        st["detail"] = f"{info.spec} input {'x'.join(map(str, info.input_shape))}"
    # --- data (opened before any heavy stage, so bad data fails fast)
    with log.stage("data", "opening calibration and validation data") as st:
        calib, val = _open_data(opts, info, need_calib="int8" in precisions)
        val_source = val if val is not None else calib
        st["detail"] = (f"calib {calib.path} ({calib.num_samples})" if calib is not None else "no calibration") + \
            f", val {val_source.path} ({val_source.num_samples}{', labelled' if val_source.has_labels else ''})"

    out_dir = Path(opts.output) if opts.output is not None else default_output(info.name, profile.name)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"-o {out_dir}: cannot create the output folder ({exc.strerror or exc})") from None
    _remove_stale_partials(out_dir)
    manifest = read_manifest(out_dir)

    # --- fuse + export (one cached stage: its product is the simplified ONNX)
    onnx_key = _key({
        "spec": info.spec, "weights_sha256": weights_hash, "input_shape": list(info.input_shape),
        "num_classes": info.num_classes, "fuse_tol": opts.fuse_tol, "export_tol": opts.export_tol,
        "opset": profile.opset, "dynamic_batch": profile.dynamic_batch, "simplifier": opts.simplifier,
        "versions": _versions("edgerep", "torch", "onnx", "onnxsim", "onnxslim"),
    })
    onnx_dir = out_dir / "onnx"
    cached = manifest.get("onnx") or {}
    sim_path = onnx_dir / "model.sim.onnx"
    reuse = (not opts.force and cached.get("key") == onnx_key and _onnx_intact(sim_path, cached.get("sim_sha256")))
    if reuse:
        fuse_info, export_info = cached.get("fuse"), cached.get("export")
        with log.stage("fuse", "reusing") as st:
            st["status"], st["detail"] = "reused", f"{(fuse_info or {}).get('regions', '?')} region(s) fused earlier"
        with log.stage("export", "reusing") as st:
            st["status"], st["detail"] = "reused", str(sim_path)
    else:
        manifest["onnx"] = None  # invalid until the stage finishes
        manifest["engines"] = {}
        with log.stage("fuse", "fusing re-parameterizable blocks") as st:
            from .fuse import fuse

            example = torch.randn(*info.input_shape, generator=torch.Generator().manual_seed(opts.seed))
            fused = fuse(info.module, example)
            fuse_info = _fuse_summary(fused.report)
            st["detail"] = (f"{fuse_info['regions']} region(s) fused, ops {fuse_info['ops_before_total']} -> "
                            f"{fuse_info['ops_after_total']}, max rel err {fused.report.max_rel_err:.2g}")
            if not fused.report.passed(opts.fuse_tol):
                st["status"] = "failed"
                raise _FuseFailed(f"fuse: the fused model differs from the original (max relative error "
                                  f"{fused.report.max_rel_err:.3g} > {opts.fuse_tol:g}); not building engines from it")
        with log.stage("export", f"exporting ONNX (opset {profile.opset}) and simplifying") as st:
            from .export import export_pipeline, onnx_sha256

            result = _guard_io(lambda: export_pipeline(info, fused.model, onnx_dir, opset=profile.opset,
                                                       dynamic_batch=profile.dynamic_batch,
                                                       simplifier=opts.simplifier, tol=opts.export_tol), onnx_dir)
            export_info = result.to_dict()
            sim_path = Path(result.sim_path)
            worst = max((c["max_rel_err"] for c in result.checks), default=0.0)
            st["status"], st["detail"] = "built", f"{sim_path} ({result.simplifier}, max rel err vs PyTorch {worst:.2g})"
        manifest["onnx"] = {"key": onnx_key, "sim": _rel(sim_path, out_dir), "sim_sha256": onnx_sha256(sim_path),
                            "fuse": fuse_info, "export": export_info}
        _write_manifest(out_dir, manifest)
    del cached

    # --- engines
    from .artifacts import load_artifact, read_sidecar
    from .export import onnx_sha256

    sim_hash = manifest["onnx"]["sim_sha256"]
    engines_dir = out_dir / "engines"
    artifacts: dict[str, Any] = {}
    engine_records: dict[str, dict[str, Any]] = {}
    for precision in precisions:
        options = dict(opts.backend_options)
        if precision == "int8":
            if opts.calib_samples is not None:
                options["num_samples"] = opts.calib_samples
            if opts.calib_method is not None:
                options["calib_method"] = opts.calib_method
        int8_plan = None
        if precision == "int8" and opts.max_drop is not None:  # accuracy-budgeted mixed precision (edgerep.quant)
            from .quant.mixed import plan_int8

            with log.stage("int8 plan", f"choosing the layers to keep in float (max drop {opts.max_drop:g} pp)") as st:
                plan, int8_plan = plan_int8(backend=backend, onnx_path=sim_path, profile=profile, calib=calib,
                                            val=val_source, model=info.module, max_drop=opts.max_drop, options=options,
                                            work_dir=out_dir / "quant", val_samples=opts.val_samples,
                                            val_batch=opts.val_batch)
                options.update(plan)
                st["detail"] = (f"{len(int8_plan['float_layers'])} layer(s) in float, drop "
                                f"{int8_plan['chosen']['metrics']['drop']:.2f} pp ({int8_plan['chosen']['source']})")
        key = _key({
            "onnx_sha256": sim_hash, "backend": backend.name, "precision": precision, "options": options,
            "calib_sha256": calib.sha256() if precision == "int8" and calib is not None else None,
            "profile": _build_settings(profile), "versions": _versions("edgerep", *_runtime_packages(backend.name)),
        })
        name = f"{backend.name}:{precision}"
        with log.stage(f"build {precision}", f"building the {backend.name} {precision} engine") as st:
            prior = manifest["engines"].get(name) or {}
            path = out_dir / prior["path"] if prior.get("path") else None
            if not opts.force and prior.get("key") == key and path is not None and read_sidecar(path) is not None:
                artifact = load_artifact(path)
                st["status"], st["detail"] = "reused", str(path)
            else:
                manifest["engines"].pop(name, None)
                artifact = _build_engine(backend, sim_path, precision, engines_dir, profile, calib, options)
                st["status"] = "built" if artifact.status == "ok" else artifact.status
                st["detail"] = str(artifact.path) if artifact.status == "ok" else f"{artifact.status}: {artifact.reason}"
                if artifact.status == "ok":
                    manifest["engines"][name] = {"key": key, "path": _rel(Path(artifact.path), out_dir)}
                    _write_manifest(out_dir, manifest)
            artifacts[precision] = artifact
            engine_records[precision] = _engine_record(artifact)
            if precision == "int8":
                engine_records[precision]["float_layers"] = list(options.get("ignored_nodes") or [])
                if int8_plan is not None:
                    engine_records[precision]["int8_plan"] = int8_plan

    # --- validate
    from .validate import compute_reference, gate_to_dict, validate_runner

    with log.stage("reference", "running the unfused PyTorch model on the validation data") as st:
        reference = compute_reference(info.module, val_source, batch_size=opts.val_batch, limit=opts.val_samples)
        st["detail"] = (f"{reference.outputs.shape[0]} samples"
                        + (f", top-1 {reference.top1:.2f}%" if reference.top1 is not None else ", no labels")
                        + (f"; {reference.degenerate}" if reference.degenerate else ""))
    engine_batch = opts.val_batch if profile.dynamic_batch else int(info.input_shape[0])
    for precision in precisions:
        artifact, record = artifacts[precision], engine_records[precision]
        record["gate"] = gate_to_dict(profile.gate(precision))
        if artifact.status != "ok":
            continue
        with log.stage(f"validate {precision}", f"validating the {precision} engine") as st:
            try:
                runner = backend.load(artifact)
                try:
                    record.update(validate_runner(
                        runner, reference, engine_batch=engine_batch, gate=profile.gate(precision),
                        latency_batches=list(profile.latency.batch_sizes), warmup=profile.latency.warmup,
                        iterations=profile.latency.iterations, dynamic_batch=profile.dynamic_batch))
                finally:
                    runner.close()
                if profile.tensorrt is None:
                    record_isa_check(record, artifact, reference, profile, engine_batch)
            except UserError:
                raise
            except Exception as exc:  # the engine ran but crashed: a failed engine, not a failed build
                record.update(status="failed", passed=False, reason=f"validation failed: {_one_line(exc)}")
                _save_traceback(out_dir, f"validate-{backend.name}-{precision}")
            acc, lat = record["accuracy"], record["latency_ms"]
            st["status"] = "done" if record.get("passed") else "failed"
            st["detail"] = (f"cosine {acc['cosine']:.6f}, top-1 agree {_pct(acc['top1_agreement'])}"
                            + (f", top-1 {_pct(acc['top1'])} (drop {acc['top1_drop']:+.2f} pp)" if acc.get("top1") is not None else "")
                            + (f", p50 {lat['p50']:.3f} ms" if lat.get("p50") is not None else "")
                            + ("" if record.get("passed") else f"; GATE FAILED: {record.get('reason')}")) \
                if record["status"] == "ok" else f"failed: {record.get('reason')}"
    # TensorRT adds rows once the reference exists: the INT8 Q/DQ model run in ONNX Runtime as a prediction of
    # the device engine, and the reference written into the device bundle.
    extra_records: list[dict[str, Any]] = []
    if backend.name == "tensorrt":
        from .commands.tensorrt_finish import finish_offline

        with log.stage("finish", f"{backend.name}: predictions and device bundle") as st:
            extra_records = finish_offline(artifacts, reference, profile=profile, engine_batch=engine_batch)
            st["detail"] = ", ".join(f"{r['backend']} {r['precision']}: cosine {r['accuracy'].get('cosine') or 0:.4f}"
                                     for r in extra_records) or "done"

    # --- report
    report = {
        "schema": 1,
        "model": {"spec": info.spec, "name": info.name, "input_shape": list(info.input_shape),
                  "weights": info.weights, "weights_sha256": weights_hash, "num_classes": info.num_classes,
                  "deploy": info.deploy, "seed": opts.seed},
        "target": profile.to_dict(),
        "reference": {"kind": "pytorch-unfused", "data": val_source.describe(), "num_samples": int(reference.outputs.shape[0]),
                      "top1": reference.top1, "labelled": reference.labels is not None,
                      "same_as_calibration": val is None, "degenerate": reference.degenerate},
        "calibration": calib.describe() if calib is not None else None,
        "engines": [engine_records[p] for p in precisions] + extra_records,
        "fuse": fuse_info,
        "export": export_info,
        "stages": [{k: v for k, v in s.items()} for s in log.stages],
        "versions": _versions("edgerep", "torch", "onnx", "onnxruntime", "onnxsim", "openvino", "nncf", "timm"),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "output_dir": str(out_dir),
    }
    from .recommend import recommend
    from .report import failure_lines, write_report

    report["recommended"] = recommend(report, profile.to_dict())
    paths = _guard_io(lambda: write_report(out_dir, report), out_dir)
    # skipped engines (built on the device) and prediction rows do not fail the build
    failed = [e for e in report["engines"] if not e.get("prediction") and e["status"] != "skipped"
              and (e["status"] != "ok" or not e.get("passed"))]
    if console is not None:
        for line in failure_lines(report):
            console.print(line, highlight=False, soft_wrap=True)
    return BuildResult(exit_code=1 if failed else 0, out_dir=out_dir, report=report, paths=paths)


class _FuseFailed(UserError):
    """The fuse check failed: a problem of the model/fuser, reported like a gate failure (exit 1)."""

    exit_code = 1


# --- helpers ---------------------------------------------------------------------------------------


def _open_data(opts: BuildOptions, info: Any, *, need_calib: bool) -> tuple[Any, Any]:
    from .data import default_data_paths, open_data, preprocess_for

    shape = tuple(info.input_shape)
    overrides = dict(mean=opts.mean, std=opts.std, resize=opts.resize, interpolation=opts.interpolation,
                     channel_order=opts.channel_order)

    def pre() -> Any:
        return preprocess_for(info, **overrides)

    calib_path, val_path = opts.calib, opts.val
    if calib_path is None and val_path is None:
        # The shipped data: the demo's digits (calib + labelled val), else calib/images for both.
        calib_path, val_path = default_data_paths(info)
    elif calib_path is None and need_calib:
        calib_path = default_data_paths(info)[0]
    calib = None
    if calib_path is not None:
        calib = open_data(calib_path, pre() if Path(calib_path).is_dir() else None, expect_shape=shape, role="calib")
    val = None
    if val_path is not None:
        val = open_data(val_path, pre() if Path(val_path).is_dir() else None, expect_shape=shape, role="val")
    return calib, val


def _rel(path: Path, base: Path) -> str:
    """A path relative to the output folder, so a moved folder still resumes."""
    try:
        return str(Path(path).resolve().relative_to(Path(base).resolve()))
    except ValueError:
        return str(Path(path).resolve())


def _onnx_intact(path: Path, sha: str | None) -> bool:
    if sha is None or not path.is_file():
        return False
    from .export import onnx_sha256

    return onnx_sha256(path) == sha


def _fuse_summary(report: Any) -> dict[str, Any]:
    d = report.to_dict()
    regions = d.pop("regions", [])
    unfused = d.pop("unfused", [])
    d["regions"] = len(regions)
    d["unfused"] = unfused
    d["ops_before_total"] = sum((d.get("ops_before") or {}).values())
    d["ops_after_total"] = sum((d.get("ops_after") or {}).values())
    return d


def _build_settings(profile: Any) -> dict[str, Any]:
    """The parts of a profile that change an engine (not the gates or the latency settings)."""
    d = profile.to_dict()
    return {k: d.get(k) for k in ("backend", "opset", "dynamic_batch", "calibration", "tensorrt")}


def _runtime_packages(backend: str) -> tuple[str, ...]:
    return {"openvino": ("openvino", "nncf"), "onnxruntime": ("onnxruntime",),
            "tensorrt": ("tensorrt", "onnxruntime")}.get(backend, ())


def _versions(*names: str) -> dict[str, str | None]:
    from .artifacts import package_versions

    return package_versions(*names)


def _guard_io(call: Any, where: Path) -> Any:
    """Turn an OS-level write failure (full disk, unwritable folder) into a one-line UserError."""
    try:
        return call()
    except OSError as exc:
        raise UserError(_io_message(exc, where)) from None


def _io_message(exc: OSError, where: Path) -> str:
    target = exc.filename or where
    return (f"{target}: cannot write ({exc.strerror or type(exc).__name__}); free space or fix permissions and "
            f"re-run - finished stages are kept and reused")


def _build_engine(backend: Any, onnx_path: Path, precision: str, out_dir: Path, profile: Any, calib: Any,
                  options: dict[str, Any]) -> Any:
    from .backends.base import Artifact

    try:
        return backend.build(onnx_path, precision, out_dir=out_dir, profile=profile,
                             calib=calib if precision == "int8" else None, options=options or None)
    except UserError:
        raise
    except OSError as exc:
        raise UserError(_io_message(exc, out_dir)) from None
    except Exception as exc:  # a converter/quantizer crash fails this engine, the others still build
        _save_traceback(out_dir.parent, f"build-{backend.name}-{precision}")
        return Artifact(backend=backend.name, precision=precision, path=None, status="failed",
                        reason=f"build failed: {_one_line(exc)}")


def record_isa_check(record: dict[str, Any], artifact: Any, reference: Any, profile: Any, engine_batch: int) -> None:
    """Where the engine was validated, and a second run on the target's ISA where this machine can give one
    (isa_check); a failed gate there fails the engine. The sidecar keeps both ISAs."""
    from .artifacts import update_sidecar
    from .cpu import target_isa
    from .validate import check_on_target_isa

    isa = check_on_target_isa(record, artifact, reference, target=target_isa(profile), engine_batch=engine_batch,
                              gate=profile.gate(artifact.precision))
    update_sidecar(Path(artifact.path), validated={"isa": isa["measured_on"], "target_isa": isa["target"],
                                                   "method": isa["method"], "passed": record.get("passed"),
                                                   "accuracy": record.get("accuracy")})


def _engine_record(artifact: Any) -> dict[str, Any]:
    from .report import engine_entry

    return engine_entry(artifact.backend, artifact.precision, path=str(artifact.path) if artifact.path else None,
                        status=artifact.status, reason=artifact.reason,
                        sidecar=str(artifact.sidecar) if artifact.sidecar else None,
                        settings=(artifact.info or {}).get("settings"))


def _save_traceback(out_dir: Path, name: str) -> None:
    try:
        (out_dir / "logs").mkdir(parents=True, exist_ok=True)
        (out_dir / "logs" / f"{name}.txt").write_text(traceback.format_exc())
    except OSError:
        pass


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:240] if text else ''}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}%"
