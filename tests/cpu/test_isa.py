"""The deploy CPU's instruction set: detection, profiles, ONNX Runtime weight formats, the NNCF overflow fix,
the second validation on the target's ISA, and the warnings of `edgerep validate` (edgerep.cpu.isa,
edgerep.validate.isa_check).

Where a number depends on the machine's ISA, the test says so and asserts what holds on every x86 CPU."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgerep.backends import get_backend
from edgerep.backends.onnxruntime.isa_policy import weight_format_for, weight_formats_for
from edgerep.backends.onnxruntime.quantize import int16_saturation_check
from edgerep.cpu import isa as cpu
from edgerep.errors import UserError
from edgerep.targets import load_target, parse_profile
from tests.cli_helpers import cli, error_line
from tests.digits_demo import DIGITS, digits_data, export_demo

QEMU = shutil.which("qemu-x86_64")
X86 = cpu.host_cpu().arch in ("x86_64", "amd64")


@pytest.fixture()
def host_isa(monkeypatch):
    """Pretend the process runs on another ISA (EDGEREP_HOST_ISA), as under an emulator."""
    def set_isa(isa: str) -> None:
        monkeypatch.setenv("EDGEREP_HOST_ISA", isa)
        cpu.host_cpu.cache_clear()

    yield set_isa
    monkeypatch.delenv("EDGEREP_HOST_ISA", raising=False)
    cpu.host_cpu.cache_clear()


# --- detection and names ------------------------------------------------------------------------------


def test_isa_levels_from_cpu_flags():
    f = frozenset
    assert cpu._isa_from_flags("x86_64", f({"avx2", "fma"})) == "avx2"
    assert cpu._isa_from_flags("x86_64", f({"avx2", "avx_vnni"})) == "avx_vnni"
    assert cpu._isa_from_flags("x86_64", f({"avx2", "avx512f", "avx512bw"})) == "avx512"
    assert cpu._isa_from_flags("x86_64", f({"avx2", "avx512f", "avx512_vnni"})) == "avx512_vnni"
    assert cpu._isa_from_flags("x86_64", f({"avx2", "avx512f", "avx512_vnni", "amx_int8", "amx_tile"})) == "amx"
    assert cpu._isa_from_flags("arm64", f({"asimd", "asimddp"})) == "arm64"
    assert cpu._isa_from_flags("x86_64", f({"sse4_2"})) is None


def test_the_running_cpu_is_detected_and_described():
    info = cpu.host_cpu()
    assert info.isa in cpu.ISAS
    # The level agrees with the feature flags py-cpuinfo read
    assert info.int8_features["avx2"] or info.isa == "arm64"
    assert cpu.has_vnni(info.isa) == any(info.int8_features[k] for k in ("avx512_vnni", "avx_vnni", "amx"))
    assert cpu.resolve_isa("auto") == info.isa


def test_which_isas_saturate_int16():
    assert [cpu.int16_saturation_risk(i) for i in cpu.ISAS] == [True, False, True, False, False, False]
    assert "saturating int16" in cpu.isa_mismatch("avx512_vnni", "avx2")
    assert "does not show the int16 saturation" in cpu.isa_mismatch("avx2", "avx512_vnni")
    assert cpu.isa_mismatch("avx2", "avx2") is None


def test_unknown_isa_names_the_known_ones(tmp_path):
    with pytest.raises(UserError, match=r"--isa: unknown ISA 'sse9'; use auto or one of avx2, avx_vnni, avx512, "
                                        r"avx512_vnni, amx, arm64"):
        cpu.resolve_isa("sse9", "--isa")
    data = {"name": "mine", "description": "d", "backend": "onnxruntime", "precisions": ["fp32"], "opset": 17,
            "isa": "avx3", "gates": {"fp32": {"min_cosine": 0.99}}}
    with pytest.raises(UserError, match=r"mine.toml: isa: 'avx3' is not one of auto, avx2, avx_vnni"):
        parse_profile(data, tmp_path / "mine.toml")
    trt = {**data, "backend": "tensorrt", "isa": "avx2", "tensorrt": {"version": "10.3"}}
    with pytest.raises(UserError, match=r"isa: applies to CPU backends only"):
        parse_profile(trt, tmp_path / "mine.toml")


def test_isa_flag_errors_are_one_line():
    code, _, err = cli(["build", "-t", "onnxruntime-cpu", "--isa", "avx3"])
    assert code == 2 and error_line(err).startswith("error: --isa avx3: unknown ISA; use auto or one of avx2")
    code, _, err = cli(["build", "-t", "jetson-nano", "--isa", "avx2"])
    assert code == 2 and "--isa avx2: applies to CPU targets; jetson-nano is a TensorRT target" in error_line(err)


def test_shipped_avx2_profiles_and_the_targets_table():
    assert load_target("onnxruntime-avx2").isa == load_target("openvino-avx2").isa == "avx2"
    assert load_target("onnxruntime-cpu").isa == "auto"
    assert load_target("onnxruntime-cpu", isa="avx2").isa == "avx2"
    code, out, _ = cli(["targets"])
    # rich wraps the device column on a narrow terminal; read the table without its white space
    flat = "".join(out.split())
    assert code == 0 and "onnxruntime-avx2onnxruntimefp32int817dynamicCPUavx2" in flat  # precisions wrap between words
    assert f"CPUauto={cpu.host_cpu().isa}" in flat


# --- ONNX Runtime weight formats ------------------------------------------------------------------------


def test_weight_formats_follow_the_target_isa():
    assert weight_format_for("avx2") == "s7" and weight_format_for("avx512") == "s7"
    assert weight_format_for("avx512_vnni") == "s8" and weight_format_for("arm64") == "s8"
    assert weight_formats_for("avx2") == ["s7"]  # never full range where pairs can saturate
    assert weight_formats_for("amx") == ["s8", "s7"]
    with pytest.raises(UserError, match=r"int8_weights s8: full-range int8 weights can saturate int16 sums on avx2"):
        weight_format_for("avx2", "s8")


@pytest.fixture(scope="module")
def demo_onnx(tmp_path_factory):
    out = tmp_path_factory.mktemp("isa")
    info, _, sim = export_demo(out / "onnx", opset=17, dynamic_batch=True)
    return info, sim, out


def _dq_int_weights(path: Path) -> list[np.ndarray]:
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    inits = {t.name: t for t in model.graph.initializer}
    return [numpy_helper.to_array(inits[n.input[0]]) for n in model.graph.node
            if n.op_type == "DequantizeLinear" and n.input[0] in inits
            and numpy_helper.to_array(inits[n.input[0]]).ndim >= 2]


def test_avx2_engine_has_7bit_weights_and_holds_here(demo_onnx):
    """The demo's ONNX Runtime INT8 engine for an AVX2 target, checked on whatever machine runs the suite:
    7-bit weights make its integer results the same on every x86 ISA, so the accuracy measured here is the
    accuracy an AVX2 box gets."""
    from edgerep.quant.evaluate import evaluate_runner
    from edgerep.validate.engine import compute_reference

    info, onnx_path, out = demo_onnx
    calib = digits_data("calib")
    val = digits_data("val")
    ort = get_backend("onnxruntime")
    art = ort.build(onnx_path, "int8", out_dir=out / "avx2", profile=load_target("onnxruntime-avx2"), calib=calib)
    settings = art.info["settings"]
    assert settings["int8_weights"] == "s7" and settings["isa"] == "avx2" and art.info["isa"] == "avx2"
    weights = _dq_int_weights(Path(art.path))
    assert weights and all(w.dtype == np.int8 and np.abs(w.astype(np.int32)).max() <= 64 for w in weights)
    assert settings["int16_saturation"]["isa_independent"] and settings["int16_saturation"]["worst_pair_sum"] <= 32767
    runner = ort.load(art)
    try:
        metrics = evaluate_runner(runner, compute_reference(info.module, val), 32)
    finally:
        runner.close()
    assert metrics["top1_drop"] <= 1.0 and metrics["cosine"] > 0.99


def test_full_range_weights_are_flagged_by_the_int16_bound(demo_onnx):
    info, onnx_path, out = demo_onnx
    calib = digits_data("calib")
    ort = get_backend("onnxruntime")
    vnni = load_target("onnxruntime-cpu", isa="avx512_vnni")
    s8 = ort.build(onnx_path, "int8", out_dir=out / "s8", profile=vnni, calib=calib)
    u8 = ort.build(onnx_path, "int8", out_dir=out / "u8", profile=vnni, calib=calib, options={"int8_weights": "u8"})
    assert s8.info["settings"]["int8_weights"] == "s8"
    # Per-channel full-range weights reach +-127 in every channel's largest tap: 255 * (127 + x) > 32767.
    check = int16_saturation_check(Path(s8.path))
    worst = max(int(np.sort(np.abs(w.reshape(w.shape[0], -1).astype(np.int32)), axis=1)[:, -2:].sum(axis=1).max())
                for w in _dq_int_weights(Path(s8.path)) if w.ndim > 2)
    assert check["worst_pair_sum"] >= 255 * worst and check["weights_at_risk"] > 0 and not check["isa_independent"]
    assert int16_saturation_check(Path(u8.path))["isa_independent"]  # uint8 weights take the U8U8 path
    with pytest.raises(UserError, match="int8_weights s8"):
        ort.build(onnx_path, "int8", out_dir=out / "bad", profile=load_target("onnxruntime-avx2"), calib=calib,
                  options={"int8_weights": "s8"})


# --- the second validation on the target's ISA ----------------------------------------------------------


@pytest.mark.skipif(not (QEMU and X86), reason="needs qemu-user (apt-get install qemu-user) on x86-64 to emulate an AVX2 CPU")
def test_qemu_runs_the_avx2_kernels(demo_onnx):
    """Under qemu-x86_64 -cpu Haswell, ONNX Runtime picks its AVX2 kernels. A 7-bit engine gives bit-identical
    outputs there and here (no pair can saturate); a full-range one differs wherever this CPU has VNNI (on an
    AVX2 machine both runs take the same kernels, so the difference is zero there: the ISA decides)."""
    from edgerep.validate import isa_check

    info, onnx_path, out = demo_onnx
    calib = digits_data("calib")
    x = np.load(DIGITS / "val.npz")["x"][:64].astype(np.float32)
    ort = get_backend("onnxruntime")
    how = isa_check.plan("onnxruntime", "int8", "avx2", {}, host="avx512_vnni")
    assert how["method"] == "qemu"
    for fmt, profile in (("s7", load_target("onnxruntime-avx2")), ("s8", load_target("onnxruntime-cpu", isa="amx"))):
        art = ort.build(onnx_path, "int8", out_dir=out / f"q-{fmt}", profile=profile, calib=calib)
        runner = ort.load(art)
        try:
            here = runner.run(x)
        finally:
            runner.close()
        emulated = isa_check.run_on_target(Path(art.path), x, 32, how)
        diff = float(np.abs(here - emulated).max())
        if fmt == "s7" or not cpu.has_vnni(cpu.host_cpu().isa):
            assert diff == 0.0
        else:
            assert diff > 1e-3  # saturated int16 sums under the AVX2 kernels


def test_openvino_honours_the_onednn_isa_cap(demo_onnx, tmp_path):
    """ONEDNN_MAX_CPU_ISA=AVX2 makes OpenVINO's CPU plugin run its INT8 convolutions with AVX2 kernels
    (the runtime model names the primitive), the mechanism isa_check uses to validate an avx2 target here."""
    pytest.importorskip("openvino", reason="OpenVINO backend")
    pytest.importorskip("nncf", reason="OpenVINO INT8 uses NNCF")
    if not X86:
        pytest.skip("oneDNN ISA caps are x86 names")
    info, onnx_path, out = demo_onnx
    calib = digits_data("calib")
    art = get_backend("openvino").build(onnx_path, "int8", out_dir=out / "ov", profile=load_target("openvino-avx2"),
                                        calib=calib)
    assert art.info["settings"]["overflow_fix"] == "enable" and art.info["settings"]["isa"] == "avx2"
    code = ("import sys, openvino as ov\n"
            "c = ov.Core().compile_model(sys.argv[1], 'CPU', {'INFERENCE_PRECISION_HINT': 'f32'})\n"
            "info = [op.get_rt_info() for op in c.get_runtime_model().get_ops()]\n"
            "print('\\n'.join(i['primitiveType'].astype(str) for i in info if i['layerType'].astype(str) == 'Convolution'))\n")
    run = subprocess.run([sys.executable, "-c", code, str(art.path)], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2"})
    kernels = run.stdout.split()
    assert run.returncode == 0 and kernels, run.stderr
    assert all("avx512" not in k and "amx" not in k for k in kernels) and any("avx2" in k for k in kernels)


@pytest.mark.slow
def test_build_records_where_each_engine_was_validated(tmp_path):
    code, _, err = cli(["build", "-t", "onnxruntime-avx2", "-p", "int8", "-o", str(tmp_path / "b")])
    assert code == 0, err
    rep = json.loads((tmp_path / "b" / "report.json").read_text())
    isa = rep["engines"][0]["isa"]
    host = cpu.host_cpu().isa
    assert isa["target"] == "avx2" and isa["measured_on"] == host
    expected = "native" if host == "avx2" else ("qemu" if QEMU and X86 else "by-construction")
    assert isa["method"] == expected
    if expected == "qemu":
        assert isa["passed"] and isa["accuracy"]["top1_drop"] <= 1.0
    sidecar = json.loads((tmp_path / "b" / "engines" / "model.int8.onnx.json").read_text())
    assert sidecar["isa"] == "avx2" and sidecar["validated"]["isa"] == host and sidecar["validated"]["passed"]
    md = (tmp_path / "b" / "report.md").read_text()
    assert "## CPU instruction set" in md and f"| onnxruntime int8 | avx2 | {host} |" in md


@pytest.mark.slow
def test_validate_warns_when_the_cpu_differs(tmp_path, host_isa):
    """An engine built for a VNNI CPU, validated on an AVX2 one: a warning naming both ISAs and the risk,
    not a crash (the exit code is the gate's, which depends on the real CPU's kernels)."""
    out = tmp_path / "v"
    code, _, err = cli(["build", "-t", "onnxruntime-cpu", "--isa", "avx512_vnni", "-p", "int8", "-o", str(out)])
    assert code in (0, 1), err
    host_isa("avx2")
    engine = out / "engines" / "model.int8.onnx"
    code, _, err = cli(["validate", "-m", "zoo:repvgg_digits", "-e", str(engine)])
    assert code in (0, 1) and "Traceback" not in err
    warning = next(line for line in err.splitlines() if line.startswith("warning:"))
    assert "built for avx512_vnni, running on avx2" in warning and "saturating int16" in warning


def test_bf16_features_are_read_from_the_flags():
    """avx512_bf16 / amx_bf16 are what make OpenVINO run FP32 IRs in bf16 by default (doctor reports them)."""
    from edgerep.cpu.isa import CpuInfo

    sapphire = CpuInfo("x", "x86_64", frozenset({"avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16",
                                                 "amx_int8", "avx512_fp16"}), "amx")
    assert sapphire.bf16_features == {"avx512_bf16": True, "amx_bf16": True, "avx512_fp16": True, "arm_bf16": False}
    haswell = CpuInfo("x", "x86_64", frozenset({"avx2", "fma"}), "avx2")
    assert not any(haswell.bf16_features.values())
    assert CpuInfo("x", "aarch64", frozenset({"bf16", "asimddp"}), "arm64").bf16_features["arm_bf16"] is True
    assert sapphire.to_dict()["bf16_features"] == sapphire.bf16_features


# --- bf16: where OpenVINO computes it ----------------------------------------------------------------------------

SAPPHIRE_RAPIDS = cpu.CpuInfo("Xeon 8480", "x86_64", frozenset({"avx2", "avx512f", "avx512_vnni", "avx512_bf16",
                                                                 "amx_bf16", "amx_int8", "amx_tile"}), "amx")
ZEN4 = cpu.CpuInfo("EPYC 9004", "x86_64", frozenset({"avx2", "avx512f", "avx512_vnni", "avx512_bf16"}), "avx512_vnni")
CASCADE_LAKE = cpu.CpuInfo("Xeon 6248", "x86_64", frozenset({"avx2", "avx512f", "avx512_vnni"}), "avx512_vnni")
HASWELL = cpu.CpuInfo("i7-4770", "x86_64", frozenset({"avx2", "fma"}), "avx2")
GRAVITON3 = cpu.CpuInfo("Neoverse-V1", "arm64", frozenset({"asimd", "asimddp", "bf16", "i8mm"}), "arm64")


def test_bf16_needs_avx512_bf16_or_amx_bf16_on_x86():
    """OpenVINO's CPU plugin computes bf16 (and runs FP32 IRs in it by default) with AVX512_BF16 or AMX-BF16 only:
    not on AVX-512 without them, not on AVX2, not on ARM even where the CPU has the bf16 extension."""
    assert SAPPHIRE_RAPIDS.has_bf16 and ZEN4.has_bf16
    assert not CASCADE_LAKE.has_bf16 and not HASWELL.has_bf16 and not GRAVITON3.has_bf16
    assert SAPPHIRE_RAPIDS.bf16_missing() is None and SAPPHIRE_RAPIDS.to_dict()["bf16"] is True
    for info, found in ((CASCADE_LAKE, "it is avx512_vnni without them"), (HASWELL, "it is avx2"),
                        (GRAVITON3, "ARM CPU, where OpenVINO computes no bf16")):
        why = info.bf16_missing()
        assert why.startswith("this CPU has no BF16 (looked for avx512_bf16 or amx_bf16") and found in why, why
    # under an emulator (EDGEREP_HOST_ISA) the flags are the real host's, the level is what the process runs
    emulated = cpu.CpuInfo(ZEN4.brand, "x86_64", ZEN4.flags, "avx2")
    assert not emulated.has_bf16 and "it is avx2" in emulated.bf16_missing()


def test_which_targets_get_a_bf16_engine():
    """bf16 builds where this CPU has BF16 and the target runs it: this CPU (isa auto) or an AMX CPU."""
    assert cpu.precision_unavailable("bf16", "auto", SAPPHIRE_RAPIDS) is None
    assert cpu.precision_unavailable("bf16", "amx", ZEN4) is None
    for precision in ("fp32", "fp16", "int8"):
        assert cpu.precision_unavailable(precision, "auto", HASWELL) is None
    here = cpu.precision_unavailable("bf16", "auto", HASWELL)
    assert "no BF16" in here and "build fp32" in here and "\n" not in here
    for isa in ("avx2", "avx512_vnni"):  # Cascade Lake is avx512_vnni without BF16
        why = cpu.precision_unavailable("bf16", isa, SAPPHIRE_RAPIDS)
        assert f"target's ISA {isa} does not promise BF16" in why and "isa auto" in why

