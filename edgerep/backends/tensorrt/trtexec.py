"""trtexec command lines valid for one TensorRT version (samples/common/sampleOptions.cpp of each
NVIDIA/TensorRT release branch, collected in data/trtexec_options.json), and which ONNX file each engine starts from.

Per version:
  --workspace=N (MiB) 8.0-8.3 | --memPoolSize=workspace:N 8.4+ (--workspace removed in 10.0)
  --fp16 / --int8 / --calib 8.0-10.x (removed in 11.0: precision comes from the graph, strongly typed);
      INT8 engines get --fp16 too (layers without scales run FP16, not FP32, and stay on the DLA), also from Q/DQ
      on 10.12-10.x, where the flags are deprecated but still parsed: --stronglyTyped there would run every layer
      without Q/DQ in FP32 (the graph is FP32). On 11 the Q/DQ graph itself is FP16 outside its Q/DQ pairs.
  --stronglyTyped 10.0+: not passed (a no-op in 11; on 10.x see above)
  --noTF32 all versions, for fp32 engines: TF32 is on by default (BuilderFlag kTF32, "Enabled by default",
      release/10.3 NvInfer.h), so an "fp32" engine on Ampere+ would compute in TF32 and its gate would not test FP32
  --buildOnly 8.x before 8.6 | --skipInference 8.6+;  --explicitBatch 8.0-8.3 (no effect from 8.4, gone in 10)
  --profilingVerbosity=detailed --exportLayerInfo=F 8.2+
  --minShapes/--optShapes/--maxShapes all versions; --*ShapesCalib 8.0-10.x
  --useDLACore=N --allowGPUFallback all versions (DLA unusable in 11.0-11.3)
"""
from __future__ import annotations

from edgerep.backends.tensorrt.versions import Version, api_features, dla_support, version_str
from edgerep.errors import UserError

# The ONNX file of the bundle each engine is built from.
ONNX_FP32, ONNX_FP16, ONNX_QDQ = "model.onnx", "model.fp16.onnx", "model.qdq.onnx"
# The range-repaired float ONNX (backends.repair) a calibrate-mode INT8 engine is built from, with the cache made
# from it; a Q/DQ engine needs no extra file (its Q/DQ model is made from the repaired ONNX).
ONNX_REPAIRED = "model.repaired.onnx"


def engine_source(version: Version, precision: str, int8_mode: str, *, repaired: bool = False) -> str:
    """Which bundle ONNX an engine of `precision` starts from on TensorRT `version` (`repaired`: the INT8
    artifacts were made from the range-repaired model)."""
    feats = api_features(version)
    if precision == "int8":
        if int8_mode == "calibrate" and not feats.calibrators:
            raise UserError(f"int8_mode calibrate: TensorRT {version_str(version)} removed calibrators; use int8_mode qdq")
        return ONNX_QDQ if int8_mode == "qdq" else (ONNX_REPAIRED if repaired else ONNX_FP32)
    if precision == "fp16" and feats.always_strongly_typed:
        return ONNX_FP16
    return ONNX_FP32


def check_dla_int8(version: Version, int8_mode: str, dla_core: int | None) -> None:
    """DLA runs INT8 only from implicit quantization (a calibration cache) while TensorRT has calibrators:
    a Q/DQ graph's INT8 layers fall back to the GPU (NVIDIA/TensorRT#2222: "DLA doesn't support QAT yet ... if
    you convert it to implicit quantization, it would work with DLA"; NVIDIA/Deep-Learning-Accelerator-SW's
    qdq-translator exists to turn Q/DQ into a cache for that reason). From 11.4.1, DLA builds are strongly
    typed, so Q/DQ is the only way there."""
    if dla_core is not None and int8_mode == "qdq" and api_features(version).calibrators:
        raise UserError(f"int8_mode qdq with dla_core {dla_core}: TensorRT {version_str(version)} runs INT8 on the "
                        f"DLA only from a calibration cache (Q/DQ layers fall back to the GPU); use int8_mode "
                        f"calibrate (--int8-mode calibrate), or drop dla_core")


