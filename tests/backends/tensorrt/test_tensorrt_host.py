"""The TensorRT work that needs no GPU: lint, host calibration -> TensorRT cache, Q/DQ, device bundle,
version guard, trtexec flags. Real models (the demo RepVGG trained on digits, small torch exports with
operators TensorRT 8.2 lacks), real data (calib/digits), ONNX Runtime's own calibrators as the reference."""
from __future__ import annotations

import json
import os
import shlex
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnx.external_data_helper
import pytest
import torch
import torch.nn as nn
from onnx import TensorProto, helper, numpy_helper

from edgerep.backends.tensorrt import calib_cache, guard, qdq
from edgerep.backends.tensorrt.bundle import MANIFEST, load_bundle
from edgerep.backends.tensorrt.calibrate import calibrate, entropy_threshold
from edgerep.backends import get_backend
from edgerep.backends.tensorrt.host import PREDICTION_BACKEND, lint_for_profile
from edgerep.backends.tensorrt.lint import lint_onnx
from edgerep.backends.tensorrt.trtexec import engine_source, trtexec_args
from edgerep.backends.tensorrt.versions import (
    api_features,
    cache_header,
    ops_table,
    parse_cache_header,
    parse_version,
    version_code,
)
from edgerep.commands.check import run_check
from edgerep.commands.validate_bundle import run_validate_bundle
from edgerep.errors import UserError
from edgerep.files.artifacts import file_sha256, read_sidecar
from edgerep.targets import load_target
from tests.digits_demo import DIGITS, digits_data


def _export(model: nn.Module, path: Path, *, opset: int, shape=(1, 3, 8, 8), dynamic: bool = False) -> Path:
    kwargs = {"dynamic_axes": {"input": {0: "N"}}} if dynamic else {}
    torch.onnx.export(model.eval(), torch.randn(*shape), str(path), opset_version=opset, input_names=["input"],
                      output_names=["output"], dynamo=False, **kwargs)
    return path


