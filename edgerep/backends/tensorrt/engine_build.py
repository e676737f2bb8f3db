"""Build a TensorRT engine from the host-prepared ONNX with the `tensorrt` Python API, on this machine's GPU.

Which calls are made is chosen by the running `trt.__version__` (versions.api_features, from the NVIDIA/TensorRT
release/X python/src/infer/pyCore.cpp bindings):
  network   8.x: EXPLICIT_BATCH flag | 10.x: create_network(0), weakly typed | 11: always strongly typed
  workspace 8.0-8.3: config.max_workspace_size | 8.4+: config.set_memory_pool_limit(MemoryPoolType.WORKSPACE, n)
  FP32      TF32 cleared (BuilderFlag.TF32 is on by default: release/10.3 NvInfer.h), as trtexec --noTF32
  FP16      < 11: BuilderFlag.FP16 on the FP32 ONNX | 11+: the FP16 ONNX (model.fp16.onnx), strongly typed
  INT8      calibrate (< 11): BuilderFlag.INT8 + FP16 + IInt8EntropyCalibrator2 reading the host cache; qdq: the Q/DQ
            ONNX with BuilderFlag.INT8 + FP16 on 8.x - 10.x (on 10.12+ deprecated, still bound; strong typing there
            would run the FP32 graph's unquantized layers in FP32), and on 11 the FP16 Q/DQ ONNX, strongly typed.
            FP16 with INT8 so layers without INT8 scales run in FP16, not FP32, and stay on the DLA
            (NVIDIA/Deep-Learning-Accelerator-SW tools/qdq-translator/README.md builds DLA INT8 with `--int8 --fp16`).
  DLA       INT8 only from the calibration cache while calibrators exist (NVIDIA/TensorRT#2222); precision
            constraints preferred as trtexec does (samples/common/sampleEngines.cpp setupNetworkAndConfig:
            kSTRICT_TYPES in the 8.0 trtexec, kPREFER_PRECISION_CONSTRAINTS from 8.2; gone in 11)
  build     builder.build_serialized_network (build_engine is gone in 10)
The flag choice is the pure function build_plan (tested without TensorRT); _build_in_context applies it.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgerep.errors import UserError
from edgerep.files.artifacts import Artifact


def build_engine(onnx_path: Path, precision: str, *, out_dir: Path, profile: Any, calib: Any,
                 int8: dict[str, Any] | None, fp16_onnx: Path | None, int8_mode: str, dla_core: int | None,
                 timing_cache: str | None, info: dict[str, Any]) -> Artifact:
    """Build `out_dir/model.<precision>.engine` and its sidecar (TensorRT version, GPU, hashes, DLA/GPU split)."""
    import tensorrt as trt

    from edgerep.backends.tensorrt.cuda_memory import open_device_memory
    from edgerep.backends.tensorrt.gpu import running_environment, trt_version
    from edgerep.backends.tensorrt.versions import api_features, version_matches

    if not version_matches(profile.tensorrt.version, trt.__version__):
        raise UserError(f"--target {profile.name}: made for TensorRT {profile.tensorrt.version}, this machine has "
                        f"{trt.__version__}; use the profile of this device (edgerep targets)")
    feats = api_features(trt_version())
    env = running_environment()
    # pycuda: the primary context TensorRT's runtime uses (pycuda.autoprimaryctx); cuda-python uses it already
    memory = open_device_memory()
    memory.push()
    try:
        return _build_in_context(onnx_path, precision, out_dir=out_dir, profile=profile, calib=calib,
                                 int8=int8, fp16_onnx=fp16_onnx, int8_mode=int8_mode, dla_core=dla_core,
                                 timing_cache=timing_cache, info=info, feats=feats, env=env)
    finally:
        memory.pop()
        memory.close()


@dataclass(frozen=True)
class BuildPlan:
    """What the API path sets for one engine, as TensorRT names (NetworkDefinitionCreationFlag / BuilderFlag members)."""

    network_flags: tuple[str, ...]
    set_flags: tuple[str, ...]
    clear_flags: tuple[str, ...]
    strongly_typed: bool  # the network is strongly typed (11: always), so no precision flag may be set
    calibrator: bool  # config.int8_calibrator with the host cache
    dla: bool  # default_device_type DLA, DLA_core, GPU fallback


def build_plan(feats: Any, precision: str, int8_mode: str, dla_core: int | None) -> BuildPlan:
    """The network and builder flags for `precision` on the TensorRT of `feats` (versions.ApiFeatures), the same
    choices trtexec_args makes for build.sh."""
    strongly = bool(feats.always_strongly_typed)
    network: list[str] = []
    if feats.explicit_batch_flag:  # 8.x (deprecated and ignored in 10.x, gone in 11)
        network.append("EXPLICIT_BATCH")
    set_flags: list[str] = []
    clear: list[str] = []
    if precision == "fp32":
        clear.append("TF32")  # an fp32 engine computes in FP32, so its gate compares FP32 (trtexec --noTF32)
    if precision in ("fp16", "int8") and not strongly:
        set_flags.append("FP16")  # INT8 too: unscaled layers in FP16, not FP32 (module docstring)
    if precision == "int8" and not strongly:
        set_flags.append("INT8")  # the calibrator's, or the Q/DQ layers' (explicit quantization, weakly typed)
    dla = dla_core is not None and precision != "fp32"
    if dla:
        set_flags.append("GPU_FALLBACK")
        if not strongly:  # as trtexec: layer precisions are kept where the DLA can (8.0: STRICT_TYPES)
            set_flags.append("PREFER_PRECISION_CONSTRAINTS" if feats.version[:2] >= (8, 2) else "STRICT_TYPES")
    calibrator = precision == "int8" and int8_mode == "calibrate"
    if calibrator and not feats.calibrators:
        raise UserError(f"int8_mode calibrate: TensorRT {'.'.join(map(str, feats.version))} removed calibrators; "
                        f"use int8_mode qdq")
    return BuildPlan(network_flags=tuple(network), set_flags=tuple(set_flags), clear_flags=tuple(clear),
                     strongly_typed=strongly, calibrator=calibrator, dla=dla)


def attach_timing_cache(config: Any, blob: bytes, source: Path) -> Any:
    """Give `config` the timing cache in `blob`; when TensorRT rejects it (another GPU or TensorRT version:
    set_timing_cache returns False: NVIDIA/TensorRT release/10.3 include/NvInfer.h setTimingCache "\\return true if
    set successfully, false otherwise", python/docstrings/infer/pyCoreDoc.h), warn
    naming the file and attach a fresh one instead, so the build goes on and writes a cache for this device."""
    try:
        cache = config.create_timing_cache(blob)
        if cache is not None and config.set_timing_cache(cache, ignore_mismatch=False):
            return cache
    except Exception:  # TensorRT raises on bytes it cannot read at all (a truncated or foreign file)
        pass
    print(f"warning: {source}: TensorRT rejected this timing cache (made on another GPU or TensorRT version); "
          f"building without it and replacing it", file=sys.stderr)
    cache = config.create_timing_cache(b"")
    if not config.set_timing_cache(cache, ignore_mismatch=False):
        raise RuntimeError("TensorRT rejected an empty timing cache")
    return cache


def _build_in_context(onnx_path: Path, precision: str, *, out_dir: Path, profile: Any,
                      calib: Any, int8: dict[str, Any] | None, fp16_onnx: Path | None, int8_mode: str,
                      dla_core: int | None, timing_cache: str | None, info: dict[str, Any], feats: Any,
                      env: dict[str, Any]) -> Artifact:
    import tensorrt as trt

    from edgerep.backends.tensorrt.calibrate import model_input
    from edgerep.backends.tensorrt.gpu import layer_split, make_logger, trt_version
    from edgerep.backends.tensorrt.guard import engine_sidecar
    from edgerep.backends.tensorrt.trtexec import check_dla_int8
    from edgerep.backends.tensorrt.versions import dla_support
    from edgerep.files.artifacts import atomic_path, write_sidecar
    from edgerep.files.onnx_files import onnx_sha256

    source = onnx_path
    if precision == "int8" and int8_mode == "qdq":
        source = Path(int8["qdq"])  # type: ignore[index]
    elif precision == "fp16" and feats.always_strongly_typed:
        source = Path(fp16_onnx)  # type: ignore[arg-type]
    if precision == "int8":
        check_dla_int8(feats.version, int8_mode, dla_core)
    input_name, dims = model_input(onnx_path)
    dynamic = None
    if profile.dynamic_batch and dla_core is not None:  # as bundle.batch_profile refuses it for build.sh
        raise UserError(f"--target {profile.name}: dynamic_batch = true with DLA core {dla_core}: the DLA runs static "
                        f"shapes only; set dynamic_batch = false, or build for the GPU")
    if profile.dynamic_batch:
        sizes = sorted(set(int(b) for b in profile.latency.batch_sizes) | {1})
        dynamic = (sizes[0], sizes[len(sizes) // 2], sizes[-1])
    chosen = build_plan(feats, precision, int8_mode, dla_core)

    logger = make_logger()
    builder = trt.Builder(logger)
    flags = 0
    for name in chosen.network_flags:
        flags |= 1 << int(getattr(trt.NetworkDefinitionCreationFlag, name))
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(source)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise UserError(f"{source}: the TensorRT {trt.__version__} ONNX parser rejects it ({errors[:300]}); "
                        f"`edgerep check --target {profile.name} --model {source}` lists what to change")
    config = builder.create_builder_config()
    workspace = int(profile.tensorrt.workspace_mb) << 20
    if feats.memory_pool_limit:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace)
    else:  # 8.0 - 8.3 only (checked against names-8.6.json, not the 10.x stubs)
        config.max_workspace_size = workspace  # type: ignore[attr-defined]
    if feats.layer_info:
        config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    opt_profile = None
    if dynamic is not None:
        opt_profile = builder.create_optimization_profile()
        sample = [int(d) if d is not None else -1 for d in dims[1:]]  # static (the lint refuses dynamic ones)
        # trt.Dims from a list: bound in every release (release/8.0 python/src/infer/pyFoundationalTypes.cpp)
        lo, opt, hi = (trt.Dims([b, *sample]) for b in dynamic)
        opt_profile.set_shape(input_name, lo, opt, hi)
        config.add_optimization_profile(opt_profile)
    calibrator: Any = None
    for name in chosen.clear_flags:
        config.clear_flag(getattr(trt.BuilderFlag, name))
    for name in chosen.set_flags:
        config.set_flag(getattr(trt.BuilderFlag, name))
    if chosen.calibrator:
        assert int8 is not None
        calibrator = _cache_calibrator(trt, int8, env, calib, input_name, dims, dynamic)
        config.int8_calibrator = calibrator
        if opt_profile is not None:
            config.set_calibration_profile(opt_profile)
    if chosen.dla and dla_core is not None:
        if not feats.dla:
            raise UserError(f"dla_core {dla_core}: TensorRT {trt.__version__} does not support DLA "
                            f"({dla_support(trt_version())[1]})")
        if builder.num_DLA_cores <= int(dla_core):
            raise UserError(f"dla_core {dla_core}: this device has {builder.num_DLA_cores} DLA core(s)")
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = int(dla_core)
    tc_path = Path(timing_cache) if timing_cache else out_dir / "timing.cache"
    attach_timing_cache(config, tc_path.read_bytes() if tc_path.is_file() else b"", tc_path)

    plan = builder.build_serialized_network(network, config)
    if plan is None:
        errs = [m for level, m in logger.lines if level <= 1][-3:]
        raise RuntimeError(f"TensorRT could not build the {precision} engine: {' | '.join(errs) or 'see the log'}")
    # Everything the sidecar and the timing cache need is computed before anything is written, so a failure
    # cannot leave an engine without its sidecar (the guard would then refuse a good engine).
    new_cache = config.get_timing_cache()
    cache_bytes = bytes(new_cache.serialize()) if new_cache is not None else None
    dla_layers, gpu_layers = layer_split(logger.lines)
    on_dla = dla_core is not None and precision != "fp32"
    extra = {"target": profile.name, "onnx": str(source), "dla_layers": dla_layers,
             # with a DLA core asked for, every GPU layer is a fallback, also when none landed on the DLA
             "gpu_fallback_layers": gpu_layers if on_dla else [], "settings": info["settings"],
             "range_repair": info.get("range_repair")}  # the repaired model `source` is (backends.repair)
    if calibrator is not None:
        extra["calibration_cache_rejected"] = calibrator.batches_fed > 0
        if calibrator.written is not None:
            extra["calibration_cache_written_header"] = calibrator.written.split(b"\n", 1)[0].decode("ascii", "replace")
    body = engine_sidecar(
        trt_version=trt.__version__, gpu_name=env["gpu_name"], compute_capability=env["compute_capability"],
        gpu_name_source=env.get("gpu_name_source"),
        precision=precision, opset=profile.opset, onnx_sha256=onnx_sha256(source),
        calib_sha256=int8["data_sha256"] if int8 else None, int8_mode=int8_mode if precision == "int8" else None,
        dla_core=dla_core if on_dla else None, workspace_mb=profile.tensorrt.workspace_mb,
        dynamic_batch=bool(dynamic), shapes={"min_opt_max": dynamic} if dynamic else None, extra=extra)
    out_dir.mkdir(parents=True, exist_ok=True)
    engine = out_dir / f"model.{precision}.engine"
    with atomic_path(engine) as tmp:
        tmp.write_bytes(bytes(plan))
    side = write_sidecar(engine, body)  # right after the plan: the pair is complete when the hashes match
    if cache_bytes is not None:
        with atomic_path(tc_path) as tmp:
            tmp.write_bytes(cache_bytes)
    info.update({"dla_layers": len(dla_layers), "gpu_fallback_layers": len(gpu_layers) if on_dla else 0})
    return Artifact(backend="tensorrt", precision=precision, path=engine, sidecar=side, info=info)


def _cache_calibrator(trt: Any, int8: dict[str, Any], env: dict[str, Any], calib: Any, input_name: str,
                      dims: list[Any], dynamic: tuple[int, int, int] | None) -> Any:
    """The calibrator for the host cache after the cache guard (use / retag for this release / refuse)."""
    from edgerep.backends.tensorrt import calib_cache
    from edgerep.backends.tensorrt.gpu import trt_version
    from edgerep.backends.tensorrt.guard import cache_action
    from edgerep.files.artifacts import read_sidecar

    contents = calib_cache.read_cache(Path(int8["cache"]))
    side = read_sidecar(Path(int8["cache"]))
    action, why = cache_action(side, env, onnx_sha256=int8["onnx_sha256"],
                               data_sha256=int8["data_sha256"], cache_versions=contents.versions)
    action, why = strict_header_action(action, why, contents.header, contents.versions, side)
    if action == "recalibrate":
        raise UserError(f"{int8['cache']}: {why}; delete it and re-run edgerep build")
    text = Path(int8["cache"]).read_text(encoding="ascii")
    # "retag": host scales do not depend on the TensorRT version; head them for this exact release
    cache_bytes = (calib_cache.retag(text, trt_version()) if action == "retag" else text).encode("ascii")
    return make_calibrator(trt, cache_bytes, calib, dims, dynamic)


def strict_header_action(action: str, why: str | None, header: str, versions: list[Any],
                         side: dict[str, Any] | None) -> tuple[str, str | None]:
    """The cache guard's answer, never "use" for a header number TensorRT never writes (versions.code_to_versions
    gives none: 5 digits, e.g. TRT-10300-..., which 10.3 rejects; TensorRT would then calibrate on our batches):
    a host-made cache is re-headed for this release, any other is refused."""
    if action != "use" or versions:
        return action, why
    reason = f"its header {header} is no TensorRT version number (4 digits before 10.0, 6 from 10.0)"
    if (side or {}).get("produced_by") == "onnxruntime-host":
        return "retag", reason + " (host-made scales do not depend on the TensorRT version)"
    return "recalibrate", reason


def make_calibrator(trt: Any, cache: bytes, calib: Any, dims: list[Any], dynamic: tuple[int, int, int] | None) -> Any:
    """The calibrator the API path builds with (calibrate.device_calibrator: pycuda or cuda-python memory)."""
    from edgerep.backends.tensorrt.calibrate import device_calibrator

    return device_calibrator(trt, cache, calib, dims, dynamic)
