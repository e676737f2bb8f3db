"""`edgerep validate --inference-precision`: an OpenVINO engine run at another precision than its compile.json's,
and the one-line warning when that is not the precision it was validated at. Through the real CLI, on the demo."""
from __future__ import annotations

import json
import os

import pytest

pytest.importorskip("openvino")

from edgerep.backends import get_backend  # noqa: E402
from edgerep.backends.base import INFERENCE_PRECISION_ENV  # noqa: E402
from edgerep.backends.openvino.compile_props import HINT, precision_name  # noqa: E402
from edgerep.cpu.isa import host_cpu  # noqa: E402
from edgerep.targets import load_target  # noqa: E402
from tests.cli_helpers import cli, error_line  # noqa: E402
from tests.digits_demo import DEMO, export_demo, needs_demo  # noqa: E402

pytestmark = needs_demo
NO_BF16 = host_cpu().bf16_missing()


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    root = tmp_path_factory.mktemp("validate-precision")
    _, _, sim = export_demo(root / "export")
    ov = get_backend("openvino").build(sim, "fp32", out_dir=root / "ov", profile=load_target("openvino-cpu"))
    ort = get_backend("onnxruntime").build(sim, "fp32", out_dir=root / "ort", profile=load_target("onnxruntime-cpu"))
    return {"ov": ov.path, "ort": ort.path}


def _core_precision(key: str) -> str:
    import openvino as ov

    core = ov.Core()
    if key == "default":
        return precision_name(core.get_property("CPU", HINT))
    return "f16" if "FP16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES") else "f32"


def _validate(engine, *flags: str) -> tuple[int, dict, list[str]]:
    code, out, err = cli(["validate", "-m", DEMO, "-e", str(engine), "--json", *flags])
    assert code in (0, 1) and "Traceback" not in err, err
    return code, json.loads(out)["engines"][0], [ln for ln in err.splitlines() if ln.startswith("warning:")]


def test_as_validated_no_warning(engines):
    code, record, warnings = _validate(engines["ov"])
    assert code == 0 and record["passed"] and not warnings and "precision_warning" not in record


def test_f16_runs_what_this_cpu_has_and_says_so(engines):
    code, record, warnings = _validate(engines["ov"], "--inference-precision", "f16")
    assert len(warnings) == 1 and warnings[0] == f"warning: {record['precision_warning']}"
    import openvino as ov

    caps = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    if "FP16" not in caps and "BF16" in caps:  # no FP16 arithmetic, but BF16: OpenVINO takes bf16 for the hint
        assert "validated at inference precision f32 (model.fp32.compile.json) but runs at bf16 here" in warnings[0]
    elif _core_precision("f16") == "f32":  # no FP16 arithmetic here: OpenVINO ran f32, as validated
        assert warnings[0].startswith("warning: --inference-precision f16: OpenVINO runs model.fp32.xml at f32 on "
                                      "this CPU (no FP16")
    else:
        assert "validated at inference precision f32 (model.fp32.compile.json) but runs at f16 here" in warnings[0]


def test_the_runtime_default_warns_where_it_is_not_the_validated_precision(engines):
    """What a plain compile_model(xml, "CPU") runs: bf16 on a CPU with BF16, f32 here without."""
    default = _core_precision("default")
    code, record, warnings = _validate(engines["ov"], "--inference-precision", "default")
    assert INFERENCE_PRECISION_ENV not in os.environ  # set for the run and its timing child only
    if default == "f32":
        assert not warnings and code == 0
    else:
        assert warnings == [f"warning: model.fp32.xml was validated at inference precision f32 (model.fp32.compile.json) "
                            f"but runs at {default} here (--inference-precision default: OpenVINO's own choice on this "
                            f"CPU): the accuracy and latency below are {default}'s, not the validated engine's"]


@pytest.mark.skipif(NO_BF16 is not None, reason=f"needs a CPU with BF16: {NO_BF16}")
def test_bf16_on_a_bf16_cpu_warns_it_is_not_the_validated_f32(engines):
    _, record, warnings = _validate(engines["ov"], "--inference-precision", "bf16")
    assert len(warnings) == 1 and "but runs at bf16 here (--inference-precision bf16)" in warnings[0]


def test_flag_errors_are_one_line_before_any_work(engines):
    if NO_BF16 is not None:
        code, _, err = cli(["validate", "-m", DEMO, "-e", str(engines["ov"]), "--inference-precision", "bf16"])
        assert code == 2
        assert error_line(err).startswith("error: --inference-precision bf16: this CPU has no BF16 (looked for "
                                          "avx512_bf16 or amx_bf16")
    code, _, err = cli(["validate", "-m", DEMO, "-e", str(engines["ort"]), "--inference-precision", "f32"])
    assert code == 2 and error_line(err) == ("error: --inference-precision f32: only for OpenVINO engines; model.fp32.onnx "
                                             "is built for ONNX Runtime, which runs it as built; drop the flag")
    code, _, err = cli(["validate", "-m", DEMO, "-e", str(engines["ov"]), "--inference-precision", "fp32"])
    assert code == 2 and error_line(err) == "error: --inference-precision fp32: not one of f32, bf16, f16, default"
