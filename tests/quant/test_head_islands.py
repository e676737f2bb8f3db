"""quant.head_islands: a detector's head nodes kept in float by measurement, on real INT8 builds."""
from __future__ import annotations

import pytest

from edgerep.quant.head_islands import BIG_GAIN, MAX_COST, MIN_GAIN, head_islands, pays


def test_an_island_pays_by_its_gain_and_its_measured_cost():
    assert pays(BIG_GAIN, [1.5, 2.0], 1.7)[0]  # a big gain pays any cost
    assert not pays(MIN_GAIN / 2, [0.9, 1.0], 0.95)[0]  # too small a gain is not worth even no cost
    kept, why = pays(0.5, [0.95, 1.2], 1.05)  # a cost inside the noise is no cost
    assert kept and "no measurable cost" in why
    dropped, why = pays(0.5, [MAX_COST + 0.01, 1.3], 1.2)  # measurably slower for a modest gain
    assert not dropped and "measurably" in why
    assert not pays(0.5, None, MAX_COST + 0.1)[0]  # without rounds the p50 ratio decides


@pytest.fixture(scope="module")
def repyolo_int8(tmp_path_factory):
    from edgerep.pipeline.build import BuildOptions, build

    out = tmp_path_factory.mktemp("head") / "run"
    result = build(BuildOptions(model="zoo:repyolo_digits", target="onnxruntime-cpu", precisions="int8", output=out,
                                baselines=False, calib_samples=64))
    return out, result


@pytest.mark.slow
def test_the_built_engine_keeps_in_float_what_the_search_kept(repyolo_int8):
    """Every candidate probed, the kept ones decided by the rule, and the INT8 engine itself (its Q/DQ ONNX) has
    exactly the tail plus the kept islands in float."""
    import onnx

    from edgerep.quant.precision import qdq_float_layers

    out, result = repyolo_int8
    assert result.exit_code == 0
    engine = result.report["engines"][0]
    plan = engine["head_plan"]
    tail, candidates = head_islands(out / "onnx" / "model.sim.onnx")
    assert plan["candidates"] == candidates and len(candidates) == 6 and plan["tail"] == tail
    for isl in plan["islands"]:
        assert isl["kept"] == pays(isl["gain"], isl["cost_interval"], isl["cost"])[0]
        assert isl["gain"] == pytest.approx(plan["base_drop"] - isl["drop"])
    assert any(isl["kept"] for isl in plan["islands"])  # the YOLOX box regressions must stay float (exp decode)
    weighted = [n.name for n in onnx.load(str(out / "onnx" / "model.sim.onnx")).graph.node if n.op_type == "Conv"]
    floats = set(qdq_float_layers(out / "engines" / "model.int8.onnx", weighted))
    assert {n for n in candidates if n in floats} == set(plan["kept"])
    md = (out / "report.md").read_text()
    assert "## INT8 head (onnxruntime)" in md and md.count("| `/head.") == len(candidates)


@pytest.mark.slow
def test_the_search_is_reused_and_can_be_turned_off(repyolo_int8, tmp_path):
    from edgerep.pipeline.build import BuildOptions, build

    out, first = repyolo_int8
    again = build(BuildOptions(model="zoo:repyolo_digits", target="onnxruntime-cpu", precisions="int8", output=out,
                               baselines=False, calib_samples=64))
    assert any(s["name"] == "int8 head" and s["status"] == "reused" for s in again.report["stages"])
    assert again.report["engines"][0]["head_plan"]["kept"] == first.report["engines"][0]["head_plan"]["kept"]
    fixed = build(BuildOptions(model="zoo:repyolo_digits", target="onnxruntime-cpu", precisions="int8",
                               output=tmp_path / "fixed", baselines=False, calib_samples=64, head_search=False))
    assert "head_plan" not in fixed.report["engines"][0]
