"""The TensorRT API checked mechanically, without TensorRT:

* every `tensorrt` attribute each version path of edgerep touches exists in that version's bindings, as
  extracted from NVIDIA's own wheels (edgerep/backends/tensorrt/data/names-*.json, scripts/extract_trt_names.py). The paths are
  driven through a recording stand-in for the `tensorrt` module: it says nothing about TensorRT itself, it only
  records which names our control flow reaches for each `__version__`; the claims come from the name lists;
* the TensorRT code type-checks against the `tensorrt-stubs` 10.x stubs (mypy);
* build.sh's trtexec lines use only options that release's trtexec parses (edgerep/backends/tensorrt/data/trtexec_options.json,
  from samples/common/sampleOptions.cpp of each release branch, scripts/extract_trtexec_options.py);
* every file that runs on the device parses with Python 3.6's grammar and avoids 3.7+ library calls.
"""
from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
import sys
import types
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from edgerep.backends.tensorrt.versions import api_features, parse_version
from edgerep.targets import load_target
from tests.paths import REPO

TRT_DATA = REPO / "edgerep" / "backends" / "tensorrt" / "data"


def _names(key: str) -> set[str]:
    return set(json.loads((TRT_DATA / f"names-{key}.json").read_text())["names"])


# --- a recording stand-in for `tensorrt` and `pycuda` (control flow only) -------------------------------------


class Rec:
    """Records every attribute read or written (except dunders) in `log`; `behaviour` gives values or callables
    for the few names whose results our code computes with; anything else is another Rec."""

    def __init__(self, log: set[str], behaviour: dict, label: str = "") -> None:
        object.__setattr__(self, "_log", log)
        object.__setattr__(self, "_behaviour", behaviour)
        object.__setattr__(self, "_label", label)

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        self._log.add(name)
        if name in self._behaviour:
            return self._behaviour[name]
        return Rec(self._log, self._behaviour, name)

    def __setattr__(self, name: str, value) -> None:
        self._log.add(name)

    def __call__(self, *args, **kwargs):
        return Rec(self._log, self._behaviour, self._label + "()")

    def __int__(self) -> int:
        return 0

    __index__ = __int__

    def __bool__(self) -> bool:
        return True


def fake_tensorrt(version: str, shapes: dict[str, tuple[int, ...]]) -> tuple[types.ModuleType, set[str]]:
    log: set[str] = set()
    names = list(shapes)  # input first, then the outputs
    bases: dict[str, type] = {}

    def base(name: str) -> type:  # classes our code subclasses (ILogger, IInt8EntropyCalibrator2)
        log.add(name)
        return bases.setdefault(name, type(name, (), {"__init__": lambda self, *a: None}))

    behaviour = {
        "num_io_tensors": len(names), "num_bindings": len(names), "num_DLA_cores": 2, "num_errors": 0,
        "get_tensor_name": lambda i: names[i], "get_binding_name": lambda i: names[i],
        "get_binding_index": lambda n: names.index(n),
        "get_tensor_mode": lambda n: "INPUT" if n == names[0] else "OUTPUT",
        "binding_is_input": lambda i: i == 0,
        "get_tensor_shape": lambda n: shapes[n], "get_binding_shape": lambda i: shapes[names[i]],
        "INPUT": "INPUT", "OUTPUT": "OUTPUT",
        "nptype": lambda dtype: np.float32, "Dims": lambda dims: tuple(dims),
        "parse_from_file": lambda path: True, "set_timing_cache": lambda cache, ignore_mismatch: True,
        "build_serialized_network": lambda network, config: b"plan",
        "serialize": lambda: b"timing-cache",
        "execute_async_v3": lambda stream_handle: True, "execute_async_v2": lambda bindings, stream_handle: True,
    }
    module = types.ModuleType("tensorrt")
    rec = Rec(log, behaviour, "tensorrt")

    def module_getattr(name: str):
        if name in ("ILogger", "IInt8EntropyCalibrator2"):
            return base(name)
        return getattr(rec, name)

    module.__getattr__ = module_getattr  # type: ignore[attr-defined]
    module.__version__ = version
    return module, log


