#!/usr/bin/env python3
"""Check a TensorRT engine against this bundle's reference, on a Jetson too old for edgerep itself.

edgerep needs Python >= 3.10; JetPack 4.x ships Python 3.6 and JetPack 5.x Python 3.8 with TensorRT 8.x.
This file is copied into every device bundle and needs only numpy, tensorrt (from JetPack) and one CUDA
binding, pycuda or cuda-python (whichever imports; see device_memory):
    python3 check_engine.py model.int8.engine        # or model.onnx with onnxruntime, to try it on a host
    python3 check_engine.py model.fp16.engine model.int8.engine    # several: then the one to ship here
    python3 check_engine.py --doctor                 # is this device ready to build and check the bundle?
It prints the same accuracy figures as `edgerep validate --bundle` (max abs error, cosine, top-1 agreement,
labelled top-1, of the first output; and per output, by name, for a model with several), the time per batch
(the engines timed in interleaved rounds, as edgerep times them), the power mode it was measured in, and exits 1
when an engine misses the profile's gate recorded in bundle.json. Every output is matched to the reference by
its ONNX name (bundle.json's reference.outputs), never by position. With several engines it ends with the engine
to ship on this device, by the rule of recommend.py (edgerep's own, copied into the bundle beside this file).
Written for Python 3.6: no f-strings, no walrus, no `X | Y` annotations, no subprocess capture_output/text.
"""
import ctypes
import json
import os
import re
import shutil
import subprocess
import sys
import time

import numpy as np

CHECK_BATCH_DEFAULT = 32  # a dynamic-batch bundle that records neither its profile nor its latency batches

# pycuda compiles from source on a Jetson (no aarch64 wheel) and finds nvcc only on PATH; cuda-python is a
# wheel that needs no compiler, but its major version must be the device's CUDA major (CUDA 10.2 on JetPack 4
# has none: pycuda only there).
CUDA_INSTALL_HINT = ("pip3 install 'cuda-python==<CUDA major>.*' (a wheel, e.g. cuda-python 11 on JetPack 5, "
                     "12 on JetPack 6), or pycuda, which compiles: export PATH=/usr/local/cuda/bin:$PATH "
                     "first, then pip3 install pycuda")


# --- device memory: pycuda or cuda-python behind one small interface -----------------------------------------
# host(shape, dtype) -> pinned numpy array; alloc(nbytes) -> device allocation; pointer(allocation) -> int;
# free(allocation), free_host(array); htod(dev, host, stream), dtoh(host, dev, stream) (async); stream(),
# handle(stream) (what execute_async_* takes), sync(stream); event(), record(event, stream),
# elapsed_ms(start, end) (waits for `end`).


class PycudaMemory(object):
    """pycuda: pycuda.autoinit makes the context TensorRT runs in. A DeviceAllocation frees itself when
    collected, so the callers keep every allocation referenced until they free it."""

    name = "pycuda"

    def __init__(self):
        import pycuda.autoinit  # noqa: F401  (creates the CUDA context)
        import pycuda.driver as cuda

        self.cuda = cuda

    def host(self, shape, dtype):
        return self.cuda.pagelocked_empty(shape, dtype)

    def free_host(self, array):
        pass  # pycuda frees page-locked memory with its array

    def alloc(self, nbytes):
        return self.cuda.mem_alloc(max(1, int(nbytes)))

    def pointer(self, allocation):
        return int(allocation)

    def free(self, allocation):
        allocation.free()

    def htod(self, dev, host, stream):
        self.cuda.memcpy_htod_async(dev, host, stream)

    def dtoh(self, host, dev, stream):
        self.cuda.memcpy_dtoh_async(host, dev, stream)

    def stream(self):
        return self.cuda.Stream()

    def handle(self, stream):
        return stream.handle

    def sync(self, stream):
        stream.synchronize()

    def event(self):
        return self.cuda.Event()

    def record(self, event, stream):
        event.record(stream)

    def elapsed_ms(self, start, end):
        end.synchronize()
        return float(start.time_till(end))


def import_cudart():
    """cuda-python's runtime module: `cuda.bindings.runtime` (cuda-python 12.6 and later; the only layout in
    13.x), else the older `cuda.cudart` (11.x - 12.x; NVIDIA/TensorRT samples/python/common_runtime.py
    `from cuda import cudart`)."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        from cuda import cudart
    return cudart


class CudartMemory(object):
    """cuda-python's runtime API (what NVIDIA's TensorRT samples use from 10.14: release/10.14 CHANGELOG.md,
    "Replace all pycuda usages with cuda-python APIs"). Every call returns (cudaError_t, results...); the
    runtime API works in the device's primary context, the one TensorRT uses."""

    name = "cuda-python"

    def __init__(self, cudart=None):
        self.rt = cudart if cudart is not None else import_cudart()
        self.call(self.rt.cudaSetDevice(0), "cudaSetDevice")
        self.call(self.rt.cudaFree(0), "cudaFree(0)")  # creates the context now, not inside a timed call

    def call(self, result, what):
        err, rest = result[0], tuple(result[1:])
        if int(err) != 0:
            named = self.rt.cudaGetErrorName(err)
            raise SystemExit("CUDA %s failed: %s" % (what, named[1].decode() if named and int(named[0]) == 0
                                                       and isinstance(named[1], bytes) else err))
        return rest[0] if len(rest) == 1 else (rest or None)

    def host(self, shape, dtype):
        dtype = np.dtype(dtype)
        count = int(np.prod(shape)) if len(shape) else 1
        nbytes = max(1, count * dtype.itemsize)
        ptr = self.call(self.rt.cudaMallocHost(nbytes), "cudaMallocHost")
        raw = (ctypes.c_byte * nbytes).from_address(int(ptr))  # numpy >= 1.13 on JetPack 4: no as_ctypes_type
        return np.frombuffer(raw, dtype=dtype, count=count).reshape(shape)

    def free_host(self, array):
        self.call(self.rt.cudaFreeHost(array.ctypes.data), "cudaFreeHost")

    def alloc(self, nbytes):
        return int(self.call(self.rt.cudaMalloc(max(1, int(nbytes))), "cudaMalloc"))

    def pointer(self, allocation):
        return int(allocation)

    def free(self, allocation):
        self.call(self.rt.cudaFree(allocation), "cudaFree")

    def htod(self, dev, host, stream):
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self.call(self.rt.cudaMemcpyAsync(dev, host.ctypes.data, host.nbytes, kind, stream), "cudaMemcpyAsync")

    def dtoh(self, host, dev, stream):
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self.call(self.rt.cudaMemcpyAsync(host.ctypes.data, dev, host.nbytes, kind, stream), "cudaMemcpyAsync")

    def stream(self):
        return self.call(self.rt.cudaStreamCreate(), "cudaStreamCreate")

    def handle(self, stream):
        return int(stream)

    def sync(self, stream):
        self.call(self.rt.cudaStreamSynchronize(stream), "cudaStreamSynchronize")

    def event(self):
        return self.call(self.rt.cudaEventCreate(), "cudaEventCreate")

    def record(self, event, stream):
        self.call(self.rt.cudaEventRecord(event, stream), "cudaEventRecord")

    def elapsed_ms(self, start, end):
        self.call(self.rt.cudaEventSynchronize(end), "cudaEventSynchronize")
        return float(self.call(self.rt.cudaEventElapsedTime(start, end), "cudaEventElapsedTime"))


