"""TensorRT work on the host, without a GPU or `tensorrt`: the profile's version, lint for a profile, the INT8
artifacts (host calibration -> calibration cache + Q/DQ ONNX), the FP16 ONNX for TensorRT 11, and the device
bundle's contents. Used by the tensorrt backend adapter and by the `check` / `validate --bundle` / build commands.
"""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from edgerep.backends.tensorrt.versions import Version, parse_version, version_str
from edgerep.errors import UserError
from edgerep.files.onnx_files import int8_float_nodes, model_opset, onnx_output_names

# recommend.py travels into the bundle as a file (check_engine.py imports it on the device, without edgerep).
_RECOMMEND_SOURCE = Path(__file__).resolve().parents[2] / "pipeline" / "recommend.py"

PREDICTION_BACKEND = "onnxruntime-qdq"  # the report row of the INT8 Q/DQ model run in ONNX Runtime on the CPU
HOST_DIR = "tensorrt-host"  # host artifacts (ranges, cache, Q/DQ, FP16 ONNX) beside the engines
BUNDLE_DIR = "device-bundle"


def profile_version(profile: Any) -> Version:
    if getattr(profile, "tensorrt", None) is None:
        raise UserError(f"--target {getattr(profile, 'name', '?')}: not a TensorRT profile (backend "
                        f"{getattr(profile, 'backend', '?')}); pick tensorrt or a jetson-* target")
    return parse_version(profile.tensorrt.version, what=f"{profile.source or profile.name}: tensorrt.version")


# --- lint / `edgerep check` ------------------------------------------------------------------------


def lint_for_profile(onnx_path: Path, profile: Any) -> Any:
    """Lint an ONNX file for the profile's TensorRT version and settings (edgerep.backends.tensorrt.lint.LintReport)."""
    from edgerep.backends.tensorrt.lint import lint_onnx

    trt = profile.tensorrt
    return lint_onnx(Path(onnx_path), profile_version(profile), profile_opset=profile.opset,
                     dynamic_batch=profile.dynamic_batch, int8_mode=trt.int8_mode,
                     precisions=list(profile.precisions), dla_core=trt.dla_core,
                     compute_capability=trt.compute_capability)


# --- host artifacts: INT8 (calibration cache + Q/DQ) and FP16 ------------------------------------


def _key(obj: dict[str, Any]) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _onnx_meta(onnx_path: Path) -> tuple[str, int | None]:
    import onnx

    from edgerep.files.onnx_files import onnx_sha256

    model = onnx.load(str(onnx_path), load_external_data=False)
    return onnx_sha256(onnx_path), model_opset(model)


