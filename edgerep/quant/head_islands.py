"""Which of a detector's head nodes INT8 keeps in float, decided by measurement on the engine itself.

A detection head ends in a decode (sigmoid, DFL softmax, anchor arithmetic, concat: quant.float_policy's tail),
which always stays in float: one INT8 scale shared by box pixels and [0, 1] scores rounds the scores away. Before
it sit small weighted layers (the class-prediction convs, Ultralytics' DFL conv, YOLOX's reg/obj/cls convs): keeping
them in float can save accuracy, and it costs speed (the runtime leaves INT8 and comes back around each one; on
YOLOv8n the class convs in float cost 10-40% against Ultralytics' rule). So each one is an *island* whose price is
measured, not assumed:

  base       every island quantized, the decode in float;
  float_one  base with one island in float: its accuracy gain over base and its latency cost (the engines timed
             side by side in interleaved rounds, validate.timing; the cost's interval from the paired rounds).

An island is kept in float when it pays: its gain is at least MIN_GAIN points and it is not measurably slower
than base by MAX_COST or more, or its gain is at least BIG_GAIN points whatever it costs. Accuracy is measured on
the calibration images (their labelled mAP where they have labels, else agreement with the PyTorch model's own
detections), so the choice never sees the validation data the build reports. Each probe is a real INT8 build
of the backend, with the build's own calibration; the result is cached by the caller (stages.head_plan_stage).
"""
from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from edgerep.quant.evaluate import drop_of, drop_unit, eval_batch, evaluate_runner
from edgerep.quant.float_policy import HEAD_OPTION, detect_head_float_nodes, output_tail_nodes

MIN_GAIN = 0.1  # points of the task's metric an island must win back to be worth any cost
BIG_GAIN = 1.0  # points that pay for any measured cost
MAX_COST = 1.05  # an island is "measurably costly" when its engine's slowdown interval lies above this
Interval = Callable[[list[float], list[float]], "tuple[float, float, float] | None"]


@dataclass
class Island:
    node: str
    drop: float  # points lost with this island alone in float (the rest as base)
    gain: float  # base's drop minus this one's
    cost: float | None  # p50 of its engine over base's (>1: slower)
    cost_interval: list[float] | None
    kept: bool = False
    why: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"node": self.node, "drop": self.drop, "gain": self.gain, "cost": self.cost,
                "cost_interval": self.cost_interval, "kept": self.kept, "why": self.why}


def head_islands(onnx_path: Path) -> tuple[list[str], list[str]]:
    """(the decode tail, always float; the weighted head nodes that feed it, each a candidate island)."""
    tail = output_tail_nodes(Path(onnx_path))
    return tail, [n for n in detect_head_float_nodes(Path(onnx_path)) if n not in set(tail)]


def pays(gain: float, cost_interval: list[float] | None, cost: float | None) -> tuple[bool, str]:
    """Whether an island earns its place in float (the module docstring's rule), and why, in words."""
    low = cost_interval[0] if cost_interval else cost
    if gain >= BIG_GAIN:
        return True, f"gains {gain:.2f} pts (>= {BIG_GAIN:g}: kept whatever it costs)"
    if gain < MIN_GAIN:
        return False, f"gains {gain:.2f} pts (< {MIN_GAIN:g})"
    if low is not None and low >= MAX_COST:
        return False, f"gains {gain:.2f} pts but is measurably {low:.2f}x+ slower"
    return True, f"gains {gain:.2f} pts at no measurable cost"


def choose_head_floats(*, backend: Any, onnx_path: Path, profile: Any, calib: Any, reference: Any,
                       options: dict[str, Any], work_dir: Path, sample: Any, engine_batch: int,
                       interval: Interval | None = None,
                       log: Callable[[str], None] | None = None) -> tuple[list[str], dict[str, Any]]:
    """The head nodes the INT8 engine keeps in float (the tail plus the islands that pay) and the plan for the
    report. `reference`: the PyTorch model on the calibration images (validate.Reference); `sample`: one input for
    the timing; `options`: the INT8 build options without HEAD_OPTION; `interval(slow_rounds, fast_rounds)`:
    (median, low, high) of a speed-up over paired rounds (the caller's rule, pipeline.recommend.speedup_interval;
    None: the ratio of p50s alone)."""
    from edgerep.validate.timing import time_engines

    tail, candidates = head_islands(onnx_path)
    t0 = time.perf_counter()
    plan: dict[str, Any] = {"tail": tail, "candidates": candidates, "metric": None,
                            "rule": {"min_gain": MIN_GAIN, "big_gain": BIG_GAIN, "max_cost": MAX_COST}}
    if not candidates:
        return tail, {**plan, "islands": [], "kept": [], "seconds": 0.0}
    work_dir = Path(work_dir)
    shutil.rmtree(work_dir, ignore_errors=True)
    variants = {"base": list(tail), **{f"island{i}": [*tail, node] for i, node in enumerate(candidates)}}
    drops: dict[str, float] = {}
    paths: dict[str, Path] = {}
    batch = eval_batch(Path(onnx_path))
    try:
        for name, floats in variants.items():
            artifact = backend.build(Path(onnx_path), "int8", out_dir=work_dir / name, profile=profile, calib=calib,
                                     options={**options, HEAD_OPTION: floats})
            if artifact.status != "ok":
                raise RuntimeError(f"the {name} probe did not build ({artifact.status}: {artifact.reason})")
            with backend.load(artifact) as runner:
                metrics = evaluate_runner(runner, reference, batch)
            drops[name] = drop_of(metrics)
            plan["metric"] = f"{drop_unit(metrics)}, on {reference.outputs.shape[0]} calibration images"
            paths[name] = Path(artifact.path)
            if log is not None:
                log(f"{name}: drop {drops[name]:.2f} pts")
        lat = profile.latency
        timed = time_engines(paths, sample, batch_sizes=[engine_batch], engine_batch=engine_batch,
                             dynamic_batch=profile.dynamic_batch, rounds=lat.rounds, warmup=lat.warmup,
                             iterations=lat.iterations)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)

    def rounds(name: str) -> list[float]:
        return [float(v) for v in timed[name]["latency_by_batch"][0].get("round_p50") or []]

    islands = []
    for i, node in enumerate(candidates):
        name = f"island{i}"
        found = interval(rounds(name), rounds("base")) if interval else None  # island / base: its slowdown
        cost = timed[name]["latency_ms"]["p50"] / timed["base"]["latency_ms"]["p50"]
        island = Island(node=node, drop=drops[name], gain=drops["base"] - drops[name], cost=cost,
                        cost_interval=[found[1], found[2]] if found else None)
        island.kept, island.why = pays(island.gain, island.cost_interval, island.cost)
        islands.append(island)
    kept = [i.node for i in islands if i.kept]
    plan.update(base_drop=drops["base"], base_p50_ms=timed["base"]["latency_ms"]["p50"],
                islands=[i.to_dict() for i in islands], kept=kept, seconds=time.perf_counter() - t0)
    return [*tail, *kept], plan