def device_memory(order=("pycuda", "cuda-python")):
    """The first CUDA binding of `order` that imports: PycudaMemory or CudartMemory. Neither: SystemExit
    saying how to install one."""
    tried = []
    for name in order:
        try:
            return PycudaMemory() if name == "pycuda" else CudartMemory()
        except ImportError as exc:
            tried.append("%s (%s)" % (name, exc))
    raise SystemExit("no CUDA Python binding here: tried %s; %s" % (", ".join(tried), CUDA_INSTALL_HINT))


# --- engines, loaded once --------------------------------------------------------------------------------------


def check_batch(manifest):
    """The batch the accuracy check runs at: the model's fixed batch; for a dynamic-batch bundle the largest the
    engine was built for: bundle.json's input.profile.max[0], else max(profile.latency.batch_sizes) (the sizes
    build.sh's profile spans), else CHECK_BATCH_DEFAULT. Same rule as edgerep.commands.validate_bundle."""
    entry = manifest.get("input") or {}
    dims = entry.get("shape") or [1]
    if isinstance(dims[0], int) and dims[0] > 0:
        return dims[0]
    top = ((entry.get("profile") or {}).get("max")) or []
    if top and isinstance(top[0], int) and top[0] > 0:
        return int(top[0])
    sizes = [int(b) for b in (((manifest.get("profile") or {}).get("latency") or {}).get("batch_sizes") or [])
             if int(b) > 0]
    return max(sizes) if sizes else CHECK_BATCH_DEFAULT


def engine_dla_core(entry, sidecar):
    """The DLA core an engine was built for (None: the GPU): its sidecar's dla_core, else its bundle.json entry's
    dla_core, else the --useDLACore=N of its trtexec line. The runtime must be told before deserializing
    (trtexec does: release/8.5 samples/common/sampleEngines.cpp, setDLACore before deserializeCudaEngine)."""
    for record in (sidecar or {}, entry or {}):
        if "dla_core" in record:
            return None if record["dla_core"] is None else int(record["dla_core"])
    for arg in (entry or {}).get("trtexec") or []:
        m = re.match(r"--useDLACore=(\d+)$", str(arg))
        if m:
            return int(m.group(1))
    return None


def engine_facts(engine, manifest):
    """(bundle.json entry, sidecar) of an engine file: the entry whose `engine` is its file name, the sidecar
    `<engine>.json` beside it ({} when either is missing)."""
    base = os.path.basename(engine)
    entry = next((e for e in manifest.get("engines") or [] if e.get("engine") == base), {})
    sidecar = {}
    if os.path.isfile(engine + ".json"):
        try:
            with open(engine + ".json") as f:
                sidecar = json.load(f)
        except (OSError, ValueError):
            sidecar = {}
    return entry, sidecar


def shape_refused(path, shape, profile):
    """The message for an input shape TensorRT refuses (set_input_shape / set_binding_shape returned False)."""
    span = ""
    if profile:
        span = " (its optimization profile: min %s, opt %s, max %s)" % tuple(list(p) for p in profile)
    return ("%s: TensorRT refused input shape %s%s; check at a batch inside the profile, or rebuild the engine "
            "with this bundle's build.sh" % (path, list(shape), span))