def prepare_int8(onnx_path: Path, profile: Any, calib: Any, work_dir: Path, *, method: str, num_samples: int,
                 ignored_nodes: list[str] | None = None, head_float_nodes: list[str] | None = None,
                 entropy_bins: int | None = None) -> dict[str, Any]:
    """Calibrate on the CPU and write, in `work_dir`: calib_ranges.json, calib.cache (+ sidecar) for the
    profile's TensorRT version, and model.qdq.onnx (+ sidecar). Reused when nothing they depend on changed.
    Returns {"ranges", "cache", "qdq", "key", "method", "num_samples", "data_sha256", ...}."""
    from edgerep.backends.tensorrt import calib_cache, guard, qdq
    from edgerep.backends.tensorrt.calibrate import ENTROPY_BINS, calibrate
    from edgerep.files.artifacts import read_sidecar, write_json_atomic, write_sidecar

    version = profile_version(profile)
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    onnx_sha, opset = _onnx_meta(onnx_path)
    data_sha = calib.sha256()
    bins = entropy_bins or ENTROPY_BINS
    key = _key({"onnx": onnx_sha, "data": data_sha, "method": method, "num_samples": num_samples,
                "ignored": sorted(ignored_nodes or []), "head_float": sorted(head_float_nodes or []),
                "trt": version_str(version), "bins": bins,
                "cache": 2,  # 2: the float nodes' tensors left out of calib.cache (1 kept every tensor)
                "versions": _versions("edgerep", "onnxruntime", "onnx")})
    ranges_path, cache_path, qdq_path = work_dir / "calib_ranges.json", work_dir / "calib.cache", work_dir / "model.qdq.onnx"
    cache_side, qdq_side = read_sidecar(cache_path), read_sidecar(qdq_path)
    if cache_side and qdq_side and cache_side.get("key") == key and qdq_side.get("key") == key and ranges_path.is_file():
        return {"ranges": ranges_path, "cache": cache_path, "qdq": qdq_path, "key": key, "reused": True,
                "method": method, "num_samples": cache_side.get("num_samples"), "data_sha256": data_sha,
                "onnx_sha256": onnx_sha, "qdq_settings": qdq_side.get("settings")}
    with contextlib.redirect_stdout(io.StringIO()):  # ONNX Runtime's collectors print progress on stdout
        ranges = calibrate(Path(onnx_path), calib, method=method, num_samples=num_samples, entropy_bins=bins)
        settings = qdq.make_qdq(Path(onnx_path), qdq_path, ranges, nodes_to_exclude=ignored_nodes,
                                head_float_nodes=head_float_nodes)
    write_json_atomic(ranges_path, {**ranges.to_json(), "onnx_sha256": onnx_sha, "data_sha256": data_sha})
    float_nodes = int8_float_nodes(ignored_nodes, head_float_nodes)
    scales, omitted = cache_scales(Path(onnx_path), ranges.amax(), float_nodes)
    calib_cache.write_cache(cache_path, scales, version)
    header = calib_cache.read_cache(cache_path).header
    write_sidecar(cache_path, {**guard.cache_sidecar(
        trt_version=version_str(version), header=header, method=method, num_samples=ranges.num_samples,
        data_sha256=data_sha, onnx_sha256=onnx_sha, opset=opset, produced_by="onnxruntime-host",
        extra={"key": key, "settings": ranges.settings, "onnxruntime": _versions("onnxruntime")["onnxruntime"],
               "float_nodes": float_nodes, "omitted_tensors": omitted})})
    write_sidecar(qdq_path, {"kind": "onnx-qdq", "backend": "onnxruntime", "precision": "int8", "key": key,
                             "onnx_sha256": onnx_sha, "calib_sha256": data_sha, "calib_method": method,
                             "num_samples": ranges.num_samples, "opset": opset, "settings": settings,
                             "trt_version": version_str(version)})
    return {"ranges": ranges_path, "cache": cache_path, "qdq": qdq_path, "key": key, "reused": False,
            "method": method, "num_samples": ranges.num_samples, "data_sha256": data_sha, "onnx_sha256": onnx_sha,
            "qdq_settings": settings}


def cache_scales(onnx_path: Path, amax: dict[str, float], float_nodes: list[str]) -> tuple[dict[str, float], list[str]]:
    """The calibration cache's ranges without the tensors that `float_nodes` produce or consume: (kept, omitted).

    In implicit quantization TensorRT runs a layer in INT8 wherever its tensors have scales, and falls back to
    a higher precision ("Missing scale and zero-point for tensor ..., expect fall back to non-int8
    implementation") where they do not; with --fp16 beside --int8 that is FP16. So the nodes the Q/DQ model
    keeps in float (the user's ignored nodes, a detector's head) stay out of INT8 on the device too, and the
    host's Q/DQ prediction describes the calibrate-mode engine as well."""
    import onnx

    wanted = set(float_nodes)
    if not wanted:
        return dict(amax), []
    model = onnx.load(str(onnx_path), load_external_data=False)
    touched: set[str] = set()
    for node in model.graph.node:
        if node.name in wanted:
            touched.update(t for t in [*node.input, *node.output] if t)
    kept = {k: v for k, v in amax.items() if k not in touched}
    return kept, [k for k in amax if k in touched]


def _versions(*names: str) -> dict[str, str | None]:
    from edgerep.files.artifacts import package_versions

    return package_versions(*names)


# --- the device bundle ---------------------------------------------------------------------------


