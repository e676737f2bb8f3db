"""The device bundle against the engines the device builds, without a GPU: the ONNX hash the guard compares
(engine_build's sidecar and build.sh's sidecar writer against the bundle manifest), GPU names from different
sources (JetPack 6 without pycuda), calibrate-mode INT8 keeping the float nodes out of calib.cache, DLA with a
dynamic batch, the built profile in bundle.json, device install guidance, GPU and DLA variants of one precision,
per-channel Q/DQ below opset 13. Real models (the demo RepVGG exported by edgerep's pipeline, zoo:repyolo_digits),
the real sidecar snippet build.sh runs, and fake nvidia-smi/trtexec scripts standing in for NVIDIA's binaries."""
from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgerep.backends.tensorrt import bundle as B
from edgerep.backends.tensorrt import guard
from edgerep.backends.tensorrt.gpu import install_hint, on_jetson, unavailable_reason
from edgerep.backends.tensorrt.host import lint_for_profile, update_bundle
from edgerep.backends.tensorrt.lint import lint_onnx
from edgerep.backends.tensorrt.versions import parse_version
from edgerep.errors import UserError
from edgerep.files.artifacts import read_sidecar, write_sidecar
from edgerep.files.onnx_files import onnx_sha256
from edgerep.pipeline.recommend import recommend_engines
from edgerep.targets import load_target
from tests.digits_demo import export_demo, needs_demo

# What a JetPack 6 Orin's CUDA driver calls its GPU (cuDeviceGetName, as pycuda's Device.name() returns it).
ORIN_CUDA = {"trt_version": "10.3.0.30", "gpu_name": "Orin", "gpu_name_source": "cuda", "compute_capability": "8.7"}


@pytest.fixture(scope="module")
def demo_onnx(tmp_path_factory) -> Path:
    """The demo RepVGG through edgerep's export pipeline: onnx/model.sim.onnx, static batch (DLA profiles)."""
    _, _, sim = export_demo(tmp_path_factory.mktemp("demo-onnx"), dynamic_batch=False)
    return sim


def _bundle(demo_onnx: Path, folder: Path, target: str, precisions: list[str]) -> Path:
    return update_bundle(folder, onnx_path=demo_onnx, profile=load_target(target), precisions=precisions)


def _sidecar_snippet(bundle_dir: Path) -> str:
    """The Python program build.sh's write_sidecar runs (between its <<'PY' and PY lines), read from build.sh."""
    text = (bundle_dir / "build.sh").read_text()
    return text.split("<<'PY'\n", 1)[1].split("\nPY\n", 1)[0]


