"""The device side, on a machine without a GPU: the bundle's check_engine.py (timing, DLA core, check batch,
refused shapes, pycuda or cuda-python, the doctor), and the runner's and calibrator's CUDA adapter.

TensorRT and the GPU are stood in for by a small recording engine (`FakeTRT`) and a device memory on a
virtual clock (`ClockMemory`): they say nothing about TensorRT, they let the tests see what our code does and
when (what is inside the timed region, what happens before deserializing). Every TensorRT name the stand-in
is asked for is checked against the names NVIDIA's bindings of that version bind (data/names-*.json).
cuda-python is the real module (cuda-bindings, installed here): its calls fail without a driver, which shows
that the adapter picked it and called it as NVIDIA's samples do; a proxy over the real module checks that every
name the adapters call exists, with the number of arguments its signature has.
"""
from __future__ import annotations

import ctypes
import json
import re
import runpy
import shutil
import subprocess
import sys
import types
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from tests.paths import REPO

TRT_DATA = REPO / "edgerep" / "backends" / "tensorrt" / "data"
CHECK = TRT_DATA / "check_engine.py"
SAMPLE = (1, 8, 8)


@pytest.fixture(scope="module")
def ce() -> dict:
    """check_engine.py's functions, as the bundle carries it (not run as __main__)."""
    return runpy.run_path(str(CHECK))


def _names(key: str) -> set[str]:
    return set(json.loads((TRT_DATA / f"names-{key}.json").read_text())["names"])


# --- stand-ins: a TensorRT engine and a device memory on one virtual clock --------------------------------------

COST_MS = {"deserialize": 900.0, "context": 40.0, "alloc": 15.0, "host": 15.0, "free": 5.0,
           "htod": 1.0, "execute": 5.0, "dtoh": 0.5, "sync": 0.0}


class Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.log: list[str] = []

    def op(self, name: str) -> None:
        self.log.append(name)
        self.now += COST_MS.get(name, 0.0)


class ClockMemory:
    """check_engine's device-memory interface on the virtual clock; events read the clock."""

    name = "clock"

    def __init__(self, clock: Clock) -> None:
        self.clock = clock

    def host(self, shape, dtype):
        self.clock.op("host")
        return np.zeros(shape, dtype)

    def free_host(self, array):
        pass

    def alloc(self, nbytes):
        self.clock.op("alloc")
        return 4096

    def pointer(self, allocation):
        return int(allocation)

    def free(self, allocation):
        self.clock.op("free")

    def htod(self, dev, host, stream):
        self.clock.op("htod")

    def dtoh(self, host, dev, stream):
        self.clock.op("dtoh")

    def stream(self):
        return 1

    def handle(self, stream):
        return stream

    def sync(self, stream):
        self.clock.op("sync")

    def event(self):
        return {}

    def record(self, event, stream):
        self.clock.op("record")
        event["t"] = self.clock.now

    def elapsed_ms(self, start, end):
        return end["t"] - start["t"]


class Tracked:
    """Records every public attribute our code reads or writes in `names`."""

    names: set[str]

    def __getattribute__(self, name: str):
        if not name.startswith("_"):
            object.__getattribute__(self, "_seen").add(name)
        return object.__getattribute__(self, name)

    def __setattr__(self, name: str, value) -> None:
        if not name.startswith("_"):
            object.__getattribute__(self, "_seen").add(name)
        object.__setattr__(self, name, value)