def update_bundle(bundle_dir: Path, *, onnx_path: Path, profile: Any, precisions: list[str],
                  int8: dict[str, Any] | None = None, fp16_onnx: Path | None = None) -> Path:
    """Add the files for `precisions` to the bundle (model.onnx always) and rewrite manifest, build.sh and
    README. Keeps a reference and predictions already in it when the ONNX is unchanged."""
    from edgerep.backends.tensorrt import bundle as B
    from edgerep.backends.tensorrt.calibrate import model_input

    bundle_dir = Path(bundle_dir)
    bundle_dir.mkdir(parents=True, exist_ok=True)
    version = profile_version(profile)
    input_name, shape = model_input(Path(onnx_path))
    output_names = onnx_output_names(Path(onnx_path))
    old = _read_manifest(bundle_dir)
    manifest = B.new_manifest(profile, version, input_name=input_name, input_shape=shape,
                              output_name=output_names[0] if output_names else None, output_names=output_names)
    files: dict[str, str] = {}
    files[B.ONNX_FP32] = B.copy_in(bundle_dir, Path(onnx_path), B.ONNX_FP32)
    same_model = bool(old) and old.get("files", {}).get(B.ONNX_FP32) == files[B.ONNX_FP32]
    keep = old if same_model else {}
    prec = list(dict.fromkeys([*(e["precision"] for e in keep.get("engines", [])), *precisions]))
    prec = [p for p in ("fp32", "fp16", "int8") if p in prec]
    for name in (B.ONNX_QDQ, B.CACHE, B.CACHE + ".json", B.CACHE_RANGES, B.ONNX_FP16, B.REFERENCE, B.ONNX_REPAIRED):
        if name in keep.get("files", {}) and (bundle_dir / name).is_file():
            files[name] = keep["files"][name]
    # the INT8 artifacts' float model: the range-repaired copy when the build repaired it (backends.repair)
    repaired = bool(int8.get("repaired_onnx")) if int8 is not None else \
        (keep.get("calibration") or {}).get("onnx") == B.ONNX_REPAIRED
    if int8 is not None:
        files.pop(B.ONNX_REPAIRED, None)
        if repaired:
            files[B.ONNX_REPAIRED] = B.copy_in(bundle_dir, Path(int8["repaired_onnx"]), B.ONNX_REPAIRED)
        else:
            (bundle_dir / B.ONNX_REPAIRED).unlink(missing_ok=True)
        files[B.ONNX_QDQ] = B.copy_in(bundle_dir, Path(int8["qdq"]), B.ONNX_QDQ)
        files[B.CACHE] = B.copy_in(bundle_dir, Path(int8["cache"]), B.CACHE)
        files[B.CACHE + ".json"] = B.copy_in(bundle_dir, Path(str(int8["cache"]) + ".json"), B.CACHE + ".json")
        files[B.CACHE_RANGES] = B.copy_in(bundle_dir, Path(int8["ranges"]), B.CACHE_RANGES)
        manifest["calibration"] = {"method": int8["method"], "num_samples": int8["num_samples"],
                                   "data_sha256": int8["data_sha256"], "cache": B.CACHE, "ranges": B.CACHE_RANGES,
                                   "produced_by": "onnxruntime-host",
                                   "onnx": B.ONNX_REPAIRED if repaired else B.ONNX_FP32}
    elif keep.get("calibration"):
        manifest["calibration"] = keep["calibration"]
    if fp16_onnx is not None:
        files[B.ONNX_FP16] = B.copy_in(bundle_dir, Path(fp16_onnx), B.ONNX_FP16)
    if profile.source is not None and Path(profile.source).is_file():
        files["profile.toml"] = B.copy_in(bundle_dir, Path(profile.source), "profile.toml")
    manifest["engines"] = B.engine_plan(profile, version, prec, input_name=input_name, input_shape=shape,
                                        repaired=repaired)
    for eng in manifest["engines"]:
        if eng["onnx"] not in files:
            raise RuntimeError(f"bundle: {eng['onnx']} for the {eng['precision']} engine was not prepared")
    manifest["reference"] = keep.get("reference")
    manifest["predictions"] = keep.get("predictions", {})
    manifest["files"] = files
    _write_scripts(bundle_dir, manifest)
    return bundle_dir


def _write_scripts(bundle_dir: Path, manifest: dict[str, Any]) -> None:
    from edgerep.backends.tensorrt import bundle as B

    manifest["files"]["build.sh"] = B.write_text(bundle_dir, "build.sh", B.build_script(manifest), executable=True)
    # For JetPack 4/5, whose Python is too old for edgerep: numpy + tensorrt + pycuda only.
    manifest["files"][B.CHECK_SCRIPT] = B.copy_in(bundle_dir, Path(__file__).parent / "data" / B.CHECK_SCRIPT,
                                                  B.CHECK_SCRIPT)
    # the rule that picks the engine to ship, for check_engine.py on the device (stdlib only, Python 3.6)
    manifest["files"]["recommend.py"] = B.copy_in(bundle_dir, _RECOMMEND_SOURCE,
                                                  "recommend.py")
    manifest["files"]["README.md"] = B.write_text(bundle_dir, "README.md", B.readme(manifest))
    B.write_manifest(bundle_dir, manifest)  # last: its presence and hashes mean the bundle is complete