class EngineSession(object):
    """One TensorRT engine, deserialized once, its context and buffers made once per batch size and reused:
    the timed region (timed_pass) holds only the copies in, the execution and the copies out.
    The tensor API (num_io_tensors, get_tensor_name/mode, set_input_shape, set_tensor_address,
    execute_async_v3) is bound from TensorRT 8.5 and is the only one in 10.x (NVIDIA/TensorRT release/8.5 and
    release/10.3 python/src/infer/pyCore.cpp); the bindings API (num_bindings, binding_is_input,
    set_binding_shape, execute_async_v2) is what 8.0 - 8.4 have (JetPack 4, 5.0.2) and was removed in 10.0."""

    def __init__(self, path, dla_core=None, memory=None, trt=None):
        if trt is None:
            import tensorrt as trt
        self.path, self.trt = path, trt
        self.memory = memory if memory is not None else device_memory()
        self.logger = trt.Logger(trt.Logger.WARNING)
        # A plain reference keeps the runtime alive as long as the engine (TensorRT's context managers are
        # deprecated no-ops from 8.0 on: release/8.0 python/packaging/tensorrt/__init__.py, common_exit).
        self.runtime = trt.Runtime(self.logger)
        if dla_core is not None:
            self.runtime.DLA_core = int(dla_core)
        with open(path, "rb") as f:
            self.engine = self.runtime.deserialize_cuda_engine(f.read())
        if self.engine is None:
            raise SystemExit("%s: TensorRT could not load it (built by another TensorRT version or GPU?)" % path)
        self.context = self.engine.create_execution_context()
        io_class = TensorIO if _trt_major_minor(trt) >= (8, 5) else BindingIO
        self.io = io_class(trt, self.engine, self.context)
        shape = self.io.input_shape()
        self.sample = tuple(int(d) for d in shape[1:])
        self.fixed = int(shape[0]) if shape[0] > 0 else None
        self.stream = self.memory.stream()
        self.start, self.end = self.memory.event(), self.memory.event()
        self.batch = None
        self.host_in = self.dev_in = None
        self.reads = []  # (name, host, device, shape) of every output
        self.keep = []  # every device allocation, referenced until release()

    def output_names(self):
        return [self.io.name(o) for o in self.io.outputs]

    def engine_batch(self, batch):
        return self.fixed or batch

    def prepare(self, batch):
        """Set the input shape for `batch` rows and allocate pinned host and device buffers for it (once per
        batch size)."""
        if batch == self.batch:
            return
        self.release()
        shape = (batch,) + self.sample
        if self.fixed is None and not self.io.set_input_shape(shape):
            raise SystemExit(shape_refused(self.path, shape, self.io.profile_shapes()))
        mem = self.memory
        self.host_in = mem.host(shape, np.float32)
        self.dev_in = mem.alloc(self.host_in.nbytes)
        self.keep.append(self.dev_in)
        self.io.bind(self.io.input, mem.pointer(self.dev_in))
        for output in self.io.outputs:
            out_shape, out_dtype = self.io.shape_dtype(output)
            host = mem.host(out_shape, out_dtype)
            dev = mem.alloc(host.nbytes)
            self.keep.append(dev)
            self.io.bind(output, mem.pointer(dev))
            self.reads.append((self.io.name(output), host, dev, out_shape))
        self.batch = batch

    def _submit(self):
        """Copies in, execution, copies out, queued on the stream (nothing waits)."""
        mem = self.memory
        mem.htod(self.dev_in, self.host_in, self.stream)
        self.io.execute(mem.handle(self.stream))
        for _, host, dev, _ in self.reads:
            mem.dtoh(host, dev, self.stream)

    def _chunks(self, x, batch):
        """(padded chunk, real rows) over `x` at the engine's batch (a fixed batch pads the last chunk)."""
        step = self.engine_batch(batch)
        for start in range(0, len(x), step):
            chunk = x[start:start + step]
            real = len(chunk)
            if real < step and self.fixed:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], step - real, axis=0)])
            yield np.ascontiguousarray(chunk, dtype=np.float32), real

    def run(self, x, batch, names):
        """Every output named in `names`, over all of `x`, in `names` order."""
        require_outputs(self.path, self.output_names(), names)
        results = dict((n, []) for n in names)
        for chunk, real in self._chunks(x, batch):
            self.prepare(len(chunk))
            np.copyto(self.host_in, chunk.reshape(self.host_in.shape))
            self._submit()
            self.memory.sync(self.stream)
            for name, host, _, out_shape in self.reads:
                if name in results:
                    results[name].append(np.array(host, dtype=np.float32).reshape(out_shape)[:real])
        return [np.concatenate(results[n]) for n in names]

    def warm_up(self, x, batch, count):
        """`count` untimed batches of the first rows of `x`."""
        chunk = next(self._chunks(x[:self.engine_batch(batch)], batch))[0]
        self.prepare(len(chunk))
        np.copyto(self.host_in, chunk.reshape(self.host_in.shape))
        for _ in range(max(0, count)):
            self._submit()
        self.memory.sync(self.stream)

    def timed_pass(self, x, batch, warmup=1):
        """Milliseconds per batch over `x` from CUDA events around the copies in, the execution and the copies
        out; the input is staged into the pinned buffer before the start event, and `warmup` untimed batches
        go first (an engine's first call after another engine ran pays for cold caches)."""
        mem, times = self.memory, []
        self.warm_up(x, batch, warmup)
        for chunk, _ in self._chunks(x, batch):
            self.prepare(len(chunk))
            np.copyto(self.host_in, chunk.reshape(self.host_in.shape))
            mem.record(self.start, self.stream)
            self._submit()
            mem.record(self.end, self.stream)
            times.append(mem.elapsed_ms(self.start, self.end))
        return times

    def release(self):
        """Free this batch size's buffers (after the stream is done with them)."""
        if not self.keep:
            return
        self.memory.sync(self.stream)
        for allocation in self.keep:
            self.memory.free(allocation)
        for host in [self.host_in] + [r[1] for r in self.reads]:
            self.memory.free_host(host)
        self.keep, self.reads, self.batch = [], [], None
        self.host_in = self.dev_in = None

    def close(self):
        self.release()
        self.context = self.engine = None  # TensorRT objects go before the runtime


class OnnxSession(object):
    """An .onnx in ONNX Runtime (to try the bundle on a host): the same run / timed_pass / close as
    EngineSession, timed with perf_counter around session.run."""

    def __init__(self, path):
        import onnxruntime as ort

        # Q/DQ as float ops: on a host this .onnx predicts a GPU engine, whose INT8 sums do not saturate the way
        # a CPU's integer kernels can (edgerep's OrtRunner does the same).
        opts = ort.SessionOptions()
        opts.add_session_config_entry("session.disable_quant_qdq", "1")
        self.path = path
        self.session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name

    def output_names(self):
        return [o.name for o in self.session.get_outputs()]

    def run(self, x, batch, names):
        require_outputs(self.path, self.output_names(), names)
        chunks = [self.session.run(names, {self.input: x[i:i + batch]}) for i in range(0, len(x), batch)]
        return [np.concatenate([chunk[k] for chunk in chunks]) for k in range(len(names))]

    def warm_up(self, x, batch, count):
        for _ in range(max(0, count)):
            self.session.run(self.output_names()[:1], {self.input: x[:batch]})

    def timed_pass(self, x, batch, warmup=1):
        names = self.output_names()[:1]
        self.warm_up(x, batch, warmup)
        times = []
        for i in range(0, len(x), batch):
            chunk = x[i:i + batch]
            start = time.perf_counter()
            self.session.run(names, {self.input: chunk})
            times.append((time.perf_counter() - start) * 1000.0)
        return times

    def close(self):
        self.session = None


def open_session(engine, manifest, memory=None):
    """An OnnxSession for .onnx, else an EngineSession on the DLA core the engine was built for."""
    if engine.endswith(".onnx"):
        return OnnxSession(engine)
    entry, sidecar = engine_facts(engine, manifest)
    return EngineSession(engine, dla_core=engine_dla_core(entry, sidecar), memory=memory)


def run_onnx(path, x, batch, names):
    """Every output named in `names` of the .onnx at `path`, over all of `x`, in `names` order."""
    session = OnnxSession(path)
    try:
        return session.run(x, batch, names)
    finally:
        session.close()


def run_engine(path, x, batch, names, dla_core=None):
    """Every output named in `names` of the plan at `path`, over all of `x`, in `names` order."""
    session = EngineSession(path, dla_core=dla_core)
    try:
        return session.run(x, batch, names)
    finally:
        session.close()


