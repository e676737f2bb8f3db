"""OpenVINO engines carry the compile properties they were validated with (`<stem>.compile.json`), the runner
compiles with exactly those, and bf16 is built only on a CPU with BF16 (edgerep.backends.openvino.compile_props).

Built from the demo's real export; what OpenVINO runs is read back from the compiled model."""
from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("openvino")

from edgerep.backends import get_backend  # noqa: E402
from edgerep.backends.openvino.compile_props import HINT, precision_name, precision_warning  # noqa: E402
from edgerep.cpu.isa import host_cpu  # noqa: E402
from edgerep.errors import UserError  # noqa: E402
from edgerep.files.artifacts import load_artifact, write_sidecar  # noqa: E402
from edgerep.targets import load_target  # noqa: E402
from tests.digits_demo import export_demo, needs_demo  # noqa: E402

pytestmark = needs_demo
NO_BF16 = host_cpu().bf16_missing()
needs_bf16 = pytest.mark.skipif(NO_BF16 is not None, reason=f"needs a CPU with BF16: {NO_BF16}")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("ov-compile")
    _, _, sim = export_demo(root / "export")
    backend = get_backend("openvino")
    art = backend.build(sim, "fp32", out_dir=root / "engines", profile=load_target("openvino-cpu"))
    return {"root": root, "onnx": sim, "backend": backend, "fp32": art}


def _plugin_default() -> str:
    import openvino as ov

    return precision_name(ov.Core().get_property("CPU", HINT))


def test_the_engine_carries_its_compile_properties_and_they_load_as_they_are(demo):
    import openvino as ov

    art = demo["fp32"]
    config = art.path.with_name("model.fp32.compile.json")
    body = json.loads(config.read_text())
    assert body == {"device": "CPU", "properties": {HINT: "f32"}}
    side = json.loads(art.sidecar.read_text())
    assert side["settings"]["compile_properties"] == config.name and side["settings"]["inference_precision"] == "f32"
    assert sorted(p.name for p in art.path.parent.iterdir()) == ["model.fp32.bin", "model.fp32.compile.json",
                                                                 "model.fp32.xml", "model.fp32.xml.json"]
    # the two lines report.md shows
    cfg = json.load(open(config))
    compiled = ov.Core().compile_model(str(art.path), cfg["device"], cfg["properties"])
    assert precision_name(compiled.get_property(HINT)) == "f32"


def test_the_runner_compiles_with_exactly_the_files_properties(demo, tmp_path):
    import shutil

    folder = tmp_path / "copy"
    shutil.copytree(demo["fp32"].path.parent, folder)
    xml = folder / "model.fp32.xml"
    config = folder / "model.fp32.compile.json"
    with demo["backend"].load(load_artifact(xml)) as runner:
        assert runner.compiled.get_property(HINT).get_type_name() == "f32" and runner.inference_precision == "f32"
        assert str(runner.compiled.get_property("PERFORMANCE_HINT")) == "LATENCY"  # the CPU plugin's default
        assert runner.precision_warning() is None
        before = runner.run(np.zeros((1, 1, 32, 32), np.float32))
    # a property added to the file reaches the compiled model: the runner has no copy of its own
    body = json.loads(config.read_text())
    body["properties"]["PERFORMANCE_HINT"] = "THROUGHPUT"
    config.write_text(json.dumps(body))
    with demo["backend"].load(load_artifact(xml)) as runner:
        assert str(runner.compiled.get_property("PERFORMANCE_HINT")) == "THROUGHPUT"
        assert np.allclose(runner.run(np.zeros((1, 1, 32, 32), np.float32)), before, atol=1e-5)
    config.unlink()
    with pytest.raises(UserError) as err:
        demo["backend"].load(load_artifact(xml))
    assert err.value.message.startswith(f"{config}: missing, but model.fp32.xml's sidecar lists it")


def test_an_engine_built_before_compile_json_runs_at_its_recorded_precision(demo, tmp_path):
    import shutil

    folder = tmp_path / "old"
    shutil.copytree(demo["fp32"].path.parent, folder)
    (folder / "model.fp32.compile.json").unlink()
    xml = folder / "model.fp32.xml"
    old = {k: v for k, v in load_artifact(xml).info.items()
           if k not in ("schema", "artifact", "files", "artifact_sha256", "created")}
    old["settings"] = {k: v for k, v in old["settings"].items() if k != "compile_properties"}
    write_sidecar(xml, old)
    with demo["backend"].load(load_artifact(xml)) as runner:
        assert runner.inference_precision == "f32" and runner.config_file is None


