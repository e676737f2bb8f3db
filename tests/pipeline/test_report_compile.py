"""report.md says how to run each OpenVINO engine as it was validated: its compile.json, and the Python that
applies it, which runs as shown against the real engine."""
from __future__ import annotations

import json
import re

import pytest

pytest.importorskip("openvino")

from edgerep.backends import get_backend  # noqa: E402
from edgerep.pipeline.report import engine_entry, normalize, render_markdown  # noqa: E402
from edgerep.targets import load_target  # noqa: E402
from tests.digits_demo import export_demo, needs_demo  # noqa: E402

pytestmark = needs_demo


def test_report_shows_the_compile_properties_and_the_python_runs(tmp_path):
    _, _, sim = export_demo(tmp_path / "export")
    ov = get_backend("openvino")
    arts = [ov.build(sim, p, out_dir=tmp_path / "engines", profile=load_target("openvino-cpu")) for p in ("fp32", "fp16")]
    engines = [engine_entry(a.backend, a.precision, path=str(a.path), settings=a.info["settings"]) for a in arts]
    engines.append(engine_entry("onnxruntime", "fp32", path=str(tmp_path / "model.fp32.onnx")))  # has no compile.json
    report = normalize({"engines": engines, "recommended": {"backend": "openvino", "precision": "fp16"}})
    md = render_markdown(report)
    for art in arts:
        hint = json.loads(art.path.with_suffix(".compile.json").read_text())["properties"]["INFERENCE_PRECISION_HINT"]
        assert (f"- openvino {art.precision}: `{art.path.with_suffix('.compile.json')}` (INFERENCE_PRECISION_HINT "
                f"{hint})") in md
    assert "onnxruntime fp32: `" not in md.split("compile.json beside it:")[1].split("```")[0]
    code = re.search(r"```python\n(.*?)```", md, re.S).group(1)
    assert len(code.strip().splitlines()) == 3 and "model.fp16.compile.json" in code  # the recommended engine's
    scope: dict = {}
    exec(code, scope)  # the lines as a user pastes them
    compiled = scope["compiled"]
    assert compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name() == arts[1].info["settings"][
        "inference_precision"]


def test_no_openvino_engine_no_compile_lines():
    md = render_markdown(normalize({"engines": [engine_entry("onnxruntime", "fp32", path="model.fp32.onnx")]}))
    assert "compile.json" not in md and "```python" not in md