class _NotOn82(nn.Module):
    """fmod -> Mod and reciprocal -> Reciprocal: both unsupported by the TensorRT 8.2 parser, supported from 8.5."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return (torch.fmod(y, 3.0) + torch.reciprocal(y.abs() + 1.0)).mean((2, 3))


class _LayerNorm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.norm = nn.LayerNorm(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x).mean((2, 3)))


# --- the demo model and data, through the real `edgerep build` for a Jetson profile --------------


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """`edgerep build --target jetson-xavier-nx` on this machine (no TensorRT): engines skipped, a device
    bundle, the Q/DQ prediction. TensorRT 8.5 with int8_mode calibrate and DLA core 0. A whole build: every test
    that takes this fixture is marked slow."""
    from edgerep.pipeline.build import BuildOptions, build

    out = tmp_path_factory.mktemp("trt-build") / "run"
    result = build(BuildOptions(target="jetson-xavier-nx", output=out, calib_samples=120, val_samples=96))
    return result


@pytest.mark.slow
def test_build_without_tensorrt_writes_bundle_and_prediction(built):
    assert built.exit_code == 0
    engines = built.report["engines"]
    trt_rows = [e for e in engines if e["backend"] == "tensorrt"]
    assert [e["precision"] for e in trt_rows] == ["fp16", "int8"]
    assert all(e["status"] == "skipped" and "on the device" in e["reason"] for e in trt_rows)
    pred = [e for e in engines if e["backend"] == PREDICTION_BACKEND]
    assert len(pred) == 1 and pred[0]["precision"] == "int8" and pred[0]["status"] == "ok" and pred[0]["prediction"]
    # the INT8 prediction of the fused RepVGG: close to the unfused PyTorch reference on labelled digits
    acc = pred[0]["accuracy"]
    assert acc["cosine"] > 0.95 and acc["top1_agreement"] >= 90.0 and acc["top1"] is not None
    bundle = load_bundle(built.out_dir / "engines" / "device-bundle")
    m = bundle.manifest
    assert m["trt_version"] == "8.5.2" and m["cache_header"] == "TRT-8502-EntropyCalibration2"
    assert m["reference"]["num_samples"] == 96 and m["reference"]["labelled"]
    assert m["predictions"]["int8"]["accuracy"]["cosine"] == pytest.approx(acc["cosine"])
    assert {"model.onnx", "model.qdq.onnx", "calib.cache", "calib.cache.json", "reference.npz", "build.sh",
            "README.md", "profile.toml"} <= set(m["files"])
    for eng in m["engines"]:  # TensorRT 8.5: --memPoolSize (not --workspace), --buildOnly (not --skipInference)
        assert "--memPoolSize=workspace:1024" in eng["trtexec"] and "--buildOnly" in eng["trtexec"]
        on_dla = eng["dla_core"] == 0  # a DLA profile: each precision on the GPU and on DLA core 0
        assert on_dla == ("--useDLACore=0" in eng["trtexec"]) == ("--allowGPUFallback" in eng["trtexec"])
    int8 = next(e for e in m["engines"] if e["precision"] == "int8")
    assert int8["onnx"] == "model.onnx" and "--calib=calib.cache" in int8["trtexec"]
    assert subprocess.run(["bash", "-n", str(bundle.path / "build.sh")]).returncode == 0


@pytest.mark.slow
def test_validate_bundle_with_onnxruntime_standing_in(built):
    bdir = built.out_dir / "engines" / "device-bundle"
    # model.onnx through ONNX Runtime reproduces the unfused PyTorch reference carried in the bundle
    assert run_validate_bundle(bundle=bdir, engine=bdir / "model.onnx") == 0
    from io import StringIO

    from rich.console import Console

    buf = StringIO()
    code = run_validate_bundle(bundle=bdir, engine=bdir / "model.onnx", as_json=True, out=Console(file=buf, width=400))
    record = json.loads(buf.getvalue())
    assert code == 0 and record["accuracy"]["max_abs_err"] < 1e-4 and record["accuracy"]["top1_agreement"] == 100.0
    # the Q/DQ model gives the same numbers as the prediction row of the build
    buf = StringIO()
    run_validate_bundle(bundle=bdir, engine=bdir / "model.qdq.onnx", as_json=True, out=Console(file=buf, width=400))
    q = json.loads(buf.getvalue())
    pred = next(e for e in built.report["engines"] if e["backend"] == PREDICTION_BACKEND)
    assert q["precision"] == "int8" and q["accuracy"]["cosine"] == pytest.approx(pred["accuracy"]["cosine"], abs=1e-6)


@pytest.mark.slow
def test_validate_bundle_finds_engine_by_its_name_inside_the_bundle(built, tmp_path, monkeypatch):
    """`edgerep validate --bundle DIR --engine model.onnx` from outside DIR: the name is looked up in the bundle."""
    bdir = (built.out_dir / "engines" / "device-bundle").resolve()
    monkeypatch.chdir(tmp_path)  # a folder without model.onnx
    assert run_validate_bundle(bundle=bdir, engine=Path("model.onnx")) == 0
    with pytest.raises(UserError, match=r"--engine nope.engine: file not found; give its path, or its name"):
        run_validate_bundle(bundle=bdir, engine=Path("nope.engine"))


@pytest.mark.slow
def test_validate_bundle_refuses_tampered_or_foreign_input(built, tmp_path):
    src = built.out_dir / "engines" / "device-bundle"
    copy = tmp_path / "bundle"
    shutil.copytree(src, copy)
    with open(copy / "model.qdq.onnx", "r+b") as f:
        f.seek(100)
        f.write(b"\x00\x01\x02")
    with pytest.raises(UserError, match="does not match its hash"):
        run_validate_bundle(bundle=copy, engine=copy / "model.onnx")
    with pytest.raises(UserError, match="no bundle.json"):
        run_validate_bundle(bundle=tmp_path, engine=copy / "model.onnx")
    with pytest.raises(UserError, match="expected a TensorRT plan"):
        run_validate_bundle(bundle=src, engine=src / "calib.cache")


@pytest.mark.slow
def test_validate_bundle_cli_imports_no_torch(built):
    bdir = built.out_dir / "engines" / "device-bundle"
    code = ("import sys\nfrom edgerep.cli import app\n"
            f"rc = app(args=['validate', '--bundle', {str(bdir)!r}, '--engine', {str(bdir / 'model.onnx')!r}], "
            "standalone_mode=False)\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\nsys.exit(rc)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "passes" in proc.stdout


PLACEMENT_8X = ["[08/31/2023-07:07:49] [I] [TRT] [DlaLayer] {ForeignNode[/stage0/Conv.../stage3/Relu]}",
                "[08/31/2023-07:07:49] [I] [TRT] [GpuLayer] POOLING: /head/GlobalAveragePool"]


def _fake_trtexec(bin_dir: Path, banner: str, placement: list[str] = PLACEMENT_8X) -> Path:
    """A stand-in for NVIDIA's trtexec binary (absent here) that checks only build.sh's control flow: prints a
    version banner, logs its arguments, writes the engine file and the given layer-placement log lines."""
    path = bin_dir / "trtexec"
    path.write_text("#!/usr/bin/env bash\n"
                    f"echo '&&&& RUNNING TensorRT.trtexec [TensorRT {banner}] # trtexec '\"$*\"\n"
                    "echo \"$*\" >> \"$(dirname \"$0\")/calls.log\"\n"
                    "for a in \"$@\"; do case \"$a\" in --saveEngine=*) printf 'plan-%s' \"$RANDOM\" > \"${a#--saveEngine=}\";; esac; done\n"
                    + "".join(f"echo {shlex.quote(line)}\n" for line in placement))
    path.chmod(0o755)
    return path


@pytest.mark.slow
def test_build_sh_heads_the_cache_for_the_loaded_library_and_reads_verbose_placement(built, tmp_path):
    """The cache header names the TensorRT library Python loads, not trtexec's compile-time banner
    (samples/common/logging.h prints NV_TENSORRT_VERSION); DLA placement logged at VERBOSE (10.x) is read; with a DLA
    core asked for, the GPU layers are reported even when no layer landed on the DLA."""
    bdir = tmp_path / "bundle"
    shutil.copytree(built.out_dir / "engines" / "device-bundle", bdir)
    bin_dir, lib = tmp_path / "bin", tmp_path / "lib" / "tensorrt"
    bin_dir.mkdir()
    lib.mkdir(parents=True)
    # the library version as `python3 -c 'import tensorrt'` sees it (a stand-in package: only __version__)
    (lib / "__init__.py").write_text('__version__ = "8.5.3.1"\n')
    verbose = ["[12/01/2024-10:00:00] [V] [TRT] [DlaLayer] {ForeignNode[/stage0/Conv.../stage3/Relu]}",
               "[12/01/2024-10:00:00] [V] [TRT] [GpuLayer] POOLING: /head/GlobalAveragePool"]
    trtexec = _fake_trtexec(bin_dir, "v8502", verbose)
    env = {**os.environ, "TRTEXEC": str(trtexec), "PYTHONPATH": str(lib.parent),
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    proc = subprocess.run(["bash", str(bdir / "build.sh"), "int8"], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert (bdir / "calib.device.cache").read_text().splitlines()[0] == "TRT-8503-EntropyCalibration2"
    assert "banner" not in proc.stderr
    side = read_sidecar(bdir / "model.int8.dla0.engine")
    assert side["trt_version"] == "8.5.3" and side["dla_layers"] == ["{ForeignNode[/stage0/Conv.../stage3/Relu]}"]
    # nothing on the DLA: every layer is a GPU fallback, and the sidecar says so
    _fake_trtexec(bin_dir, "v8502", ["[12/01/2024-10:00:00] [V] [TRT] [GpuLayer] CONVOLUTION: /stage0/Conv"])
    proc = subprocess.run(["bash", str(bdir / "build.sh"), "int8"], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    side = read_sidecar(bdir / "model.int8.dla0.engine")
    assert side["dla_layers"] == [] and side["gpu_fallback_layers"] == ["CONVOLUTION: /stage0/Conv"]
    # no library found: the banner is the last resort, with a warning saying what it is
    env["PYTHONPATH"] = str(tmp_path / "nowhere")
    proc = subprocess.run(["bash", str(bdir / "build.sh"), "int8"], env=env, capture_output=True, text=True)
    assert proc.returncode == 0 and "taken from trtexec's banner" in proc.stderr
    assert (bdir / "calib.device.cache").read_text().splitlines()[0] == "TRT-8502-EntropyCalibration2"


@pytest.mark.slow
def test_build_sh_guards_version_and_writes_sidecars(built, tmp_path):
    bdir = tmp_path / "bundle"
    shutil.copytree(built.out_dir / "engines" / "device-bundle", bdir)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    trtexec = _fake_trtexec(bin_dir, "v8502")
    env = {**os.environ, "TRTEXEC": str(trtexec), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    proc = subprocess.run(["bash", str(bdir / "build.sh")], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert (bdir / "calib.device.cache").read_text().splitlines()[0] == "TRT-8502-EntropyCalibration2"
    calls = (bin_dir / "calls.log").read_text()
    assert "--calib=calib.device.cache" in calls and "--fp16" in calls
    # a DLA profile: each precision on the GPU (model.<p>.engine) and on DLA core 0 (model.<p>.dla0.engine)
    for precision, name, dla in (("fp16", "model.fp16.engine", None), ("fp16", "model.fp16.dla0.engine", 0),
                                 ("int8", "model.int8.engine", None), ("int8", "model.int8.dla0.engine", 0)):
        engine = bdir / name
        side = read_sidecar(engine)  # the stdlib writer makes the same artifact hash as edgerep's
        assert side is not None and side["trt_version"] == "8.5.2" and side["precision"] == precision
        assert side["dla_core"] == dla
        assert side["gpu_fallback_layers"] == (["POOLING: /head/GlobalAveragePool"] if dla is not None else [])
        assert guard.engine_mismatches(side, {"trt_version": "8.5.2.2"}) == []
        assert guard.engine_mismatches(side, {"trt_version": "10.3.0.26"}) == ["built with TensorRT 8.5.2, running TensorRT 10.3.0"]
    # a device on another TensorRT is refused before anything is built
    _fake_trtexec(bin_dir, "v100300")
    proc = subprocess.run(["bash", str(bdir / "build.sh"), "fp16"], env=env, capture_output=True, text=True)
    assert proc.returncode == 2 and "bundle is for TensorRT 8.5" in proc.stderr
    # a dotted banner of the same release is accepted, and the cache is re-headed for its patch
    _fake_trtexec(bin_dir, "v8.5.3.1")
    proc = subprocess.run(["bash", str(bdir / "build.sh"), "int8"], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert (bdir / "calib.device.cache").read_text().splitlines()[0] == "TRT-8503-EntropyCalibration2"


# --- lint ----------------------------------------------------------------------------------------


def test_lint_flags_operators_trt82_lacks(tmp_path):
    path = _export(_NotOn82(), tmp_path / "m.onnx", opset=13)
    nano = lint_onnx(path, "8.2", profile_opset=13)
    unsupported = {(f.op_type, f.node) for f in nano.errors if f.code == "unsupported-op"}
    assert unsupported == {("Mod", "/Mod"), ("Reciprocal", "/Reciprocal")}
    assert all(f.fix for f in nano.errors) and nano.exit_code() == 1
    assert nano.source.startswith("onnx/onnx-tensorrt@4f54a19")
    assert lint_onnx(path, "8.5", profile_opset=17).errors == []  # both became supported in 8.5
    assert run_check(target="jetson-nano", model=str(path)) == 1
    assert run_check(target="jetson-orin-nano", model=str(path)) == 0


def test_lint_opset_and_layernorm(tmp_path):
    path = _export(_LayerNorm(), tmp_path / "ln.onnx", opset=17)
    xavier = load_target("jetson-xavier-nx")
    report = lint_for_profile(path, xavier)  # TensorRT 8.5 lists LayerNormalization as unsupported
    assert [(f.code, f.op_type) for f in report.errors] == [("unsupported-op", "LayerNormalization")]
    assert "opset <= 16" in report.errors[0].fix
    assert lint_for_profile(path, load_target("jetson-orin-nano")).errors == []
    nano = lint_for_profile(path, load_target("jetson-nano"))
    codes = {f.code for f in nano.errors}
    assert {"opset-too-new", "unknown-op"} <= codes  # opset 17 > 13, LayerNormalization not in the 8.2 table


def _graph_model(nodes, inputs, outputs, inits=(), opset=13):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def test_lint_attributes_int64_dynamic_custom():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    idx = helper.make_tensor_value_info("idx", TensorProto.INT64, None)
    big = numpy_helper.from_array(np.array([0, 2 ** 40], dtype=np.int64), "big")
    scales = numpy_helper.from_array(np.array([1, 1, 2, 2], dtype=np.float32), "scales")
    nodes = [
        helper.make_node("Resize", ["x", "", "scales"], ["r"], name="up", mode="cubic"),
        helper.make_node("MaxPool", ["r"], ["p", "idx"], name="pool", kernel_shape=[2, 2]),
        helper.make_node("Gather", ["p", "big"], ["g"], name="gather", axis=1),
        helper.make_node("MyOp", ["g"], ["y"], name="custom", domain="com.example"),
    ]
    model = _graph_model(nodes, [x], [y, idx], [big, scales])
    report = lint_onnx(model, "8.2")
    found = {(f.code, f.node) for f in report.findings}
    assert ("restriction", "up") in found and any("mode='cubic'" in f.message for f in report.errors)
    assert ("restriction", "pool") in found  # the Indices output is used
    assert ("int64-range", "gather") in found
    assert ("custom-op", "custom") in found
    dyn = [f for f in report.errors if f.code == "dynamic-shape"]
    assert {f.message.split(" of ")[0] for f in dyn} == {"axis 0", "axis 2"}
    # with an optimization profile for the batch, only the spatial axis remains an error
    report = lint_onnx(model, "8.2", dynamic_batch=True)
    assert [f.message.split(" of ")[0] for f in report.errors if f.code == "dynamic-shape"] == ["axis 2"]
    # TensorRT 10 parses INT64 natively: no INT64 finding there
    assert not [f for f in lint_onnx(model, "10.3").findings if f.code.startswith("int64")]


@pytest.mark.slow
def test_lint_profile_settings_and_clean_model(built):
    sim = built.out_dir / "onnx" / "model.sim.onnx"
    for name in ("tensorrt", "jetson-xavier-nx", "jetson-orin-nano", "jetson-agx-orin"):
        report = lint_for_profile(sim, load_target(name))  # the opset-17 export of the demo RepVGG is clean
        assert report.exit_code() == 0, (name, [f.message for f in report.errors])
    nano = lint_for_profile(sim, load_target("jetson-nano"))
    assert [f.code for f in nano.errors] == ["opset-too-new"] and "opset 13" in nano.errors[0].fix
    r = lint_onnx(sim, "11.1", int8_mode="calibrate", precisions=["int8"], dla_core=0)
    assert {f.code for f in r.errors} == {"int8-mode", "dla"}
    with pytest.raises(UserError, match="not a TensorRT profile"):
        run_check(target="openvino-cpu", model=str(sim))


@pytest.mark.slow
def test_lint_flags_qdq_on_dla_and_int8_without_native_support(built):
    sim = built.out_dir / "onnx" / "model.sim.onnx"
    qdq_dla = lint_onnx(sim, "10.3", int8_mode="qdq", precisions=["fp16", "int8"], dla_core=0)
    assert [f.code for f in qdq_dla.errors] == ["qdq-on-dla"] and "calibrate" in qdq_dla.errors[0].fix
    assert lint_onnx(sim, "10.3", int8_mode="calibrate", precisions=["int8"], dla_core=0).errors == []
    assert lint_onnx(sim, "10.3", int8_mode="qdq", precisions=["fp16"], dla_core=0).errors == []  # no INT8 asked
    assert {f.code for f in lint_onnx(sim, "10.13", precisions=["fp16"], dla_core=0).errors} == {"dla"}  # after 10.7
    # Jetson Nano (sm_53): INT8 is emulated; the shipped profile builds FP16 only, a custom INT8 one is warned
    nano = load_target("jetson-nano")
    assert nano.precisions == ["fp16"] and nano.tensorrt.compute_capability == "5.3"
    emulated = lint_onnx(sim, "8.2", precisions=["fp16", "int8"], compute_capability="5.3")
    assert [f.code for f in emulated.warnings] == ["int8-emulated"] and "slower than FP16" in emulated.warnings[0].message
    assert not [f for f in lint_onnx(sim, "8.5", precisions=["int8"], compute_capability="7.2").findings
                if f.code == "int8-emulated"]


def _external_model(folder: Path, location: str) -> Path:
    """A one-Conv model whose weight lives in an external data file at `location` (relative to the model)."""
    weight = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w")
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 6, 6])
    model = _graph_model([helper.make_node("Conv", ["input", "w"], ["y"], name="conv")], [x], [y], [weight])
    onnx.external_data_helper.set_external_data(model.graph.initializer[0], location=location, offset=0,
                                                length=4 * 4 * 27)
    model.graph.initializer[0].ClearField("raw_data")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "m.onnx"
    onnx.save(model, str(path))
    return path


def test_check_refuses_external_data_outside_the_model_folder_and_reports_missing_data(tmp_path):
    from edgerep.cli import main

    outside = _external_model(tmp_path / "models", "../../etc/passwd")
    with pytest.raises(UserError, match=r"m.onnx: tensor 'w' points its external data at '../../etc/passwd', outside"):
        run_check(target="jetson-orin-nano", model=str(outside))
    with pytest.raises(SystemExit) as exc:  # the command: exit 2, no traceback
        main(["check", "-t", "jetson-orin-nano", "-m", str(outside)])
    assert exc.value.code == 2
    absolute = _external_model(tmp_path / "abs", "/etc/hostname")
    with pytest.raises(UserError, match="outside"):
        run_check(target="jetson-orin-nano", model=str(absolute))
    missing = _external_model(tmp_path / "missing", "weights.bin")
    report = lint_for_profile(missing, load_target("jetson-orin-nano"))
    assert [(f.code, f.node) for f in report.errors] == [("external-data-missing", "<initializer w>")]
    assert run_check(target="jetson-orin-nano", model=str(missing)) == 1
    (tmp_path / "missing" / "weights.bin").write_bytes(b"\0" * 100)  # truncated: 100 of 432 bytes
    assert [f.code for f in lint_for_profile(missing, load_target("jetson-orin-nano")).errors] == ["external-data-short"]
    (tmp_path / "missing" / "weights.bin").write_bytes(np.ones(108, np.float32).tobytes())
    assert lint_for_profile(missing, load_target("jetson-orin-nano")).errors == []


# --- calibration cache -----------------------------------------------------------------------------


def test_entropy_threshold_equals_onnxruntime():
    from onnxruntime.quantization.calibrate import HistogramCollector

    rng = np.random.default_rng(0)
    for trial in range(4):
        x = np.concatenate([rng.standard_normal(4000) * rng.uniform(0.2, 3),
                            rng.standard_exponential(200) * 6]).astype(np.float32)
        if trial % 2:
            x = np.maximum(x, 0)  # a ReLU output: one-sided
        collector = HistogramCollector("entropy", False, 512, 128, None, None)
        collector.collect({"t": [x]})
        hist = collector.histogram_dict["t"]
        lo_ref, hi_ref = collector.get_entropy_threshold(hist, 128)  # ONNX Runtime's (clipped to min/max)
        lo, hi = entropy_threshold(hist[0], hist[1], 128)
        assert (max(lo, hist[2]), min(hi, hist[3])) == (lo_ref, hi_ref)


@pytest.mark.slow
def test_cache_format_parses_back_to_onnxruntime_ranges(built, tmp_path):
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator

    sim = built.out_dir / "onnx" / "model.sim.onnx"
    src = digits_data("calib")
    ranges = calibrate(sim, src, method="minmax", num_samples=64)
    # ONNX Runtime's MinMax calibrator, run here directly, is the reference for the ranges
    calibrator = create_calibrator(sim, None, str(tmp_path / "aug.onnx"), CalibrationMethod.MinMax)
    batches = iter([{"input": x} for x, _ in src.iter_batches(1, limit=64)])

    class Reader:
        def get_next(self):
            return next(batches, None)

    calibrator.collect_data(Reader())
    ort_ranges = calibrator.compute_data()
    path = calib_cache.write_cache(tmp_path / "calib.cache", ranges.amax(), parse_version("8.5"))
    lines = path.read_text().splitlines()
    assert lines[0] == "TRT-8502-EntropyCalibration2" and lines[1].startswith("input: ")
    cache = calib_cache.read_cache(path)
    assert set(cache.scales) == set(ort_ranges.keys())
    for name, td in ort_ranges.items():
        amax = max(abs(float(np.min(td.range_value[0]))), abs(float(np.max(td.range_value[1]))))
        assert cache.scales[name] == float(np.float32(amax / 127.0)), name
    # digits normalised with mean 0.5, std 0.5 span [-1, 1]: the input scale is 1/127, NVIDIA's 3c010204 pattern
    assert lines[1] == "input: " + struct.pack(">f", 1 / 127).hex() == "input: 3c010204"
    assert calib_cache.hex_scale("3c010a14") == pytest.approx(1.0002 / 127, rel=1e-4)  # NVIDIA sampleINT8 README


@pytest.mark.slow
def test_calib_method_option_gives_that_calibrators_ranges(built, tmp_path):
    """`calib_method` changes the scales TensorRT gets: the percentile build's cache holds exactly the ranges of
    ONNX Runtime's PercentileCalibrater (run here directly on the same samples, in the same chunks), not the
    min/max build's."""
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator

    from edgerep.backends import get_backend
    from edgerep.backends.tensorrt.calibrate import CHUNK_SAMPLES, PERCENTILE, PERCENTILE_BINS

    sim = built.out_dir / "onnx" / "model.sim.onnx"
    src = digits_data("calib")
    xavier = load_target("jetson-xavier-nx")
    caches = {}
    for method in ("percentile", "minmax"):
        art = get_backend("tensorrt").build(sim, "int8", out_dir=tmp_path / method, profile=xavier, calib=src,
                                            options={"calib_method": method, "num_samples": 24})
        caches[method] = calib_cache.read_cache(Path(art.info["calibration_cache"])).scales
    calibrator = create_calibrator(sim, None, str(tmp_path / "aug.onnx"), CalibrationMethod.Percentile,
                                   extra_options={"num_bins": PERCENTILE_BINS, "percentile": PERCENTILE, "symmetric": True})
    samples = [{"input": x} for x, _ in src.iter_batches(1, limit=24)]
    for i in range(0, len(samples), CHUNK_SAMPLES):
        chunk = iter(samples[i:i + CHUNK_SAMPLES])

        class Reader:
            def get_next(self):
                return next(chunk, None)

        calibrator.collect_data(Reader())
    ort_ranges = calibrator.compute_data()
    assert set(caches["percentile"]) == set(ort_ranges.keys())
    for name, td in ort_ranges.items():
        amax = max(abs(float(np.min(td.range_value[0]))), abs(float(np.max(td.range_value[1]))))
        assert caches["percentile"][name] == float(np.float32(amax / 127.0)), name
    assert any(caches["percentile"][k] != caches["minmax"][k] for k in caches["minmax"])