def require_outputs(path, have, names):
    missing = [n for n in names if n not in have]
    if missing:
        raise SystemExit("%s: has no output %s of the reference (its outputs: %s); build it from this bundle's "
                         "ONNX" % (path, ", ".join(repr(n) for n in missing), ", ".join(have)))


def _trt_major_minor(trt):
    parts = trt.__version__.split(".")
    return int(parts[0]), int(parts[1])


class TensorIO(object):
    """TensorRT 8.5+ (and the only API in 10.x): I/O tensors by name."""

    def __init__(self, trt, engine, context):
        self.trt, self.engine, self.context = trt, engine, context
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.input = inputs[0]
        self.outputs = [n for n in names if n not in inputs]

    def name(self, output):
        return output

    def input_shape(self):
        return tuple(self.engine.get_tensor_shape(self.input))

    def set_input_shape(self, shape):
        """False when TensorRT refuses the shape (outside the optimization profile): IExecutionContext
        setInputShape "\\return True on success, false if the provided name does not map to an input tensor, or if
        some other error occurred" (include/NvInferRuntime.h, 8.5 - 10.x)."""
        return bool(self.context.set_input_shape(self.input, shape))

    def profile_shapes(self):
        """(min, opt, max) of the input in optimization profile 0, or None when TensorRT does not say."""
        try:
            return tuple(tuple(d) for d in self.engine.get_tensor_profile_shape(self.input, 0))
        except Exception:
            return None

    def shape_dtype(self, name):
        return tuple(self.context.get_tensor_shape(name)), self.trt.nptype(self.engine.get_tensor_dtype(name))

    def bind(self, name, pointer):
        self.context.set_tensor_address(name, int(pointer))

    def execute(self, handle):
        if not self.context.execute_async_v3(stream_handle=handle):
            raise SystemExit("TensorRT execute_async_v3 failed (see the messages above)")


class BindingIO(object):
    """TensorRT 8.0 - 8.4: binding indices and a pointer list (execute_async_v2)."""

    def __init__(self, trt, engine, context):
        self.trt, self.engine, self.context = trt, engine, context
        indices = list(range(engine.num_bindings))
        self.input = [i for i in indices if engine.binding_is_input(i)][0]
        self.outputs = [i for i in indices if not engine.binding_is_input(i)]
        self.pointers = [0] * engine.num_bindings

    def name(self, index):
        return self.engine.get_binding_name(index)

    def input_shape(self):
        return tuple(self.engine.get_binding_shape(self.input))

    def set_input_shape(self, shape):
        """False when TensorRT refuses the shape (IExecutionContext::setBindingDimensions returns false on an
        error, e.g. dimensions outside the profile: release/8.0 include/NvInferRuntime.h)."""
        return bool(self.context.set_binding_shape(self.input, shape))

    def profile_shapes(self):
        try:
            return tuple(tuple(d) for d in self.engine.get_profile_shape(0, self.input))
        except Exception:
            return None

    def shape_dtype(self, index):
        return tuple(self.context.get_binding_shape(index)), self.trt.nptype(self.engine.get_binding_dtype(index))

    def bind(self, index, pointer):
        self.pointers[index] = int(pointer)

    def execute(self, handle):
        if not self.context.execute_async_v2(bindings=self.pointers, stream_handle=handle):
            raise SystemExit("TensorRT execute_async_v2 failed (see the messages above)")


def metrics(ref, out, labels):
    """Accuracy of one output (the first: what the gates read), as edgerep.validate.accuracy_metrics has it."""
    ref = ref.reshape(len(ref), -1).astype(np.float64)
    out = out.reshape(len(out), -1).astype(np.float64)
    cos = (ref * out).sum(1) / np.maximum(np.linalg.norm(ref, axis=1) * np.linalg.norm(out, axis=1), 1e-12)
    result = {"max_abs_err": float(np.abs(ref - out).max()), "cosine": float(cos.mean()),
              "top1_agreement": float((ref.argmax(1) == out.argmax(1)).mean() * 100), "top1": None, "top1_drop": None}
    if labels is not None:
        result["top1"] = float((out.argmax(1) == labels).mean() * 100)
        result["top1_drop"] = float((ref.argmax(1) == labels).mean() * 100) - result["top1"]
    return result


def output_metrics(name, ref, out):
    """Tensor errors of one named output: {name, shape, max_abs_err, mean_abs_err, cosine, sqnr_db}."""
    if ref.shape != out.shape:
        raise SystemExit("output %r: the engine gives shape %s, the reference %s" % (name, list(out.shape),
                                                                                       list(ref.shape)))
    r = ref.reshape(len(ref), -1).astype(np.float64)
    o = out.reshape(len(out), -1).astype(np.float64)
    diff = o - r
    norms = np.linalg.norm(r, axis=1) * np.linalg.norm(o, axis=1)
    both_zero = (np.linalg.norm(r, axis=1) == 0) & (np.linalg.norm(o, axis=1) == 0)
    cos = np.where(norms > 0, (r * o).sum(1) / np.where(norms > 0, norms, 1.0), np.where(both_zero, 1.0, 0.0))
    noise, signal = float((diff * diff).sum()), float((r * r).sum())
    sqnr = None if noise == 0.0 else (float("-inf") if signal == 0.0 else float(10.0 * np.log10(signal / noise)))
    return {"name": name, "shape": list(ref.shape), "max_abs_err": float(np.abs(diff).max()) if diff.size else 0.0,
            "mean_abs_err": float(np.abs(diff).mean()) if diff.size else 0.0, "cosine": float(cos.mean()),
            "sqnr_db": sqnr}


def compare(names, refs, outs, labels):
    """The accuracy record: the first output's metrics (today's keys, what the gates read) and `outputs`, the
    errors of every output by name."""
    result = metrics(refs[0], outs[0].reshape(refs[0].shape), labels)
    result["outputs"] = [output_metrics(n, r, o) for n, r, o in zip(names, refs, outs)]
    return result


def reference_outputs(manifest, data):
    """(names, arrays) of the reference outputs in ONNX order: bundle.json's reference.outputs (schema 2), else
    the one "ref" of a schema-1 bundle, named by its output_name."""
    entries = (manifest.get("reference") or {}).get("outputs") or [
        {"name": manifest.get("output_name") or "output", "key": "ref"}]
    return [e["name"] for e in entries], [np.asarray(data[e["key"]], dtype=np.float32) for e in entries]