def fake_trt(version: str, clock: Clock, *, dynamic: bool = True, profile=(1, 4, 8), outputs=("logits", "score")):
    """A `tensorrt` module with one engine: input `input` (batch dynamic within `profile`, or fixed at
    profile[1]), outputs `outputs` of shape (batch, 10). Returns (module, names seen, DLA/deserialize order)."""
    seen: set[str] = set()
    order: list[tuple] = []
    io = ["input", *outputs]
    lo, opt, hi = profile

    def input_dims():
        return (-1 if dynamic else opt, *SAMPLE)

    class Context(Tracked):
        def __init__(self):
            self._seen, self._batch = seen, None if dynamic else opt

        def _set(self, name, shape):
            ok = name == "input" and lo <= shape[0] <= hi
            self._batch = shape[0] if ok else self._batch
            return ok

        def _shape(self, name):
            return (self._batch if self._batch else -1, *(SAMPLE if name == "input" else (10,)))

        def set_input_shape(self, name, shape):
            return self._set(name, shape)

        def set_binding_shape(self, index, shape):
            return self._set(io[index], shape)

        def get_tensor_shape(self, name):
            return self._shape(name)

        def get_binding_shape(self, index):
            return self._shape(io[index])

        def set_tensor_address(self, name, pointer):
            return True

        def execute_async_v3(self, stream_handle):
            clock.op("execute")
            return True

        def execute_async_v2(self, bindings, stream_handle):
            clock.op("execute")
            return True

    class Engine(Tracked):
        def __init__(self):
            self._seen = seen
            object.__setattr__(self, "num_io_tensors", len(io))
            object.__setattr__(self, "num_bindings", len(io))

        def get_tensor_name(self, i):
            return io[i]

        def get_binding_name(self, i):
            return io[i]

        def get_binding_index(self, name):
            return io.index(name)

        def get_tensor_mode(self, name):
            return module.TensorIOMode.INPUT if name == "input" else module.TensorIOMode.OUTPUT

        def binding_is_input(self, i):
            return i == 0

        def get_tensor_shape(self, name):
            return input_dims() if name == "input" else (-1 if dynamic else opt, 10)

        def get_binding_shape(self, i):
            return input_dims() if i == 0 else (-1 if dynamic else opt, 10)

        def get_tensor_dtype(self, name):
            return "FLOAT"

        def get_binding_dtype(self, i):
            return "FLOAT"

        def get_tensor_profile_shape(self, name, index):
            return [(b, *SAMPLE) for b in profile]

        def get_profile_shape(self, index, binding):
            return [(b, *SAMPLE) for b in profile]

        def create_execution_context(self):
            clock.op("context")
            return Context()

    class Runtime(Tracked):
        def __init__(self, logger):
            self._seen = seen

        def __setattr__(self, name, value):
            if name == "DLA_core":
                order.append(("DLA_core", value))
            Tracked.__setattr__(self, name, value)

        def deserialize_cuda_engine(self, blob):
            clock.op("deserialize")
            order.append(("deserialize",))
            return Engine()

    class TrackedClass(type):  # class attributes (trt.Logger.WARNING) are names too
        def __getattribute__(cls, name):
            if not name.startswith("_"):
                seen.add(name)
            return type.__getattribute__(cls, name)

    class Logger(metaclass=TrackedClass):
        WARNING, ERROR = 2, 1

        def __init__(self, *args):
            pass

    class ILogger:
        def __init__(self, *args):
            pass

    class IInt8EntropyCalibrator2:
        def __init__(self, *args):
            pass

    class Builder(Tracked):
        def __init__(self, logger):
            self._seen = seen
            object.__setattr__(self, "num_DLA_cores", 2)

    class Module(types.ModuleType):
        def __getattribute__(self, name):
            if not name.startswith("_"):
                seen.add(name)
            return types.ModuleType.__getattribute__(self, name)

    module = Module("tensorrt")
    module.__version__ = version
    module.Runtime, module.Logger, module.ILogger = Runtime, Logger, ILogger
    module.IInt8EntropyCalibrator2, module.Builder = IInt8EntropyCalibrator2, Builder
    module.TensorIOMode = types.SimpleNamespace(INPUT="INPUT", OUTPUT="OUTPUT")
    module.nptype = lambda dtype: np.float32
    module.Dims = lambda dims: tuple(dims)
    seen.clear()  # the names our code asks for, from here on
    return module, seen, order


def _engine_file(tmp_path: Path, name: str) -> str:
    path = tmp_path / name
    path.write_bytes(b"plan")
    return str(path)


# --- N4: the timing loop ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("version,key", [("10.3.0", "10.3"), ("8.2.1", "8.2")])
def test_engines_load_once_and_only_copies_and_execution_are_timed(ce, tmp_path, version, key):
    """Two engines checked then timed in interleaved rounds: each is deserialized and its context made once,
    buffers are allocated outside every timed interval, and an interval holds only the copies in, the execution
    and the copies out, so the p50 is exactly their cost (timing the whole run, as before, would add the 900 ms
    deserialization and the allocations)."""
    clock = Clock()
    trt, seen, _ = fake_trt(version, clock)
    mem = ClockMemory(clock)
    engines = [_engine_file(tmp_path, "model.fp16.engine"), _engine_file(tmp_path, "model.int8.engine")]
    sessions = {e: ce["EngineSession"](e, memory=mem, trt=trt) for e in engines}
    x = np.random.default_rng(0).standard_normal((10, *SAMPLE)).astype(np.float32)
    for e in engines:  # the accuracy pass at the check batch (8), then the rounds at the deploy batch (1)
        outs = sessions[e].run(x, 8, ["score", "logits"])
        assert [o.shape for o in outs] == [(10, 10), (10, 10)]
    timed_x, batch = ce["timing_input"](x, None, {"latency": {"batch_sizes": [1, 4, 8]}})
    records = [{"engine": e, "backend": "tensorrt"} for e in engines]
    ce["time_rounds"](records, sessions, timed_x, batch, rounds=5, warmup=3)

    log = clock.log
    assert log.count("deserialize") == 2 and log.count("context") == 2
    first_record = log.index("record")
    assert log.index("deserialize") < first_record and len(log) - log[::-1].index("deserialize") - 1 < first_record
    intervals, inside = 0, None
    for op in log:
        if op == "record":
            if inside is None:
                inside = []
            else:
                assert inside == ["htod", "execute", "dtoh", "dtoh"], inside
                intervals, inside = intervals + 1, None
        elif inside is not None:
            inside.append(op)
    assert intervals == 2 * 5 * ce["CALLS_PER_ROUND"]  # every timed batch, nothing else
    per_batch = COST_MS["htod"] + COST_MS["execute"] + 2 * COST_MS["dtoh"]
    for r in records:
        lat = r["latency_by_batch"][0]
        assert lat["p50"] == per_batch and lat["round_p50"] == [per_batch] * 5 and lat["spread"] == [per_batch] * 2
        assert lat["batch_size"] == 1 and lat["timer"] == "cuda-events"
    for s in sessions.values():
        s.close()
    assert not (seen - _names(key)), f"TensorRT {version} does not bind {sorted(seen - _names(key))}"