def _run_snippet(bundle_dir: Path, precision: str, engine: str, onnx: str, *, code: int = 100300,
                 path: str | None = None, device_tree: Path | None = None) -> dict:
    """Run build.sh's sidecar writer as build.sh does (python3 - PRECISION ENGINE ONNX, DEVICE_CODE set) beside
    a stand-in engine file; returns the sidecar as read back by edgerep (hash checked)."""
    (bundle_dir / engine).write_bytes(b"plan-" + engine.encode())
    env = {**os.environ, "DEVICE_CODE": str(code), "PATH": path or os.environ["PATH"]}
    env.pop("EDGEREP_DEVICE_TREE_MODEL", None)
    if device_tree is not None:
        env["EDGEREP_DEVICE_TREE_MODEL"] = str(device_tree)
    proc = subprocess.run([sys.executable, "-", precision, engine, onnx], input=_sidecar_snippet(bundle_dir),
                          env=env, cwd=str(bundle_dir), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    side = read_sidecar(bundle_dir / engine)
    assert side is not None
    return side


def _manifest_hash(bundle_dir: Path, engine: str) -> str:
    """The ONNX hash `edgerep validate --bundle` hands the guard for `engine` (its manifest entry's source)."""
    manifest = B.load_bundle(bundle_dir).manifest
    onnx_name = next(e["onnx"] for e in manifest["engines"] if e["engine"] == engine)
    return manifest["files"][onnx_name]


def _fake_nvidia_smi(bin_dir: Path, name: str, compute_cap: str | None) -> str:
    """A stand-in for nvidia-smi: prints `name[, compute_cap]`; without compute_cap it rejects that field, as
    older drivers (and Jetson's nvidia-smi) do. Returns a PATH holding it and the Python interpreter."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    script = bin_dir / "nvidia-smi"
    full = f"{name}, {compute_cap}" if compute_cap else None
    script.write_text("#!/usr/bin/env bash\n"
                      "case \"$*\" in\n"
                      f"  *compute_cap*) {'echo ' + shlex.quote(full) if full else 'echo bad field >&2; exit 2'};;\n"
                      f"  *) echo {shlex.quote(name)};;\n"
                      "esac\n")
    script.chmod(0o755)
    return f"{bin_dir}:{Path(sys.executable).parent}:/usr/bin:/bin"


# --- point 2 / N10: one ONNX hash ---------------------------------------------------------------


@needs_demo
def test_engine_sidecars_of_both_build_paths_pass_the_bundle_guard(demo_onnx, tmp_path):
    """An engine built by edgerep (engine_build: guard.engine_sidecar with onnx_sha256 of the ONNX it parsed, the
    host's model.sim.onnx) and one built by build.sh (its sidecar writer, which copies the manifest's hash of the
    bundle's model.onnx) both pass the guard `edgerep validate --bundle` runs with the manifest's hash."""
    bdir = _bundle(demo_onnx, tmp_path / "bundle", "jetson-orin-nano", ["fp16"])
    assert B.load_bundle(bdir)  # every file, model.onnx included, matches its manifest hash
    want = _manifest_hash(bdir, "model.fp16.engine")
    # engine_build's way: out_dir/model.fp16.engine, sidecar from guard.engine_sidecar, written by write_sidecar
    engine = tmp_path / "engines" / "model.fp16.engine"
    engine.parent.mkdir()
    engine.write_bytes(b"plan")
    write_sidecar(engine, guard.engine_sidecar(
        trt_version="10.3.0.30", gpu_name="Orin", gpu_name_source="cuda", compute_capability="8.7",
        precision="fp16", opset=17, onnx_sha256=onnx_sha256(demo_onnx)))
    api_side = read_sidecar(engine)
    assert guard.engine_mismatches(api_side, ORIN_CUDA, onnx_sha256=want) == []
    guard.guard_engine(engine, api_side, ORIN_CUDA, onnx_sha256=want)
    # build.sh's way, run as build.sh runs it
    sh_side = _run_snippet(bdir, "fp16", "model.fp16.engine", "model.onnx")
    assert sh_side["onnx_sha256"] == api_side["onnx_sha256"] == want
    assert guard.engine_mismatches(sh_side, {"trt_version": "10.3.0.30"}, onnx_sha256=want) == []
    # and another model is still told apart
    assert guard.engine_mismatches(api_side, ORIN_CUDA, onnx_sha256="0" * 64) == [
        "built from another ONNX model (its hash differs)"]


def test_onnx_hash_is_by_content_and_covers_external_data(tmp_path):
    """onnx_sha256 ignores the file's name (model.sim.onnx on the host, model.onnx in the bundle), equals the plain
    sha256 the manifest lists for a single file, and covers an external data file's bytes."""
    import onnx

    from edgerep.files.artifacts import file_sha256

    model = _per_channel_qdq(13)
    a, b = tmp_path / "model.sim.onnx", tmp_path / "model.onnx"
    onnx.save(model, str(a))
    b.write_bytes(a.read_bytes())
    assert onnx_sha256(a) == onnx_sha256(b) == file_sha256(b)
    ext = tmp_path / "ext"
    ext.mkdir()
    big = ext / "model.onnx"
    onnx.save_model(model, str(big), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="model.onnx.data", size_threshold=0)
    before = onnx_sha256(big)
    assert before != file_sha256(big)
    data = (ext / "model.onnx.data").read_bytes()
    (ext / "model.onnx.data").write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    assert onnx_sha256(big) != before


# --- N2: GPU names from different sources -------------------------------------------------------


@needs_demo
def test_jetpack6_sidecars_without_pycuda_pass_the_guard_on_the_same_gpu(demo_onnx, tmp_path):
    """build.sh runs before pycuda is installed (the README's order): the sidecar writer then names the GPU from
    nvidia-smi ("Orin (nvgpu)") or the device tree ("NVIDIA Jetson AGX Orin Developer Kit"), while `edgerep
    validate` reads "Orin" from CUDA. Names from different sources are not compared; compute capability is."""
    bdir = _bundle(demo_onnx, tmp_path / "bundle", "jetson-agx-orin", ["fp16"])
    want = _manifest_hash(bdir, "model.fp16.engine")
    no_tools = f"{Path(sys.executable).parent}:/usr/bin:/bin"
    # no CUDA driver, no pycuda, no nvidia-smi here: the device tree's board name, as on a JetPack 6 box
    tree = tmp_path / "model"
    tree.write_bytes(b"NVIDIA Jetson AGX Orin Developer Kit\x00")
    side = _run_snippet(bdir, "fp16", "model.fp16.engine", "model.onnx", path=no_tools, device_tree=tree)
    assert (side["gpu_name"], side["gpu_name_source"], side["compute_capability"]) == (
        "NVIDIA Jetson AGX Orin Developer Kit", "device-tree", None)
    assert guard.engine_mismatches(side, ORIN_CUDA, onnx_sha256=want) == []
    # nvidia-smi with the compute capability: the capability is what is compared
    path = _fake_nvidia_smi(tmp_path / "smi1", "Orin (nvgpu)", "8.7")
    side = _run_snippet(bdir, "fp16", "model.fp16.engine", "model.onnx", path=path)
    assert (side["gpu_name"], side["gpu_name_source"], side["compute_capability"]) == ("Orin (nvgpu)", "nvidia-smi", "8.7")
    assert guard.engine_mismatches(side, ORIN_CUDA, onnx_sha256=want) == []
    xavier = {**ORIN_CUDA, "gpu_name": "Xavier", "compute_capability": "7.2"}
    assert guard.engine_mismatches(side, xavier, onnx_sha256=want) == [
        "built for compute capability 8.7, this GPU is 7.2"]
    # an nvidia-smi that rejects the compute_cap field: the name alone, compared with nothing
    path = _fake_nvidia_smi(tmp_path / "smi2", "Orin (nvgpu)", None)
    side = _run_snippet(bdir, "fp16", "model.fp16.engine", "model.onnx", path=path)
    assert (side["gpu_name"], side["gpu_name_source"], side["compute_capability"]) == ("Orin (nvgpu)", "nvidia-smi", None)
    assert guard.engine_mismatches(side, ORIN_CUDA, onnx_sha256=want) == []
    # both names from CUDA: still compared where the capability cannot tell the GPUs apart
    cuda_side = {**side, "gpu_name": "Xavier", "gpu_name_source": "cuda", "compute_capability": None}
    assert guard.engine_mismatches(cuda_side, ORIN_CUDA) == ["built on Xavier, this GPU is Orin"]
    # the GPU-variant sidecar of a DLA profile says it is not on the DLA (the engine's own entry, not the profile)
    assert side["dla_core"] is None and side["gpu_fallback_layers"] == []


# --- N3: calibrate-mode INT8 keeps the float nodes out of the cache ---------------------------------


@pytest.mark.slow
def test_calibration_cache_omits_exactly_the_float_nodes_tensors(tmp_path):
    """zoo:repyolo_digits calibrated for jetson-agx-orin (int8_mode calibrate): calib.cache has no scale for any
    tensor a float node (float_policy's head + the user's ignored node) produces or consumes, and a scale for every
    other calibrated tensor, so those nodes run FP16 on the device as they stay float in model.qdq.onnx."""
    import onnx
    import torch

    from edgerep.backends.tensorrt import calib_cache
    from edgerep.backends.tensorrt.host import prepare_int8
    from edgerep.data.detect_source import Letterbox
    from edgerep.data.sources import open_data
    from edgerep.export.onnx_export import export_onnx
    from edgerep.models.specs import load_model
    from edgerep.quant.float_policy import detect_head_float_nodes

    info = load_model("zoo:repyolo_digits")
    sim = export_onnx(info.module, torch.zeros(info.input_shape), tmp_path / "model.sim.onnx", opset=17)
    heads = detect_head_float_nodes(sim)
    model = onnx.load(str(sim))
    # a user-ignored conv whose input only it reads (implicit quantization is per tensor, Q/DQ per edge: a tensor
    # shared with another consumer loses its scale for both in the cache, and ONNX Runtime's quantizer then still
    # quantizes it on the ignored node's edge)
    readers: dict[str, int] = {}
    for n in model.graph.node:
        for t in n.input:
            readers[t] = readers.get(t, 0) + 1
    ignored = next(n.name for n in model.graph.node
                   if n.op_type == "Conv" and n.name not in heads and readers[n.input[0]] == 1)
    calib = open_data("calib/digits_det/data.yaml", Letterbox(size=tuple(info.input_shape[2:])),
                      expect_shape=tuple(info.input_shape))
    result = prepare_int8(sim, load_target("jetson-agx-orin"), calib, tmp_path / "host", method="entropy",
                          num_samples=16, ignored_nodes=[ignored], head_float_nodes=heads)
    ranges = json.loads(Path(result["ranges"]).read_text())["ranges"]
    cache = calib_cache.read_cache(Path(result["cache"])).scales
    floats = {ignored, *heads}
    touched = {t for n in model.graph.node if n.name in floats for t in [*n.input, *n.output]}
    assert touched & set(ranges), "the float nodes' tensors were calibrated"
    assert set(cache) == set(ranges) - touched
    side = read_sidecar(Path(result["cache"]))
    assert side["float_nodes"] == [ignored, *heads] and set(side["omitted_tensors"]) == set(ranges) & touched
    # the Q/DQ model keeps the same nodes float: no dequantized activation feeds any of them
    qdq = onnx.load(str(result["qdq"]))
    dq_out = {o for n in qdq.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    inits = {t.name for t in qdq.graph.initializer}
    weight_dq = {n.output[0] for n in qdq.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits}
    for node in qdq.graph.node:
        if node.name in floats:
            assert not (set(node.input) & (dq_out - weight_dq)), node.name


# --- N6 / N8: DLA is static; the built profile in bundle.json --------------------------------------


def _dynamic(profile, *, batch_sizes=(1, 4, 8)):
    return dataclasses.replace(profile, dynamic_batch=True,
                               latency=dataclasses.replace(profile.latency, batch_sizes=list(batch_sizes)))


@needs_demo
def test_dla_with_a_dynamic_batch_is_refused_by_lint_and_bundle(demo_onnx, tmp_path):
    orin = _dynamic(load_target("jetson-agx-orin"))
    report = lint_for_profile(demo_onnx, orin)
    assert [f.code for f in report.errors] == ["dla-dynamic"]
    assert lint_for_profile(demo_onnx, load_target("jetson-agx-orin")).errors == []
    no_dla = dataclasses.replace(orin, tensorrt=dataclasses.replace(orin.tensorrt, dla_core=None))
    assert not [f for f in lint_for_profile(demo_onnx, no_dla).findings if f.code == "dla-dynamic"]
    with pytest.raises(UserError, match=r"dynamic_batch = true with dla_core = 0: the DLA runs static shapes only"):
        update_bundle(tmp_path / "b", onnx_path=demo_onnx, profile=orin, precisions=["fp16"])
    with pytest.raises(UserError, match="static shapes only"):
        B.engine_plan(orin, parse_version("10.3"), ["fp16"], input_name="input", input_shape=[None, 1, 8, 8])


@needs_demo
def test_bundle_input_carries_the_built_profile(demo_onnx, tmp_path):
    """bundle.json input.profile: the min/opt/max shapes the engines are built with (trtexec's --*Shapes), static
    engines the same shape three times."""
    static = json.loads((_bundle(demo_onnx, tmp_path / "s", "jetson-orin-nano", ["fp16"]) / B.MANIFEST).read_text())
    shape = static["input"]["shape"]
    assert static["input"]["profile"] == {"min": shape, "opt": shape, "max": shape}
    _, _, dyn_onnx = export_demo(tmp_path / "dyn", dynamic_batch=True)
    profile = _dynamic(load_target("tensorrt"), batch_sizes=(1, 8, 32))
    bdir = update_bundle(tmp_path / "d", onnx_path=dyn_onnx, profile=profile, precisions=["fp16"])
    manifest = json.loads((bdir / B.MANIFEST).read_text())
    dims = manifest["input"]["shape"][1:]
    assert manifest["input"]["shape"][0] is None
    assert manifest["input"]["profile"] == {"min": [1, *dims], "opt": [8, *dims], "max": [32, *dims]}
    args = manifest["engines"][0]["trtexec"]
    name = manifest["input"]["name"]
    for key in ("min", "opt", "max"):
        assert f"--{key}Shapes={name}:{'x'.join(map(str, manifest['input']['profile'][key]))}" in args


# --- N9: device install guidance -------------------------------------------------------------------


def test_install_guidance_on_a_jetson_names_jetpacks_tensorrt_and_cuda_for_pycuda(tmp_path):
    assert on_jetson(str(tmp_path / "none"), str(tmp_path / "none")) is False
    (tmp_path / "nv_tegra_release").write_text("# R36 (release), REVISION: 4.0\n")
    assert on_jetson(str(tmp_path / "nv_tegra_release"), str(tmp_path / "none"))
    (tmp_path / "model").write_bytes(b"NVIDIA Jetson Xavier NX Developer Kit\x00")
    assert on_jetson(str(tmp_path / "none"), str(tmp_path / "model"))
    assert "sudo apt install python3-libnvinfer" in install_hint("tensorrt", jetson=True)
    assert install_hint("tensorrt", jetson=False) == "pip install 'edgerep[tensorrt]'"
    try:
        import tensorrt
        real_trt = hasattr(tensorrt, "__version__")  # tensorrt-stubs alone is an empty namespace package
    except ImportError:
        real_trt = False
    if not real_trt:  # the reason this machine gives says how to get TensorRT, per kind of machine
        jetson = unavailable_reason(jetson=True)
        assert jetson is not None and "sudo apt install python3-libnvinfer" in jetson and "--system-site-packages" in jetson
        desktop = unavailable_reason(jetson=False)
        assert desktop is not None and "pip install 'edgerep[tensorrt]'" in desktop and "libnvinfer" not in desktop
    assert "PATH=/usr/local/cuda/bin" in install_hint("pycuda", jetson=True)
    assert "LIBRARY_PATH" in install_hint("pycuda", jetson=True)


def _fake_trtexec(bin_dir: Path) -> Path:
    """A stand-in for trtexec: writes the --saveEngine file and logs one DLA and one GPU layer."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    path = bin_dir / "trtexec"
    path.write_text("#!/usr/bin/env bash\n"
                    "echo \"$*\" >> \"$(dirname \"$0\")/calls.log\"\n"
                    "for a in \"$@\"; do case \"$a\" in --saveEngine=*) printf 'plan' > \"${a#--saveEngine=}\";; esac; done\n"
                    "case \"$*\" in *--useDLACore=*) echo '[V] [TRT] [DlaLayer] {ForeignNode[/stage0/Conv]}';; esac\n"
                    "echo '[V] [TRT] [GpuLayer] POOLING: /head/GlobalAveragePool'\n")
    path.chmod(0o755)
    return path


def _run_build_sh(bdir: Path, tmp_path: Path, version: str) -> subprocess.CompletedProcess:
    trtexec = _fake_trtexec(tmp_path / "bin")
    env = {**os.environ, "TRTEXEC": str(trtexec), "DEVICE_CODE": version,
           "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"}
    return subprocess.run(["bash", str(bdir / "build.sh")], env=env, capture_output=True, text=True)


@needs_demo
def test_build_sh_says_how_to_check_by_jetpack(demo_onnx, tmp_path):
    """JetPack 6 runs edgerep (Python 3.10); JetPack 5's Python 3.8 cannot, so it is told to run check_engine.py."""
    jp5 = _bundle(demo_onnx, tmp_path / "jp5", "jetson-xavier-nx", ["fp16"])
    proc = _run_build_sh(jp5, tmp_path / "t5", "8.5.2")
    assert proc.returncode == 0, proc.stderr
    assert "check it: python3 check_engine.py model.fp16.engine" in proc.stdout
    assert "edgerep validate" not in proc.stdout
    jp6 = _bundle(demo_onnx, tmp_path / "jp6", "jetson-orin-nano", ["fp16"])
    proc = _run_build_sh(jp6, tmp_path / "t6", "10.3.0")
    assert proc.returncode == 0, proc.stderr
    assert "check it: edgerep validate --bundle . --engine model.fp16.engine" in proc.stdout
    readme = (jp6 / "README.md").read_text()
    assert "sudo apt install python3-libnvinfer" in readme and "--system-site-packages" in readme
    assert "export PATH=/usr/local/cuda/bin:$PATH" in readme and "pip install cuda-python" in readme


# --- N11: GPU and DLA engines of one precision, compared ---------------------------------------------


def test_dla_profile_plans_gpu_and_dla_engines_with_distinct_names():
    orin = load_target("jetson-agx-orin")
    plan = B.engine_plan(orin, parse_version("10.3"), ["fp16", "int8"], input_name="input", input_shape=[1, 3, 8, 8])
    assert [(e["engine"], e["dla_core"]) for e in plan] == [
        ("model.fp16.engine", None), ("model.fp16.dla0.engine", 0),
        ("model.int8.engine", None), ("model.int8.dla0.engine", 0)]
    for e in plan:
        args = e["trtexec"]
        assert f"--saveEngine={e['engine']}" in args and f"--exportLayerInfo={e['engine']}.layers.json" in args
        assert ("--useDLACore=0" in args) == (e["dla_core"] is not None)
        assert e["onnx"] == "model.onnx"  # calibrate mode: INT8 from the FP32 ONNX and the cache, GPU and DLA alike
    gpu_only = dataclasses.replace(orin, tensorrt=dataclasses.replace(orin.tensorrt, dla_core=None))
    plan = B.engine_plan(gpu_only, parse_version("10.3"), ["fp16"], input_name="input", input_shape=[1, 3, 8, 8])
    assert [e["engine"] for e in plan] == ["model.fp16.engine"]


@needs_demo
def test_build_sh_builds_both_variants_with_their_own_sidecars(demo_onnx, tmp_path):
    bdir = _bundle(demo_onnx, tmp_path / "b", "jetson-agx-orin", ["fp16"])
    proc = _run_build_sh(bdir, tmp_path, "10.3.0")
    assert proc.returncode == 0, proc.stderr
    gpu, dla = read_sidecar(bdir / "model.fp16.engine"), read_sidecar(bdir / "model.fp16.dla0.engine")
    assert gpu["dla_core"] is None and gpu["gpu_fallback_layers"] == [] and gpu["dla_layers"] == []
    assert dla["dla_core"] == 0 and dla["dla_layers"] == ["{ForeignNode[/stage0/Conv]}"]
    assert dla["gpu_fallback_layers"] == ["POOLING: /head/GlobalAveragePool"]
    calls = (tmp_path / "bin" / "calls.log").read_text().splitlines()
    assert len(calls) == 2 and "--useDLACore" not in calls[0] and "--useDLACore=0" in calls[1]
    assert "| fp16 | DLA 0 (GPU fallback) | `model.onnx` | `model.fp16.dla0.engine` |" in (bdir / "README.md").read_text()


def _record(precision: str, dla_core: int | None, rounds: list[float]) -> dict:
    return {"backend": "tensorrt", "precision": precision, "dla_core": dla_core, "status": "ok", "passed": True,
            "path": B.variant_engine_name(precision, dla_core),
            "latency_by_batch": [{"batch_size": 1, "p50": float(np.median(rounds)), "round_p50": rounds}]}


def test_recommendation_compares_the_gpu_and_dla_engines_of_one_precision():
    gpu, dla = [2.0, 2.1, 1.9, 2.0, 2.05], [4.0, 4.2, 3.9, 4.1, 4.0]
    # Orin: the GPU is faster than the DLA, and the GPU engine is chosen whichever order they come in
    for records in ([_record("int8", None, gpu), _record("int8", 0, dla)],
                    [_record("int8", 0, dla), _record("int8", None, gpu)]):
        rec = recommend_engines(records, batch=1)
        assert rec["path"] == "model.int8.engine", rec
        assert [(n["precision"], n["than"]) for n in rec["not_faster"]] == [("int8 dla0", "int8")]
    # a DLA engine measurably faster than the GPU one wins, and the reason names it
    rec = recommend_engines([_record("fp16", None, dla), _record("fp16", 0, gpu)], batch=1)
    assert rec["path"] == "model.fp16.dla0.engine" and re.match(r"fp16 dla0: 2\.0x fp16 at batch 1", rec["reason"])


# --- N15: per-channel Q/DQ below opset 13 -------------------------------------------------------------


def _per_channel_qdq(opset: int):
    w = numpy_helper.from_array(np.ones((4, 3, 3, 3), dtype=np.float32), "w")
    scale = numpy_helper.from_array(np.full(4, 0.01, dtype=np.float32), "w_scale")
    zero = numpy_helper.from_array(np.zeros(4, dtype=np.int8), "w_zero")
    nodes = [helper.make_node("QuantizeLinear", ["w", "w_scale", "w_zero"], ["wq"], name="w_q", axis=0),
             helper.make_node("DequantizeLinear", ["wq", "w_scale", "w_zero"], ["wd"], name="w_dq", axis=0),
             helper.make_node("Conv", ["x", "wd"], ["y"], name="conv")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 6, 6])], [w, scale, zero])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def test_lint_flags_per_channel_qdq_below_opset_13():
    old = lint_onnx(_per_channel_qdq(12), "8.5")
    assert sorted(f.node for f in old.errors if f.code == "qdq-per-channel-opset") == ["w_dq", "w_q"]
    assert not [f for f in lint_onnx(_per_channel_qdq(13), "8.5").findings if f.code == "qdq-per-channel-opset"]
    # the profile side: int8_mode qdq makes per-channel Q/DQ, so an opset-12 profile cannot carry it
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="relu")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 8, 8])])
    plain = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 12)])
    report = lint_onnx(plain, "8.5", profile_opset=12, int8_mode="qdq", precisions=["int8"])
    assert [f.code for f in report.errors] == ["qdq-per-channel-opset"]
    assert not lint_onnx(plain, "8.5", profile_opset=12, int8_mode="calibrate", precisions=["int8"]).errors
    assert not lint_onnx(plain, "8.5", profile_opset=12, int8_mode="qdq", precisions=["fp16"]).errors
