#!/usr/bin/env python3
"""Check a TensorRT engine against this bundle's reference, on a Jetson too old for edgerep itself.

edgerep needs Python >= 3.10; JetPack 4.x ships Python 3.6 and JetPack 5.x Python 3.8 with TensorRT 8.x.
This file is copied into every device bundle and needs only numpy, tensorrt (from JetPack) and pycuda:
    python3 check_engine.py model.int8.engine        # or model.onnx with onnxruntime, to try it on a host
    python3 check_engine.py model.fp16.engine model.int8.engine    # several: then the one to ship here
It prints the same accuracy figures as `edgerep validate --bundle` (max abs error, cosine, top-1 agreement,
labelled top-1, of the first output; and per output, by name, for a model with several), the time per batch
(the engines timed in interleaved rounds, as edgerep times them), and exits 1 when an engine misses the profile's gate recorded in bundle.json.
Every output is matched to the reference by its ONNX name (bundle.json's reference.outputs), never by position. With several engines it ends with the engine to ship on this device, by the rule
of recommend.py (edgerep's own, copied into the bundle beside this file).
Written for Python 3.6: no f-string '=' specifiers, no walrus, no `X | Y` annotations.
"""
import json
import os
import sys
import time

import numpy as np


def run_onnx(path, x, batch, names, times=None):
    """Every output named in `names`, over all of `x`, in `names` order; `times`: a list that gets each batch's
    seconds (the run alone)."""
    import onnxruntime as ort

    # Q/DQ as float ops: on a host this .onnx predicts a GPU engine, whose INT8 sums do not saturate the way
    # a CPU's integer kernels can (edgerep's OrtRunner does the same).
    opts = ort.SessionOptions()
    opts.add_session_config_entry("session.disable_quant_qdq", "1")
    session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    require_outputs(path, [o.name for o in session.get_outputs()], names)
    name = session.get_inputs()[0].name
    chunks = []
    for i in range(0, len(x), batch):
        start = time.perf_counter()
        chunks.append(session.run(names, {name: x[i:i + batch]}))
        if times is not None:
            times.append(time.perf_counter() - start)
    return [np.concatenate([chunk[k] for chunk in chunks]) for k in range(len(names))]


def require_outputs(path, have, names):
    missing = [n for n in names if n not in have]
    if missing:
        raise SystemExit("%s: has no output %s of the reference (its outputs: %s); build it from this bundle's "
                         "ONNX" % (path, ", ".join(repr(n) for n in missing), ", ".join(have)))


def _trt_major_minor(trt):
    parts = trt.__version__.split(".")
    return int(parts[0]), int(parts[1])