def _read_manifest(bundle_dir: Path) -> dict[str, Any]:
    from edgerep.backends.tensorrt.bundle import MANIFEST

    try:
        return json.loads((Path(bundle_dir) / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def bundle_reference(bundle_dir: Path, reference: Any) -> None:
    """Write the reference inputs/outputs (capped at bundle.REFERENCE_MAX_BYTES of inputs) into the bundle."""
    from edgerep.backends.tensorrt import bundle as B

    manifest = _read_manifest(bundle_dir)
    if not manifest:
        raise RuntimeError(f"{bundle_dir}: no bundle manifest to add the reference to")
    n_ref = int(reference.outputs.shape[0])
    xs: list[np.ndarray] = []
    sample_shape = None
    taken = 0
    limit = n_ref
    for x, _ in reference.source.iter_batches(64, limit=reference.limit):
        if sample_shape is None:
            sample_shape = tuple(x.shape[1:])
            limit = B.reference_limit(sample_shape, n_ref)
        take = min(x.shape[0], limit - taken)
        xs.append(np.asarray(x[:take], dtype=np.float32))
        taken += take
        if taken >= limit:
            break
    x_all = np.concatenate(xs)
    labels = reference.labels[:taken] if reference.labels is not None else None
    names, outputs = reference_outputs_of(reference, manifest)
    refs = [np.asarray(out[:taken], dtype=np.float32) for out in outputs]
    digest = B.write_reference(bundle_dir, x_all, refs, labels)
    carried = B.label_array(labels) is not None
    manifest["files"][B.REFERENCE] = digest
    manifest["reference"] = {"file": B.REFERENCE, "kind": "pytorch-unfused", "num_samples": int(taken),
                             "task": getattr(reference, "task", None),
                             "of": n_ref, "labelled": carried,
                             "outputs": B.reference_outputs_entry(names, refs),
                             "data": reference.source.describe() if hasattr(reference.source, "describe") else None}
    if labels is not None and not carried:
        manifest["reference"]["note"] = ("the labels (boxes per image) are not carried; the device check scores "
                                         "agreement with the reference outputs")
    _write_scripts(bundle_dir, manifest)


def reference_outputs_of(reference: Any, manifest: dict[str, Any]) -> tuple[list[str], list[np.ndarray]]:
    """(names, every output) of a validate.Reference in ONNX order. Its `outputs_all` / `output_names` when it
    has them, else its one `outputs`; names default to the bundle's ONNX output names when the counts agree."""
    from edgerep.models.outputs import default_names

    outputs = list(getattr(reference, "outputs_all", None) or [reference.outputs])
    names = list(getattr(reference, "output_names", None) or [])
    if len(names) != len(outputs):
        onnx_names = list(manifest.get("output_names") or [])
        names = onnx_names if len(onnx_names) == len(outputs) else default_names(len(outputs))
    return names, outputs


def bundle_predictions(bundle_dir: Path, predictions: dict[str, dict[str, Any]]) -> None:
    manifest = _read_manifest(bundle_dir)
    if not manifest:
        return
    manifest["predictions"] = predictions
    _write_scripts(bundle_dir, manifest)


def engine_precision(bundle: Any, engine: Path, side: dict[str, Any] | None) -> str:
    """The precision of `engine`: from its sidecar, its entry in the bundle manifest, or its bundle file name."""
    from edgerep.backends.tensorrt import bundle as B

    if side and side.get("precision"):
        return str(side["precision"])
    for e in bundle.manifest.get("engines", []):
        if engine.name in (e["engine"],):
            return e["precision"]
    by_source = {B.ONNX_QDQ: "int8", B.ONNX_FP16: "fp16", B.ONNX_FP32: "fp32"}
    if engine.name in by_source:
        return by_source[engine.name]
    raise UserError(f"--engine {engine}: cannot tell its precision (no sidecar, not a bundle file name); "
                    f"pass --precision")
