"""edgerep.pipeline.report: the stable report.json schema, report.md and the latency/accuracy plot."""
from __future__ import annotations

import json
import math

import numpy as np
from PIL import Image

from edgerep.pipeline.report import ACCURACY_KEYS, ENGINE_KEYS, engine_entry, summary_table, write_report
from edgerep.tasks.classify import accuracy_metrics
from edgerep.validate.latency import latency_stats


def _report():
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((30, 10))
    labels = ref.argmax(1)
    engines = []
    for precision, noise, p50 in (("fp32", 0.0, 0.41), ("fp16", 1e-3, 0.38), ("int8", 0.6, 0.2)):
        acc = accuracy_metrics(ref, ref + noise * rng.standard_normal(ref.shape), labels)
        lat = latency_stats([p50, p50 * 1.1, p50 * 0.95, p50 * 1.3], batch_size=1)
        engines.append(engine_entry("openvino", precision, path=f"engines/model-{precision}.xml", accuracy=acc,
                                    latency_ms={k: lat[k] for k in ("p50", "p90", "p99")},
                                    throughput_ips=lat["throughput_ips"], passed=precision != "int8",
                                    reason="top1_drop 12.00 pp > 1 pp" if precision == "int8" else None))
    engines.append(engine_entry("openvino", "bf16", status="skipped", reason="not requested"))
    return {"model": {"spec": "zoo:x", "input_shape": [1, 3, 32, 32]}, "target": {"name": "openvino-cpu", "backend": "openvino"},
            "reference": {"kind": "pytorch-unfused", "top1": 100.0, "num_samples": 30, "data": {"path": "val.npz"}},
            "engines": engines}


def test_write_report_schema_markdown_and_plot(tmp_path):
    json_path, md_path, png_path = write_report(tmp_path / "out", _report())
    data = json.loads(json_path.read_text())
    for key in ("model", "target", "reference", "engines", "schema"):
        assert key in data
    assert len(data["engines"]) == 4
    for eng in data["engines"]:
        assert set(ENGINE_KEYS) <= set(eng)
        assert set(ACCURACY_KEYS) <= set(eng["accuracy"])
        assert set(eng["latency_ms"]) >= {"p50", "p90", "p99"}
        assert eng["status"] in ("ok", "failed", "skipped")
    fp32, int8, skipped = data["engines"][0], data["engines"][2], data["engines"][3]
    assert fp32["accuracy"]["sqnr_db"] is None  # identical outputs: infinite SQNR is written as null
    assert fp32["accuracy"]["top1"] == 100.0 and fp32["accuracy"]["top1_drop"] == 0.0
    assert int8["passed"] is False and "top1_drop" in int8["reason"]
    assert skipped["passed"] is False and skipped["latency_ms"]["p50"] is None

    md = md_path.read_text()
    assert "| openvino | int8 | FAIL |" in md and "| openvino | fp32 | pass |" in md and "zoo:x" in md
    with Image.open(png_path) as img:
        assert img.format == "PNG" and img.size[0] > 300
    # Nothing half-written is left behind.
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["latency_accuracy.png", "report.json", "report.md"]


def test_non_finite_numbers_become_null(tmp_path):
    rep = _report()
    rep["engines"][0]["accuracy"]["sqnr_db"] = -math.inf
    rep["engines"][1]["throughput_ips"] = math.nan
    data = json.loads(write_report(tmp_path, rep)[0].read_text())  # strict JSON: no Infinity/NaN tokens
    assert data["engines"][0]["accuracy"]["sqnr_db"] is None and data["engines"][1]["throughput_ips"] is None


def test_summary_table_has_a_row_per_engine():
    table = summary_table(_report())
    assert table.row_count == 4 and len(table.columns) == 9