def fake_pycuda() -> dict[str, types.ModuleType]:
    class Alloc:
        def __int__(self) -> int:
            return 4096

        def free(self) -> None:
            pass

    behaviour = {"compute_capability": lambda: (8, 7), "name": lambda: "stand-in GPU", "count": lambda: 1,
                 "pagelocked_empty": lambda shape, dtype: np.zeros(shape, dtype), "mem_alloc": lambda n: Alloc(),
                 "time_till": lambda other: 1.0, "handle": 0}
    driver = types.ModuleType("pycuda.driver")
    rec = Rec(set(), behaviour, "pycuda")
    driver.__getattr__ = lambda name: getattr(rec, name)  # type: ignore[attr-defined]
    pkg = types.ModuleType("pycuda")
    pkg.driver = driver  # type: ignore[attr-defined]
    return {"pycuda": pkg, "pycuda.driver": driver, "pycuda.autoinit": types.ModuleType("pycuda.autoinit")}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The demo RepVGG exported and simplified, host INT8 artifacts for it, and its calibration data."""
    from edgerep.backends.tensorrt.host import prepare_int8
    from tests.digits_demo import digits_data, export_demo

    root = tmp_path_factory.mktemp("trt-api")
    _, _, sim = export_demo(root / "onnx", opset=13, dynamic_batch=False)
    calib = digits_data("calib")
    int8 = {v: prepare_int8(sim, replace(load_target("jetson-xavier-nx"),
                                         tensorrt=replace(load_target("jetson-xavier-nx").tensorrt, version=v)),
                            calib, root / f"host-{v}", method="entropy", num_samples=32)
            for v in ("8.2", "8.6", "10.3")}
    _, _, sim19 = export_demo(root / "onnx19", opset=19, dynamic_batch=False)  # TensorRT 11: FP16 Q/DQ needs 19
    return sim, calib, int8, root, sim19


# (fake __version__, the names list it is checked against, profile, precisions and INT8 modes, DLA core)
# 8.0 / 8.2 / 8.5 (JetPack 4.6, 4.6.1, 5.1) have no bindings wheel on PyPI: their lists come from the binding
# sources of the release branch (scripts/extract_trt_names.py --source); 8.6, 10.3, 11.4 from NVIDIA's wheels.
PATHS = [
    ("8.0.1", "8.0", "jetson-nano", [("fp16", None), ("int8", "calibrate"), ("int8", "qdq")], None),
    ("8.2.1", "8.2", "jetson-nano", [("fp16", None), ("int8", "calibrate"), ("int8", "qdq")], None),
    ("8.5.2", "8.5", "jetson-xavier-nx", [("fp16", None), ("int8", "calibrate")], 0),
    ("8.6.1", "8.6", "jetson-xavier-nx", [("fp16", None), ("int8", "calibrate")], 0),
    ("10.3.0", "10.3", "jetson-agx-orin", [("fp16", None), ("int8", "calibrate")], 0),
    ("10.3.0", "10.3", "jetson-orin-nano", [("fp16", None), ("int8", "qdq")], None),
    ("11.4.0", "11.4", "tensorrt", [("fp16", None), ("int8", "qdq")], None),
]


@pytest.mark.parametrize("version,names_key,target,builds,dla_core", PATHS, ids=[f"{p[0]}-{p[2]}" for p in PATHS])
def test_every_tensorrt_name_each_version_path_uses_is_bound(demo, tmp_path, monkeypatch, version, names_key,
                                                             target, builds, dla_core):
    """Builder, calibrator, runner and the bundle's check_engine.py on one version's path: every tensorrt name
    they touch is in the names that version binds (its wheel, or its release branch's binding sources)."""
    import runpy

    from edgerep.backends.tensorrt.calibrate import model_input
    from edgerep.backends.tensorrt.engine_build import build_engine
    from edgerep.backends.tensorrt.qdq import prepare_fp16_graph
    from edgerep.backends.tensorrt.runner import TensorRTRunner

    sim, calib, int8_by_version, _, _ = demo
    input_name, dims = model_input(sim)
    # a second output (as a detector has): every output is allocated, read and returned by name
    shapes = {input_name: tuple(int(d) for d in dims), "output": (int(dims[0]), 10), "scores": (int(dims[0]), 3)}
    trt, log = fake_tensorrt(version, shapes)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    for name, module in fake_pycuda().items():
        monkeypatch.setitem(sys.modules, name, module)
    base = load_target(target)
    mm = ".".join(version.split(".")[:2])
    for precision, mode in builds:
        settings = replace(base.tensorrt, version=mm, int8_mode=mode or base.tensorrt.int8_mode, dla_core=dla_core,
                           dla_cores=2 if dla_core is not None else 0)
        profile = replace(base, tensorrt=settings, precisions=["fp16", "int8"], opset=13)
        int8 = fp16_onnx = None
        if precision == "int8":
            int8 = int8_by_version[mm if mm in int8_by_version else "10.3"]
        if precision == "fp16" and parse_version(version)[0] >= 11:
            fp16_onnx = Path(prepare_fp16_graph(sim, tmp_path / "fp16", calib)["path"])
        art = build_engine(sim, precision, out_dir=tmp_path / f"{precision}-{mode}", profile=profile, calib=calib,
                           int8=int8, fp16_onnx=fp16_onnx, int8_mode=mode or "qdq",
                           dla_core=dla_core if precision != "fp32" else None, timing_cache=None,
                           info={"settings": {}})
        assert art.path.read_bytes() == b"plan" and art.sidecar.is_file()
    runner = TensorRTRunner(art.path, output_names=["scores", "output"])
    out = runner.run(np.zeros(shapes[input_name], np.float32))
    assert runner.output_names == ["scores", "output"] and out.shape == shapes["scores"]
    assert [o.shape for o in runner.run_all(np.zeros(shapes[input_name], np.float32))] == [shapes["scores"],
                                                                                          shapes["output"]]
    assert len(runner.latency(np.zeros(shapes[input_name], np.float32), 1, 2)) == 2
    runner.close()
    check = runpy.run_path(str(TRT_DATA / "check_engine.py"))
    outs = check["run_engine"](str(art.path), np.zeros(shapes[input_name], np.float32), 1, ["scores", "output"])
    assert [o.shape for o in outs] == [shapes["scores"], shapes["output"]]

    feats = api_features(parse_version(version))
    assert ("execute_async_v3" in log) == feats.tensor_api and ("execute_async_v2" in log) == (not feats.tensor_api)
    missing = sorted(log - _names(names_key))
    assert not missing, f"TensorRT {version} path uses names its bindings do not have: {missing}"


def test_name_lists_tell_the_versions_apart():
    """The lists are NVIDIA's, not ours: the bindings API is gone in 10.x, calibrators and precision flags in 11."""
    n80, n82, n85 = _names("8.0"), _names("8.2"), _names("8.5")
    assert "set_memory_pool_limit" not in n82 and "set_memory_pool_limit" in n85  # 8.4
    assert "execute_async_v3" not in n82 and {"execute_async_v3", "set_tensor_address"} <= n85  # tensor API: 8.5
    assert "DETAILED" not in n80 and "DETAILED" in n82  # ProfilingVerbosity.DETAILED: 8.2
    n86, n103, n114 = _names("8.6"), _names("10.3"), _names("11.4")
    for gone_in_10 in ("execute_async_v2", "num_bindings", "get_binding_index", "max_workspace_size"):
        assert gone_in_10 in n86 and gone_in_10 not in n103
    for gone_in_11 in ("IInt8EntropyCalibrator2", "int8_calibrator", "EXPLICIT_BATCH", "set_calibration_profile"):
        assert gone_in_11 in n103 and gone_in_11 not in n114
    for everywhere in ("execute_async_v3", "num_io_tensors", "set_tensor_address", "set_timing_cache", "DLA_core"):
        assert everywhere in n86 and everywhere in n103 and everywhere in n114


# --- the 10.x stubs -------------------------------------------------------------------------------------------


def _stub_dir(tmp: Path) -> Path:
    """A copy of tensorrt-stubs' .pyi files that mypy can read. The package ships tensorrt/ without py.typed
    (so mypy ignores it in site-packages) and five pybind11-generated signatures that are not Python (a parameter
    named `in`, a required parameter after defaults); those lines are repaired, nothing else is changed."""
    import importlib.util

    spec = importlib.util.find_spec("tensorrt_stubs")
    site = Path(spec.origin).parent.parent  # type: ignore[union-attr,arg-type]
    out = tmp / "stubs"
    for pkg in ("tensorrt", "tensorrt_bindings"):
        shutil.copytree(site / pkg, out / pkg, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    for pyi in out.rglob("*.pyi"):
        lines = pyi.read_text().splitlines()
        for i, line in enumerate(lines):
            if not line.strip().startswith("def "):
                continue
            try:
                ast.parse(line.strip() + " ...")
                continue
            except SyntaxError:
                pass
            line = re.sub(r"\bin:", "in_:", line)
            try:
                ast.parse(line.strip() + " ...")
            except SyntaxError:
                line = re.sub(r"(\w+: [^,=()]+(?:\[[^\]]*\])?) = None", r"\1", line)
            lines[i] = line
        pyi.write_text("\n".join(lines) + "\n")
    return out


MYPY_INI = """[mypy]
ignore_missing_imports = True
follow_imports = silent
[mypy-tensorrt,tensorrt.*,tensorrt_bindings,tensorrt_bindings.*]
ignore_errors = True
"""
TYPED = ["edgerep/backends/tensorrt/engine_build.py", "edgerep/backends/tensorrt/runner.py",
         "edgerep/backends/tensorrt/gpu.py", "edgerep/backends/tensorrt/adapter.py"]


def test_tensorrt_code_type_checks_against_the_stubs(tmp_path):
    pytest.importorskip("mypy", reason="mypy is not installed (pip install 'edgerep[dev]')")
    pytest.importorskip("tensorrt_stubs", reason="tensorrt-stubs is not installed (pip install --no-deps tensorrt-stubs: "
                                             "its `tensorrt` requirement installs only from pypi.nvidia.com)")
    stubs = _stub_dir(tmp_path)
    (tmp_path / "mypy.ini").write_text(MYPY_INI)
    env = {"MYPYPATH": str(stubs), "PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)}

    def mypy(*files: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "mypy", "--config-file", str(tmp_path / "mypy.ini"),
                               "--cache-dir", str(tmp_path / "cache"), "--show-error-codes", *files],
                              capture_output=True, text=True, cwd=str(REPO), env=env)

    # the check has teeth: the 10.x stubs reject the bindings API TensorRT 10 removed
    probe = tmp_path / "probe.py"
    probe.write_text("import tensorrt as trt\n\ndef f(e: trt.ICudaEngine) -> None:\n    e.num_bindings\n")
    proc = mypy(str(probe))
    assert '"ICudaEngine" has no attribute "num_bindings"' in proc.stdout, proc.stdout[-2000:]
    proc = mypy(*TYPED)
    assert proc.returncode == 0, proc.stdout[-4000:]


# --- trtexec options per release ------------------------------------------------------------------------------


def _trtexec_options() -> dict:
    return json.loads((TRT_DATA / "trtexec_options.json").read_text())


def _options_for(version: tuple[int, int, int]) -> tuple[str, set[str]]:
    """The newest release table at or before `version`'s major.minor, within its major."""
    tables = _trtexec_options()["versions"]
    keys = [k for k in tables if tuple(map(int, k.split("."))) <= version[:2] and int(k.split(".")[0]) == version[0]]
    key = max(keys, key=lambda k: tuple(map(int, k.split("."))))
    return key, set(tables[key]["options"])


@pytest.mark.parametrize("key", sorted(_trtexec_options()["versions"], key=lambda k: tuple(map(int, k.split(".")))))
def test_trtexec_lines_use_only_options_that_release_parses(key):
    from edgerep.backends.tensorrt.trtexec import trtexec_args
    from edgerep.errors import UserError

    v = parse_version(key)
    options = set(_trtexec_options()["versions"][key]["options"])
    feats = api_features(v)
    built = 0
    for precision in ("fp32", "fp16", "int8"):
        for mode in ("calibrate", "qdq"):
            for dla in (None, 0):
                for dynamic in (None, (1, 4, 8)):
                    try:
                        args = trtexec_args(v, precision, int8_mode=mode, input_name="input", input_shape=[1, 3, 32, 32],
                                            workspace_mb=512, dynamic_batch=dynamic, dla_core=dla,
                                            calib_cache="calib.cache")
                    except UserError:
                        continue  # combinations the version cannot build are refused with a message
                    built += 1
                    flags = {a.split("=")[0] for a in args} | {"--verbose"}  # build.sh adds --verbose
                    assert flags <= options, f"not trtexec {key} options: {sorted(flags - options)}"
                    if precision == "int8" and feats.precision_flags and "--stronglyTyped" not in flags:
                        assert "--fp16" in flags  # INT8 with FP16 fallback on 8.x - 10.x
    assert built >= 6


@pytest.mark.parametrize("target", ["tensorrt", "jetson-nano", "jetson-xavier-nx", "jetson-orin-nano", "jetson-agx-orin"])
def test_build_sh_of_each_profile_uses_its_trtexec(target, tmp_path, demo):
    """The engines build.sh builds for each shipped profile, checked against that release's trtexec options."""
    from edgerep.backends.tensorrt.host import update_bundle

    sim, _, int8_by_version, _, _ = demo
    profile = load_target(target)
    version = parse_version(profile.tensorrt.version)
    int8 = None
    if "int8" in profile.precisions:
        int8 = int8_by_version["10.3"] if version[0] >= 10 else int8_by_version["8.6"]
    bdir = update_bundle(tmp_path / "b", onnx_path=sim, profile=profile, precisions=list(profile.precisions),
                         int8=int8, fp16_onnx=sim if version[0] >= 11 else None)
    key, options = _options_for(version)
    script = (bdir / "build.sh").read_text()
    used = set(re.findall(r"(--[A-Za-z][A-Za-z0-9]*)", " ".join(
        line for line in script.splitlines() if '"$TRTEXEC" --onnx' in line)))
    assert used and used <= options, f"{target}: not trtexec {key} options: {sorted(used - options)}"


# --- Python 3.6 on the device ---------------------------------------------------------------------------------

# Library calls that need Python >= 3.7 (subprocess.run's capture_output/text are 3.7), by keyword.
PY37_KEYWORDS = {"capture_output", "text"}


def _device_sources() -> dict[str, str]:
    """Every Python file that runs on the device: check_engine.py and the sidecar writer inside build.sh."""
    from edgerep.backends.tensorrt import bundle

    return {"check_engine.py": (TRT_DATA / "check_engine.py").read_text(), "build.sh sidecar writer": bundle._SIDECAR_PY}


@pytest.mark.parametrize("name", list(_device_sources()))
def test_device_python_is_python36(name):
    source = _device_sources()[name]
    tree = ast.parse(source, feature_version=(3, 6))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "__future__":
            assert all(a.name != "annotations" for a in node.names), "from __future__ import annotations is 3.7+"
        if isinstance(node, ast.Call):
            assert not {k.arg for k in node.keywords} & PY37_KEYWORDS, f"{name}: line {node.lineno} needs Python 3.7"
    with pytest.raises(SyntaxError):  # the grammar check bites: a 3.8 walrus is refused
        ast.parse("if (n := 1):\n    pass\n", feature_version=(3, 6))


# --- the GPU tests' profiles, on every machine ----------------------------------------------------------------


@pytest.mark.parametrize("version", ["8.2.1", "8.5.2", "8.6.1", "10.3.0", "11.4.0"])
def test_gpu_test_profiles_load_and_their_host_setup_runs(version, demo, tmp_path):
    """test_tensorrt_engine.py skips here, so its profiles are loaded here for each TensorRT it may meet,
    and the part of its builds that needs no GPU (host INT8 artifacts, the device bundle) is run with them."""
    from edgerep.backends import get_backend
    from tests.backends.tensorrt.trt_gpu_profiles import gpu_int8_modes, write_gpu_profile

    sim, calib, _, _, sim19 = demo
    sim = sim19 if parse_version(version)[0] >= 11 else sim
    backend = get_backend("tensorrt")
    for mode in gpu_int8_modes(version):
        for dynamic in (False, True):
            profile = load_target(write_gpu_profile(tmp_path, version, mode, dynamic))
            assert profile.name == f"gpu-{mode}-{'dynamic' if dynamic else 'static'}"
            assert profile.tensorrt.int8_mode == mode and profile.dynamic_batch == dynamic
        profile = load_target(write_gpu_profile(tmp_path, version, mode))
        for precision in ("fp16", "int8"):
            art = backend.build(sim, precision, out_dir=tmp_path / mode, profile=profile,
                                calib=calib if precision == "int8" else None, options={"num_samples": 16})
            assert art.status == "skipped" and "on the device" in art.reason
        engines = json.loads((tmp_path / mode / "device-bundle" / "bundle.json").read_text())["engines"]
        assert [e["precision"] for e in engines] == ["fp16", "int8"]


def test_layer_placement_is_kept_at_info_and_verbose():
    """TensorRT 8.x logs "[DlaLayer]"/"[GpuLayer]" at INFO, 10.x may log them at VERBOSE: both are kept (other
    VERBOSE chatter is not), and the split reads them."""
    from edgerep.backends.tensorrt.gpu import INFO, VERBOSE, keep_message, layer_split

    lines = [(INFO, "[DlaLayer] {ForeignNode[/stage0/Conv...]}"), (VERBOSE, "[DlaLayer] {ForeignNode[/stage1/Conv]}"),
             (VERBOSE, "[GpuLayer] POOLING: /head/GlobalAveragePool"), (VERBOSE, "Tactic: 0x0 Time: 0.01")]
    kept = [(level, msg) for level, msg in lines if keep_message(level, msg)]
    assert kept == lines[:3]
    assert layer_split(kept) == (["{ForeignNode[/stage0/Conv...]}", "{ForeignNode[/stage1/Conv]}"],
                                 ["POOLING: /head/GlobalAveragePool"])


def test_a_rejected_timing_cache_is_replaced_with_a_warning(tmp_path, capsys):
    """Control flow only (a stand-in config): set_timing_cache's False result is not ignored; the build goes on
    with a fresh cache and the warning names the file. That TensorRT returns False for a foreign cache is
    NVIDIA's statement (release/10.3 include/NvInfer.h, setTimingCache)."""
    from edgerep.backends.tensorrt.engine_build import attach_timing_cache

    class Config:
        def __init__(self) -> None:
            self.attached: list[bytes] = []

        def create_timing_cache(self, blob: bytes) -> bytes:
            return blob

        def set_timing_cache(self, cache: bytes, ignore_mismatch: bool) -> bool:
            assert ignore_mismatch is False
            self.attached.append(cache)
            return cache == b""  # only the fresh cache is accepted

    config = Config()
    assert attach_timing_cache(config, b"foreign", tmp_path / "timing.cache") == b""
    assert config.attached == [b"foreign", b""]
    assert f"{tmp_path / 'timing.cache'}: TensorRT rejected this timing cache" in capsys.readouterr().err
    config = Config()
    attach_timing_cache(config, b"", tmp_path / "timing.cache")
    assert config.attached == [b""] and capsys.readouterr().err == ""