def test_the_rounds_rotate_the_engine_order(ce):
    """Round k starts with engine k (mod n): the order each engine ran in, as edgerep's protocol has it."""
    ran: list[str] = []

    class Session:
        def __init__(self, name):
            self.name = name

        def warm_up(self, x, batch, count):
            pass

        def timed_pass(self, x, batch, warmup=1):
            ran.append(self.name)
            return [1.0] * (len(x) // batch)

    records = [{"engine": e, "backend": "tensorrt"} for e in ("a", "b", "c")]
    ce["time_rounds"](records, {e: Session(e) for e in "abc"}, np.zeros((4, 1)), 1, rounds=3, warmup=0)
    assert ran == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]


# --- N7: the DLA core ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo_onnx(tmp_path_factory):
    from tests.digits_demo import export_demo

    root = tmp_path_factory.mktemp("device-demo")
    _, _, sim = export_demo(root / "onnx", opset=13, dynamic_batch=True)
    return sim


def _bundle(root: Path, onnx: Path, target: str, **changes) -> Path:
    """A bundle written by edgerep's own bundle code for `target` (fields of the profile changed by `changes`),
    with a reference computed by ONNX Runtime on the first 24 validation digits."""
    import onnxruntime as ort

    from edgerep.backends.tensorrt.host import bundle_reference, update_bundle
    from edgerep.data.sources import open_data
    from edgerep.targets import load_target
    from edgerep.validate.engine import Reference
    from tests.digits_demo import digits_data

    profile = load_target(target)
    latency = changes.pop("latency", None)
    profile = replace(profile, **changes)
    if latency is not None:
        profile = replace(profile, latency=replace(profile.latency, **latency))
    x = next(iter(digits_data("val").iter_batches(24, limit=24)))[0].astype(np.float32)
    np.savez(root / "val.npz", x=x)
    session = ort.InferenceSession(str(onnx), providers=["CPUExecutionProvider"])
    out = session.run(None, {session.get_inputs()[0].name: x})[0]
    bdir = root / "bundle"
    update_bundle(bdir, onnx_path=onnx, profile=profile, precisions=["fp16"])
    bundle_reference(bdir, Reference(outputs=out, labels=None, source=open_data(root / "val.npz", None, role="val")))
    return bdir


@pytest.fixture(scope="module")
def xavier_bundle(demo_onnx, tmp_path_factory):
    return _bundle(tmp_path_factory.mktemp("xavier"), demo_onnx, "jetson-xavier-nx")


def test_engine_dla_core_reads_sidecar_then_entry_then_trtexec_line(ce, xavier_bundle):
    manifest = json.loads((xavier_bundle / "bundle.json").read_text())
    # the Xavier NX profile builds each precision on the GPU and on DLA core 0: the DLA variant
    entry = next(e for e in manifest["engines"] if e["precision"] == "fp16" and "--useDLACore=0" in e["trtexec"])
    dla = ce["engine_dla_core"]
    assert dla(entry, None) == 0  # from the trtexec line
    assert dla(dict(entry, dla_core=1), None) == 1  # the entry's own field
    assert dla(entry, {"dla_core": None}) is None  # the sidecar of a GPU engine wins
    assert dla({"trtexec": ["--fp16"]}, {}) is None


def test_the_dla_core_is_set_before_the_engine_is_deserialized(ce, xavier_bundle, tmp_path, monkeypatch):
    """open_session on the Xavier NX bundle's fp16 DLA engine: runtime.DLA_core = 0 comes before
    deserialize_cuda_engine (as trtexec does it); an engine whose sidecar says GPU gets no DLA core."""
    manifest = json.loads((xavier_bundle / "bundle.json").read_text())
    clock = Clock()
    trt, seen, order = fake_trt("8.5.2", clock, dynamic=False)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    engine = tmp_path / "model.fp16.dla0.engine"  # the bundle's DLA variant (model.fp16.engine is the GPU one)
    engine.write_bytes(b"plan")
    ce["open_session"](str(engine), manifest, ClockMemory(clock)).close()
    assert order == [("DLA_core", 0), ("deserialize",)]
    (tmp_path / "model.fp16.dla0.engine.json").write_text(json.dumps({"dla_core": None}))
    del order[:]
    ce["open_session"](str(engine), manifest, ClockMemory(clock)).close()
    assert order == [("deserialize",)]
    assert "DLA_core" in seen and not (seen - _names("8.5"))