def test_cache_headers_per_version_and_retag():
    assert cache_header(parse_version("8.2")) == "TRT-8201-EntropyCalibration2"
    assert cache_header(parse_version("10.3")) == "TRT-100300-EntropyCalibration2"
    assert version_code(parse_version("8.5.2.2")) == 8502
    assert parse_cache_header("TRT-100300-EntropyCalibration2")[1] == [(10, 3, 0)]
    assert parse_cache_header("TRT-10300-EntropyCalibration2")[1] == []  # 5 digits: no version TensorRT writes
    text = calib_cache.cache_text({"input": 1.0, "conv1/Conv:0": 2.5}, parse_version("8.5"))
    moved = calib_cache.retag(text, parse_version("10.3"))
    assert moved.splitlines()[0] == "TRT-100300-EntropyCalibration2"
    assert calib_cache.parse_cache(moved).scales == calib_cache.parse_cache(text).scales
    assert calib_cache.parse_cache(text).scales["conv1/Conv:0"] == pytest.approx(2.5 / 127)
    with pytest.raises(ValueError):
        calib_cache.parse_cache("TRT-8502-EntropyCalibration2\ninput 3c010204\n")


# --- Q/DQ ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_qdq_model_follows_tensorrt_conventions_and_cache(built, tmp_path):
    sim = built.out_dir / "onnx" / "model.sim.onnx"
    host = built.out_dir / "engines" / "tensorrt-host"
    model = onnx.load(str(host / "model.qdq.onnx"))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    assert convs
    for conv in convs:
        x_dq = next(n for n in model.graph.node if conv.input[0] in n.output)
        w_dq = next(n for n in model.graph.node if conv.input[1] in n.output)
        assert x_dq.op_type == w_dq.op_type == "DequantizeLinear"
        assert inits[x_dq.input[1]].size == 1  # activations per tensor
        out_channels = inits[next(n for n in model.graph.node if w_dq.input[0] in n.output).input[0]].shape[0]
        assert inits[w_dq.input[1]].shape == (out_channels,)  # weights per output channel
        assert next(a.i for a in w_dq.attribute if a.name == "axis") == 0
    zero_points = [inits[n.input[2]] for n in model.graph.node
                   if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2]
    assert zero_points and all(z.dtype == np.int8 and not z.any() for z in zero_points)
    # activation scales in the Q/DQ graph are exactly the cache's scales: one set of ranges for both INT8 modes
    cache = calib_cache.read_cache(host / "calib.cache")
    scales = qdq.activation_scales(model)
    assert scales and all(scales[k] == cache.scales[k] for k in scales)
    # the route without calibration_cache_path (older ONNX Runtime) gives the same graph scales
    src = digits_data("calib")
    ranges = calibrate(sim, src, method="percentile", num_samples=32)
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    qdq.make_qdq(sim, a, ranges, use_cache_path=True)
    qdq.make_qdq(sim, b, ranges, use_cache_path=False)
    sa, sb = qdq.activation_scales(onnx.load(str(a))), qdq.activation_scales(onnx.load(str(b)))
    assert sa.keys() == sb.keys() and all(sa[k] == pytest.approx(sb[k], rel=1e-6) for k in sa)


