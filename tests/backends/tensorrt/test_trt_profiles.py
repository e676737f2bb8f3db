"""Issue 20 (profiles and versions): each defect with the CPU test that would have caught it.

N1 `--target tensorrt` by the installed major and the bounded extras; N5 INT8 precision per version (weakly typed
INT8|FP16 on 10.12-10.x, the FP16 Q/DQ graph on 11); N12/N13 the API path's flags (build_plan) and trtexec's;
N14 strict cache-header codes; N15 the opset refusals; N16 the FP16 graph made and checked by ONNX Runtime's route
(and AutoCast's, where nvidia-modelopt is installed); the JetPack 6.0 / 7.x rows and their profiles.
"""
from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from edgerep.backends.tensorrt.engine_build import build_plan, strict_header_action
from edgerep.backends.tensorrt.trtexec import trtexec_args
from edgerep.backends.tensorrt.versions import (
    FP16_QDQ_MIN_OPSET,
    JETPACK,
    api_features,
    code_to_versions,
    dla_support,
    jetpack_release,
    ops_table,
    parse_cache_header,
    parse_version,
)
from edgerep.errors import UserError
from edgerep.targets import TRT_ALIAS_DEFAULT, load_target, resolve_tensorrt_alias
from tests.paths import REPO

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

TRT_DATA = REPO / "edgerep" / "backends" / "tensorrt" / "data"


def _names(key: str) -> set[str]:
    return set(json.loads((TRT_DATA / f"names-{key}.json").read_text())["names"])


# --- N1: --target tensorrt and the extras --------------------------------------------------------------------


@pytest.mark.parametrize("installed,profile", [("10.3.0", "tensorrt-10"), ("10.16.1.11", "tensorrt-10"),
                                               ("11.4.0.106", "tensorrt-11"), ("11.1.0", "tensorrt-11")])
def test_tensorrt_resolves_by_the_installed_major(installed, profile):
    name, line = resolve_tensorrt_alias(installed)
    assert name == profile and installed in line and profile in line
    resolved = load_target(profile)
    from edgerep.backends.tensorrt.versions import version_matches

    # the engine builder's own refusal (engine_build.build_engine) passes for the profile chosen
    assert version_matches(resolved.tensorrt.version, installed)


def test_tensorrt_without_tensorrt_and_with_an_unknown_major():
    name, line = resolve_tensorrt_alias(None)
    assert name == TRT_ALIAS_DEFAULT == "tensorrt-10" and "not installed" in line and "tensorrt-11" in line
    with pytest.raises(UserError, match=r"--target tensorrt: TensorRT 8.6.1 is installed here.*tensorrt-10 and "
                                        r"tensorrt-11"):
        resolve_tensorrt_alias("8.6.1")


def test_target_tensorrt_says_which_profile_once(capsys):
    """No TensorRT on this machine: the alias gives tensorrt-10 and one stderr line says so."""
    import edgerep.targets as targets

    targets._ALIAS_SAID.clear()
    assert load_target("tensorrt").name == "tensorrt-10"
    assert load_target("tensorrt").name == "tensorrt-10"
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "so tensorrt-10" in err[0]


def test_target_tensorrt_reads_the_importable_tensorrt(monkeypatch, capsys):
    """The installed version is tensorrt.__version__: a module that has one picks its major's profile; one without
    (tensorrt-stubs' namespace package) counts as no TensorRT."""
    import types

    import edgerep.targets as targets

    module = types.ModuleType("tensorrt")
    module.__version__ = "11.4.0.106"  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "tensorrt", module)
    targets._ALIAS_SAID.clear()
    assert targets.installed_tensorrt() == "11.4.0.106"
    assert load_target("tensorrt").name == "tensorrt-11"
    assert "TensorRT 11.4.0.106 is installed here, so tensorrt-11" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "tensorrt", types.ModuleType("tensorrt"))  # no __version__
    assert targets.installed_tensorrt() is None


