"""TensorRT backend: FP16 and INT8 engines from the simplified ONNX, on TensorRT 8.x, 10.x and 11+.

With `tensorrt` + `pycuda` and an NVIDIA GPU (extra `[tensorrt]`), `build` parses the ONNX and builds the
engine; without them it prepares everything the device needs (tensorrt_host: calibration cache, Q/DQ ONNX,
device bundle) and returns the engine as `skipped`, saying it must be built on the device.

Which calls are made is chosen by the running `trt.__version__` (edgerep/trt/versions.api_features, from the
NVIDIA/TensorRT release/X Python bindings):
  network   8.x: EXPLICIT_BATCH flag | 10.x: create_network(0) (+STRONGLY_TYPED for Q/DQ from 10.12) | 11: always strongly typed
  workspace 8.0-8.3: config.max_workspace_size | 8.4+: config.set_memory_pool_limit(MemoryPoolType.WORKSPACE, n)
  FP16      < 11: BuilderFlag.FP16 on the FP32 ONNX | 11+: the FP16-cast ONNX, strongly typed
  INT8      calibrate (< 11): BuilderFlag.INT8 + IInt8EntropyCalibrator2 reading the host cache (and fed real
            batches if TensorRT rejects it); qdq: the Q/DQ ONNX with BuilderFlag.INT8 (8.x - 10.11), strongly typed (10.12+, 11)
  build     builder.build_serialized_network (build_engine is gone in 10)
  run       tensor API (set_tensor_address / execute_async_v3) from 8.5, bindings API (execute_async_v2) before
Only names bound in the running version are touched; nothing here imports tensorrt at module import.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UserError
from ..artifacts import Artifact
from ..targets import BACKEND_CAPABILITIES

KNOWN_OPTIONS = {"ignored_nodes", "calib_method", "num_samples", "int8_mode", "dla_core", "timing_cache",
                 "entropy_bins"}


# --- environment -----------------------------------------------------------------------------------


def _cuda() -> Any:
    import pycuda.driver as cuda

    cuda.init()
    return cuda


def running_environment() -> dict[str, Any]:
    """TensorRT version, GPU name and compute capability of this machine (for the sidecar guard)."""
    import tensorrt as trt

    cuda = _cuda()
    dev = cuda.Device(0)
    major, minor = dev.compute_capability()
    return {"trt_version": trt.__version__, "gpu_name": dev.name(), "compute_capability": f"{major}.{minor}"}


def _trt_version() -> tuple[int, int, int]:
    import tensorrt as trt

    from ..trt.versions import parse_version

    return parse_version(trt.__version__)


class _Logger:
    """A TensorRT logger that keeps the messages (the DLA/GPU layer lists come from the build log) and
    prints warnings and errors. trt.ILogger subclasses need the base __init__ (TensorRT Python API, Logger)."""

    def __new__(cls) -> Any:
        import tensorrt as trt

        class Capture(trt.ILogger):
            def __init__(self) -> None:
                trt.ILogger.__init__(self)
                self.lines: list[tuple[Any, str]] = []

            def log(self, severity: Any, msg: str) -> None:
                level = int(severity)  # INTERNAL_ERROR 0, ERROR 1, WARNING 2, INFO 3, VERBOSE 4
                if level <= 3:
                    self.lines.append((level, msg))
                if level <= 2:
                    print(f"[TensorRT] {msg}", file=__import__("sys").stderr)

        return Capture()


def _layer_split(lines: list[tuple[Any, str]]) -> tuple[list[str], list[str]]:
    import re

    dla, gpu = [], []
    for _, msg in lines:
        m = re.search(r"\[(DlaLayer|GpuLayer)\]\s*(.*)", msg)
        if m:
            (dla if m.group(1) == "DlaLayer" else gpu).append(m.group(2).strip())
    return dla, gpu


# --- the backend -----------------------------------------------------------------------------------


class TensorRTBackend:
    name = "tensorrt"
    precisions = BACKEND_CAPABILITIES["tensorrt"].precisions
    calib_methods = BACKEND_CAPABILITIES["tensorrt"].calib_methods
    # build() also works without TensorRT or a GPU: it writes the device bundle and returns skipped engines.
    offline_build = True

    def available(self) -> str | None:
        try:
            import tensorrt  # noqa: F401
        except ImportError:
            return "tensorrt is not installed here; engines are built on the device (pip install 'edgerep[tensorrt]' there)"
        try:
            import pycuda.driver  # noqa: F401
        except ImportError:
            return "pycuda is not installed; pip install 'edgerep[tensorrt]'"
        try:
            cuda = _cuda()
            if cuda.Device.count() < 1:
                return "no NVIDIA GPU found"
        except Exception as exc:  # no driver, no device
            return f"no usable CUDA GPU ({type(exc).__name__}: {str(exc)[:120]})"
        return None

    # -- build --------------------------------------------------------------------------------------

    def build(self, onnx_path: Path, precision: str, *, out_dir: Path, profile: Any, calib: Any = None,
              options: dict[str, Any] | None = None) -> Artifact:
        from . import tensorrt_host as host
        from ..trt.versions import int8_modes, version_str

        if precision not in self.precisions:
            raise UserError(f"--precision {precision}: the tensorrt backend builds {', '.join(self.precisions)}")
        options = dict(options or {})
        unknown = sorted(set(options) - KNOWN_OPTIONS)
        if unknown:
            raise UserError(f"tensorrt build options: unknown {', '.join(unknown)} (known: {', '.join(sorted(KNOWN_OPTIONS))})")
        onnx_path, out_dir = Path(onnx_path), Path(out_dir)
        version = host.profile_version(profile)
        trt_settings = profile.tensorrt
        int8_mode = options.get("int8_mode") or trt_settings.int8_mode
        if int8_mode not in ("calibrate", "qdq"):
            raise UserError(f"--int8-mode {int8_mode}: use calibrate (calibration cache) or qdq (Q/DQ ONNX)")
        if precision == "int8" and int8_mode not in int8_modes(version):
            raise UserError(f"--int8-mode {int8_mode}: TensorRT {version_str(version)} builds INT8 only from Q/DQ; use qdq")
        dla_core = options.get("dla_core", trt_settings.dla_core)
        if options.get("dla_core") is not None and not 0 <= int(dla_core) < max(trt_settings.dla_cores, 0):
            raise UserError(f"--dla-core {dla_core}: target {profile.name} has {trt_settings.dla_cores} DLA core(s)")
        if (int8_mode, dla_core) != (trt_settings.int8_mode, trt_settings.dla_core):  # flags override the profile
            from dataclasses import replace

            trt_settings = replace(trt_settings, int8_mode=int8_mode, dla_core=dla_core)
            profile = replace(profile, tensorrt=trt_settings)
        host_dir = out_dir / host.HOST_DIR
        int8 = fp16_onnx = None
        if precision == "int8":
            if calib is None:
                raise UserError("--calib: TensorRT INT8 needs calibration data (host calibration for the cache and "
                                "the Q/DQ model); pass --calib")
            cal = getattr(profile, "calibration", None)
            method = options.get("calib_method") or (cal.method if cal else "entropy")
            if method not in self.calib_methods:
                raise UserError(f"--calib-method {method}: not one of {', '.join(self.calib_methods)}")
            num = int(options.get("num_samples") or (cal.num_samples if cal else 300))
            int8 = host.prepare_int8(onnx_path, profile, calib, host_dir, method=method, num_samples=num,
                                     ignored_nodes=options.get("ignored_nodes"), entropy_bins=options.get("entropy_bins"))
        if precision == "fp16" and version[0] >= 11:
            fp16_onnx = host.prepare_fp16(onnx_path, host_dir)
        settings = {"trt_version": version_str(version), "int8_mode": int8_mode if precision == "int8" else None,
                    "dla_core": dla_core if precision != "fp32" else None, "workspace_mb": trt_settings.workspace_mb,
                    "calib_method": int8["method"] if int8 else None}
        info: dict[str, Any] = {"settings": settings, "qdq": str(int8["qdq"]) if int8 else None,
                                "calibration_cache": str(int8["cache"]) if int8 else None}

        reason = self.available()
        if reason is not None:
            bundle_dir = out_dir / host.BUNDLE_DIR
            host.update_bundle(bundle_dir, onnx_path=onnx_path, profile=profile, precisions=[precision],
                               int8=int8, fp16_onnx=fp16_onnx)
            info["bundle"] = str(bundle_dir)
            return Artifact(backend=self.name, precision=precision, path=None, status="skipped",
                            reason=f"{reason}; build the engine on the device: bash {bundle_dir}/build.sh",
                            info=info)
        engine = self._build_on_gpu(onnx_path, precision, out_dir=out_dir, profile=profile, calib=calib,
                                    int8=int8, fp16_onnx=fp16_onnx, int8_mode=int8_mode, dla_core=dla_core,
                                    timing_cache=options.get("timing_cache"), info=info)
        return engine

    def _build_on_gpu(self, onnx_path: Path, precision: str, *, out_dir: Path, profile: Any, calib: Any,
                      int8: dict[str, Any] | None, fp16_onnx: Path | None, int8_mode: str, dla_core: int | None,
                      timing_cache: str | None, info: dict[str, Any]) -> Artifact:
        import tensorrt as trt

        from ..targets import trt_version_matches
        from ..trt.versions import api_features

        if not trt_version_matches(profile.tensorrt.version, trt.__version__):
            raise UserError(f"--target {profile.name}: made for TensorRT {profile.tensorrt.version}, this machine has "
                            f"{trt.__version__}; use the profile of this device (edgerep targets)")
        running = _trt_version()
        feats = api_features(running)
        env = running_environment()
        cuda = _cuda()
        ctx = cuda.Device(0).retain_primary_context()  # the context TensorRT's runtime uses (pycuda.autoprimaryctx)
        ctx.push()
        try:
            return self._build_in_context(trt, onnx_path, precision, out_dir=out_dir, profile=profile, calib=calib,
                                          int8=int8, fp16_onnx=fp16_onnx, int8_mode=int8_mode, dla_core=dla_core,
                                          timing_cache=timing_cache, info=info, feats=feats, env=env)
        finally:
            ctx.pop()
            ctx.detach()

    def _build_in_context(self, trt: Any, onnx_path: Path, precision: str, *, out_dir: Path, profile: Any,
                          calib: Any, int8: dict[str, Any] | None, fp16_onnx: Path | None, int8_mode: str,
                          dla_core: int | None, timing_cache: str | None, info: dict[str, Any], feats: Any,
                          env: dict[str, Any]) -> Artifact:
        from ..artifacts import atomic_path, write_sidecar
        from ..trt import calib_cache
        from ..trt.calibrate import model_input
        from ..trt.guard import engine_sidecar

        running = _trt_version()
        source = onnx_path
        if precision == "int8" and int8_mode == "qdq":
            source = Path(int8["qdq"])
        elif precision == "fp16" and feats.always_strongly_typed:
            source = Path(fp16_onnx)
        input_name, dims = model_input(onnx_path)
        dynamic = None
        if profile.dynamic_batch:
            sizes = sorted(set(int(b) for b in profile.latency.batch_sizes) | {1})
            dynamic = (sizes[0], sizes[len(sizes) // 2], sizes[-1])
        strongly = feats.always_strongly_typed or (
            precision == "int8" and int8_mode == "qdq" and feats.precision_flags_deprecated)

        logger = _Logger()
        builder = trt.Builder(logger)
        flags = 0
        if feats.explicit_batch_flag:
            flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
        if strongly and feats.strongly_typed_flag:
            flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
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
        else:
            config.max_workspace_size = workspace
        if feats.layer_info:
            config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
        opt_profile = None
        if dynamic is not None:
            opt_profile = builder.create_optimization_profile()
            shapes = [[b, *[int(d) for d in dims[1:]]] for b in dynamic]
            opt_profile.set_shape(input_name, *shapes)
            config.add_optimization_profile(opt_profile)
        calibrator = None
        if precision == "fp16" and not feats.always_strongly_typed:
            config.set_flag(trt.BuilderFlag.FP16)
        if precision == "int8":
            if int8_mode == "calibrate":
                config.set_flag(trt.BuilderFlag.INT8)
                from ..artifacts import read_sidecar
                from ..trt.guard import cache_action

                contents = calib_cache.read_cache(Path(int8["cache"]))
                action, why = cache_action(read_sidecar(Path(int8["cache"])), env, onnx_sha256=int8["onnx_sha256"],
                                           data_sha256=int8["data_sha256"], cache_versions=contents.versions)
                if action == "recalibrate":
                    raise UserError(f"{int8['cache']}: {why}; delete it and re-run edgerep build")
                text = Path(int8["cache"]).read_text(encoding="ascii")
                # "retag": host scales do not depend on the TensorRT version; head them for this exact release
                cache_bytes = (calib_cache.retag(text, running) if action == "retag" else text).encode("ascii")
                calibrator = _calibrator(trt, cache_bytes, calib, input_name, dims, dynamic)
                config.int8_calibrator = calibrator
                if opt_profile is not None:
                    config.set_calibration_profile(opt_profile)
            elif not strongly:
                config.set_flag(trt.BuilderFlag.INT8)  # explicit quantization needs the flag before 10.12
        if dla_core is not None and precision != "fp32":
            if not feats.dla:
                raise UserError(f"dla_core {dla_core}: TensorRT {trt.__version__} does not support DLA")
            if builder.num_DLA_cores <= dla_core:
                raise UserError(f"dla_core {dla_core}: this device has {builder.num_DLA_cores} DLA core(s)")
            config.default_device_type = trt.DeviceType.DLA
            config.DLA_core = int(dla_core)
            config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
        tc_path = Path(timing_cache) if timing_cache else out_dir / "timing.cache"
        cache = config.create_timing_cache(tc_path.read_bytes() if tc_path.is_file() else b"")
        config.set_timing_cache(cache, ignore_mismatch=False)

        plan = builder.build_serialized_network(network, config)
        if plan is None:
            errs = [m for level, m in logger.lines if level <= 1][-3:]
            raise RuntimeError(f"TensorRT could not build the {precision} engine: {' | '.join(errs) or 'see the log'}")
        out_dir.mkdir(parents=True, exist_ok=True)
        engine = out_dir / f"model.{precision}.engine"
        with atomic_path(engine) as tmp:
            tmp.write_bytes(bytes(plan))
        with atomic_path(tc_path) as tmp:
            tmp.write_bytes(bytes(config.get_timing_cache().serialize()))
        dla_layers, gpu_layers = _layer_split(logger.lines)
        from ..onnx_files import onnx_sha256

        extra = {"target": profile.name, "onnx": str(source), "dla_layers": dla_layers,
                 "gpu_fallback_layers": gpu_layers if dla_layers else [], "settings": info["settings"]}
        if calibrator is not None:
            extra["calibration_cache_rejected"] = calibrator.batches_fed > 0
            if calibrator.written is not None:
                extra["calibration_cache_written_header"] = calibrator.written.split(b"\n", 1)[0].decode("ascii", "replace")
        side = write_sidecar(engine, engine_sidecar(
            trt_version=trt.__version__, gpu_name=env["gpu_name"], compute_capability=env["compute_capability"],
            precision=precision, opset=profile.opset, onnx_sha256=onnx_sha256(source),
            calib_sha256=int8["data_sha256"] if int8 else None, int8_mode=int8_mode if precision == "int8" else None,
            dla_core=dla_core if precision != "fp32" else None, workspace_mb=profile.tensorrt.workspace_mb,
            dynamic_batch=bool(dynamic), shapes={"min_opt_max": dynamic} if dynamic else None, extra=extra))
        info.update({"dla_layers": len(dla_layers), "gpu_fallback_layers": len(gpu_layers) if dla_layers else 0})
        return Artifact(backend=self.name, precision=precision, path=engine, sidecar=side, info=info)

    # -- after the reference -------------------------------------------------------------------------

    def finish(self, artifacts: dict[str, Artifact], reference: Any, *, profile: Any, engine_batch: int) -> list[dict[str, Any]]:
        """Called by the build once the reference outputs exist: validates the INT8 Q/DQ model in ONNX Runtime
        (its own report row, backend "onnxruntime-qdq", a prediction that does not gate the build) and adds
        the reference and the predictions to the device bundle. Returns the extra report rows."""
        from .tensorrt_host import finish_offline

        return finish_offline(artifacts, reference, profile=profile, engine_batch=engine_batch)

    # -- load ---------------------------------------------------------------------------------------

    def load(self, artifact: Artifact) -> "TensorRTRunner":
        from ..artifacts import read_sidecar

        if artifact.path is None:
            raise UserError(f"tensorrt {artifact.precision}: no engine (status {artifact.status}: {artifact.reason})")
        return self.load_checked(Path(artifact.path), read_sidecar(Path(artifact.path)))

    def load_checked(self, engine: Path, side: dict[str, Any] | None, *, onnx_sha256: str | None = None) -> "TensorRTRunner":
        """Load a plan after the sidecar guard: a plan from another TensorRT or GPU is refused, not run."""
        from ..trt.guard import guard_engine

        reason = self.available()
        if reason is not None:
            raise UserError(f"--engine {engine}: {reason}")
        guard_engine(engine, side, running_environment(), onnx_sha256=onnx_sha256)
        return TensorRTRunner(engine, dla_core=(side or {}).get("dla_core"))


def _calibrator(trt: Any, cache: bytes, calib: Any, input_name: str, dims: list[Any],
                dynamic: tuple[int, int, int] | None) -> Any:
    """An IInt8EntropyCalibrator2 that hands TensorRT the host cache; if TensorRT does not accept it
    (e.g. a header it reads differently), it calibrates on real batches of `calib` instead of on nothing."""
    import pycuda.driver as cuda

    batch = dynamic[1] if dynamic else int(dims[0] or 1)
    sample = [int(d) for d in dims[1:]]

    class CacheCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)  # the base __init__ must be called (TensorRT samples)
            self.written: bytes | None = None
            self.batches_fed = 0
            self._it = calib.iter_batches(batch) if calib is not None else iter(())
            self._device = cuda.mem_alloc(int(np.prod([batch, *sample])) * 4)

        def get_batch_size(self) -> int:
            return batch

        def get_batch(self, names: list[str]) -> list[int] | None:
            for x, _ in self._it:
                if x.shape[0] != batch:
                    continue
                cuda.memcpy_htod(self._device, np.ascontiguousarray(x, dtype=np.float32))
                self.batches_fed += 1
                return [int(self._device)]
            return None

        def read_calibration_cache(self) -> bytes:
            return cache

        def write_calibration_cache(self, data: Any) -> None:
            self.written = bytes(data)

    return CacheCalibrator()


# --- the runner ------------------------------------------------------------------------------------


class TensorRTRunner:
    """Runs a plan with pycuda: pinned host buffers, one stream, async copies; latency from CUDA events."""

    def __init__(self, engine_path: Path, *, dla_core: int | None = None) -> None:
        import tensorrt as trt

        from ..trt.versions import api_features

        cuda = _cuda()
        self.cuda, self.trt = cuda, trt
        self.ctx = cuda.Device(0).retain_primary_context()
        self.ctx.push()
        try:
            self.logger = _Logger()
            runtime = trt.Runtime(self.logger)
            if dla_core is not None:
                runtime.DLA_core = int(dla_core)
            self.engine = runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
            if self.engine is None:
                raise UserError(f"--engine {engine_path}: TensorRT {trt.__version__} cannot deserialize it; rebuild it here")
            self.context = self.engine.create_execution_context()
            self.stream = cuda.Stream()
            self.tensor_api = api_features(_trt_version()).tensor_api
            self.inputs, self.outputs = self._io_names()
            self.input_name = self.inputs[0]
            self._shape: tuple[int, ...] | None = None
            self._buffers: dict[str, tuple[Any, Any]] = {}
        finally:
            self.ctx.pop()

    def _io_names(self) -> tuple[list[str], list[str]]:
        trt, e = self.trt, self.engine
        ins, outs = [], []
        if self.tensor_api:
            for i in range(e.num_io_tensors):
                name = e.get_tensor_name(i)
                (ins if e.get_tensor_mode(name) == trt.TensorIOMode.INPUT else outs).append(name)
        else:
            for i in range(e.num_bindings):
                (ins if e.binding_is_input(i) else outs).append(e.get_binding_name(i))
        return ins, outs

    def _prepare(self, shape: tuple[int, ...]) -> None:
        """Set the input shape and (re)allocate pinned host and device buffers for it."""
        if shape == self._shape:
            return
        trt, cuda, e, c = self.trt, self.cuda, self.engine, self.context
        self._free()
        if self.tensor_api:
            if -1 in tuple(e.get_tensor_shape(self.input_name)):  # a dynamic input (optimization profile)
                c.set_input_shape(self.input_name, shape)
        else:
            idx = e.get_binding_index(self.input_name)
            if -1 in tuple(e.get_binding_shape(idx)):
                c.set_binding_shape(idx, shape)
        for name in self.inputs + self.outputs:
            if self.tensor_api:
                dims, dtype = tuple(c.get_tensor_shape(name)), trt.nptype(e.get_tensor_dtype(name))
            else:
                idx = e.get_binding_index(name)
                dims, dtype = tuple(c.get_binding_shape(idx)), trt.nptype(e.get_binding_dtype(idx))
            host = cuda.pagelocked_empty(dims, dtype)
            dev = cuda.mem_alloc(max(1, host.nbytes))
            self._buffers[name] = (host, dev)
            if self.tensor_api:
                c.set_tensor_address(name, int(dev))
        self._shape = shape

    def _enqueue(self) -> None:
        if self.tensor_api:
            self.context.execute_async_v3(stream_handle=self.stream.handle)
        else:
            bindings = [0] * self.engine.num_bindings
            for name, (_, dev) in self._buffers.items():
                bindings[self.engine.get_binding_index(name)] = int(dev)
            self.context.execute_async_v2(bindings=bindings, stream_handle=self.stream.handle)

    def _infer_async(self, batch: np.ndarray) -> None:
        host_in, dev_in = self._buffers[self.input_name]
        np.copyto(host_in, batch.astype(host_in.dtype, copy=False))
        self.cuda.memcpy_htod_async(dev_in, host_in, self.stream)
        self._enqueue()
        for name in self.outputs:
            host, dev = self._buffers[name]
            self.cuda.memcpy_dtoh_async(host, dev, self.stream)

    def run(self, batch: np.ndarray) -> np.ndarray:
        self.ctx.push()
        try:
            batch = np.ascontiguousarray(batch, dtype=np.float32)
            self._prepare(tuple(batch.shape))
            self._infer_async(batch)
            self.stream.synchronize()
            return np.array(self._buffers[self.outputs[0]][0], dtype=np.float32, copy=True)
        finally:
            self.ctx.pop()

    def latency(self, batch: np.ndarray, warmup: int, iterations: int) -> list[float]:
        """Milliseconds per inference (host->device copy, execution, device->host copy) from CUDA events."""
        self.ctx.push()
        try:
            batch = np.ascontiguousarray(batch, dtype=np.float32)
            self._prepare(tuple(batch.shape))
            for _ in range(max(0, warmup)):
                self._infer_async(batch)
            self.stream.synchronize()
            start, end = self.cuda.Event(), self.cuda.Event()
            times = []
            for _ in range(max(1, iterations)):
                start.record(self.stream)
                self._infer_async(batch)
                end.record(self.stream)
                end.synchronize()
                times.append(float(start.time_till(end)))
            return times
        finally:
            self.ctx.pop()

    def _free(self) -> None:
        for _, dev in self._buffers.values():
            dev.free()
        self._buffers = {}
        self._shape = None

    def close(self) -> None:
        if getattr(self, "ctx", None) is None:
            return
        self.ctx.push()
        try:
            self._free()
            self.context = None
            self.engine = None
        finally:
            self.ctx.pop()
            self.ctx.detach()
            self.ctx = None


BACKEND = TensorRTBackend()