@pytest.fixture(scope="module")
def host_qdq(tmp_path_factory):
    """The demo fused and exported, and the TensorRT backend's host-side INT8 preparation for a Jetson profile
    (no TensorRT needed): (the simplified FP32 ONNX, the Q/DQ model TensorRT would build from). Light enough to run
    under qemu's AVX2 emulation (scripts/test_on_avx2.sh), unlike the whole build of `built`."""
    from tests.digits_demo import export_demo

    out = tmp_path_factory.mktemp("trt-qdq")
    _, _, sim = export_demo(out / "onnx")
    art = get_backend("tensorrt").build(sim, "int8", out_dir=out / "trt", profile=load_target("jetson-xavier-nx"),
                                        calib=digits_data("calib"), options={"num_samples": 120})
    return sim, Path(art.info["qdq"])


def test_qdq_accuracy_close_to_fp32_on_digits(host_qdq):
    """The TensorRT Q/DQ model's full-range INT8 (weights up to +-127) predicted in ONNX Runtime the way the
    product predicts it (simulated Q/DQ: float ops, the same on every CPU). ONNX Runtime's integer kernels would
    depend on the CPU (on AVX2 without VNNI full-range u8s8 pair sums can saturate int16), which is no prediction
    of TensorRT's. The next test runs the same prediction on an emulated AVX2 CPU (CI installs qemu-user), and this
    whole test is in scripts/test_on_avx2.sh's emulated set."""
    import onnxruntime as ort

    from edgerep.backends.onnxruntime.runner import OrtRunner

    sim, qdq_path = host_qdq
    with np.load(DIGITS / "val.npz") as data:
        x, y = data["x"], data["y"]
    fp32 = ort.InferenceSession(str(sim), providers=["CPUExecutionProvider"])
    a = np.concatenate([fp32.run(None, {"input": x[i:i + 32]})[0] for i in range(0, len(x), 32)])
    with OrtRunner(qdq_path, simulate_qdq=True) as int8:
        b = np.concatenate([int8.run(x[i:i + 32]) for i in range(0, len(x), 32)])
    top1_fp32, top1_int8 = (a.argmax(1) == y).mean() * 100, (b.argmax(1) == y).mean() * 100
    assert top1_fp32 >= 97.0
    assert top1_int8 >= top1_fp32 - 2.0  # 360 labelled digits: within two points of FP32
    cos = np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    assert cos.mean() > 0.97