def _recommended_report():
    from edgerep.pipeline.recommend import recommend

    rep = _report()
    for eng, p50 in zip(rep["engines"], (0.41, 0.40, 0.20, None)):  # at the deploy batch, as validate_runner records
        eng["latency_ms"]["p50"] = p50
        eng["latency_by_batch"] = [{"batch_size": 1, **eng["latency_ms"]}]
    rep["target"]["latency"] = {"batch_sizes": [1]}
    rep["recommended"] = recommend(rep)
    return rep


def test_recommendation_heads_report_md_json_and_the_summary(tmp_path):
    from rich.console import Console

    from edgerep.pipeline.report import build_summary

    rep = _recommended_report()
    # int8 failed its gate; fp16 (0.40 ms) is under 1.05x faster than fp32 (0.41 ms): fp32 stays.
    assert rep["recommended"]["precision"] == "fp32"
    json_path, md_path, _ = write_report(tmp_path, rep)
    assert json.loads(json_path.read_text())["recommended"]["precision"] == "fp32"
    md = md_path.read_text().splitlines()
    assert md[2].startswith("**recommended: openvino fp32 (fp32: p50 0.41 ms at batch 1")
    assert any(line.startswith("- fp16 is not faster than fp32 on this machine") for line in md[3:6])
    assert any(line.startswith("- int8: failed its gates (top1_drop") for line in md[3:7])
    console = Console(record=True, width=100)
    console.print(build_summary(rep))
    text = console.export_text()
    assert text.splitlines()[0].startswith("recommended: openvino fp32") and "openvino int8" in text


def test_failure_lines_one_per_engine_or_one_for_a_degenerate_reference():
    from edgerep.pipeline.report import failure_lines

    rep = _report()
    assert failure_lines(rep) == ["[bold red]FAILED[/] openvino int8: top1_drop 12.00 pp > 1 pp"]
    rep["reference"]["degenerate"] = "reference outputs are nearly constant (std 0 across 30 samples): x"
    for eng in rep["engines"][:3]:
        eng["passed"] = None
    assert failure_lines(rep) == ["[bold red]FAILED[/] accuracy not checked: reference outputs are nearly "
                                  "constant (std 0 across 30 samples): x"]


def test_plot_labels_stay_inside_and_apart_and_the_recommended_engine_is_marked():
    import matplotlib.pyplot as plt

    from edgerep.pipeline.report import latency_accuracy_figure, normalize

    rep = normalize(_recommended_report())
    # Crowd the plot: fp16 at fp32's latency and accuracy, int8 at the far right edge.
    rep["engines"][1]["latency_ms"]["p50"] = rep["engines"][1]["latency_by_batch"][0]["p50"] = 0.41
    rep["engines"][1]["accuracy"]["top1"] = rep["engines"][0]["accuracy"]["top1"]
    rep["engines"][2]["latency_ms"]["p50"] = rep["engines"][2]["latency_by_batch"][0]["p50"] = 3.0
    rep["model"]["spec"] = "torchvision.models:mobilenet_v3_small_with_a_long_name:factory_that_wraps_it"
    fig = latency_accuracy_figure(rep)
    try:
        renderer = fig.canvas.get_renderer()
        ax = fig.axes[0]
        inside = ax.get_window_extent(renderer)
        labels = [t for t in ax.texts if t.get_text().startswith("openvino")]
        assert sorted(t.get_text() for t in labels) == ["openvino fp16", "openvino fp32 (recommended)", "openvino int8"]
        boxes = [t.get_window_extent(renderer) for t in labels]
        legend = ax.get_legend().get_window_extent(renderer)
        for i, box in enumerate(boxes):
            assert inside.x0 <= box.x0 and box.x1 <= inside.x1 and inside.y0 <= box.y0 and box.y1 <= inside.y1
            assert not box.overlaps(legend)
            assert not any(box.overlaps(other) for other in boxes[i + 1:])
        figure_box = fig.bbox
        title = ax.title.get_window_extent(renderer)
        assert figure_box.x0 <= title.x0 and title.x1 <= figure_box.x1
        assert "recommended" in [t.get_text() for t in ax.get_legend().get_texts()]
    finally:
        plt.close(fig)
