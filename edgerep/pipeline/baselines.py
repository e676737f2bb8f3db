"""What the user would get without edgerep, validated and timed by the same harness as edgerep's engines:

  * `pytorch`: the PyTorch original itself (unfused, eager, the engines' thread count), the model every engine
    is scored against; timed beside the engines (validate.torch_runner), its accuracy is the reference's own;
  * `onnx-unfused`: the unfused model's plain ONNX export (no fusion, no simplification; the same exporter and
    opset as edgerep's) built FP32 on the build's runtime;
  * `ultralytics-fp32`, `ultralytics-int8`: for an Ultralytics detector, when `ultralytics` is installed and the
    runtime has an Ultralytics format, Ultralytics' own exporter's engines of the same weights (batch 1, static;
    its INT8 calibrated on edgerep's calibration images, models.ultralytics_export).

Each baseline is cached like an engine (a content key in DIR/stages.json's `baselines`). A baseline that fails
to build or run is a row with its reason; it never fails the build. pipeline.comparisons turns the timed rows into
"edgerep int8: 1.25x Ultralytics' INT8 export" lines, each ratio with its interval over the interleaved rounds.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgerep.errors import UserError, one_line
from edgerep.pipeline.comparisons import ONNX_UNFUSED, PYTORCH, TITLES, ULTRALYTICS_FP32, ULTRALYTICS_INT8

if TYPE_CHECKING:
    from edgerep.backends.base import Backend
    from edgerep.pipeline.stages import Data, Loaded, StageLog
    from edgerep.targets import TargetProfile
    from edgerep.validate.engine import Reference




@dataclass
class Baselines:
    """The baseline rows of report.json (`baselines`) and what the latency stage needs to time them."""

    records: list[dict[str, Any]] = field(default_factory=list)
    modules: dict[str, Any] = field(default_factory=dict)  # name -> load_model's arguments of a model timed beside
    fixed_batch: dict[str, int] = field(default_factory=dict)  # name -> the only batch size its engine takes
    notes: list[str] = field(default_factory=list)


def baselines_stage(log: StageLog, loaded: Loaded, profile: TargetProfile, backend: Backend, reference: Reference,
                    data: Data, out_dir: Path, manifest: dict[str, Any], *, engine_batch: int, force: bool,
                    calib_samples: int | None) -> Baselines:
    """Build (or reuse) and validate every baseline that applies (see the module docstring)."""
    from edgerep.pipeline.report import engine_entry

    out = Baselines()
    out.records.append(engine_entry("pytorch", "fp32", baseline=PYTORCH, name=PYTORCH, title=TITLES[PYTORCH],
                                    accuracy_note="the reference: every engine is scored against it"))
    if loaded.load_args is not None:
        out.modules[PYTORCH] = loaded.load_args
    with log.stage("baseline", "the unfused model's plain ONNX export, FP32") as st:
        record = _unfused_onnx(backend, loaded, profile, reference, out_dir, manifest, engine_batch=engine_batch,
                               force=force)
        out.records.append(record)
        st["status"], st["detail"] = _stage_status(record)
    for name, int8 in ((ULTRALYTICS_FP32, False), (ULTRALYTICS_INT8, True)):
        skip = _ultralytics_skip(loaded, backend, reference, data, int8)
        if skip is not None:
            out.notes.append(f"{TITLES[name]}: not compared ({skip})")
            continue
        with log.stage("baseline", f"{TITLES[name]} (Ultralytics' exporter)") as st:
            record = _ultralytics(name, int8, backend, loaded, profile, reference, data, out_dir, manifest,
                                  force=force, calib_samples=calib_samples)
            out.records.append(record)
            out.fixed_batch[name] = 1
            st["status"], st["detail"] = _stage_status(record)
    if any(r["baseline"] == ULTRALYTICS_INT8 for r in out.records):
        from edgerep.models.ultralytics_export import DEFAULT_SPLIT_NOTE

        out.notes.append(DEFAULT_SPLIT_NOTE + " (the same as edgerep's INT8), and all are scored on the validation data")
    return out


def _stage_status(record: dict[str, Any]) -> tuple[str, str]:
    if record["status"] != "ok":
        return "failed", f"{record['name']}: {record.get('reason')}"
    from edgerep.tasks import get_task

    acc = record.get("accuracy") or {}
    return "done", f"{record['name']}: {get_task(acc.get('task') or 'classify').summary(acc)}"


# --- the unfused model's plain export ----------------------------------------------------------------


def _unfused_onnx(backend: Backend, loaded: Loaded, profile: TargetProfile, reference: Reference, out_dir: Path,
                  manifest: dict[str, Any], *, engine_batch: int, force: bool) -> dict[str, Any]:
    from edgerep.pipeline import stages

    key = stages.content_key({"baseline": ONNX_UNFUSED, "weights_sha256": loaded.weights_sha256,
                              "spec": loaded.info.spec, "input_shape": list(loaded.info.input_shape),
                              "opset": profile.opset, "dynamic_batch": profile.dynamic_batch,
                              "backend": backend.name,
                              "versions": stages.versions("edgerep", "torch", "onnx", *backend.capabilities.packages)})

    def make() -> Any:
        import torch

        from edgerep.export.onnx_export import export_onnx

        folder = Path(out_dir) / "baselines"
        example = torch.zeros(loaded.info.input_shape)
        onnx_path = export_onnx(loaded.info.module, example, folder / "unfused.onnx", opset=profile.opset,
                                dynamic_batch=profile.dynamic_batch)
        return backend.build(onnx_path, "fp32", out_dir=folder / "engines", profile=profile, calib=None, options=None)

    return _cached_row(ONNX_UNFUSED, key, make, backend, profile, reference, out_dir, manifest,
                       engine_batch=engine_batch, force=force)


# --- Ultralytics' own export ---------------------------------------------------------------------------


def _ultralytics_skip(loaded: Loaded, backend: Backend, reference: Reference, data: Data, int8: bool) -> str | None:
    """Why Ultralytics' export is not compared here, or None when it is."""
    import importlib.util

    from edgerep.models.ultralytics_export import is_ultralytics_module

    if not is_ultralytics_module(loaded.info.module):
        return "not an Ultralytics model"
    if not reference.scorer.draws_pictures:  # the detector task: what the comparison scores (mAP)
        return "compared for Ultralytics detectors only"
    if backend.capabilities.ultralytics_format is None:
        return f"Ultralytics exports no engine for {backend.capabilities.title}"
    if importlib.util.find_spec("ultralytics") is None:
        return "ultralytics is not installed; pip install 'edgerep[ultralytics]'"
    if int8 and not _calibration_images(data):
        return "the calibration data are not image files Ultralytics can read"
    return None