def test_extras_are_bounded_to_the_profiles_majors():
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert "tensorrt>=10,<12" in extras["tensorrt"]
    assert "tensorrt>=10,<11" in extras["tensorrt10"] and "tensorrt>=11,<12" in extras["tensorrt11"]
    assert any(r.startswith("nvidia-modelopt[onnx]") for r in extras["modelopt"])
    assert not any("modelopt" in r for r in extras["dev"])  # it would replace onnx / add onnxruntime-gpu
    # each desktop profile's version lies inside its extra's range, and PyPI's current 11.4.0.106 is accepted
    for profile, extra in (("tensorrt-10", "tensorrt10"), ("tensorrt-11", "tensorrt11")):
        major = int(load_target(profile).tensorrt.version.split(".")[0])
        low, high = (int(x) for x in extras[extra][0].split(">=")[1].split(",<"))
        assert low <= major < high
    assert 10 <= 11 < 12


# --- N5 / N13: trtexec per profile and version -------------------------------------------------------------


def _args(version: str, precision: str, mode: str = "qdq", dla_core: int | None = None) -> list[str]:
    return trtexec_args(parse_version(version), precision, int8_mode=mode, input_name="input",
                        input_shape=[1, 3, 32, 32], workspace_mb=512, dla_core=dla_core, calib_cache="calib.cache")


@pytest.mark.parametrize("version", ["10.3", "10.12", "10.13", "10.16"])
def test_int8_from_qdq_on_10x_keeps_the_fp16_fallback(version):
    """N5: on 10.12+ the Q/DQ engine was built --stronglyTyped from the FP32 graph, so its unquantized layers ran
    FP32; it stays weakly typed (--int8 --fp16, deprecated but still parsed) through 10.x."""
    args = _args(version, "int8")
    assert "--onnx=model.qdq.onnx" in args and "--int8" in args and "--fp16" in args
    assert "--stronglyTyped" not in args


@pytest.mark.parametrize("version", ["11.0", "11.4", "11.4.1"])
def test_trt11_builds_from_the_fp16_graphs_without_precision_flags(version):
    for precision, onnx in (("fp16", "model.fp16.onnx"), ("int8", "model.qdq.onnx")):
        args = _args(version, precision)
        assert f"--onnx={onnx}" in args
        assert not {"--int8", "--fp16", "--stronglyTyped", "--calib=calib.cache"} & set(args)


@pytest.mark.parametrize("version", ["8.0", "8.2", "8.5", "8.6", "10.3", "10.13", "11.4.1"])
def test_fp32_engines_are_built_without_tf32(version):
    """N13: TF32 is on by default; an fp32 engine passes --noTF32 (fp16/int8 ones need not)."""
    assert "--noTF32" in _args(version, "fp32")
    assert "--noTF32" not in _args(version, "fp16")


@pytest.mark.parametrize("target", ["tensorrt-10", "tensorrt-11", "jetson-thor", "jetson-agx-orin-jp7"])
def test_each_new_profile_gives_trtexec_lines(target):
    """The engines build.sh builds for the new profiles, with the options that profile's release needs."""
    from edgerep.backends.tensorrt.bundle import engine_plan

    profile = load_target(target)
    version = parse_version(profile.tensorrt.version)
    plan = engine_plan(profile, version, list(profile.precisions), input_name="input", input_shape=[1, 3, 32, 32])
    by = {e["precision"]: e for e in plan}
    if version[0] >= 11:
        assert by["fp16"]["onnx"] == "model.fp16.onnx" and by["int8"]["onnx"] == "model.qdq.onnx"
        assert not any(a in ("--fp16", "--int8") for e in plan for a in e["trtexec"])
    else:
        assert by["int8"]["trtexec"][-1] == "--skipInference" and "--fp16" in by["int8"]["trtexec"]


def test_orin_jp7_can_build_for_its_dla_from_qdq():
    """11.4.1 brings DLA back for AGX Orin on JetPack 7.2.2+, strongly typed: INT8 from Q/DQ is accepted there,
    while 11.4.0 (no DLA on JetPack) refuses the DLA core."""
    args = _args("11.4.1", "int8", dla_core=0)
    assert "--useDLACore=0" in args and "--allowGPUFallback" in args and "--onnx=model.qdq.onnx" in args
    with pytest.raises(UserError, match="does not support DLA"):
        _args("11.4.0", "int8", dla_core=0)