# The Q/DQ prediction as the product runs it (simulated Q/DQ), in a child that imports only numpy and ONNX Runtime,
# so it is cheap under emulation: prints the top-1 over the labelled digits.
_QDQ_CHILD = """
import sys
import numpy as np
import onnxruntime as ort
opts = ort.SessionOptions()
opts.log_severity_level = 3
opts.add_session_config_entry("session.disable_quant_qdq", "1")
session = ort.InferenceSession(sys.argv[1], opts, providers=["CPUExecutionProvider"])
with np.load(sys.argv[2]) as data:
    x, y = data["x"], data["y"]
logits = np.concatenate([session.run(None, {"input": x[i:i + 32]})[0] for i in range(0, len(x), 32)])
print((logits.argmax(1) == y).mean() * 100)
"""


@pytest.mark.skipif(not (shutil.which("qemu-x86_64") and os.uname().machine == "x86_64"),
                    reason="needs qemu-user (apt-get install qemu-user) on x86-64 to emulate an AVX2 CPU")
def test_qdq_prediction_is_the_same_on_an_emulated_avx2_cpu(host_qdq):
    """The check above on an emulated AVX2 CPU without VNNI (qemu-x86_64 -cpu Haswell, the kernels an AVX2 box
    picks): the full-range Q/DQ model predicted the product's way gives the same top-1 there as here. CI installs
    qemu-user, so this INT8 case runs under emulation on every CI run."""
    _, qdq_path = host_qdq
    val = DIGITS / "val.npz"
    here = subprocess.run([sys.executable, "-c", _QDQ_CHILD, str(qdq_path), str(val)], capture_output=True, text=True,
                          timeout=300, check=True)
    emulated = subprocess.run([shutil.which("qemu-x86_64") or "qemu-x86_64", "-cpu", "Haswell", sys.executable, "-c",
                               _QDQ_CHILD, str(qdq_path), str(val)], capture_output=True, text=True, timeout=900)
    assert emulated.returncode == 0, emulated.stderr[-2000:]
    top1_here, top1_avx2 = float(here.stdout.split()[-1]), float(emulated.stdout.split()[-1])
    assert top1_avx2 >= 97.0 and abs(top1_avx2 - top1_here) <= 0.3  # 360 digits: at most one image apart