def _calibration_images(data: Data) -> list[Path]:
    files = getattr(data.calib, "files", None)
    return [Path(f) for f in files] if files else []


def _ultralytics(name: str, int8: bool, backend: Backend, loaded: Loaded, profile: TargetProfile,
                 reference: Reference, data: Data, out_dir: Path, manifest: dict[str, Any], *, force: bool,
                 calib_samples: int | None) -> dict[str, Any]:
    from edgerep.pipeline import stages

    fmt = str(backend.capabilities.ultralytics_format)
    limit = calib_samples or profile.calibration.num_samples
    images = _calibration_images(data)[:limit] if int8 else []
    key = stages.content_key({"baseline": name, "weights_sha256": loaded.weights_sha256, "format": fmt,
                              "input_shape": list(loaded.info.input_shape), "images": [str(p) for p in images],
                              "calib_sha256": data.calib.sha256() if int8 and data.calib is not None else None,
                              "versions": stages.versions("edgerep", "ultralytics", "torch",
                                                          *backend.capabilities.packages)})

    def make() -> Any:
        from edgerep.files.artifacts import Artifact, write_sidecar
        from edgerep.files.onnx_files import onnx_output_names
        from edgerep.models.ultralytics_export import calibration_yaml, export_with_ultralytics

        folder = Path(out_dir) / "baselines" / name
        info = loaded.info
        data_yaml = None
        if int8:
            names = list(info.class_names or [str(i) for i in range(int(info.num_classes or 0))])
            data_yaml = calibration_yaml(Path(out_dir) / "baselines" / f"{name}-calib.yaml", images, names)
        imgsz = (int(info.input_shape[-2]), int(info.input_shape[-1]))
        path = export_with_ultralytics(info.module, fmt=fmt, int8=int8, imgsz=imgsz, out_dir=folder,
                                       data_yaml=data_yaml)
        settings: dict[str, Any] = {"made_by": "ultralytics", "batch": 1}
        if path.suffix == ".xml":  # the OpenVINO runner pins the precision, as it does for edgerep's own IRs
            settings.update(inference_precision="f32", output_names=_ir_output_names(path))
        else:
            settings["output_names"] = onnx_output_names(path)
        precision = "int8" if int8 else "fp32"
        sidecar = write_sidecar(path, {"backend": backend.name, "precision": precision, "baseline": name,
                                       "settings": settings})
        return Artifact(backend=backend.name, precision=precision, path=path, sidecar=sidecar,
                        info={"settings": settings})

    return _cached_row(name, key, make, backend, profile, reference, out_dir, manifest, engine_batch=1, force=force)