# --- N8: the check batch and refused shapes --------------------------------------------------------------------


def test_check_batch_fallback_chain_is_the_same_on_host_and_device(ce, demo_onnx, tmp_path):
    """Fixed batch; else the built profile's max (bundle.json input.profile, the bundle helper's contract);
    else max(latency.batch_sizes); else 32. A real dynamic-batch bundle checks at its profile's 4, not 32."""
    from edgerep.commands.validate_bundle import check_batch

    bdir = _bundle(tmp_path, demo_onnx, "jetson-orin-nano", dynamic_batch=True, latency={"batch_sizes": [1, 2, 4]})
    real = json.loads((bdir / "bundle.json").read_text())
    assert real["input"]["shape"][0] in (None, -1, "batch") or not isinstance(real["input"]["shape"][0], int) \
        or real["input"]["shape"][0] <= 0
    with_profile = json.loads(json.dumps(real))
    with_profile["input"]["profile"] = {"min": [1, *SAMPLE], "opt": [2, *SAMPLE], "max": [16, *SAMPLE]}
    cases = [
        (real, 4),
        (with_profile, 16),
        ({"input": {"shape": [8, *SAMPLE]}, "profile": {"latency": {"batch_sizes": [1, 64]}}}, 8),
        ({"input": {"shape": [None, *SAMPLE]}, "profile": {"latency": {"batch_sizes": []}}}, 32),
        ({"input": {"shape": [None, *SAMPLE]}}, 32),
    ]
    for manifest, want in cases:
        assert ce["check_batch"](manifest) == want == check_batch(manifest), manifest.get("input")


@pytest.mark.parametrize("version,key", [("10.3.0", "10.3"), ("8.2.1", "8.2")])
def test_a_shape_outside_the_profile_is_refused_with_its_range(ce, tmp_path, version, key):
    clock = Clock()
    trt, seen, _ = fake_trt(version, clock, profile=(1, 4, 8))
    engine = _engine_file(tmp_path, "model.fp16.engine")
    session = ce["EngineSession"](engine, memory=ClockMemory(clock), trt=trt)
    with pytest.raises(SystemExit) as err:
        session.run(np.zeros((32, *SAMPLE), np.float32), 32, ["logits"])
    assert str(err.value) == (f"{engine}: TensorRT refused input shape [32, 1, 8, 8] (its optimization profile: "
                              f"min [1, 1, 8, 8], opt [4, 1, 8, 8], max [8, 1, 8, 8]); check at a batch inside the "
                              f"profile, or rebuild the engine with this bundle's build.sh")
    assert "alloc" not in clock.log  # refused before any buffer is made for the shape
    assert not (seen - _names(key))


@pytest.mark.parametrize("version,key", [("10.3.0", "10.3"), ("8.2.1", "8.2")])
def test_the_runner_refuses_a_shape_outside_the_profile_as_a_user_error(tmp_path, monkeypatch, version, key):
    from edgerep.backends.tensorrt.runner import TensorRTRunner
    from edgerep.errors import UserError
    from tests.backends.tensorrt.test_tensorrt_api import fake_pycuda

    trt, seen, _ = fake_trt(version, Clock(), profile=(1, 4, 8))
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    for name, module in fake_pycuda().items():
        monkeypatch.setitem(sys.modules, name, module)
    engine = tmp_path / "model.fp16.engine"
    engine.write_bytes(b"plan")
    runner = TensorRTRunner(engine)
    assert runner.run_all(np.zeros((8, *SAMPLE), np.float32))[0].shape == (8, 10)
    with pytest.raises(UserError, match=re.escape(f"--engine {engine}: TensorRT refused input shape [9, 1, 8, 8] "
                                                  "(its optimization profile spans [1, 1, 8, 8] to [8, 1, 8, 8])")):
        runner.run(np.zeros((9, *SAMPLE), np.float32))
    runner.close()
    assert not (seen - _names(key)), sorted(seen - _names(key))


# --- point 5: cuda-python as well as pycuda --------------------------------------------------------------------

try:
    from cuda.bindings import runtime as cudart_real
except ImportError:  # the tests below that need it skip; the rest of the module runs
    cudart_real = None
needs_cuda_python = pytest.mark.skipif(cudart_real is None, reason="cuda-bindings is not installed (pip install "
                                       "cuda-python; torch pulls it in)")


