"""Per-layer INT8 sensitivity, measured with ONNX Runtime Q/DQ models on the CPU.

For each weighted layer (ONNX node, with the PyTorch module it came from):
  float_one   every other layer quantized, this one kept in float (nodes_to_exclude=[node]): how much of
              the whole model's INT8 error goes away when this layer alone stays in float;
  quant_one   only this layer quantized (nodes_to_quantize=[node]): the error it causes on its own.
Both are compared with the reference (the unfused PyTorch model's outputs on the validation data): output
noise-to-signal ratio (NSR), cosine, and top-1 / top-1 agreement where the outputs are class scores.

Ranking. Under an additive-noise model both measures estimate the same quantity, the noise a layer adds:
gain_i = NSR(all) - NSR(float_one_i) and NSR(quant_one_i). Each misses something: float_one cannot see a
layer whose input stays quantized through its producer (the ONNX Runtime placement), quant_one ignores
interactions. The score is their mean; the search (mixed.py) confirms every choice on the real engine.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from edgerep.quant.evaluate import brief, evaluate_onnx
from edgerep.quant.layers import QuantLayer, quantizable_layers
from edgerep.quant.qdq import QdqMaker


@dataclass
class LayerSensitivity:
    layer: QuantLayer
    float_one: dict[str, Any]
    quant_one: dict[str, Any]
    score: float  # estimated share of the output noise this layer adds (NSR units)
    gain_top1: float | None  # points of drop recovered when this layer alone stays in float
    order: int = 0  # position in the graph
    rank: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"rank": self.rank, "order": self.order, "node": self.layer.node, "module": self.layer.module,
                "op_type": self.layer.op_type, "score": self.score, "gain_drop": self.gain_top1, "float_one": self.float_one,
                "quant_one": self.quant_one, "mapped_by": self.layer.mapped_by}


@dataclass
class SensitivityResult:
    settings: dict[str, Any]
    all_int8: dict[str, Any]  # every layer quantized
    layers: list[LayerSensitivity]  # ranked, most sensitive first
    drop_metric: str
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def ranked_nodes(self) -> list[str]:
        return [s.layer.node for s in self.layers]

    def module_of(self) -> dict[str, str | None]:
        return {s.layer.node: s.layer.module for s in self.layers}

    def to_dict(self) -> dict[str, Any]:
        return {"settings": self.settings, "drop_metric": self.drop_metric, "all_int8": self.all_int8,
                "layers": [s.to_dict() for s in self.layers], "seconds": self.seconds, "notes": self.notes}


def layer_sensitivity(onnx_path: Path, calib: Any, reference: Any, work_dir: Path, *, style: str = "onnxruntime",
                      method: str = "minmax", num_samples: int = 300, per_channel: bool = True, weights: str = "s8",
                      module_names: set[str] | None = None, nodes: list[str] | None = None,
                      keep_float: list[str] | None = None,
                      progress: Callable[[str], None] | None = None) -> SensitivityResult:
    """Measure every weighted layer's sensitivity (or only `nodes`); `reference` is a validate.Reference.
    `keep_float`: nodes that stay in float in every measurement (the user's fixed float list), not measured."""
    t0 = time.perf_counter()
    fixed = list(keep_float or [])
    layers = [layer for layer in quantizable_layers(onnx_path, module_names) if layer.node not in set(fixed)]
    if nodes is not None:
        wanted = set(nodes)
        layers = [layer for layer in layers if layer.node in wanted]
    maker = QdqMaker(onnx_path, calib, Path(work_dir), style=style, method=method, num_samples=num_samples,
                     per_channel=per_channel, weights=weights)
    work = Path(work_dir)
    all_path = maker.make(work / "all.onnx", exclude=fixed)
    all_metrics = evaluate_onnx(all_path, reference)
    results = []
    for i, layer in enumerate(layers):
        if progress is not None:
            progress(f"layer {i + 1}/{len(layers)}: {layer.node}")
        f_path = maker.make(work / "float_one.onnx", exclude=[*fixed, layer.node])
        f_metrics = evaluate_onnx(f_path, reference)
        q_path = maker.make(work / "quant_one.onnx", only=[layer.node])
        q_metrics = evaluate_onnx(q_path, reference)
        gain = all_metrics["nsr"] - f_metrics["nsr"]
        gain_drop = (all_metrics["drop"] - f_metrics["drop"]) if all_metrics.get("drop") is not None else None
        results.append(LayerSensitivity(layer=layer, float_one=brief(f_metrics), quant_one=brief(q_metrics),
                                        score=0.5 * (max(gain, 0.0) + q_metrics["nsr"]), gain_top1=gain_drop,
                                        order=i))
    # Highest score first; among equal scores, the larger top-1 recovery, then graph order.
    results.sort(key=lambda s: (-s.score, -(s.gain_top1 or 0.0)))
    for rank, s in enumerate(results, 1):
        s.rank = rank
    for name in ("all.onnx", "float_one.onnx", "quant_one.onnx"):
        (work / name).unlink(missing_ok=True)
    drop_metric = all_metrics.get("drop_metric") or "none (tensor metrics only)"
    return SensitivityResult(settings=maker.settings(), all_int8=brief(all_metrics), layers=results,
                             drop_metric=drop_metric, seconds=time.perf_counter() - t0)


def calibration_study(onnx_path: Path, calib: Any, reference: Any, work_dir: Path, *, style: str = "onnxruntime",
                      num_samples: int = 300, methods: tuple[str, ...] = ("minmax", "entropy", "percentile"),
                      per_channel: tuple[bool, ...] = (True, False), weights: str = "s8") -> list[dict[str, Any]]:
    """The whole model in INT8 (Q/DQ, the given placement style) for each calibration method and weight
    granularity: what each choice costs, smallest drop (then noise) first."""
    rows = []
    for method in methods:
        for pc in per_channel:
            t0 = time.perf_counter()
            maker = QdqMaker(onnx_path, calib, Path(work_dir) / f"study-{method}-{'pc' if pc else 'pt'}", style=style,
                             method=method, num_samples=num_samples, per_channel=pc, weights=weights)
            path = maker.make(maker.work_dir / "all.onnx")
            metrics = brief(evaluate_onnx(path, reference))
            rows.append({"calib_method": method, "per_channel": pc, **metrics, "seconds": time.perf_counter() - t0})
    rows.sort(key=lambda r: (r["drop"] if r["drop"] is not None else 0.0, r["nsr"]))
    return rows