@pytest.mark.slow
def test_fp16_onnx_for_trt11(built, tmp_path):
    import onnxruntime as ort

    sim = built.out_dir / "onnx" / "model.sim.onnx"
    half = qdq.make_fp16(sim, tmp_path / "model.fp16.onnx").path
    m = onnx.load(str(half))
    assert m.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT  # float32 I/O kept
    assert any(t.data_type == TensorProto.FLOAT16 for t in m.graph.initializer)
    with np.load(DIGITS / "val.npz") as data:
        x = data["x"][:16]
    ref = ort.InferenceSession(str(sim)).run(None, {"input": x[:1]})[0]
    out = ort.InferenceSession(str(half)).run(None, {"input": x[:1]})[0]
    assert np.abs(out - ref).max() < 2e-2 * max(1.0, np.abs(ref).max())


# --- versions, trtexec, guard ----------------------------------------------------------------------

@pytest.mark.parametrize("version", ["8.0", "8.2", "8.4", "8.5", "8.6", "10.0", "10.3", "10.12", "11.1"])
def test_trtexec_sources_and_precision_flags(version):
    """Which ONNX each engine starts from, and the precision flags per version. (Whether each flag exists in that
    release's trtexec is checked against its sampleOptions.cpp in test_tensorrt_api.py.)"""
    v = parse_version(version)
    for precision in ("fp16", "int8"):
        for mode in ("calibrate", "qdq"):
            if precision == "int8" and mode == "calibrate" and v[0] >= 11:
                with pytest.raises(UserError, match="removed calibrators"):
                    engine_source(v, precision, mode)
                continue
            args = trtexec_args(v, precision, int8_mode=mode, input_name="input", input_shape=[1, 3, 32, 32],
                                workspace_mb=512, calib_cache="calib.cache")
            source = next(a for a in args if a.startswith("--onnx=")).split("=")[1]
            if precision == "int8":
                assert source == ("model.qdq.onnx" if mode == "qdq" else "model.onnx")
                # INT8 with FP16 on 8.x - 10.x (weakly typed, also from Q/DQ on 10.12+): unscaled layers run FP16
                assert ("--fp16" in args) == (v[0] < 11)
            else:
                assert source == ("model.fp16.onnx" if v[0] >= 11 else "model.onnx")
                assert ("--fp16" in args) == (v[0] < 11)
    with pytest.raises(UserError):
        trtexec_args(v, "fp32", int8_mode="qdq", input_name="input", input_shape=[1, 3, 8, 8], workspace_mb=64,
                     dla_core=0)  # DLA runs FP16/INT8 only