def run_engine(path, x, batch, names, times=None):
    """Run the plan with pycuda buffers; every output named in `names`, over all of `x`, in `names` order.
    `times`: a list that gets each batch's seconds (copies in, execute, copies out; not the loading).
    The tensor API (num_io_tensors, get_tensor_name/mode,
    set_input_shape, set_tensor_address, execute_async_v3) is bound from TensorRT 8.5 and is the only one in
    10.x (NVIDIA/TensorRT release/8.5 and release/10.3 python/src/infer/pyCore.cpp); the bindings API
    (num_bindings, binding_is_input, set_binding_shape, execute_async_v2) is what 8.0 - 8.4 have (JetPack 4,
    5.0.2) and was removed in 10.0 (release/10.0 pyCore.cpp binds no *binding* method)."""
    import pycuda.autoinit  # noqa: F401  (creates the CUDA context)
    import pycuda.driver as cuda
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    # A plain reference keeps the runtime alive as long as the engine (TensorRT's context managers are
    # deprecated no-ops from 8.0 on: release/8.0 python/packaging/tensorrt/__init__.py, common_exit).
    runtime = trt.Runtime(logger)
    with open(path, "rb") as f:
        engine = runtime.deserialize_cuda_engine(f.read())
    if engine is None:
        raise SystemExit("%s: TensorRT could not load it (built by another TensorRT version or GPU?)" % path)
    context = engine.create_execution_context()
    io = TensorIO(trt, engine, context) if _trt_major_minor(trt) >= (8, 5) else BindingIO(trt, engine, context)
    by_name = dict((io.name(o), o) for o in io.outputs)
    require_outputs(path, list(by_name), names)
    shape = io.input_shape()
    engine_batch = shape[0] if shape[0] > 0 else batch
    stream = cuda.Stream()
    # Every device allocation stays referenced here until the engine is done: pycuda frees a DeviceAllocation
    # when its Python object is collected, so keeping only int(pointer) would hand TensorRT freed memory.
    keep = []
    results = dict((n, []) for n in names)
    for start in range(0, len(x), engine_batch):
        chunk = x[start:start + engine_batch]
        real = len(chunk)
        if real < engine_batch:  # a fixed-batch engine: pad the last batch, keep the real rows
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], engine_batch - real, axis=0)])
        chunk = np.ascontiguousarray(chunk, dtype=np.float32)
        if shape[0] <= 0:
            io.set_input_shape(chunk.shape)
        host_in = cuda.pagelocked_empty(chunk.size, np.float32)
        host_in[:] = chunk.ravel()
        dev_in = cuda.mem_alloc(host_in.nbytes)
        keep.append(dev_in)
        io.bind(io.input, dev_in)
        reads = []  # (name, host buffer, device buffer, shape) of the outputs compared; the others get memory only
        for output in io.outputs:
            out_shape, out_dtype = io.shape_dtype(output)
            host_out = cuda.pagelocked_empty(max(int(np.prod(out_shape)), 1), out_dtype)
            dev_out = cuda.mem_alloc(host_out.nbytes)
            keep.append(dev_out)
            io.bind(output, dev_out)
            if io.name(output) in results:
                reads.append((io.name(output), host_out, dev_out, out_shape))
        start = time.perf_counter()
        cuda.memcpy_htod_async(dev_in, host_in, stream)
        io.execute(stream)
        for _, host_out, dev_out, _ in reads:
            cuda.memcpy_dtoh_async(host_out, dev_out, stream)
        stream.synchronize()
        if times is not None:
            times.append(time.perf_counter() - start)
        for name, host_out, _, out_shape in reads:
            size = int(np.prod(out_shape))
            results[name].append(np.array(host_out[:size], dtype=np.float32).reshape(out_shape)[:real])
        for allocation in keep:  # this batch is finished: its buffers may go now
            allocation.free()
        del keep[:]
    return [np.concatenate(results[n]) for n in names]


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
        self.context.set_input_shape(self.input, shape)

    def shape_dtype(self, name):
        return tuple(self.context.get_tensor_shape(name)), self.trt.nptype(self.engine.get_tensor_dtype(name))

    def bind(self, name, allocation):
        self.context.set_tensor_address(name, int(allocation))

    def execute(self, stream):
        if not self.context.execute_async_v3(stream_handle=stream.handle):
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
        self.context.set_binding_shape(self.input, shape)

    def shape_dtype(self, index):
        return tuple(self.context.get_binding_shape(index)), self.trt.nptype(self.engine.get_binding_dtype(index))

    def bind(self, index, allocation):
        self.pointers[index] = int(allocation)

    def execute(self, stream):
        if not self.context.execute_async_v2(bindings=self.pointers, stream_handle=stream.handle):
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


# Latency: edgerep's protocol (validate/timing.py) with what a device has. After every engine is checked, the
# engines take turns over ROUNDS rounds (the order rotating each round), one pass over the reference each; a
# round's figure is the median time per batch of that pass (copies in, execute, copies out; loading excluded).
# The p50 is the median of the round medians, `spread` their range, and `round_p50` lets recommend.py put an
# interval on a speed-up: rounds of two engines ran seconds apart, so the device's drift (clocks, heat) cancels.
# It includes the host copies, the same for every engine, so it ranks engines fairly; it is not trtexec's
# GPU-only latency.
ROUNDS = 5
CALLS_PER_ROUND = 20  # batches per engine per round, at the deploy batch size