# --- N5 / N12 / N13: the API path's flags ----------------------------------------------------------------------


@pytest.mark.parametrize("version,names", [("8.0.1", "8.0"), ("8.2.1", "8.2"), ("8.5.2", "8.5"), ("8.6.1", "8.6"),
                                           ("10.3.0", "10.3"), ("10.13.3", "10.3"), ("11.4.1", "11.4")])
def test_build_plan_per_version_and_its_names_are_bound(version, names):
    feats = api_features(parse_version(version))
    bound = _names(names)
    trt11 = feats.always_strongly_typed
    for precision in ("fp32", "fp16", "int8"):
        for mode in ("calibrate", "qdq"):
            for dla in (None, 0):
                if precision == "int8" and mode == "calibrate" and trt11:
                    with pytest.raises(UserError, match="removed calibrators"):
                        build_plan(feats, precision, mode, dla)
                    continue
                plan = build_plan(feats, precision, mode, dla)
                used = set(plan.network_flags) | set(plan.set_flags) | set(plan.clear_flags)
                assert used <= bound, f"{version}: {sorted(used - bound)} not bound"
                assert ("TF32" in plan.clear_flags) == (precision == "fp32")  # N13
                on_dla = dla is not None and precision != "fp32"
                assert plan.dla == on_dla and ("GPU_FALLBACK" in plan.set_flags) == on_dla
                if trt11:  # strongly typed: no precision flag at all
                    assert plan.strongly_typed and not {"FP16", "INT8", "PREFER_PRECISION_CONSTRAINTS"} & used
                    continue
                assert not plan.strongly_typed  # N5: weakly typed through 10.x, also for Q/DQ on 10.12+
                assert ("FP16" in plan.set_flags) == (precision != "fp32")
                assert ("INT8" in plan.set_flags) == (precision == "int8")
                # N12: as trtexec, precision constraints preferred on the DLA (8.0's trtexec: STRICT_TYPES)
                constraint = "PREFER_PRECISION_CONSTRAINTS" if feats.version >= (8, 2, 0) else "STRICT_TYPES"
                assert (constraint in plan.set_flags) == on_dla
                assert ("EXPLICIT_BATCH" in plan.network_flags) == (feats.version[0] < 10)


# --- N14: strict header codes -----------------------------------------------------------------------------------


def test_header_codes_are_read_strictly():
    assert code_to_versions(8502) == [(8, 5, 2)] and code_to_versions(100300) == [(10, 3, 0)]
    assert code_to_versions(101303) == [(10, 13, 3)] and code_to_versions(110401) == [(11, 4, 1)]
    for bad in (10300, 850, 1000300, "08502"):  # 5 digits (10.3 by the 8.x rule), 3, 7, a padded 4
        assert code_to_versions(bad) == [], bad
    assert parse_cache_header("TRT-10300-EntropyCalibration2")[1] == []


def test_a_five_digit_header_is_never_used_as_is():
    """The cache guard said "use" for TRT-10300-... on 10.3 (both readings accepted); TensorRT writes 100300 and
    rejects it. A host-made cache is re-headed, any other refused; a good header keeps the guard's answer."""
    host = {"produced_by": "onnxruntime-host"}
    assert strict_header_action("use", None, "TRT-10300-EntropyCalibration2", [], host)[0] == "retag"
    action, why = strict_header_action("use", None, "TRT-10300-EntropyCalibration2", [], {"produced_by": "trt"})
    assert action == "recalibrate" and "TRT-10300" in why
    assert strict_header_action("use", None, "TRT-100300-EntropyCalibration2", [(10, 3, 0)], host) == ("use", None)
    assert strict_header_action("retag", "x", "TRT-8502-EntropyCalibration2", [(8, 5, 2)], host) == ("retag", "x")