def gate_failures(result, gate):
    failures = []
    for key, name, worse in (("max_abs_err", "max_abs_err", lambda v, g: v > g), ("min_cosine", "cosine", lambda v, g: v < g),
                             ("min_top1_agreement", "top1_agreement", lambda v, g: v < g),
                             ("max_top1_drop", "top1_drop", lambda v, g: v > g)):
        limit, value = gate.get(key), result.get(name)
        if limit is not None and value is not None and worse(value, limit):
            failures.append("%s %.6g (gate %s %.6g)" % (name, value, key, limit))
    return failures


# Latency: edgerep's protocol (validate/timing.py) with what a device has. After every engine is checked (each
# loaded once, its buffers allocated once), the engines take turns over ROUNDS rounds (the order rotating each
# round), one pass of CALLS_PER_ROUND batches each, after `warmup` untimed batches per engine; a round's figure
# is the median time per batch of that pass, from CUDA events around the copies in, the execution and the copies
# out (deserialization, allocation and staging the input into pinned memory are outside). The p50 is the median
# of the round medians, `spread` their range, and `round_p50` lets recommend.py put an interval on a speed-up:
# rounds of two engines ran seconds apart, so the device's drift (clocks, heat) cancels. It includes the copies,
# the same for every engine, so it ranks engines fairly; trtexec's "GPU Compute Time" leaves them out.
ROUNDS = 5
CALLS_PER_ROUND = 20  # batches per engine per round, at the deploy batch size
TURN_WARMUP = 1  # untimed batches at the start of every turn (the other engine just ran)


def timing_input(x, engine_batch, profile):
    """(input, batch) the rounds time: the first reference sample repeated to CALLS_PER_ROUND batches of the
    engine's fixed batch, or of the profile's deploy batch (recommend.py compares latency there) when it is dynamic."""
    latency = (profile or {}).get("latency") or {}
    batch = engine_batch or int(latency.get("deploy_batch") or (latency.get("batch_sizes") or [1])[0])
    return np.ascontiguousarray(np.repeat(x[:1], batch * CALLS_PER_ROUND, axis=0)), batch


def precision_of(engine):
    base = os.path.basename(engine)
    return "int8" if ("int8" in base or "qdq" in base) else ("fp16" if "fp16" in base else "fp32")


def check_one(engine, session, manifest, x, names, refs, labels, batch):
    """The engine's accuracy and gate (its latency comes from time_rounds, with the others)."""
    outs = session.run(x, batch, names)
    result = compare(names, refs, outs, labels)
    precision = precision_of(engine)
    gate = ((manifest.get("profile") or {}).get("gates") or {}).get(precision) or {}
    failures = gate_failures(result, gate)
    return {"engine": engine, "backend": "onnxruntime" if engine.endswith(".onnx") else "tensorrt",
            "precision": precision, "status": "ok", "accuracy": result, "passed": not failures,
            "reason": "; ".join(failures) or None, "latency_by_batch": []}