def engine_name(precision: str) -> str:
    return f"model.{precision}.engine"


def shape_text(name: str, shape: list[int]) -> str:
    return f"{name}:{'x'.join(str(int(d)) for d in shape)}"


def trtexec_args(version: Version, precision: str, *, int8_mode: str, input_name: str, input_shape: list[int],
                 workspace_mb: int, dynamic_batch: tuple[int, int, int] | None = None, dla_core: int | None = None,
                 calib_cache: str | None = None, timing_cache: str | None = "timing.cache",
                 layer_info: bool = True, engine: str | None = None, repaired: bool = False) -> list[str]:
    """The trtexec arguments that build `engine` (default `engine_name(precision)`) from `engine_source(...)` in
    the bundle.

    `input_shape` is the NCHW shape with the batch used for a static engine; `dynamic_batch` = (min, opt,
    max) batch sizes for an optimization profile."""
    feats = api_features(version)
    mm = (version[0], version[1])
    onnx = engine_source(version, precision, int8_mode, repaired=repaired)
    engine = engine or engine_name(precision)
    args = [f"--onnx={onnx}", f"--saveEngine={engine}"]
    if mm < (8, 4):
        args.append("--explicitBatch")  # the ONNX parser needs explicit batch; a no-op flag from 8.4, gone in 10
    args.append(f"--memPoolSize=workspace:{int(workspace_mb)}" if feats.memory_pool_limit else f"--workspace={int(workspace_mb)}")
    if timing_cache:
        args.append(f"--timingCacheFile={timing_cache}")
    if precision == "fp16" and feats.precision_flags:
        args.append("--fp16")
    if precision == "fp32":
        args.append("--noTF32")
    if precision == "int8":
        check_dla_int8(version, int8_mode, dla_core)
        if int8_mode == "calibrate":
            if not calib_cache:
                raise ValueError("int8_mode calibrate needs the calibration cache file")
            # --fp16 too: layers without INT8 scales then run in FP16 instead of FP32, and stay on the DLA
            # (NVIDIA/Deep-Learning-Accelerator-SW tools/qdq-translator/README.md builds DLA INT8 `--int8 --fp16 --calib=...`)
            args += ["--int8", "--fp16", f"--calib={calib_cache}"]
        elif feats.always_strongly_typed:
            pass  # TensorRT 11: the FP16 Q/DQ graph is the precision; --int8 and --fp16 no longer exist
        else:
            # 8.x - 10.x: the INT8 flag for the Q/DQ layers, FP16 for the rest (weakly typed; on 10.12+ deprecated
            # but bound: NVIDIA/TensorRT release/10.16 NvInfer.h keeps kINT8/kFP16 "Deprecated in TensorRT 10.12")
            args += ["--int8", "--fp16"]
    if dynamic_batch is not None:
        lo, opt, hi = dynamic_batch
        shapes = {k: shape_text(input_name, [b, *input_shape[1:]]) for k, b in (("min", lo), ("opt", opt), ("max", hi))}
        args += [f"--minShapes={shapes['min']}", f"--optShapes={shapes['opt']}", f"--maxShapes={shapes['max']}"]
        if precision == "int8" and int8_mode == "calibrate":
            calib = shapes["opt"]
            args += [f"--minShapesCalib={calib}", f"--optShapesCalib={calib}", f"--maxShapesCalib={calib}"]
    if dla_core is not None:
        if not feats.dla:
            raise UserError(f"dla_core {dla_core}: TensorRT {version_str(version)} does not support DLA "
                            f"({dla_support(version)[1]}); drop dla_core")
        if precision == "fp32":
            raise UserError("--precision fp32 with dla_core: DLA runs FP16 and INT8 only; drop dla_core or fp32")
        args += [f"--useDLACore={int(dla_core)}", "--allowGPUFallback"]
    if layer_info and feats.layer_info:
        args += ["--profilingVerbosity=detailed", f"--exportLayerInfo={engine}.layers.json"]
    args.append("--skipInference" if mm >= (8, 6) else "--buildOnly")
    return args