def test_the_guard_with_a_parsed_five_digit_header(tmp_path):
    """End to end over our own functions: a cache file headed TRT-10300 for a 10.3 device."""
    from edgerep.backends.tensorrt import calib_cache
    from edgerep.backends.tensorrt.guard import SIDECAR_KIND_CACHE, cache_action

    text = calib_cache.cache_text({"input": 1.0}, parse_version("10.3")).replace("TRT-100300", "TRT-10300")
    contents = calib_cache.parse_cache(text)
    side = {"kind": SIDECAR_KIND_CACHE, "trt_version": "10.3.0", "produced_by": "onnxruntime-host"}
    action, why = cache_action(side, {"trt_version": "10.3.0"}, cache_versions=contents.versions)
    assert action == "retag"  # a header that names no version is not the sidecar's version: re-headed
    assert strict_header_action(action, why, contents.header, contents.versions, side)[0] == "retag"
    fixed = calib_cache.retag(text, parse_version("10.3.0"))
    assert fixed.startswith("TRT-100300-") and calib_cache.parse_cache(fixed).versions == [(10, 3, 0)]


# --- N15 and the FP16 Q/DQ opset ---------------------------------------------------------------------------------


def _tiny_model(path: Path, opset: int, *, scale: float = 1.0) -> Path:
    """x -> Conv(3x3) -> Mul(scale) -> Relu -> GlobalAveragePool: a real ONNX model, small."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(1)
    w = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    b = numpy_helper.from_array(np.zeros(4, np.float32), "b")
    k = numpy_helper.from_array(np.array(scale, np.float32), "k")
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Mul", ["c", "k"], ["m"], name="scale"),
             helper.make_node("Relu", ["m"], ["r"], name="relu"),
             helper.make_node("GlobalAveragePool", ["r"], ["y"], name="pool")]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 1, 1])], [w, b, k])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


class _Ranges:
    """Stand-in for calibrate.CalibrationRanges with the amax of each tensor: make_qdq's `overrides` route reads
    only these three members."""

    method = "minmax"
    input_name = "x"

    def __init__(self, amax: dict[str, float]) -> None:
        self._amax = amax

    def amax(self) -> dict[str, float]:
        return dict(self._amax)


def _feeds(n: int = 4) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(2)
    return [{"x": rng.standard_normal((1, 3, 8, 8)).astype(np.float32)} for _ in range(n)]


def test_the_qdq_opset_constants_are_onnx_s():
    """Checked against the operator schemas the onnx package ships: `axis` (per-channel) from QuantizeLinear-13,
    float16 inputs and scales from -19 (DequantizeLinear-19 outputs float16)."""
    import onnx.defs

    from edgerep.backends.tensorrt.versions import PER_CHANNEL_QDQ_MIN_OPSET

    def types(op: str, opset: int) -> set[str]:
        return {t for c in onnx.defs.get_schema(op, opset).type_constraints for t in c.allowed_type_strs}

    for op in ("QuantizeLinear", "DequantizeLinear"):
        assert "axis" in onnx.defs.get_schema(op, PER_CHANNEL_QDQ_MIN_OPSET).attributes
        assert "axis" not in onnx.defs.get_schema(op, PER_CHANNEL_QDQ_MIN_OPSET - 1).attributes
        assert "tensor(float16)" in types(op, FP16_QDQ_MIN_OPSET)
        assert "tensor(float16)" not in types(op, FP16_QDQ_MIN_OPSET - 1)


def test_per_channel_qdq_needs_opset_13(tmp_path):
    """N15: the refusal names the opset and the profile key, before ONNX Runtime writes an invalid model."""
    from edgerep.backends.tensorrt.qdq import make_qdq

    old = _tiny_model(tmp_path / "old.onnx", 12)
    ranges = _Ranges({"x": 4.0, "c": 8.0, "m": 8.0, "r": 8.0})
    with pytest.raises(UserError, match=r"old.onnx: opset 12 \(the profile's `opset`\).*opset = 13 or higher"):
        make_qdq(old, tmp_path / "q.onnx", ranges, use_cache_path=False)
    assert not (tmp_path / "q.onnx").exists()
    ok = _tiny_model(tmp_path / "ok.onnx", 13)
    make_qdq(ok, tmp_path / "q13.onnx", ranges, use_cache_path=False)
    assert (tmp_path / "q13.onnx").is_file()


def test_fp16_qdq_needs_opset_19_and_the_trt11_profiles_have_it(tmp_path):
    from edgerep.backends.tensorrt.qdq import make_qdq, make_qdq_fp16

    ranges = _Ranges({"x": 4.0, "c": 8.0, "m": 8.0, "r": 8.0})
    src = _tiny_model(tmp_path / "m17.onnx", 17)
    make_qdq(src, tmp_path / "q17.onnx", ranges, use_cache_path=False)
    with pytest.raises(UserError, match=r"q17.onnx: opset 17 .*FP16 Q/DQ scales.*opset = 19 or higher"):
        make_qdq_fp16(tmp_path / "q17.onnx", src, tmp_path / "out.onnx", _feeds(), prefer_autocast=False)
    for name in ("tensorrt-11", "jetson-agx-orin-jp7"):
        profile = load_target(name)
        assert profile.opset >= FP16_QDQ_MIN_OPSET
        assert profile.opset <= ops_table(parse_version(profile.tensorrt.version)).max_opset


# --- N16: the FP16 graph, made and checked ----------------------------------------------------------------------


def test_fallback_fp16_graph_is_made_checked_and_keeps_overflow_in_fp32(tmp_path):
    """ONNX Runtime's converter route on a real small model: FP16 initializers, FP32 I/O, checked in ONNX Runtime
    against the FP32 model; the node whose values pass 512 on the data (AutoCast's data_max) stays FP32."""
    import onnx
    from onnx import TensorProto

    from edgerep.backends.tensorrt.qdq import make_fp16, overflow_nodes

    src = _tiny_model(tmp_path / "m.onnx", 19, scale=1000.0)  # Mul's output and Relu's run past FP16's 512 rule
    feeds = _feeds()
    assert set(overflow_nodes(onnx.load(str(src)), feeds)) == {"scale", "relu", "pool"}
    graph = make_fp16(src, tmp_path / "model.fp16.onnx", feeds, prefer_autocast=False)
    assert graph.tool.startswith("onnxruntime-float16 ") and graph.fp32_nodes == ["pool", "relu", "scale"]
    assert graph.check["onnx_checker"] == "ok" and graph.check["min_cosine"] > 0.999 and graph.check["samples"] == 4
    half = onnx.load(str(graph.path))
    inits = {t.name: t.data_type for t in half.graph.initializer}
    assert inits["w"] == TensorProto.FLOAT16  # the conv runs FP16
    assert half.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert half.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT


def test_fp16_check_refuses_a_broken_conversion(tmp_path):
    """A graph whose values overflow FP16 when nothing is kept FP32: the check names the file and the way out."""
    import onnx

    from edgerep.backends.tensorrt.qdq import _ort_half, _save_checked, check_fp16_graph

    src = _tiny_model(tmp_path / "m.onnx", 19, scale=1e6)
    _save_checked(_ort_half(onnx.load(str(src)), []), tmp_path / "bad.onnx")
    with pytest.raises(UserError, match=r"bad.onnx: output y is not finite.*edgerep\[modelopt\]"):
        check_fp16_graph(tmp_path / "bad.onnx", src, _feeds())


def test_fp16_qdq_graph_for_trt11_runs_fp16_outside_the_qdq(tmp_path):
    """N5 on 11: the Q/DQ model with its float parts in FP16 (scales too), checked against the FP32 Q/DQ model."""
    import onnx
    from onnx import TensorProto

    from edgerep.backends.tensorrt.qdq import FP16_MIN_NORMAL, make_qdq, make_qdq_fp16

    src = _tiny_model(tmp_path / "m.onnx", 19)
    make_qdq(src, tmp_path / "q.onnx", _Ranges({"x": 4.0, "c": 8.0, "m": 8.0, "r": 1e-4}), use_cache_path=False)
    graph = make_qdq_fp16(tmp_path / "q.onnx", src, tmp_path / "q16.onnx", _feeds(), prefer_autocast=False)
    model = onnx.load(str(graph.path))
    scales = {n.input[1] for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")}
    inits = {t.name: t for t in model.graph.initializer}
    assert scales and all(inits[s].data_type == TensorProto.FLOAT16 for s in scales if s in inits)
    from onnx import numpy_helper

    assert min(float(numpy_helper.to_array(inits[s]).min()) for s in scales if s in inits) >= FP16_MIN_NORMAL * 0.999
    assert graph.check["min_cosine"] > 0.99 and graph.tool.startswith("onnxruntime-float16")


def test_autocast_route_when_modelopt_is_installed(tmp_path):
    """NVIDIA's documented route. nvidia-modelopt[onnx] pins onnx 1.21 and onnxruntime-gpu, so it is not in `dev`:
    this runs only in an environment that has it (pip install 'edgerep[modelopt]')."""
    pytest.importorskip("modelopt.onnx.autocast", reason="nvidia-modelopt[onnx] is not installed (edgerep[modelopt])")
    from edgerep.backends.tensorrt.qdq import make_fp16, make_qdq, make_qdq_fp16

    src = _tiny_model(tmp_path / "m.onnx", 19, scale=1000.0)
    graph = make_fp16(src, tmp_path / "model.fp16.onnx", _feeds())
    assert graph.tool.startswith("modelopt-autocast ") and graph.check["min_cosine"] > 0.999
    assert {"scale", "relu"} <= set(graph.fp32_nodes)  # AutoCast keeps the >512 nodes in FP32 too
    plain = _tiny_model(tmp_path / "p.onnx", 19)
    make_qdq(plain, tmp_path / "q.onnx", _Ranges({"x": 4.0, "c": 8.0, "m": 8.0, "r": 8.0}), use_cache_path=False)
    q16 = make_qdq_fp16(tmp_path / "q.onnx", plain, tmp_path / "q16.onnx", _feeds())
    assert q16.tool.startswith("modelopt-autocast ") and q16.check["min_cosine"] > 0.99


def test_trt11_build_writes_the_fp16_graphs_into_the_bundle_and_names_the_tool(tmp_path):
    """Without TensorRT here the backend writes the bundle: for tensorrt-11 its model.fp16.onnx / model.qdq.onnx are
    the checked FP16 graphs, and the artifact's settings say which tool made them."""
    import onnx
    from onnx import TensorProto

    from edgerep.backends import get_backend
    from tests.digits_demo import digits_data, export_demo, needs_demo

    if needs_demo.args[0]:
        pytest.skip(needs_demo.kwargs["reason"])
    _, _, sim = export_demo(tmp_path / "onnx", opset=19, dynamic_batch=False)
    profile = load_target("tensorrt-11")
    backend = get_backend("tensorrt")
    calib = digits_data("calib")
    out = tmp_path / "engines"
    for precision in ("fp16", "int8"):
        art = backend.build(sim, precision, out_dir=out, profile=profile, calib=calib, options={"num_samples": 16})
        assert art.status == "skipped"
        fp16_graph = art.info["settings"]["fp16_graph"]
        assert fp16_graph["tool"].startswith(("onnxruntime-float16", "modelopt-autocast"))
        assert fp16_graph["check"]["onnxruntime_cpu"] == "ok" and fp16_graph["check"]["data"].startswith("calibration")
    bundle = out / "device-bundle"
    for name in ("model.fp16.onnx", "model.qdq.onnx"):
        model = onnx.load(str(bundle / name))
        assert any(t.data_type == TensorProto.FLOAT16 for t in model.graph.initializer), name
    manifest = json.loads((bundle / "bundle.json").read_text())
    assert manifest["profile"]["name"] == "tensorrt-11" and manifest["trt_version_spec"] == "11"


# --- point 3: today's platforms ---------------------------------------------------------------------------------


def test_jetpack_rows_and_their_profiles():
    rows = {r.jetpack: r for r in JETPACK}
    assert rows["6.0"].tensorrt == "8.6.2" and rows["6.0"].parser_table() == "8.6"
    thor = jetpack_release("7.1")
    assert thor.tensorrt.startswith("10.13") and thor.cuda == "13.0" and thor.python == "3.12" and not thor.dla
    orin7 = jetpack_release("7.2.3")
    assert orin7.tensorrt == "11.4.1" and orin7.dla and orin7.parser_table() == "11.1"
    for row in JETPACK:
        assert row.source and row.opset_cap <= ops_table(row.version).max_opset, row.jetpack
        if row.profile:
            profile = load_target(row.profile)
            assert profile.opset == row.opset_cap, row.profile
            assert parse_version(profile.tensorrt.version)[:2] == row.version[:2], row.profile
            assert (profile.tensorrt.dla_cores > 0) <= row.dla
    with pytest.raises(UserError, match="JetPack 3.3: not in edgerep's table"):
        jetpack_release("3.3")


def test_thor_and_orin_jp7_profiles():
    thor = load_target("jetson-thor")
    assert thor.tensorrt.version == "10.13" and thor.tensorrt.dla_cores == 0 and thor.tensorrt.compute_capability == "11.0"
    assert not dla_support(parse_version(thor.tensorrt.version))[0]  # 10.8+ has no DLA; Thor has none anyway
    orin = load_target("jetson-agx-orin-jp7")
    v = parse_version(orin.tensorrt.version)
    assert v == (11, 4, 1) and dla_support(v)[0] and orin.tensorrt.int8_mode == "qdq" and orin.tensorrt.dla_cores == 2
    with pytest.raises(UserError, match="removed implicit quantization"):
        from edgerep.targets import parse_profile

        data = tomllib.loads(orin.source.read_text())
        data["tensorrt"]["int8_mode"] = "calibrate"
        parse_profile(data, orin.source)


def test_lint_accepts_the_new_profiles_settings(tmp_path):
    """The lint of edgerep check runs clean on a real small model for each new profile (opset within the parser's)."""
    from edgerep.backends.tensorrt.host import lint_for_profile

    for name in ("tensorrt-11", "jetson-agx-orin-jp7", "jetson-thor"):
        profile = load_target(name)
        model = _tiny_model(tmp_path / f"{name}.onnx", profile.opset)
        report = lint_for_profile(model, replace(profile))
        assert not report.errors, (name, report.errors)


@pytest.mark.parametrize("version,names", [("8.0.1", "8.0"), ("8.6.1", "8.6"), ("10.3.0", "10.3"), ("11.4.1", "11.4")])
def test_the_api_builder_applies_the_plan(tmp_path, monkeypatch, version, names):
    """engine_build._build_in_context through test_tensorrt_api's recording stand-in for `tensorrt` (control flow
    only): fp32 clears TF32, a DLA fp16 build sets the precision constraint trtexec sets, and every name reached is
    bound in that release."""
    from edgerep.backends.tensorrt.engine_build import build_engine
    from tests.backends.tensorrt.test_tensorrt_api import fake_pycuda, fake_tensorrt

    onnx_path = _tiny_model(tmp_path / "m.onnx", 19 if version.startswith("11") else 13)
    trt, log = fake_tensorrt(version, {"x": (1, 3, 8, 8), "y": (1, 4, 1, 1)})
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    for name, module in fake_pycuda().items():
        monkeypatch.setitem(sys.modules, name, module)
    base = load_target("jetson-agx-orin-jp7" if version.startswith("11") else "jetson-xavier-nx")
    mm = ".".join(version.split(".")[:3 if version.startswith("11") else 2])
    profile = replace(base, precisions=["fp32", "fp16"], tensorrt=replace(base.tensorrt, version=mm, dla_cores=2))
    from edgerep.backends.tensorrt.qdq import prepare_fp16_graph

    fp16_onnx = Path(prepare_fp16_graph(onnx_path, tmp_path / "fp16", None)["path"]) if version.startswith("11") else None
    build_engine(onnx_path, "fp32", out_dir=tmp_path / "fp32", profile=profile, calib=None, int8=None, fp16_onnx=None,
                 int8_mode="qdq", dla_core=None, timing_cache=None, info={"settings": {}})
    assert {"clear_flag", "TF32"} <= log
    log.clear()
    build_engine(onnx_path, "fp16", out_dir=tmp_path / "fp16e", profile=profile, calib=None, int8=None,
                 fp16_onnx=fp16_onnx, int8_mode="qdq", dla_core=0, timing_cache=None, info={"settings": {}})
    constraint = {"8.0.1": "STRICT_TYPES"}.get(version, "PREFER_PRECISION_CONSTRAINTS")
    assert ("GPU_FALLBACK" in log) and ((constraint in log) == (not version.startswith("11")))
    assert "TF32" not in log
    assert not sorted(log - _names(names)), sorted(log - _names(names))