def _no_pycuda(monkeypatch) -> None:
    for name in ("pycuda", "pycuda.autoinit", "pycuda.driver"):
        monkeypatch.setitem(sys.modules, name, None)  # `import pycuda...` raises ImportError


def _has_gpu() -> bool:
    err, count = cudart_real.cudaGetDeviceCount()
    return int(err) == 0 and count > 0


@needs_cuda_python
def test_check_engine_takes_cuda_python_when_pycuda_is_missing(ce, monkeypatch):
    """Without pycuda, device_memory() is cuda-python's runtime: here, without a driver, its first call fails
    and says so by the CUDA error's name (decoded from cudaGetErrorName)."""
    _no_pycuda(monkeypatch)
    if _has_gpu():
        assert ce["device_memory"]().name == "cuda-python"
        return
    with pytest.raises(SystemExit, match=r"^CUDA cudaSetDevice failed: cudaError\w+$"):
        ce["device_memory"]()


@needs_cuda_python
def test_the_host_adapter_takes_cuda_python_when_pycuda_is_missing(monkeypatch):
    from edgerep.backends.tensorrt.cuda_memory import binding_installed, open_device_memory

    _no_pycuda(monkeypatch)
    assert binding_installed() == "cuda-python"
    if _has_gpu():
        assert open_device_memory().name == "cuda-python"
        return
    with pytest.raises(RuntimeError, match=r"^CUDA cudaSetDevice failed: cudaError\w+$"):
        open_device_memory()