def timing_input(x, engine_batch, profile):
    """(input, batch) the rounds time: the first reference sample repeated to CALLS_PER_ROUND batches of the
    engine's fixed batch, or of the profile's deploy batch (recommend.py compares latency there) when it is dynamic."""
    latency = (profile or {}).get("latency") or {}
    batch = engine_batch or int(latency.get("deploy_batch") or (latency.get("batch_sizes") or [1])[0])
    return np.ascontiguousarray(np.repeat(x[:1], batch * CALLS_PER_ROUND, axis=0)), batch


def runner_of(engine):
    return run_onnx if engine.endswith(".onnx") else run_engine


def check_one(engine, manifest, x, names, refs, labels, batch):
    """The engine's accuracy and gate (its latency comes from time_rounds, with the others)."""
    outs = runner_of(engine)(engine, x, batch, names)
    result = compare(names, refs, outs, labels)
    base = os.path.basename(engine)
    precision = "int8" if ("int8" in base or "qdq" in base) else ("fp16" if "fp16" in base else "fp32")
    gate = ((manifest.get("profile") or {}).get("gates") or {}).get(precision) or {}
    failures = gate_failures(result, gate)
    return {"engine": engine, "backend": "onnxruntime" if engine.endswith(".onnx") else "tensorrt",
            "precision": precision, "status": "ok", "accuracy": result, "passed": not failures,
            "reason": "; ".join(failures) or None, "latency_by_batch": []}


def time_rounds(records, x, names, batch, rounds=ROUNDS):
    """Every engine's latency_by_batch, from `rounds` interleaved passes (see ROUNDS)."""
    round_p50 = dict((r["engine"], []) for r in records)
    engines = [r["engine"] for r in records]
    for k in range(rounds):
        for engine in engines[k % len(engines):] + engines[:k % len(engines)]:
            times = []
            runner_of(engine)(engine, x, batch, names, times)
            round_p50[engine].append(sorted(times)[len(times) // 2] * 1000.0)
    for r in records:
        ms = round_p50[r["engine"]]
        r["latency_by_batch"] = [{"batch_size": batch, "p50": sorted(ms)[len(ms) // 2], "round_p50": ms,
                                  "spread": [min(ms), max(ms)], "rounds": len(ms)}]
    return records


def recommendation(records, manifest, here):
    """The engine to ship, by recommend.py's rule (carried in the bundle); None when the file is missing."""
    if not os.path.isfile(os.path.join(here, "recommend.py")):
        return None
    sys.path.insert(0, here)
    import recommend

    rec = recommend.recommend_on_device(records, manifest.get("profile") or {})
    return rec, recommend.format_recommendation(rec)


def main(argv):
    if len(argv) < 2:
        sys.stderr.write("usage: python3 check_engine.py ENGINE [ENGINE ...] (.engine/.plan files, or .onnx to try "
                         "on a host)\n")
        return 2
    here = os.path.dirname(os.path.abspath(__file__))
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
    dims = (manifest.get("input") or {}).get("shape") or [1]
    batch = dims[0] if isinstance(dims[0], int) and dims[0] > 0 else 32
    records = [check_one(engine, manifest, x, names, refs, labels, batch) for engine in engines]
    fixed = dims[0] if isinstance(dims[0], int) and dims[0] > 0 else None
    timed_x, timed_batch = timing_input(x, fixed, manifest.get("profile"))
    time_rounds(records, timed_x, names, timed_batch)
    if len(records) == 1:
        print(json.dumps(records[0], indent=2))
    else:
        found = recommendation(records, manifest, here)
        print(json.dumps({"engines": records, "recommended": found[0] if found else None}, indent=2))
        if found:
            sys.stderr.write(found[1] + "\n")
    return 0 if all(r["passed"] for r in records) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
