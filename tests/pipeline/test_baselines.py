"""pipeline.baselines: what the user gets without edgerep, validated and timed beside edgerep's engines."""
from __future__ import annotations

import json

import pytest

from edgerep.pipeline.build import BuildOptions, build
from edgerep.pipeline.comparisons import ONNX_UNFUSED, PYTORCH, comparison_text, comparisons


def _timed(name, precision, rounds, **extra):
    return {"name": name, "precision": precision, "status": "ok", "backend": "onnxruntime", "accuracy": {},
            "latency_by_batch": [{"batch_size": 1, "p50": sorted(rounds)[len(rounds) // 2], "round_p50": rounds}],
            **extra}


def test_comparisons_give_intervals_and_refuse_inside_the_noise():
    engines = [_timed("int8", "int8", [1.0, 1.1, 0.9, 1.0, 1.05]), _timed("fp32", "fp32", [2.0, 2.2, 1.8, 2.1, 1.9])]
    baselines = [_timed("ultralytics-int8", "int8", [1.3, 1.4, 1.2, 1.3, 1.35], baseline="ultralytics-int8"),
                 _timed("noisy", "fp32", [1.5, 2.6, 1.7, 2.4, 2.0], baseline="noisy")]
    rows = {(r["engine"], r["baseline"]): r for r in comparisons(engines, baselines, batch=1)}
    faster = rows[("int8", "ultralytics-int8")]
    assert faster["speedup"] == pytest.approx(1.3) and faster["measurable"]
    assert faster["interval"][0] > 1.0 and "1.30x Ultralytics' INT8 export" in comparison_text(faster)
    same = rows[("fp32", "noisy")]  # ratios 0.75..1.36 over the rounds: the interval holds 1.0
    assert not same["measurable"] and same["interval"][0] < 1.0 < same["interval"][1]
    assert comparison_text(same).startswith("edgerep fp32: not measurably different from noisy")
    assert comparisons(engines, [{**baselines[0], "status": "failed"}], batch=1) == []


@pytest.fixture(scope="module")
def demo_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("baselines") / "run"
    result = build(BuildOptions(target="onnxruntime-cpu", precisions="fp32", output=out, baselines=True))
    assert result.exit_code == 0
    return out, json.loads((out / "report.json").read_text())


def test_a_build_reports_the_pytorch_original_and_the_plain_export(demo_report):
    out, report = demo_report
    rows = {r["name"]: r for r in report["baselines"]}
    assert set(rows) == {PYTORCH, ONNX_UNFUSED}  # not an Ultralytics model: no Ultralytics rows
    assert "not an Ultralytics model" in " ".join(report["baseline_notes"])
    plain = rows[ONNX_UNFUSED]
    assert plain["status"] == "ok" and plain["accuracy"]["top1_drop"] == pytest.approx(0.0, abs=0.3)
    assert (out / "baselines" / "unfused.onnx").is_file() and plain["path"].endswith(".onnx")
    import onnx

    fused_nodes = len(onnx.load(str(out / "onnx" / "model.sim.onnx")).graph.node)
    assert len(onnx.load(str(out / "baselines" / "unfused.onnx")).graph.node) > fused_nodes  # BN and branches kept
    for row in rows.values():  # timed in the same rounds as the engine
        rounds = row["latency_by_batch"][0]["round_p50"]
        assert len(rounds) == report["target"]["latency"]["rounds"] and row["latency_ms"]["p50"] > 0
    pairs = {(c["engine"], c["baseline"]) for c in report["comparisons"]}
    assert pairs == {("fp32", PYTORCH), ("fp32", ONNX_UNFUSED)}
    md = (out / "report.md").read_text()
    assert "## Without edgerep" in md and "edgerep fp32:" in md and "PyTorch original" in md


def test_baselines_are_reused_and_can_be_turned_off(demo_report, tmp_path):
    out, _ = demo_report
    again = build(BuildOptions(target="onnxruntime-cpu", precisions="fp32", output=out, baselines=True))
    assert {r["name"]: r.get("reused") for r in again.report["baselines"]}[ONNX_UNFUSED] is True
    off = build(BuildOptions(target="onnxruntime-cpu", precisions="fp32", output=tmp_path / "off"))
    assert off.report["baselines"] == [] and "comparisons" not in off.report