def test_neither_binding_says_how_to_install_one(ce, monkeypatch):
    from edgerep.backends.tensorrt.cuda_memory import open_device_memory
    from edgerep.errors import UserError

    _no_pycuda(monkeypatch)
    for name in ("cuda", "cuda.bindings", "cuda.bindings.runtime", "cuda.cudart"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(SystemExit, match=r"export PATH=/usr/local/cuda/bin:\$PATH first, then pip3 install pycuda"):
        ce["device_memory"]()
    with pytest.raises(UserError, match=r"cuda-python.*/usr/local/cuda/bin"):
        open_device_memory()


@needs_cuda_python
def test_the_old_cuda_python_layout_is_found(ce, monkeypatch):
    """cuda-python before 12.6 has `cuda.cudart` and no `cuda.bindings`: both adapters fall back to it (the real
    runtime module stands in for the old one: same functions)."""
    from edgerep.backends.tensorrt.cuda_memory import import_cudart

    monkeypatch.setitem(sys.modules, "cuda.bindings", None)
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", None)
    monkeypatch.setitem(sys.modules, "cuda.cudart", cudart_real)
    assert ce["import_cudart"]() is cudart_real and import_cudart() is cudart_real


def _arity(func) -> int:
    """The number of parameters in the signature line of a cuda-bindings function's docstring."""
    first = (func.__doc__ or "").strip().splitlines()[0]
    inside = first[first.index("(") + 1:first.rindex(")")].strip()
    return 0 if not inside else len(inside.split(","))


class RuntimeProxy:
    """The real cuda.bindings.runtime, with calls answered as a GPU would: a name it lacks raises
    AttributeError, a call with another number of arguments than its signature fails the test."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.pinned: list[ctypes.Array] = []

    def __getattr__(self, name: str):
        real = getattr(cudart_real, name)  # AttributeError: cuda-python has no such name
        if not name.startswith("cuda") or not callable(real) or isinstance(real, type):
            return real

        def call(*args):
            assert len(args) == _arity(real), f"{name}{args}: its signature takes {_arity(real)} arguments"
            self.calls.append(name)
            ok = cudart_real.cudaError_t.cudaSuccess
            if name == "cudaMallocHost":
                buf = (ctypes.c_byte * int(args[0]))()
                self.pinned.append(buf)
                return ok, ctypes.addressof(buf)
            results = {"cudaMalloc": (8192,), "cudaStreamCreate": (7,), "cudaEventCreate": (object(),),
                       "cudaEventElapsedTime": (2.5,),
                       "cudaGetDeviceProperties": (types.SimpleNamespace(name=b"Orin\x00\x00", major=8, minor=7),)}
            return (ok, *results.get(name, ()))

        return call


def _exercise(mem) -> None:
    host = mem.host((2, 3), np.float32)
    host[:] = 7.0  # writes land in the pinned buffer
    assert host.shape == (2, 3) and host.dtype == np.float32 and float(host.sum()) == 42.0
    dev = mem.alloc(host.nbytes)
    stream = mem.stream()
    start, end = mem.event(), mem.event()
    mem.record(start, stream)
    mem.htod(dev, host, stream)
    mem.dtoh(host, dev, stream)
    mem.record(end, stream)
    assert mem.elapsed_ms(start, end) == 2.5 and mem.pointer(dev) == 8192 and mem.handle(stream) == 7
    mem.sync(stream)
    mem.free(dev)
    mem.free_host(host)


@needs_cuda_python
def test_the_cuda_python_adapters_call_names_cuda_python_has(ce):
    from edgerep.backends.tensorrt.cuda_memory import CudartMemory

    for cls in (ce["CudartMemory"], CudartMemory):
        proxy = RuntimeProxy()
        mem = cls(proxy)
        _exercise(mem)
        assert {"cudaSetDevice", "cudaMallocHost", "cudaMalloc", "cudaMemcpyAsync", "cudaStreamCreate",
                "cudaEventRecord", "cudaEventElapsedTime", "cudaFree", "cudaFreeHost"} <= set(proxy.calls)
    mem = CudartMemory(RuntimeProxy())
    assert mem.device() == ("Orin", "8.7")
    mem.htod_sync(mem.alloc(4), np.zeros(1, np.float32))


@needs_cuda_python
def test_check_engine_runs_an_engine_on_cuda_python(ce, tmp_path):
    """The whole check path (EngineSession.run and timed_pass) on the cuda-python adapter: pinned host arrays
    from cudaMallocHost pointers, pointers handed to TensorRT, events timed."""
    trt, seen, _ = fake_trt("10.3.0", Clock())
    engine = _engine_file(tmp_path, "model.fp16.engine")
    proxy = RuntimeProxy()
    session = ce["EngineSession"](engine, memory=ce["CudartMemory"](proxy), trt=trt)
    outs = session.run(np.ones((5, *SAMPLE), np.float32), 4, ["logits"])
    assert outs[0].shape == (5, 10)
    assert session.timed_pass(np.ones((8, *SAMPLE), np.float32), 4, warmup=1) == [2.5, 2.5]
    session.close()
    assert proxy.calls.count("cudaFreeHost") == proxy.calls.count("cudaMallocHost")
    assert proxy.calls.count("cudaFree") == proxy.calls.count("cudaMalloc") + 1  # + cudaFree(0) at start


@needs_cuda_python
def test_the_calibrator_feeds_batches_through_the_adapter():
    from edgerep.backends.tensorrt.calibrate import device_calibrator
    from edgerep.backends.tensorrt.cuda_memory import CudartMemory

    trt, _, _ = fake_trt("10.3.0", Clock())

    class Source:
        def iter_batches(self, batch):
            yield np.ones((3, *SAMPLE), np.float32), None  # not the calibration batch: skipped
            yield np.ones((batch, *SAMPLE), np.float32), None

    proxy = RuntimeProxy()
    calibrator = device_calibrator(trt, b"TRT-100300-EntropyCalibration2\n", Source(), [2, *SAMPLE], None,
                                   memory=CudartMemory(proxy))
    assert calibrator.get_batch_size() == 2
    assert calibrator.get_batch(["input"]) == [8192] and calibrator.batches_fed == 1
    assert calibrator.get_batch(["input"]) is None
    assert proxy.calls[-1] == "cudaMemcpy" and calibrator.read_calibration_cache().startswith(b"TRT-100300")


# --- point 6: the device doctor --------------------------------------------------------------------------------

# First lines of /etc/nv_tegra_release as Jetson Linux writes them, copied from public setup notes of real
# devices: a Nano on L4T 32.7.1 (JetPack 4.6.1; the file wraps after BOARD), an AGX Orin on 35.4.1 (JetPack
# 5.1.2), an Orin Nano on 36.4.3 (JetPack 6.2).
TEGRA_R32 = ("# R32 (release), REVISION: 7.1, GCID: 29818004, BOARD: t210ref, \n"
             "# EABI: aarch64, DATE: Sat Feb 19 17:05:08 UTC 2022\n")
TEGRA_R35 = "# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref, EABI: aarch64, DATE: Tue Aug  1 19:57:35 UTC 2023\n"
TEGRA_R36 = ("# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, DATE: Wed Jan  8 "
             "01:49:37 UTC 2025\n# KERNEL_VARIANT: oot\n")
NANO_MEMINFO = "MemTotal:        4051032 kB\nMemFree:          812344 kB\nMemAvailable:    2911212 kB\n" \
               "SwapTotal:             0 kB\nSwapFree:              0 kB\n"


def test_the_tegra_release_and_package_versions_parse(ce):
    parse = ce["parse_tegra_release"]
    assert parse(TEGRA_R32) == (32, 7, 1) and parse(TEGRA_R35) == (35, 4, 1) and parse(TEGRA_R36) == (36, 4, 3)
    assert parse("Ubuntu 22.04") is None and parse(None) is None
    assert ce["jetpack_of"]((35, 4, 1)) == ("5.1.2", "8.5.2") and ce["jetpack_of"]((32, 7, 1)) == ("4.6.1", "8.2.1")
    deb = ce["parse_deb_version"]
    assert deb("35.4.1-20230801124926") == (35, 4, 1) and deb("8.5.2-1+cuda11.4") == (8, 5, 2) and deb("") is None
    assert ce["parse_nvpmodel"]("NV Power Mode: MODE_15W_6CORE\n2\n") == {"mode": "MODE_15W_6CORE", "id": 2}
    assert ce["parse_nvpmodel"]("nvpmodel: command not found") is None


def test_power_state_is_unknown_off_a_jetson_and_read_from_the_clocks_on_one(ce, tmp_path):
    assert ce["power_state"](False, None, []) == {"nvpmodel": "unknown", "jetson_clocks": "unknown"}
    sysfs = tmp_path / "sys"
    for name, lo, hi in (("17000000.ga10b", 306000000, 624750000),):
        node = sysfs / "class" / "devfreq" / name
        node.mkdir(parents=True)
        (node / "min_freq").write_text(f"{lo}\n")
        (node / "max_freq").write_text(f"{hi}\n")
    cpu = sysfs / "devices" / "system" / "cpu" / "cpu0" / "cpufreq"
    cpu.mkdir(parents=True)
    (cpu / "scaling_min_freq").write_text("1510400\n")
    (cpu / "scaling_max_freq").write_text("1510400\n")
    ranges = ce["read_clock_ranges"](str(sysfs))
    assert ranges == [("17000000.ga10b", 306000000, 624750000), ("cpu0", 1510400, 1510400)]
    state = ce["power_state"](True, (0, "NV Power Mode: 15W\n0\n"), ranges)
    assert state == {"nvpmodel": {"mode": "15W", "id": 0}, "jetson_clocks": False}
    (sysfs / "class" / "devfreq" / "17000000.ga10b" / "min_freq").write_text("624750000\n")  # jetson_clocks on
    assert ce["power_state"](True, (0, "NV Power Mode: 15W\n0\n"), ce["read_clock_ranges"](str(sysfs)))[
        "jetson_clocks"] is True
    assert ce["power_state"](True, None, [])["nvpmodel"] == "unknown"
    assert isinstance(ce["read_clock_ranges"](), list)  # this machine's /sys reads without error


def _ready_xavier(manifest: dict) -> dict:
    """A Xavier NX on JetPack 5.1.2 as gather_facts would find it, with this machine's real /proc/meminfo."""
    return {"manifest": manifest, "is_jetson": True, "venv": False, "tegra_release": TEGRA_R35,
            "l4t_core_version": "35.4.1-20230801124926", "libnvinfer_version": "8.5.2-1+cuda11.4",
            "meminfo": Path("/proc/meminfo").read_text(), "trtexec": "/usr/src/tensorrt/bin/trtexec",
            "cuda_version": "11.4.315", "nvcc_on_path": None, "nvcc_installed": True,
            "tensorrt_version": "8.5.2.2", "tensorrt_file": "/usr/lib/python3.8/dist-packages/tensorrt/__init__.py",
            "dla_cores": 2, "bindings": {"pycuda": "pycuda.driver"},
            "power": {"nvpmodel": {"mode": "MODE_20W_6CORE", "id": 8}, "jetson_clocks": False}}


def _levels(findings) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for level, topic, _ in findings:
        out.setdefault(topic, []).append(level)
    return out


def test_the_doctor_passes_a_ready_device_and_names_what_blocks(ce, xavier_bundle):
    manifest = json.loads((xavier_bundle / "bundle.json").read_text())
    find = ce["doctor_findings"]
    ready = find(_ready_xavier(manifest))
    assert not [f for f in ready if f[0] == "block"], ready
    assert _levels(ready)["tensorrt"] == ["ok"] and _levels(ready)["jetpack"] == ["ok"]
    assert any(t == "power" and "MODE_20W_6CORE (id 8), jetson_clocks off" in m for _, t, m in ready)

    def blocks(**changes):
        return [(t, m) for level, t, m in find(dict(_ready_xavier(manifest), **changes)) if level == "block"]

    nano = dict(tegra_release=TEGRA_R32, l4t_core_version=None, tensorrt_version="8.2.1.8",
                libnvinfer_version="8.2.1-1+cuda10.2")
    assert [t for t, _ in blocks(**nano)] == ["tensorrt", "tensorrt"]  # the installed TensorRT blocks
    jetpack = [(lv, m) for lv, t, m in find(dict(_ready_xavier(manifest), **nano)) if t == "jetpack"]
    assert jetpack == [("warn", "JetPack 4.6.1 (L4T R32.7.1) ships TensorRT 8.2.1, the profile is made for "
                                "TensorRT 8.5 (JetPack 5.1): use the profile of this JetPack")]
    assert [t for t, _ in blocks(tensorrt_version="10.3.0.30", libnvinfer_version="10.3.0-1+cuda12.5",
                                 tegra_release=TEGRA_R36)] == ["tensorrt", "tensorrt"]
    (topic, msg), = blocks(trtexec=None)
    assert topic == "trtexec" and "/usr/src/tensorrt/bin/trtexec" in msg and "TRTEXEC=" in msg
    (topic, msg), = blocks(dla_cores=0)
    assert topic == "dla" and "0 DLA core(s)" in msg
    (topic, msg), = blocks(meminfo="MemTotal: 4051032 kB\nMemAvailable: 600000 kB\nSwapTotal: 0 kB\nSwapFree: 0 kB\n")
    assert topic == "memory" and "swapon" in msg
    assert [t for t, _ in blocks(manifest=None)] == ["bundle"]


def test_the_doctor_warns_with_what_to_do(ce, xavier_bundle):
    manifest = json.loads((xavier_bundle / "bundle.json").read_text())
    find = ce["doctor_findings"]

    def warns(**changes):
        return dict((t, m) for level, t, m in find(dict(_ready_xavier(manifest), **changes)) if level == "warn")

    assert "add swap: sudo fallocate -l 4G /swapfile" in warns(meminfo=NANO_MEMINFO)["memory"]
    cuda = warns(bindings={})["cuda"]
    assert "cuda-python" in cuda and "nvcc is in /usr/local/cuda/bin but not on PATH" in cuda
    assert "has no cuda-python wheel: export PATH=/usr/local/cuda/bin:$PATH, then pip3 install pycuda" in \
        warns(bindings={}, cuda_version="10.2.300")["cuda"]
    trt = warns(tensorrt_version=None, tensorrt_error="ModuleNotFoundError: No module named 'tensorrt'", venv=True)
    assert "python3-libnvinfer" in trt["tensorrt"] and "--system-site-packages" in trt["tensorrt"]
    wheel = warns(venv=True, tensorrt_file="/home/me/venv/lib/python3.8/site-packages/tensorrt/__init__.py")
    assert "pip wheel in a virtualenv" in wheel["tensorrt"]


@pytest.mark.parametrize("version,key", [("8.2.1", "8.2"), ("10.3.0", "10.3")])
def test_the_doctor_reads_tensorrt_and_its_dla_cores_with_bound_names(ce, monkeypatch, version, key):
    trt, seen, _ = fake_trt(version, Clock())
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    facts = ce["_module_facts"]()
    assert facts["tensorrt_version"] == version and facts["dla_cores"] == 2
    assert {"Builder", "Logger", "ERROR", "num_DLA_cores"} <= seen and not (seen - _names(key))


def test_doctor_runs_in_a_real_bundle_on_this_machine(xavier_bundle):
    """`python3 check_engine.py --doctor` inside a bundle on this CPU machine: no tensorrt and no trtexec are
    findings, not a crash; no trtexec blocks a build, so it exits 1. The memory line is this machine's."""
    script = xavier_bundle / "check_engine.py"
    assert script.read_text() == CHECK.read_text()  # the bundle code copied this file
    proc = subprocess.run([sys.executable, str(script), "--doctor"], capture_output=True, text=True,
                          cwd=str(xavier_bundle), timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    topics = {line.split()[1]: line.split()[0] for line in lines}
    assert topics["bundle"] == "ok" and topics["trtexec"] == "block" and topics["power"] == "info"
    if shutil.which("trtexec") is None:
        assert any(line.startswith("block trtexec  trtexec not found") for line in lines), lines
    if not _importable_trt():
        assert topics["tensorrt"] == "warn"
    assert topics["memory"] in ("ok", "warn", "block") and topics["jetpack"] == "info"
    proc = subprocess.run([sys.executable, str(script), "--doctor", "--json"], capture_output=True, text=True,
                          cwd=str(xavier_bundle), timeout=120)
    assert proc.returncode == 1
    assert {f["topic"] for f in json.loads(proc.stdout)} >= {"bundle", "tensorrt", "trtexec", "memory", "cuda"}


def _importable_trt() -> bool:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return False
    return bool(getattr(tensorrt, "__version__", None))


def test_check_engine_records_the_power_state_with_its_latency(xavier_bundle):
    """A check on this host (model.onnx in ONNX Runtime) records where it ran: off a Jetson, the power mode and
    jetson_clocks are unknown, not an error."""
    proc = subprocess.run([sys.executable, "check_engine.py", "model.onnx"], capture_output=True, text=True,
                          cwd=str(xavier_bundle), timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    record = json.loads(proc.stdout)
    assert record["device"] == {"nvpmodel": "unknown", "jetson_clocks": "unknown"}
    lat = record["latency_by_batch"][0]
    assert lat["timer"] == "perf_counter" and lat["rounds"] == 5 and lat["p50"] > 0
    assert record["accuracy"]["max_abs_err"] < 1e-4