def test_dla_int8_needs_the_calibration_cache_and_dla_is_gated_per_release():
    """NVIDIA/TensorRT#2222: DLA runs INT8 only from implicit quantization; DLA support per the release notes."""
    from edgerep.backends.tensorrt.versions import dla_support

    for version in ("8.5", "10.3"):
        with pytest.raises(UserError, match="runs INT8 on the DLA only from a calibration cache"):
            trtexec_args(parse_version(version), "int8", int8_mode="qdq", input_name="input", input_shape=[1, 3, 8, 8],
                         workspace_mb=64, dla_core=0)
        args = trtexec_args(parse_version(version), "int8", int8_mode="calibrate", input_name="input",
                            input_shape=[1, 3, 8, 8], workspace_mb=64, dla_core=0, calib_cache="calib.cache")
        assert {"--int8", "--fp16", "--calib=calib.cache", "--useDLACore=0", "--allowGPUFallback"} <= set(args)
    supported = {v: dla_support(parse_version(v))[0] for v in ("8.2", "8.5", "9.2", "10.3", "10.7", "10.8", "10.13",
                                                               "11.1", "11.3", "11.4.0", "11.4.1")}
    assert supported == {"8.2": True, "8.5": True, "9.2": False, "10.3": True, "10.7": True, "10.8": False,
                         "10.13": False, "11.1": False, "11.3": False, "11.4.0": False, "11.4.1": True}
    assert "10.7 was the" in dla_support(parse_version("10.13"))[1]
    with pytest.raises(UserError, match="does not support DLA"):
        trtexec_args(parse_version("10.13"), "fp16", int8_mode="qdq", input_name="input", input_shape=[1, 3, 8, 8],
                     workspace_mb=64, dla_core=0)


def test_api_features_follow_the_binding_matrix():
    f82, f85, f103, f1012, f111 = (api_features(parse_version(v)) for v in ("8.2", "8.5", "10.3", "10.12", "11.1"))
    assert f82.explicit_batch_flag and f82.max_workspace_size and not f82.memory_pool_limit and f82.bindings_api
    assert f85.tensor_api and f85.memory_pool_limit and f85.calibrators and not f85.strongly_typed_flag
    assert not f103.explicit_batch_flag and not f103.bindings_api and f103.calibrators_deprecated and f103.calibrators
    assert f1012.precision_flags_deprecated and f1012.precision_flags
    assert f111.always_strongly_typed and not f111.precision_flags and not f111.calibrators and not f111.dla
    assert ops_table(parse_version("10.3")).max_opset == 20  # derived table: opset range from 10.1
    assert ops_table(parse_version("10")).key == "10.0" and ops_table(parse_version("8.5.2.2")).key == "8.5"


def test_engine_guard():
    side = guard.engine_sidecar(trt_version="8.5.2.2", gpu_name="Xavier", compute_capability="7.2", precision="int8",
                                opset=17, onnx_sha256="aa")
    here = {"trt_version": "8.5.2.2", "gpu_name": "Xavier", "compute_capability": "7.2"}
    assert guard.engine_mismatches(side, here) == []
    assert guard.engine_mismatches(side, {**here, "trt_version": "10.3.0.26"}) == [
        "built with TensorRT 8.5.2, running TensorRT 10.3.0"]
    assert guard.engine_mismatches(side, {**here, "compute_capability": "8.7", "gpu_name": "Orin"}) == [
        "built for compute capability 7.2, this GPU is 8.7"]
    assert guard.engine_mismatches(side, here, onnx_sha256="bb") == ["built from another ONNX model (its hash differs)"]
    vc = guard.engine_sidecar(trt_version="10.3.0", gpu_name="A", compute_capability="8.6", precision="fp16", opset=17,
                              onnx_sha256="aa", version_compatible=True, hardware_compatibility="ampere_plus")
    assert guard.engine_mismatches(vc, {"trt_version": "10.8.0", "gpu_name": "B", "compute_capability": "8.9"}) == []
    assert guard.engine_mismatches(vc, {"trt_version": "10.2.0", "compute_capability": "8.9"})  # older: no
    with pytest.raises(UserError, match=r"--engine e.engine: built with TensorRT 8.5.2, running TensorRT 10.3.0; rebuild"):
        guard.guard_engine(Path("e.engine"), side, {**here, "trt_version": "10.3.0"})
    with pytest.raises(UserError, match="no sidecar"):
        guard.guard_engine(Path("e.engine"), None, here)


@pytest.mark.slow
def test_cache_guard(built):
    cache = built.out_dir / "engines" / "tensorrt-host" / "calib.cache"
    side = read_sidecar(cache)
    assert side["produced_by"] == "onnxruntime-host" and side["header"] == "TRT-8502-EntropyCalibration2"
    versions = calib_cache.read_cache(cache).versions
    assert guard.cache_action(side, {"trt_version": "8.5.2.2"}, cache_versions=versions) == ("use", None)
    action, reason = guard.cache_action(side, {"trt_version": "8.5.3"}, cache_versions=versions)
    assert action == "retag" and "8.5.2" in reason
    assert guard.cache_action(side, {"trt_version": "8.5.2"}, data_sha256="other")[0] == "recalibrate"
    device_made = {**side, "produced_by": "tensorrt"}
    assert guard.cache_action(device_made, {"trt_version": "10.3.0"}, cache_versions=versions)[0] == "recalibrate"
    assert guard.cache_action(None, {"trt_version": "8.5.2"})[0] == "recalibrate"


@pytest.mark.slow
def test_bundle_manifest_lists_every_file_hash(built):
    bdir = built.out_dir / "engines" / "device-bundle"
    manifest = json.loads((bdir / MANIFEST).read_text())
    assert set(manifest["files"]) <= {p.name for p in bdir.iterdir()}
    assert not [p for p in bdir.iterdir() if ".partial-" in p.name]