def test_the_inference_precision_override_and_its_warning(demo, monkeypatch):
    from edgerep.backends.base import INFERENCE_PRECISION_ENV

    monkeypatch.setenv(INFERENCE_PRECISION_ENV, "default")  # no hint: the plugin's own choice on this CPU
    with demo["backend"].load(demo["fp32"]) as runner:
        assert runner.inference_precision == _plugin_default()
        warning = runner.precision_warning()
        assert (warning is None) == (_plugin_default() == "f32")
        if warning:  # a CPU with BF16 (or an ARM CPU with FP16): the default deployment is not what was validated
            assert warning.startswith("model.fp32.xml was validated at inference precision f32 (model.fp32.compile.json) "
                                      f"but runs at {_plugin_default()} here (--inference-precision default")


def test_the_plugins_default_is_bf16_exactly_where_cpuinfo_says_bf16():
    """edgerep decides bf16 from CpuInfo (cpu.isa.has_bf16); on x86 OpenVINO's own default must agree."""
    if host_cpu().isa == "arm64":
        pytest.skip("on ARM OpenVINO's default is f16 where NEON has FP16, never bf16")
    assert (_plugin_default() == "bf16") == host_cpu().has_bf16


def test_precision_warnings_say_what_runs_and_why():
    from tests.cpu.test_isa import HASWELL

    assert precision_warning("m.xml", validated="f32", actual="f32", asked=None, config_file="m.compile.json") is None
    assert precision_warning("m.xml", validated="f32", actual="f32", asked="default", config_file=None) is None
    default = precision_warning("m.xml", validated="f32", actual="bf16", asked="default", config_file="m.compile.json")
    assert default == ("m.xml was validated at inference precision f32 (m.compile.json) but runs at bf16 here "
                       "(--inference-precision default: OpenVINO's own choice on this CPU): the accuracy and latency "
                       "below are bf16's, not the validated engine's")
    # a bf16 engine validated on a BF16 CPU, run on one without: OpenVINO falls back to f32 silently
    fallback = precision_warning("m.xml", validated="bf16", actual="f32", asked=None, config_file="m.compile.json",
                                 configured="bf16", cpu=HASWELL)
    assert "validated at inference precision bf16" in fallback and "runs at f32 here (this CPU has no BF16" in fallback
    edited = precision_warning("m.xml", validated="f32", actual="f16", asked=None, config_file="m.compile.json",
                               configured="f16")
    assert "(m.compile.json now asks for f16)" in edited
    ignored = precision_warning("m.xml", validated="f32", actual="f32", asked="f16", config_file=None)
    assert ignored.startswith("--inference-precision f16: OpenVINO runs m.xml at f32 on this CPU (no FP16")


def test_bf16_is_refused_where_the_cpu_has_no_bf16(demo, tmp_path):
    if NO_BF16 is None:
        pytest.skip("this CPU has BF16 (test_a_bf16_engine_runs_in_bf16 covers it)")
    with pytest.raises(UserError) as err:
        demo["backend"].build(demo["onnx"], "bf16", out_dir=tmp_path, profile=load_target("openvino-cpu"))
    assert err.value.message.startswith("--precision bf16: this CPU has no BF16 (looked for avx512_bf16 or amx_bf16")
    assert not tmp_path.exists() or not list(tmp_path.iterdir())


@needs_bf16
def test_a_bf16_engine_runs_in_bf16(demo, tmp_path):
    """On a CPU with BF16: the FP32 IR, compiled at bf16, close to the FP32 engine."""
    art = demo["backend"].build(demo["onnx"], "bf16", out_dir=tmp_path, profile=load_target("openvino-cpu"))
    assert json.loads(art.path.with_name("model.bf16.compile.json").read_text())["properties"] == {HINT: "bf16"}
    x = np.random.default_rng(0).standard_normal((4, 1, 32, 32)).astype(np.float32)
    with demo["backend"].load(load_artifact(art.path)) as bf16, demo["backend"].load(demo["fp32"]) as fp32:
        assert bf16.inference_precision == "bf16" and bf16.precision_warning() is None
        a, b = bf16.run(x), fp32.run(x)
    cos = float(np.sum(a * b) / (np.linalg.norm(a) * np.linalg.norm(b)))
    assert 0.99 < cos and not np.array_equal(a, b)