def _ir_output_names(xml: Path) -> list[str] | None:
    """The IR's output tensor names, or None when a port has none (Ultralytics' IRs): the runner then reads the
    outputs in port order."""
    import openvino as ov

    names = []
    for port in ov.Core().read_model(str(xml)).outputs:
        if not port.get_names():
            return None
        names.append(port.get_any_name())
    return names


# --- shared: cache, validate ---------------------------------------------------------------------------


def _cached_row(name: str, key: str, make: Any, backend: Backend, profile: TargetProfile, reference: Reference,
                out_dir: Path, manifest: dict[str, Any], *, engine_batch: int, force: bool) -> dict[str, Any]:
    """The baseline's engine (reused when its key matches and its files are intact, else made) validated against
    the reference, as a report row."""
    from edgerep.files.artifacts import load_artifact, read_sidecar
    from edgerep.pipeline import stages
    from edgerep.pipeline.report import engine_entry
    from edgerep.validate.engine import gate_to_dict, runner_accuracy

    cache = manifest.setdefault("baselines", {})
    prior = cache.get(name) or {}
    path = Path(out_dir) / prior["path"] if prior.get("path") else None
    precision = "int8" if name == ULTRALYTICS_INT8 else "fp32"
    base = {"baseline": name, "name": name, "title": TITLES[name]}
    try:
        if not force and prior.get("key") == key and path is not None and read_sidecar(path) is not None:
            artifact, reused = load_artifact(path), True
        else:
            cache.pop(name, None)
            artifact, reused = make(), False
            cache[name] = {"key": key, "path": stages.rel_path(Path(artifact.path), out_dir)}
            stages.write_manifest(out_dir, manifest)
    except (UserError, RuntimeError, OSError, ValueError) as exc:
        return engine_entry(backend.name, precision, status="failed", reason=f"not built: {one_line(exc)}", **base)
    record = engine_entry(artifact.backend, artifact.precision, path=str(artifact.path), reused=reused, **base)
    gate = reference.scorer.gate(profile, artifact.precision)
    record["gate"] = gate_to_dict(gate)
    try:
        with backend.load(artifact) as runner:
            record.update(runner_accuracy(runner, reference, engine_batch=engine_batch, gate=gate))
    except Exception as exc:  # a baseline that does not run is a row with its reason, never a failed build
        record.update(status="failed", passed=False, reason=f"validation failed: {one_line(exc)}")
    return record