def time_rounds(records, sessions, x, batch, rounds=ROUNDS, warmup=10):
    """Every engine's latency_by_batch, from `rounds` interleaved passes (see ROUNDS). `sessions`: engine ->
    its open session (EngineSession or OnnxSession), loaded once by the caller; `warmup` untimed batches per
    engine before the first round."""
    engines = [r["engine"] for r in records]
    for engine in engines:
        sessions[engine].warm_up(x, batch, warmup)
    round_p50 = dict((e, []) for e in engines)
    for k in range(rounds):
        for engine in engines[k % len(engines):] + engines[:k % len(engines)]:
            times = sorted(sessions[engine].timed_pass(x, batch, warmup=TURN_WARMUP))
            round_p50[engine].append(times[len(times) // 2])
    for r in records:
        ms = round_p50[r["engine"]]
        r["latency_by_batch"] = [{"batch_size": batch, "p50": sorted(ms)[len(ms) // 2], "round_p50": ms,
                                  "spread": [min(ms), max(ms)], "rounds": len(ms),
                                  "timer": "cuda-events" if r["backend"] == "tensorrt" else "perf_counter",
                                  "timed": "copies in + execution + copies out"}]
    return records


def recommendation(records, manifest, here):
    """The engine to ship, by recommend.py's rule (carried in the bundle); None when the file is missing."""
    if not os.path.isfile(os.path.join(here, "recommend.py")):
        return None
    sys.path.insert(0, here)
    import recommend

    rec = recommend.recommend_on_device(records, manifest.get("profile") or {})
    return rec, recommend.format_recommendation(rec)


# --- the device: power mode and clocks (recorded with every latency), and the doctor --------------------------

TEGRA_RELEASE = "/etc/nv_tegra_release"
TRTEXEC_JETPACK = "/usr/src/tensorrt/bin/trtexec"
UNKNOWN = "unknown"


def run_command(args, timeout=20):
    """(exit code, stdout+stderr) of a command, or None when it is not installed or does not answer."""
    try:
        proc = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True,
                              timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.returncode, proc.stdout


def read_text(path):
    try:
        with open(path) as f:
            return f.read()
    except (OSError, UnicodeDecodeError):
        return None


def parse_nvpmodel(text):
    """`nvpmodel -q` -> {"mode": name, "id": int or None}: it prints "NV Power Mode: <name>" and the mode's id
    on the next line (as jetson_stats' jtop/core/nvpmodel.py reads it). None when there is no such line."""
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    for i, line in enumerate(lines):
        m = re.match(r"NV Power Mode\s*:\s*(.+)$", line)
        if m:
            nxt = lines[i + 1] if i + 1 < len(lines) else ""
            return {"mode": m.group(1).strip(), "id": int(nxt) if nxt.isdigit() else None}
    return None


def clocks_locked(ranges):
    """Whether jetson_clocks is on, from (name, min, max) frequency ranges of the GPU (devfreq min_freq /
    max_freq) and the CPUs (cpufreq scaling_min_freq / scaling_max_freq): jetson_clocks pins every minimum to its
    maximum, so True when all are pinned, False when one is not, UNKNOWN when there are none to read."""
    usable = [(n, lo, hi) for n, lo, hi in ranges if lo is not None and hi is not None]
    if not usable:
        return UNKNOWN
    return all(lo >= hi for _, lo, hi in usable)


def _int_file(path):
    text = read_text(path)
    try:
        return int(text.strip()) if text is not None else None
    except ValueError:
        return None


def read_clock_ranges(root="/sys"):
    """(name, min, max) of the GPU's devfreq nodes (names with gpu, gv11b, ga10b, gp10b or gm20b: the Jetson
    GPUs) and of every CPU's cpufreq policy. Readable without root, unlike `jetson_clocks --show`."""
    found = []
    devfreq = os.path.join(root, "class", "devfreq")
    for name in sorted(os.listdir(devfreq)) if os.path.isdir(devfreq) else []:
        if re.search(r"gpu|gv11b|ga10b|gp10b|gm20b", name):
            node = os.path.join(devfreq, name)
            found.append((name, _int_file(os.path.join(node, "min_freq")), _int_file(os.path.join(node, "max_freq"))))
    cpus = os.path.join(root, "devices", "system", "cpu")
    for name in sorted(os.listdir(cpus)) if os.path.isdir(cpus) else []:
        node = os.path.join(cpus, name, "cpufreq")
        if re.match(r"cpu\d+$", name) and os.path.isdir(node):
            found.append((name, _int_file(os.path.join(node, "scaling_min_freq")),
                          _int_file(os.path.join(node, "scaling_max_freq"))))
    return found


def power_state(is_jetson, nvpmodel_output, clock_ranges):
    """What the latencies depend on: {"nvpmodel": {"mode", "id"} or UNKNOWN, "jetson_clocks": bool or UNKNOWN}.
    Off a Jetson both are UNKNOWN (not an error)."""
    if not is_jetson:
        return {"nvpmodel": UNKNOWN, "jetson_clocks": UNKNOWN}
    mode = parse_nvpmodel(nvpmodel_output[1]) if nvpmodel_output and nvpmodel_output[0] == 0 else None
    return {"nvpmodel": mode or UNKNOWN, "jetson_clocks": clocks_locked(clock_ranges)}


def device_state():
    """power_state of this machine."""
    jetson = os.path.isfile(TEGRA_RELEASE)
    return power_state(jetson, run_command(["nvpmodel", "-q"]) if jetson else None,
                       read_clock_ranges() if jetson else [])


def parse_tegra_release(text):
    """The L4T release (major, minor, patch) from /etc/nv_tegra_release's first line, which Jetson Linux writes
    as "# R35 (release), REVISION: 4.1, GCID: ..., BOARD: ..., EABI: aarch64, DATE: ..." (the same fields
    NVIDIA's l4t_version.sh and jetson_stats read). None when it is not that line."""
    m = re.search(r"#\s*R(\d+)\s*\(release\),\s*REVISION:\s*(\d+)(?:\.(\d+))?", text or "")
    if not m:
        return None
    return int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)


def parse_deb_version(text):
    """(major, minor, patch) from a Debian version such as nvidia-l4t-core's "35.4.1-20230801124926" or
    libnvinfer-bin's "8.5.2-1+cuda11.4"; None when it does not start with numbers."""
    m = re.match(r"\s*(?:\d+:)?(\d+)\.(\d+)(?:\.(\d+))?", text or "")
    return (int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)) if m else None


# L4T release -> (JetPack, the TensorRT it ships), after NVIDIA's JetPack archive (developer.nvidia.com
# /embedded/jetpack-archive); not re-read for this table, so a mismatch it finds is a warning: the blocking
# TensorRT checks read the installed versions. Releases not listed are reported by their L4T number.
JETPACK_OF_L4T = [
    ((32, 6, 1), "4.6", "8.0.1"), ((32, 7, 1), "4.6.1", "8.2.1"), ((32, 7, 2), "4.6.2", "8.2.1"),
    ((32, 7, 3), "4.6.3", "8.2.1"), ((32, 7, 4), "4.6.4", "8.2.1"), ((32, 7, 5), "4.6.5", "8.2.1"),
    ((32, 7, 6), "4.6.6", "8.2.1"),
    ((35, 1, 0), "5.0.2", "8.4.1"), ((35, 2, 1), "5.1", "8.5.2"), ((35, 3, 1), "5.1.1", "8.5.2"),
    ((35, 4, 1), "5.1.2", "8.5.2"), ((35, 5, 0), "5.1.3", "8.5.2"), ((35, 6, 0), "5.1.4", "8.5.2"),
    ((36, 3, 0), "6.0", "8.6.2"), ((36, 4, 0), "6.1", "10.3.0"), ((36, 4, 3), "6.2", "10.3.0"),
]


def jetpack_of(l4t):
    """(JetPack, TensorRT) of an L4T release, or None."""
    for release, jetpack, trt in JETPACK_OF_L4T:
        if release == tuple(l4t):
            return jetpack, trt
    return None


def version_fits(spec, installed):
    """The profile's TensorRT prefix ("8.5", "10") against an installed version ("8.5.2.2"), component-wise:
    edgerep.backends.tensorrt.versions.version_matches, which build.sh's WANT_MAJOR/WANT_MINOR test repeats."""
    want = [p for p in str(spec).split(".") if p.isdigit()]
    have = [p for p in str(installed).split(".")]
    return bool(want) and have[:len(want[:2])] == want[:2]


def parse_meminfo(text):
    """/proc/meminfo -> {field: kB}."""
    out = {}
    for line in (text or "").splitlines():
        m = re.match(r"(\w+):\s+(\d+)", line)
        if m:
            out[m.group(1)] = int(m.group(2))
    return out


SMALL_BOARD_KB = 6 * 1024 * 1024  # 4 GB boards (Nano, Orin Nano 4GB) report about 3.9 GB MemTotal
SWAP_WANTED_KB = 4 * 1024 * 1024
ADD_SWAP = ("sudo fallocate -l 4G /swapfile && sudo chmod 600 /swapfile && sudo mkswap /swapfile && "
            "sudo swapon /swapfile")


def doctor_findings(facts):
    """One (level, topic, message) per check; level "ok", "info", "warn" or "block" (a build on this device
    will not work until it is fixed). `facts`: what gather_facts read (file texts, command outputs, versions),
    so the checks run anywhere."""
    found = []

    def add(level, topic, message):
        found.append((level, topic, message))

    manifest = facts.get("manifest")
    profile = (manifest or {}).get("profile") or {}
    trt_profile = profile.get("tensorrt") or {}
    spec = (manifest or {}).get("trt_version_spec") or trt_profile.get("version")
    if manifest is None:
        add("block", "bundle", "bundle.json not found or unreadable beside check_engine.py; run the doctor inside "
                               "the bundle folder edgerep wrote")
    else:
        add("ok", "bundle", "profile %s: TensorRT %s, JetPack %s" % (profile.get("name"), spec,
                                                                     trt_profile.get("jetpack") or "-"))
    # TensorRT: the Python module (what check_engine.py runs engines with) and the system libraries (trtexec)
    py_trt, deb_trt = facts.get("tensorrt_version"), facts.get("libnvinfer_version")
    if py_trt:
        if spec and not version_fits(spec, py_trt):
            add("block", "tensorrt", "TensorRT %s here, the profile is made for %s: engines must be built by the "
                                     "TensorRT that runs them; use the profile of this device (edgerep targets) "
                                     "or the JetPack whose TensorRT is %s" % (py_trt, spec, spec))
        else:
            add("ok", "tensorrt", "Python tensorrt %s (%s)" % (py_trt, facts.get("tensorrt_file") or "?"))
        where = facts.get("tensorrt_file") or ""
        if facts.get("is_jetson") and "site-packages" in where and facts.get("venv"):
            add("warn", "tensorrt", "tensorrt comes from %s, a pip wheel in a virtualenv: on a Jetson use "
                                    "JetPack's python3-libnvinfer (pip uninstall tensorrt; make the venv with "
                                    "--system-site-packages)" % where)
    else:
        hint = "JetPack: sudo apt install python3-libnvinfer"
        if facts.get("venv"):
            hint += "; this is a virtualenv: make it with --system-site-packages to see JetPack's module"
        add("warn", "tensorrt", "the tensorrt Python module is not usable here (%s): check_engine.py cannot "
                                "run engines; %s" % (facts.get("tensorrt_error") or "not installed", hint))
    if deb_trt and spec and not version_fits(spec, deb_trt):
        add("block", "tensorrt", "libnvinfer %s is installed (trtexec's TensorRT), the profile is made for %s: "
                                 "build.sh will refuse it; use the profile of this device" % (deb_trt, spec))
    # JetPack / L4T
    l4t = parse_tegra_release(facts.get("tegra_release")) or parse_deb_version(facts.get("l4t_core_version"))
    if l4t is None:
        add("info", "jetpack", "not a Jetson (no %s, no nvidia-l4t-core package)" % TEGRA_RELEASE)
    else:
        jp = jetpack_of(l4t)
        l4t_text = "L4T R%d.%d.%d" % tuple(l4t)
        want_jp = trt_profile.get("jetpack")
        if jp is None:
            add("info", "jetpack", "%s (not in this script's JetPack table)" % l4t_text)
        elif spec and not version_fits(spec, jp[1]):
            add("warn", "jetpack", "JetPack %s (%s) ships TensorRT %s, the profile is made for TensorRT %s "
                                    "(JetPack %s): use the profile of this JetPack" % (jp[0], l4t_text, jp[1], spec,
                                                                                      want_jp or "-"))
        else:
            add("ok", "jetpack", "JetPack %s (%s), TensorRT %s" % (jp[0], l4t_text, jp[1]))
    # trtexec: what build.sh builds with
    if facts.get("trtexec"):
        add("ok", "trtexec", facts["trtexec"])
    else:
        add("block", "trtexec", "trtexec not found on PATH nor at %s: build.sh needs it; install JetPack's "
                                "TensorRT (sudo apt install nvidia-jetpack), or set TRTEXEC=/path/to/trtexec"
                                % TRTEXEC_JETPACK)
    # CUDA and a Python binding for it
    cuda = facts.get("cuda_version")
    bindings = [b for b in ("pycuda", "cuda-python") if (facts.get("bindings") or {}).get(b)]
    if bindings:
        add("ok", "cuda", "CUDA %s; Python binding: %s" % (cuda or UNKNOWN, ", ".join(bindings)))
    else:
        hint = CUDA_INSTALL_HINT
        if cuda and cuda.split(".")[0].isdigit() and int(cuda.split(".")[0]) < 11:
            hint = ("CUDA %s has no cuda-python wheel: export PATH=/usr/local/cuda/bin:$PATH, then pip3 install "
                    "pycuda" % cuda)
        elif facts.get("nvcc_installed") and not facts.get("nvcc_on_path"):
            hint += " (nvcc is in /usr/local/cuda/bin but not on PATH: pycuda's build will not find it)"
        add("warn", "cuda", "CUDA %s; neither pycuda nor cuda-python is installed: check_engine.py cannot run "
                            "engines; %s" % (cuda or UNKNOWN, hint))
    # memory: TensorRT's builder takes the workspace plus the network; 4 GB boards run out without swap
    mem = parse_meminfo(facts.get("meminfo"))
    if "MemTotal" not in mem:
        add("info", "memory", "%s unreadable: free memory unknown" % "/proc/meminfo")
    else:
        total, avail = mem["MemTotal"], mem.get("MemAvailable", mem.get("MemFree", 0))
        swap, swap_free = mem.get("SwapTotal", 0), mem.get("SwapFree", 0)
        need = (int(trt_profile.get("workspace_mb") or 0) + 512) * 1024
        text = "%.1f GB RAM, %.1f GB available, swap %.1f GB (%.1f GB free)" % (
            total / 1048576.0, avail / 1048576.0, swap / 1048576.0, swap_free / 1048576.0)
        if avail + swap_free < need:
            add("block", "memory", "%s: less than the build's workspace (%d MB) + 512 MB; close programs or add "
                                   "swap: %s" % (text, int(trt_profile.get("workspace_mb") or 0), ADD_SWAP))
        elif total < SMALL_BOARD_KB and swap < SWAP_WANTED_KB:
            add("warn", "memory", "%s: 4 GB boards run out of memory while TensorRT builds; add swap: %s"
                % (text, ADD_SWAP))
        else:
            add("ok", "memory", text)
    # DLA
    core = trt_profile.get("dla_core")
    if core is not None:
        count = facts.get("dla_cores")
        if count is None:
            add("info", "dla", "the profile builds on DLA core %s; DLA cores here unknown (needs tensorrt and "
                               "the GPU)" % core)
        elif int(count) <= int(core):
            add("block", "dla", "the profile builds on DLA core %s, this device has %d DLA core(s): use a GPU "
                                "profile of this device" % (core, int(count)))
        else:
            add("ok", "dla", "%d DLA core(s); the profile uses core %s" % (int(count), core))
    # power mode: latencies depend on it, so every check records it
    state = facts.get("power") or {}
    mode, clocks = state.get("nvpmodel", UNKNOWN), state.get("jetson_clocks", UNKNOWN)
    if mode == UNKNOWN:
        add("info", "power", "power mode unknown (no nvpmodel); jetson_clocks %s" % clocks)
    else:
        add("info", "power", "power mode %s (id %s), jetson_clocks %s: latencies hold for this mode only; "
                             "`sudo nvpmodel -m <id>` and `sudo jetson_clocks` fix them for a benchmark"
            % (mode.get("mode"), mode.get("id"), "on" if clocks is True else ("off" if clocks is False else clocks)))
    return found


def _module_facts():
    """tensorrt's version and file (or the import error), the CUDA bindings installed, DLA cores."""
    import importlib

    out = {"bindings": {}}
    try:
        trt = importlib.import_module("tensorrt")
        if getattr(trt, "__version__", None):  # tensorrt-stubs imports as an empty namespace package
            out["tensorrt_version"] = trt.__version__
            out["tensorrt_file"] = getattr(trt, "__file__", None)
            try:
                out["dla_cores"] = int(trt.Builder(trt.Logger(trt.Logger.ERROR)).num_DLA_cores)
            except Exception:
                out["dla_cores"] = None
        else:
            out["tensorrt_error"] = "a tensorrt package without __version__ (tensorrt-stubs?)"
    except Exception as exc:
        out["tensorrt_error"] = "%s: %s" % (type(exc).__name__, str(exc)[:160])
    import importlib.util

    for name, modules in (("pycuda", ("pycuda.driver",)), ("cuda-python", ("cuda.bindings.runtime", "cuda.cudart"))):
        for module in modules:
            try:
                if importlib.util.find_spec(module) is not None:
                    out["bindings"][name] = module
                    break
            except (ImportError, ValueError):
                continue
    return out


def gather_facts(here):
    """What doctor_findings reads, from this machine."""
    facts = {"is_jetson": os.path.isfile(TEGRA_RELEASE),
             "venv": sys.prefix != getattr(sys, "base_prefix", sys.prefix)}
    text = read_text(os.path.join(here, "bundle.json"))
    try:
        facts["manifest"] = json.loads(text) if text else None
    except ValueError:
        facts["manifest"] = None
    facts["tegra_release"] = read_text(TEGRA_RELEASE)
    for key, package in (("l4t_core_version", "nvidia-l4t-core"), ("libnvinfer_version", "libnvinfer-bin")):
        out = run_command(["dpkg-query", "-W", "-f=${Version}", package])
        facts[key] = out[1].strip() if out and out[0] == 0 and out[1].strip() else None
    facts["meminfo"] = read_text("/proc/meminfo")
    found = os.environ.get("TRTEXEC") or shutil.which("trtexec")
    facts["trtexec"] = found or (TRTEXEC_JETPACK if os.access(TRTEXEC_JETPACK, os.X_OK) else None)
    cuda = read_text("/usr/local/cuda/version.json")
    try:
        facts["cuda_version"] = json.loads(cuda)["cuda"]["version"] if cuda else None
    except (ValueError, KeyError, TypeError):
        facts["cuda_version"] = None
    if not facts["cuda_version"]:  # CUDA 10.2 (JetPack 4) writes version.txt: "CUDA Version 10.2.300"
        m = re.search(r"CUDA Version\s+([\d.]+)", read_text("/usr/local/cuda/version.txt") or "")
        facts["cuda_version"] = m.group(1) if m else None
    facts["nvcc_on_path"] = shutil.which("nvcc")
    facts["nvcc_installed"] = os.path.isfile("/usr/local/cuda/bin/nvcc")
    facts.update(_module_facts())
    facts["power"] = device_state()
    return facts


def doctor(here, as_json=False, out=sys.stdout):
    """`--doctor`: one line per finding; exit 1 when one blocks a build here."""
    findings = doctor_findings(gather_facts(here))
    if as_json:
        out.write(json.dumps([{"level": lv, "topic": t, "message": m} for lv, t, m in findings], indent=2) + "\n")
    else:
        for level, topic, message in findings:
            out.write("%-5s %-8s %s\n" % (level, topic, message))
    return 1 if any(level == "block" for level, _, _ in findings) else 0


USAGE = ("usage: python3 check_engine.py ENGINE [ENGINE ...] (.engine/.plan files, or .onnx to try on a host)\n"
         "       python3 check_engine.py --doctor [--json]   (is this device ready for the bundle?)\n")


def main(argv):
    here = os.path.dirname(os.path.abspath(__file__))
    if "--doctor" in argv[1:]:
        return doctor(here, as_json="--json" in argv[1:])
    if len(argv) < 2:
        sys.stderr.write(USAGE)
        return 2
    engines = []
    for name in argv[1:]:
        engine = name if os.path.isabs(name) or os.path.exists(name) else os.path.join(here, name)
        if not os.path.isfile(engine):
            sys.stderr.write("error: %s: file not found; pass an engine built by build.sh\n" % name)
            return 2
        engines.append(engine)
    with open(os.path.join(here, "bundle.json")) as f:
        manifest = json.load(f)
    data = np.load(os.path.join(here, "reference.npz"))
    x = data["x"]
    names, refs = reference_outputs(manifest, data)
    labels = data["y"] if "y" in data.files else None
    batch = check_batch(manifest)
    dims = (manifest.get("input") or {}).get("shape") or [1]
    fixed = dims[0] if isinstance(dims[0], int) and dims[0] > 0 else None
    latency = (manifest.get("profile") or {}).get("latency") or {}
    sessions = {}
    memory = None
    try:
        for engine in engines:  # each engine loaded once, for its check and its timing
            if not engine.endswith(".onnx") and memory is None:
                memory = device_memory()
            sessions[engine] = open_session(engine, manifest, memory)
        records = [check_one(e, sessions[e], manifest, x, names, refs, labels, batch) for e in engines]
        timed_x, timed_batch = timing_input(x, fixed, manifest.get("profile"))
        time_rounds(records, sessions, timed_x, timed_batch, warmup=int(latency.get("warmup") or 10))
    finally:
        for session in sessions.values():
            session.close()
    state = device_state()
    for record in records:
        record["device"] = state
    if len(records) == 1:
        print(json.dumps(records[0], indent=2))
    else:
        found = recommendation(records, manifest, here)
        print(json.dumps({"engines": records, "recommended": found[0] if found else None, "device": state},
                         indent=2))
        if found:
            sys.stderr.write(found[1] + "\n")
    return 0 if all(r["passed"] for r in records) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