@pytest.mark.slow
def test_int8_mode_and_dla_flags_override_the_profile(built, tmp_path):
    from edgerep.backends import get_backend

    backend = get_backend("tensorrt")
    sim = built.out_dir / "onnx" / "model.sim.onnx"
    calib = digits_data("calib")
    xavier = load_target("jetson-xavier-nx")  # int8_mode calibrate, dla_core 0 in the profile
    art = backend.build(sim, "int8", out_dir=tmp_path / "dla1", profile=xavier, calib=calib,
                        options={"dla_core": 1, "num_samples": 16})
    assert art.status == "skipped" and art.info["settings"]["dla_core"] == 1
    int8 = next(e for e in load_bundle(Path(art.info["bundle"])).manifest["engines"] if e["dla_core"] is not None)
    assert int8["engine"] == "model.int8.dla1.engine"
    assert int8["onnx"] == "model.onnx" and "--useDLACore=1" in int8["trtexec"] and "--calib=calib.cache" in int8["trtexec"]
    # Q/DQ INT8 would leave the DLA (NVIDIA/TensorRT#2222): refused with the way out
    with pytest.raises(UserError, match="--int8-mode calibrate"):
        backend.build(sim, "int8", out_dir=tmp_path / "dla-qdq", profile=xavier, calib=calib,
                      options={"int8_mode": "qdq", "num_samples": 16})
    orin_nano = load_target("jetson-orin-nano")  # no DLA: Q/DQ is the profile's mode
    art = backend.build(sim, "int8", out_dir=tmp_path / "qdq", profile=orin_nano, calib=calib, options={"num_samples": 16})
    manifest = load_bundle(Path(art.info["bundle"])).manifest
    int8 = manifest["engines"][0]
    assert manifest["int8_mode"] == "qdq" and int8["onnx"] == "model.qdq.onnx" and not any(
        a.startswith("--useDLACore") for a in int8["trtexec"])
    with pytest.raises(UserError, match="--int8-mode fast"):
        backend.build(sim, "int8", out_dir=tmp_path, profile=xavier, calib=calib, options={"int8_mode": "fast"})
    with pytest.raises(UserError, match="--dla-core 0: target jetson-orin-nano has 0 DLA"):
        backend.build(sim, "fp16", out_dir=tmp_path, profile=load_target("jetson-orin-nano"), options={"dla_core": 0})


def test_check_command_exit_codes(tmp_path):
    from edgerep.cli import main

    path = _export(_NotOn82(), tmp_path / "m.onnx", opset=13)
    for argv, code in ((["check", "-t", "jetson-nano", "-m", str(path)], 1),
                       (["check", "-t", "jetson-orin-nano", "-m", str(path), "--json"], 0),
                       (["check", "-t", "jetson-nano", "-m", str(tmp_path / "missing.onnx")], 2)):
        try:
            main(argv)
            got = 0  # main returns normally on success
        except SystemExit as exc:
            got = exc.code
        assert got == code, argv


def test_check_rejected_input_shape_is_a_user_error():
    with pytest.raises(UserError, match=r"^--input-shape 1x3: the model rejects this input"):
        run_check(target="jetson-nano", model="zoo:repvgg_tiny", input_shape="1x3")


@pytest.mark.slow
def test_standalone_check_script_for_old_jetpacks(built):
    """check_engine.py (for JetPack 4/5, whose Python is older than edgerep's) is Python 3.6 syntax, needs no
    edgerep or torch, and reproduces the reference on the bundle's ONNX models."""
    import ast

    bdir = built.out_dir / "engines" / "device-bundle"
    script = bdir / "check_engine.py"
    ast.parse(script.read_text(), feature_version=(3, 6))
    manifest = json.loads((bdir / "bundle.json").read_text())
    assert manifest["files"]["check_engine.py"] == file_sha256(script)
    env = {**os.environ, "PYTHONPATH": ""}
    for name, precision in (("model.onnx", "fp32"), ("model.qdq.onnx", "int8")):
        code = ("import sys, runpy\nsys.modules['torch'] = None\nsys.modules['edgerep'] = None\n"
                f"sys.argv = ['check_engine.py', {name!r}]\nrunpy.run_path({str(script)!r}, run_name='__main__')\n")
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(bdir), env=env)
        assert proc.returncode == 0, proc.stderr[-1500:]
        result = json.loads(proc.stdout)
        assert result["precision"] == precision and result["passed"]
        if precision == "fp32":
            assert result["accuracy"]["max_abs_err"] < 1e-4 and result["accuracy"]["top1_agreement"] == 100.0
        else:  # the Q/DQ model: the int8 gate of the profile applies
            assert result["accuracy"]["cosine"] > 0.98
    proc = subprocess.run([sys.executable, str(script), "missing.engine"], capture_output=True, text=True, cwd=str(bdir))
    assert proc.returncode == 2 and "missing.engine: file not found" in proc.stderr
    # several engines: each checked and timed, then the engine to ship by the bundle's copy of recommend.py
    assert manifest["files"]["recommend.py"] == file_sha256(bdir / "recommend.py")
    code = ("import sys, runpy\nsys.modules['torch'] = None\nsys.modules['edgerep'] = None\n"
            "sys.argv = ['check_engine.py', 'model.onnx', 'model.qdq.onnx']\n"
            f"runpy.run_path({str(script)!r}, run_name='__main__')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(bdir), env=env)
    assert proc.returncode == 0, proc.stderr[-1500:]
    both = json.loads(proc.stdout)
    assert [r["precision"] for r in both["engines"]] == ["fp32", "int8"]
    assert all(r["latency_by_batch"][0]["p50"] > 0 for r in both["engines"])
    assert both["recommended"]["precision"] in ("fp32", "int8")
    assert proc.stderr.strip().splitlines()[-1].startswith("recommended: onnxruntime ")


@pytest.mark.slow
def test_validate_bundle_recommends_an_engine_on_the_device(built):
    """Several engines of a bundle validated on the device: each gets its record, then the one to ship (the
    host deferred that choice). ONNX Runtime stands in for TensorRT here: model.onnx (float) and the Q/DQ model."""
    from io import StringIO

    from rich.console import Console

    bdir = built.out_dir / "engines" / "device-bundle"
    assert built.report["recommended"]["deferred"] == "device"
    buf = StringIO()
    code = run_validate_bundle(bundle=bdir, engine=[bdir / "model.onnx", bdir / "model.qdq.onnx"], as_json=True,
                               out=Console(file=buf, width=400))
    result = json.loads(buf.getvalue())
    assert code == 0 and [r["precision"] for r in result["engines"]] == ["fp32", "int8"]
    rec = result["recommended"]
    assert rec["precision"] in ("fp32", "int8") and rec["backend"] == "onnxruntime" and rec["reason"]
    buf = StringIO()
    run_validate_bundle(bundle=bdir, engine=[bdir / "model.onnx", bdir / "model.qdq.onnx"], out=Console(file=buf, width=400))
    assert buf.getvalue().strip().splitlines()[-1].startswith("recommended: onnxruntime ")
