"""Accuracy-budgeted mixed precision that is still INT8: keep the fewest, most sensitive layers in float until
the INT8 engine's drop is within `max_drop` points of the task's metric (edgerep.tasks: for classifiers labelled
top-1 where labels exist, else top-1 agreement with the reference; for detectors labelled mAP@0.5:0.95, else
agreement mAP@0.5:0.95 with the reference's detections), while the engine stays at least the profile's
`[int8] min_speedup` times faster than FP32.

The search, for one backend:
  1. calibration: build the plain INT8 engine with each calibration choice the backend offers (methods, and
     per-channel / bias-correction options where the backend takes them) and keep the best;
  2. range repair: if that misses the budget, try each repair the backend applies (quant.repair: cross-layer
     equalization, bias correction) on the best calibration, and keep the best of them and the plain engine;
  3. rank the layers by sensitivity (sensitivity.py, ONNX Runtime Q/DQ in the backend's quantizer placement);
  4. keep the top-k layers in float for k = 1, 2, ... until the engine is within budget, then try dropping each
     chosen layer again (fewest layers); stop adding layers as soon as an engine falls below min_speedup
     (the speed stop: more float layers only make it slower), and do not start when the plain engine already is;
  5. on OpenVINO, also run NNCF's quantize_with_accuracy_control, express its float layers as the same
     exclusion list, rebuild, and keep whichever result is better.
Every candidate is the backend's real engine (backend.build with options), scored on the validation data and,
when the search has a SpeedProbe, timed against the FP32 engine of the same backend (built once), side by side
in interleaved rounds at the deploy batch (validate.timing). So the chosen list is what the final build gets.

Choosing (choose_plan). "Fast" is a speed-up (median of the paired round ratios) >= min_speedup; a candidate
that could not be timed counts as fast. Among fast candidates within budget: fewest float layers, then the
fastest, then the smallest drop. When none is within budget, the plan is the fast candidate with the smallest
drop, where drops closer than their noise (the combined standard error, evaluate.drop_stderr) rank by speed,
then by fewer float layers; the plan is then not met, and `verdict` says why in one line, which fails the INT8
engine's gate. The report carries every candidate's drop (with its standard error), speed-up (with its
interval) and the share of the model's MACs its float layers hold (a warning above FLOAT_MAC_WARN).

The list holds ONNX node names: `ignored_nodes` is applied as NNCF's IgnoredScope on OpenVINO, nodes_to_exclude
on ONNX Runtime, and in TensorRT's Q/DQ model. The budget is checked on the same validation data the search
uses; the report says so.
"""
from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from edgerep.backends.base import Backend
from edgerep.errors import UserError
from edgerep.quant.evaluate import brief, eval_batch, evaluate_onnx, evaluate_runner, resolution
from edgerep.quant.layers import layer_macs, owning_module, quantizable_layers

PLAN_FILE = "int8_plan.json"
PLAN_SCHEMA = 2
MAX_PRUNE = 6  # try removing chosen layers one by one only for short lists (k evaluations)
LINEAR_STEPS = 8  # k = 1..8 one by one, then doubling (large models)
FLOAT_MAC_WARN = 0.5  # a plan with more of its MACs in float than this is not called INT8 without a warning
REPAIR_OPTION_NAME = "range_repair"  # quant.repair.REPAIR_OPTION, named here only for the report's labels
Interval = Callable[[list[float], list[float]], "tuple[float, float, float] | None"]


@dataclass
class Candidate:
    name: str
    source: str  # calibration | repair | edgerep | nncf-accuracy-control
    options: dict[str, Any]
    float_layers: list[str]
    metrics: dict[str, Any]
    seconds: float
    engine_float_layers: list[str] | None = None  # read back from the built engine
    note: str | None = None
    speedup: float | None = None  # FP32 p50 / this engine's p50 at the deploy batch (median of the round ratios)
    speedup_interval: list[float] | None = None  # [low, high] over the interleaved rounds
    p50_ms: float | None = None
    float_mac_share: float | None = None  # MACs of the layers the engine runs in float / all weighted MACs
    repair: dict[str, Any] | None = None  # repair_summary of the build's range-repair report

    @property
    def drop(self) -> float:
        return float(self.metrics["drop"])

    @property
    def drop_se(self) -> float:
        return float(self.metrics.get("drop_se") or 0.0)

    def meets(self, max_drop: float) -> bool:
        return self.drop <= max_drop + 1e-9

    def fast(self, min_speedup: float) -> bool:
        """At least min_speedup times faster than FP32 (a candidate that was not timed counts as fast)."""
        return self.speedup is None or self.speedup >= min_speedup - 1e-9

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "source": self.source, "options": self.options, "float_layers": self.float_layers,
                "engine_float_layers": self.engine_float_layers, "metrics": self.metrics, "seconds": self.seconds,
                "speedup": self.speedup, "speedup_interval": self.speedup_interval, "p50_ms": self.p50_ms,
                "float_mac_share": self.float_mac_share, "repair": self.repair, "note": self.note}


@dataclass
class MixedResult:
    max_drop: float
    drop_metric: str
    chosen: Candidate
    candidates: list[Candidate]
    calibration: dict[str, Any]
    sensitivity: list[dict[str, Any]] = field(default_factory=list)
    nncf: dict[str, Any] | None = None
    modules: dict[str, str | None] = field(default_factory=dict)
    seconds: float = 0.0
    drop_unit: str = ""
    task: str = "classify"
    met: bool = True
    verdict: str | None = None  # one line when not met: why, with the best fast plan's numbers
    min_speedup: float | None = None
    timed: bool = False  # candidates were timed against FP32
    stopped: str | None = None  # why the float-layer search stopped early (the speed stop)
    repairs: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    num_samples: int = 0
    fp32_p50_ms: float | None = None
    timing: dict[str, Any] | None = None  # the protocol the candidates were timed with (SpeedProbe.protocol)

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.chosen.options)

    def to_dict(self) -> dict[str, Any]:
        c = self.chosen
        return {
            "max_drop": self.max_drop, "drop_metric": self.drop_metric, "drop_unit": self.drop_unit,
            "task": self.task, "met": self.met, "verdict": self.verdict, "min_speedup": self.min_speedup,
            "float_layers": c.float_layers, "float_modules": [self.modules.get(n) for n in c.float_layers],
            "float_mac_share": c.float_mac_share, "speedup": c.speedup, "speedup_interval": c.speedup_interval,
            "drop": c.drop, "drop_se": c.metrics.get("drop_se"),
            "chosen": c.to_dict(), "calibration": self.calibration, "repairs": self.repairs,
            "sensitivity": self.sensitivity, "nncf_accuracy_control": self.nncf,
            "candidates": [x.to_dict() for x in self.candidates], "frontier": frontier(self.candidates, c),
            "stopped": self.stopped, "timed": self.timed, "fp32_p50_ms": self.fp32_p50_ms, "timing": self.timing,
            "num_samples": self.num_samples, "resolution": resolution(self.num_samples) if self.num_samples else None,
            "warnings": self.warnings, "seconds": self.seconds,
            "note": "the budget is measured on the validation data the search also used; hold out data to confirm it",
        }


class SpeedProbe:
    """Times INT8 engines against the FP32 engine of the same backend (built on first use, once per search): both
    side by side in interleaved rounds in a child process (validate.timing.time_engines), at `engine_batch`, with
    the profile's latency protocol (rounds, warm-up, iterations). An engine of a few tens of microseconds gives a
    round of the profile's calls well under a millisecond, where the ratio is noise: the iterations are raised so
    that each engine's round lasts at least MIN_ROUND_MS (from a first timing of the FP32 engine alone).
    `interval(slow_rounds, fast_rounds)` -> (median, low, high) of a speed-up (the caller's rule,
    pipeline.recommend.speedup_interval; None: the ratio of the p50s alone)."""

    MIN_ROUND_MS = 20.0
    MAX_ITERATIONS = 20000

    def __init__(self, backend: Any, onnx_path: Path, profile: Any, work_dir: Path, sample: Any, *,
                 engine_batch: int = 1, interval: Interval | None = None) -> None:
        self.backend, self.onnx_path, self.profile, self.work_dir = backend, Path(onnx_path), profile, Path(work_dir)
        self.sample, self.engine_batch, self.interval = sample, int(engine_batch), interval
        self.fp32: Path | None = None
        self.fp32_p50: list[float] = []
        self.iterations = int(profile.latency.iterations)

    def _fp32(self) -> Path:
        if self.fp32 is None:
            artifact = self.backend.build(self.onnx_path, "fp32", out_dir=self.work_dir / "fp32", profile=self.profile,
                                          calib=None, options={})
            if artifact.status != "ok" or not artifact.path:
                raise RuntimeError(f"the FP32 engine to time against did not build ({artifact.status}: {artifact.reason})")
            self.fp32 = Path(artifact.path)
            p50 = self._time({"fp32": self.fp32})["fp32"]["latency_by_batch"][0]["p50"]
            rounds = int(self.profile.latency.rounds)
            per_round = math.ceil(self.MIN_ROUND_MS / max(float(p50), 1e-6))
            self.iterations = min(max(self.iterations, rounds * per_round), self.MAX_ITERATIONS)
        return self.fp32

    def _time(self, engines: dict[str, Path]) -> dict[str, Any]:
        from edgerep.validate.timing import time_engines

        lat = self.profile.latency
        return time_engines(engines, self.sample, batch_sizes=[self.engine_batch], engine_batch=self.engine_batch,
                            dynamic_batch=self.profile.dynamic_batch, rounds=lat.rounds, warmup=lat.warmup,
                            iterations=self.iterations)

    def __call__(self, int8_path: Path) -> tuple[float, float, list[float] | None]:
        """(INT8 p50 ms, speed-up over FP32, its interval [low, high] or None)."""
        fp32 = self._fp32()
        timed = self._time({"fp32": fp32, "int8": Path(int8_path)})

        def at(name: str) -> tuple[float, list[float]]:
            row = timed[name]["latency_by_batch"][0]
            return float(row["p50"]), [float(v) for v in row.get("round_p50") or []]

        (fp_p50, fp_rounds), (q_p50, q_rounds) = at("fp32"), at("int8")
        self.fp32_p50.append(fp_p50)
        found = self.interval(fp_rounds, q_rounds) if self.interval is not None else None
        if found is None:
            return q_p50, fp_p50 / q_p50, None
        return q_p50, float(found[0]), [float(found[1]), float(found[2])]

    def protocol(self) -> dict[str, Any]:
        lat = self.profile.latency
        return {"rounds": lat.rounds, "warmup": lat.warmup, "iterations": self.iterations,
                "batch": self.engine_batch, "min_round_ms": self.MIN_ROUND_MS}

    def close(self) -> None:
        shutil.rmtree(self.work_dir, ignore_errors=True)


class Evaluator:
    """Builds one INT8 engine with the backend in a scratch folder, scores it against the reference and, with a
    SpeedProbe, times it against FP32."""

    def __init__(self, backend: Any, onnx_path: Path, profile: Any, calib: Any, reference: Any, work_dir: Path,
                 log: Callable[[str], None] | None = None, speed: SpeedProbe | None = None) -> None:
        self.backend, self.onnx_path, self.profile, self.calib = backend, Path(onnx_path), profile, calib
        self.reference, self.work_dir, self.log, self.speed = reference, Path(work_dir), log, speed
        self.batch = eval_batch(self.onnx_path)
        self.count = 0
        self.macs = layer_macs(self.onnx_path)
        self.noise: float | None = None  # a detector's drop error, bootstrapped once (_score)

    def __call__(self, name: str, source: str, options: dict[str, Any]) -> Candidate:
        t0 = time.perf_counter()
        self.count += 1
        out_dir = self.work_dir / f"candidate-{self.count}"
        shutil.rmtree(out_dir, ignore_errors=True)
        timing: tuple[float, float, list[float] | None] | None = None
        try:
            artifact = self.backend.build(self.onnx_path, "int8", out_dir=out_dir, profile=self.profile,
                                          calib=self.calib, options=dict(options))
            repair = repair_summary((artifact.info or {}).get("range_repair"))
            metrics, engine_floats = self._score(artifact, options.get("ignored_nodes") or [])
            if self.speed is not None and artifact.status == "ok" and artifact.path:
                timing = self.speed(Path(artifact.path))
        finally:
            shutil.rmtree(out_dir, ignore_errors=True)
        floats = list(options.get("ignored_nodes") or [])
        cand = Candidate(name=name, source=source, options=dict(options), float_layers=floats,
                         metrics=brief(metrics), seconds=time.perf_counter() - t0, engine_float_layers=engine_floats,
                         float_mac_share=self.mac_share(engine_floats if engine_floats is not None else floats))
        cand.repair = repair
        if timing is not None:
            cand.p50_ms, cand.speedup, cand.speedup_interval = timing
        if self.log is not None:
            speed = f", {cand.speedup:.2f}x FP32" if cand.speedup is not None else ""
            self.log(f"{name}: drop {cand.drop:.2f} ± {cand.drop_se:.2f} pp{speed}, nsr {cand.metrics['nsr']:.2e} "
                     f"({cand.seconds:.1f} s)")
        return cand

    def _noise(self, metrics: dict[str, Any]) -> dict[str, Any]:
        if self.noise is None:
            self.noise = metrics.get("drop_se")
        elif metrics.get("drop_se") is None:
            metrics["drop_se"] = self.noise
            metrics["drop_se_from"] = "the first candidate's bootstrap"
        return metrics

    def mac_share(self, floats: list[str]) -> float | None:
        total = sum(self.macs.values())
        return sum(self.macs.get(n, 0) for n in floats) / total if total else None

    def _score(self, artifact: Any, ignored: list[str]) -> tuple[dict[str, Any], list[str] | None]:
        from edgerep.quant.precision import ov_float_layers, qdq_float_layers

        nodes = [layer.node for layer in quantizable_layers(self.onnx_path)]
        # A detector's drop error is a bootstrap of full rescorings (seconds each): it is measured on the first
        # candidate (the plain engine) and used as the noise of this validation set for every later one.
        bootstrap = self.noise is None
        if artifact.status == "ok":
            with self.backend.load(artifact) as runner:
                metrics = self._noise(evaluate_runner(runner, self.reference, self.batch, bootstrap=bootstrap))
            path = Path(artifact.path)
            if path.suffix == ".xml":
                return metrics, ov_float_layers(path, nodes)
            if path.suffix == ".onnx":
                return metrics, qdq_float_layers(path, nodes)
            return metrics, None
        qdq = (artifact.info or {}).get("qdq")
        if qdq and Path(qdq).is_file():  # TensorRT without a GPU: its Q/DQ model in ONNX Runtime predicts the engine
            metrics = self._noise(evaluate_onnx(Path(qdq), self.reference, bootstrap=bootstrap))
            return metrics, qdq_float_layers(Path(qdq), nodes)
        raise UserError(f"--max-drop: the {self.backend.name} INT8 engine could not be built here to measure it "
                        f"({artifact.status}: {artifact.reason})")


def accepted_options(backend: Backend) -> set[str]:
    """The build options a backend takes."""
    return set(backend.capabilities.options)


def calibration_choices(backend: Any, base: dict[str, Any], profile: Any = None) -> tuple[list[dict[str, Any]], list[str]]:
    """Option sets to try for the plain INT8 engine, and notes on choices the backend does not offer.

    A method the user fixed (calib_method in `base`) is kept; otherwise every method of the backend is tried.
    Per-channel vs per-tensor weights and bias correction are tried where the backend takes those options, and
    on ONNX Runtime the weight formats that hold on the profile's target ISA (7-bit or uint8 where the CPU has no
    VNNI; full-range int8 too where it has)."""
    accepted = accepted_options(backend)
    methods = [base["calib_method"]] if base.get("calib_method") else list(backend.capabilities.calib_methods)
    axes: list[tuple[str, list[Any]]] = [("calib_method", methods)]
    notes = []
    if "per_channel" in accepted and "per_channel" not in base:
        axes.append(("per_channel", [True, False]))
    elif "per_channel" not in accepted:
        notes.append(f"per-channel vs per-tensor weights: the {backend.name} backend always uses per-channel weights")
    if "int8_weights" in accepted and "int8_weights" not in base:
        from edgerep.backends.onnxruntime.isa_policy import weight_formats_for
        from edgerep.cpu.isa import target_isa

        axes.append(("int8_weights", weight_formats_for(target_isa(profile))))
    if "bias_correction" in accepted and "bias_correction" not in base:
        axes.append(("bias_correction", ["fast", "full"]))
    choices: list[dict[str, Any]] = [dict(base)]
    for key, values in axes:
        choices = [{**c, key: v} for c in choices for v in values]
    return choices, notes


def repair_sets(backend: Any, base: dict[str, Any]) -> tuple[list[list[str]], str | None]:
    """The range repairs to try as candidates (each repair alone, then all together), and why none, if none:
    the user fixed them (range_repair in `base`), or the backend applies none."""
    option, capable = _repair_interface(backend.name)
    if option in base:
        return [], f"range repair fixed by the build options ({option}={base[option]})"
    if option not in accepted_options(backend) or not capable:
        return [], f"the {backend.name} backend applies no range repair"
    sets = [[name] for name in capable]
    if len(capable) > 1:
        sets.append(list(capable))
    return sets, None


def _repair_interface(backend_name: str) -> tuple[str, tuple[str, ...]]:
    """(quant.repair.REPAIR_OPTION, repair_capable(backend))."""
    from edgerep.quant.repair import REPAIR_OPTION, repair_capable

    return str(REPAIR_OPTION), tuple(repair_capable(backend_name))


def repair_summary(report: dict[str, Any] | None) -> dict[str, Any] | None:
    """The part of a build's range-repair report (artifact.info["range_repair"], backends.repair) the plan shows:
    the pairs equalized with the largest per-channel range spread before and after, the layers bias-corrected,
    and whether the float check held."""
    if not report:
        return None
    eq = report.get("equalize") or {}
    pairs = eq.get("pairs") or []
    bc = report.get("bias_correction") or {}
    return {"repairs": report.get("repairs"),
            "pairs": [[p.get("producer"), p.get("consumer")] for p in pairs],
            "spread_before": max((float(p.get("spread_before") or 0) for p in pairs), default=None),
            "spread_after": max((float(p.get("spread_after") or 0) for p in pairs), default=None),
            "absorbed_bias": eq.get("absorbed_bias"), "skipped": eq.get("skipped"),
            "bias_corrected": (bc["layers"] if isinstance(bc.get("layers"), int) else len(bc.get("layers") or []))
            if bc else None,
            "float_check": report.get("float_check")}


def within_noise(a: Candidate, b: Candidate) -> bool:
    """The two drops differ by less than their combined standard error: the validation data cannot tell them
    apart."""
    return abs(a.drop - b.drop) <= math.hypot(a.drop_se, b.drop_se) + 1e-9


def smallest_drop(cands: list[Candidate], then: Callable[[Candidate], Any]) -> Candidate:
    """The candidate with the smallest drop, where every drop within noise of it counts as equal and `then`
    (a sort key) decides among them."""
    best = min(cands, key=lambda c: (c.drop, c.metrics.get("nsr") or 0.0))
    tied = [c for c in cands if within_noise(c, best)]
    return min(tied, key=then)


def _speed_key(c: Candidate) -> float:
    return -(c.speedup if c.speedup is not None else 0.0)


def choose_plan(candidates: list[Candidate], max_drop: float, min_speedup: float
                ) -> tuple[Candidate, bool, str | None]:
    """(the plan, whether it is met, the one-line verdict when not) under the module docstring's rule."""
    fast = [c for c in candidates if c.fast(min_speedup)]
    ok = [c for c in fast if c.meets(max_drop)]
    if ok:
        return min(ok, key=lambda c: (len(c.float_layers), _speed_key(c), c.drop, c.metrics.get("nsr") or 0.0)), True, None
    timed = any(c.speedup is not None for c in candidates)
    if fast:
        best = smallest_drop(fast, lambda c: (_speed_key(c), len(c.float_layers)))
        k = len(best.float_layers)
        at = f" at {best.speedup:.2f}x" if best.speedup is not None else ""
        slow_ok = [c for c in candidates if c.meets(max_drop) and not c.fast(min_speedup)]
        within = (f"; within budget only at {max(c.speedup or 0 for c in slow_ok):.2f}x" if slow_ok else "")
        head = (f"budget {max_drop:g} pt not reachable at >= {min_speedup:g}x" if timed
                else f"budget {max_drop:g} pt not reached")
        return best, False, (f"{head}: best {best.drop:.2f} ± {best.drop_se:.2f} pt{at} with {k} float "
                             f"layer{'' if k == 1 else 's'}{within}; all-float would be FP32")
    best = smallest_drop(candidates, lambda c: (_speed_key(c), len(c.float_layers)))
    fastest = max(candidates, key=lambda c: c.speedup or 0.0)
    return best, False, (f"no INT8 plan reaches {min_speedup:g}x FP32 here: the fastest, {fastest.name}, runs at "
                         f"{fastest.speedup or 0:.2f}x (drop {fastest.drop:.2f} pt); FP32 is the engine to ship")


def frontier(candidates: list[Candidate], chosen: Candidate | None = None) -> list[dict[str, Any]]:
    """Every candidate as a point (drop ± its standard error, speed-up with its interval, float layers, float MAC
    share), with `pareto`: no other candidate is both at least as fast and at most as lossy (and better in one)."""
    rows = []
    for c in candidates:
        dominated = c.speedup is None or any(
            o is not c and o.speedup is not None and o.speedup >= c.speedup and o.drop <= c.drop
            and (o.speedup > c.speedup or o.drop < c.drop) for o in candidates)
        rows.append({"name": c.name, "source": c.source, "drop": c.drop, "drop_se": c.metrics.get("drop_se"),
                     "speedup": c.speedup, "speedup_interval": c.speedup_interval, "p50_ms": c.p50_ms,
                     "float_layers": len(c.float_layers), "float_mac_share": c.float_mac_share,
                     "pareto": not dominated, "chosen": c is chosen})
    return rows


def search(*, backend: Any, onnx_path: Path, profile: Any, calib: Any, reference: Any, max_drop: float,
           work_dir: Path, base_options: dict[str, Any] | None = None, module_names: set[str] | None = None,
           compare_nncf: bool = True, prune: bool = True, speed: SpeedProbe | None = None,
           min_speedup: float | None = None, log: Callable[[str], None] | None = None) -> MixedResult:
    """The accuracy-budgeted search for one backend (see the module docstring). `speed`: times each candidate
    against FP32 (None: accuracy only, and every candidate counts as fast); `min_speedup`: None takes the
    profile's `[int8] min_speedup`."""
    from edgerep.quant.qdq import METHODS as QDQ_METHODS
    from edgerep.quant.qdq import weights_for
    from edgerep.quant.sensitivity import layer_sensitivity

    if max_drop < 0:
        raise UserError(f"--max-drop {max_drop}: must be >= 0 (percentage points)")
    floor = float(profile.int8.min_speedup if min_speedup is None else min_speedup)
    t0 = time.perf_counter()
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    base = {k: v for k, v in (base_options or {}).items() if k != "ignored_nodes"}
    fixed_float = list((base_options or {}).get("ignored_nodes") or [])
    evaluate = Evaluator(backend, onnx_path, profile, calib, reference, work_dir / "scratch", log, speed)
    layers = quantizable_layers(onnx_path, module_names)
    names = set(module_names or ())
    # A layer of the fused graph maps to its own module, else to the unfused model's module that holds it.
    modules = {layer.node: layer.module or (owning_module(layer.node, names) if names else None) for layer in layers}
    n = int(reference.outputs.shape[0])
    warnings = []
    if max_drop < resolution(n):
        warnings.append(f"--max-drop {max_drop:g} is finer than the validation data can resolve: one of its {n} "
                        f"samples is {resolution(n):.2f} pt, so the budget is checked as given but a difference of "
                        f"one sample decides it; pass more validation data (--val, --val-samples)")

    def noise_then_nsr(c: Candidate) -> tuple[bool, float]:
        return (not c.fast(floor), c.metrics.get("nsr") or 0.0)

    # 1. calibration choices on the plain engine
    choices, notes = calibration_choices(backend, base, profile)
    tried = []
    for opts in choices:
        label = ", ".join(f"{k}={v}" for k, v in opts.items()
                          if k in ("calib_method", "per_channel", "bias_correction", "int8_weights"))
        tried.append(evaluate(f"plain INT8 ({label})", "calibration", {**opts, **_floats(fixed_float)}))
    best_plain = smallest_drop(tried, noise_then_nsr)
    calib_opts = {k: v for k, v in best_plain.options.items() if k != "ignored_nodes"}
    calibration = {"tried": [{"options": {k: v for k, v in c.options.items() if k != "ignored_nodes"},
                              "drop": c.drop, "drop_se": c.metrics.get("drop_se"), "nsr": c.metrics.get("nsr"),
                              "cosine": c.metrics.get("cosine"), "speedup": c.speedup} for c in tried],
                   "chosen": calib_opts, "not_selectable": notes,
                   "rule": "smallest drop (drops within their standard error count as equal), then fast enough, "
                           "then smallest output noise (NSR), on the plain INT8 engine"}
    candidates = list(tried)
    start = best_plain
    ranking: list[dict[str, Any]] = []
    nncf_info = None
    stopped = None
    repairs: dict[str, Any] = {"tried": [], "chosen": None}
    if not (best_plain.meets(max_drop) and best_plain.fast(floor)):
        # 2. range repairs on the best calibration, before any layer is given up to float
        sets, why_none = repair_sets(backend, base)
        repairs["note"] = why_none
        option = _repair_interface(backend.name)[0]
        for names_ in sets:
            cand = evaluate(f"repair {'+'.join(names_)}", "repair", {**calib_opts, option: list(names_),
                                                                    **_floats(fixed_float)})
            candidates.append(cand)
            repairs["tried"].append({"repairs": names_, "drop": cand.drop, "drop_se": cand.metrics.get("drop_se"),
                                     "nsr": cand.metrics.get("nsr"), "speedup": cand.speedup, "report": cand.repair})
        if sets:
            start = smallest_drop([best_plain, *candidates[len(tried):]],
                                  noise_then_nsr)  # within noise, the smaller output noise: a repair that helps
            repairs["chosen"] = start.options.get(option) if start is not best_plain else None
    start_opts = {k: v for k, v in start.options.items() if k != "ignored_nodes"}
    if not start.fast(floor):  # float layers only make an engine slower: none of them can reach the floor
        stopped = (f"not started: the plain INT8 engine already runs at {start.speedup or 0:.2f}x FP32, below "
                   f"min_speedup {floor:g}x")
    elif not start.meets(max_drop):
        # 3. rank layers by sensitivity, in this backend's quantizer placement
        chosen_method = start_opts.get("calib_method")
        method = str(chosen_method) if chosen_method in QDQ_METHODS else "minmax"
        num = int(start_opts.get("num_samples") or profile.calibration.num_samples)
        style = backend.capabilities.qdq_style
        sens = layer_sensitivity(onnx_path, calib, reference, work_dir / "sensitivity",
                                 style=style, method=method, num_samples=num, module_names=module_names,
                                 weights=start_opts.get("int8_weights") or weights_for(style, profile))
        ranking = [s.to_dict() for s in sens.layers]
        order = [n_ for n_ in sens.ranked_nodes() if n_ not in fixed_float]
        if log is not None:
            log(f"sensitivity: {', '.join(order[:5])}{' ...' if len(order) > 5 else ''}")
        # 4. top-k in float until within budget, or until the engine is no longer fast enough
        found = None
        for k in _ks(len(order)):
            cand = evaluate(f"top-{k} in float", "edgerep", {**start_opts, **_floats(fixed_float + order[:k])})
            candidates.append(cand)
            if not cand.fast(floor):
                stopped = (f"stopped at {k} float layer(s): {cand.speedup or 0:.2f}x FP32 is below min_speedup "
                           f"{floor:g}x, and more float layers only make it slower")
                break
            if cand.meets(max_drop):
                found = cand
                break
        if found is not None and prune and 1 < len(found.float_layers) - len(fixed_float) <= MAX_PRUNE:
            keep = [n_ for n_ in found.float_layers if n_ not in fixed_float]
            for node in list(reversed(keep)):
                trial = [n_ for n_ in keep if n_ != node]
                cand = evaluate(f"without {node}", "edgerep", {**start_opts, **_floats(fixed_float + trial)})
                candidates.append(cand)
                if cand.meets(max_drop) and cand.fast(floor):
                    keep, found = trial, cand
        # 5. NNCF's accuracy control on OpenVINO, as an exclusion list the other backends can apply too
        if compare_nncf and backend.name == "openvino":
            nncf_info, nncf_cand = _nncf_candidate(onnx_path, calib, reference, max_drop, profile, start_opts,
                                                   fixed_float, work_dir, evaluate)
            if nncf_cand is not None:
                candidates.append(nncf_cand)
    chosen, met, verdict = choose_plan(candidates, max_drop, floor)
    share = chosen.float_mac_share
    if share is not None and share > FLOAT_MAC_WARN:
        warnings.append(f"{share:.0%} of the model's MACs run in float in this plan ({len(chosen.float_layers)} "
                        f"float layer(s)): it is INT8 in name only")
    if log is not None:
        log(f"chosen: {chosen.name} ({chosen.source}), float layers {chosen.float_layers or 'none'}, drop "
            f"{chosen.drop:.2f} pp" + ("" if met else f"; NOT met: {verdict}"))
    from edgerep.quant.evaluate import drop_unit

    metrics = {**chosen.metrics, "task": reference.task}
    return MixedResult(max_drop=max_drop, drop_metric=chosen.metrics.get("drop_metric") or "", chosen=chosen,
                       candidates=candidates, calibration=calibration, sensitivity=ranking, nncf=nncf_info,
                       modules=modules, seconds=time.perf_counter() - t0, drop_unit=drop_unit(metrics),
                       task=reference.task, met=met, verdict=verdict, min_speedup=floor,
                       timed=speed is not None, stopped=stopped, repairs=repairs, warnings=warnings,
                       num_samples=n, timing=speed.protocol() if speed is not None else None,
                       fp32_p50_ms=(sorted(speed.fp32_p50)[len(speed.fp32_p50) // 2]
                                    if speed is not None and speed.fp32_p50 else None))


def _floats(nodes: list[str]) -> dict[str, Any]:
    return {"ignored_nodes": list(dict.fromkeys(nodes))} if nodes else {}


def _ks(n: int) -> list[int]:
    """k = 1..LINEAR_STEPS, then doubling, always ending with n (every layer in float)."""
    ks = list(range(1, min(n, LINEAR_STEPS) + 1))
    k = LINEAR_STEPS
    while k * 2 < n:
        k *= 2
        ks.append(k)
    if n not in ks and n > 0:
        ks.append(n)
    return ks


def _nncf_candidate(onnx_path: Path, calib: Any, reference: Any, max_drop: float, profile: Any,
                    calib_opts: dict[str, Any], fixed_float: list[str], work_dir: Path,
                    evaluate: Evaluator) -> tuple[dict[str, Any], Candidate | None]:
    from edgerep.quant.nncf_ac import accuracy_control

    nncf_opts = {k: v for k, v in calib_opts.items() if k in ("calib_method", "num_samples")}
    try:
        ac = accuracy_control(onnx_path, calib, reference, max_drop=max_drop, profile=profile, options=nncf_opts,
                              work_dir=work_dir / "nncf")
    except UserError as exc:
        return {"error": exc.message}, None
    info = {k: v for k, v in ac.items() if k != "ir"}
    shutil.rmtree(work_dir / "nncf", ignore_errors=True)
    floats = list(dict.fromkeys(fixed_float + ac["float_layers"]))
    cand = evaluate("nncf accuracy control, as an exclusion list", "nncf-accuracy-control",
                    {**calib_opts, **_floats(floats)})
    cand.note = (f"nncf.quantize_with_accuracy_control kept {len(ac['float_layers'])} weighted layer(s) in float "
                 f"(its own model: drop {ac['metrics']['drop']:.2f} pp); rebuilt here with those as ignored_nodes")
    return info, cand


# --- `edgerep build --max-drop` ---------------------------------------------------------------------


def plan_key(*, backend: Any, onnx_path: Path, profile: Any, calib: Any, val: Any, val_samples: int | None,
             max_drop: float, options: dict[str, Any], task: Any, engine_batch: int, timed: bool) -> str:
    """The content key of a plan (int8_plan.json is reused only under the same key): the model, both data sets,
    the budget, the build options (the user's fixed float layers and range repairs among them), the task, the
    profile's calibration, INT8 and latency settings, the repairs the backend offers, and the package versions."""
    from edgerep.files.artifacts import package_versions
    from edgerep.files.onnx_files import onnx_sha256

    return hashlib.sha256(json.dumps({
        "schema": PLAN_SCHEMA, "onnx": onnx_sha256(Path(onnx_path)), "calib": calib.sha256(), "val": val.sha256(),
        "val_samples": val_samples, "backend": backend.name, "max_drop": float(max_drop), "options": options,
        "task": [getattr(task, "name", task), task.options() if hasattr(task, "options") else None],
        "profile": {k: v for k, v in profile.to_dict().items()
                    if k in ("name", "backend", "opset", "calibration", "tensorrt", "int8", "isa")},
        "speed": ({"latency": profile.to_dict()["latency"], "engine_batch": engine_batch} if timed else None),
        "repairs": list(_repair_interface(backend.name)[1]),
        "versions": package_versions("edgerep", "onnxruntime", "openvino", "nncf", "tensorrt"),
    }, sort_keys=True, default=str).encode()).hexdigest()


def plan_int8(*, backend: Any, onnx_path: Path, profile: Any, calib: Any, val: Any, model: Any, max_drop: float,
              options: dict[str, Any] | None, work_dir: Path, val_samples: int | None = None, val_batch: int = 32,
              log: Callable[[str], None] | None = None, task: Any = None, engine_batch: int = 1,
              interval: Interval | None = None, timed: bool = True) -> tuple[dict[str, Any], dict[str, Any]]:
    """What `edgerep build --max-drop X` calls for an INT8 engine: returns (build options to merge, e.g.
    {"calib_method": ..., "ignored_nodes": [...]}, and the report entry with `float_layers`).

    `task`: the tasks.Task whose metric is budgeted (None: inferred from the outputs). `timed`: time every
    candidate against FP32 at `engine_batch` (the deploy batch) with the profile's latency protocol, `interval`
    giving a speed-up's interval over the paired rounds (SpeedProbe); a backend that builds on the device is
    never timed. The result is cached in work_dir/int8_plan.json by a hash of everything it depends on."""
    from edgerep.files.artifacts import write_json_atomic
    from edgerep.quant.layers import module_names_of
    from edgerep.validate.engine import compute_reference

    if max_drop < 0:
        raise UserError(f"--max-drop {max_drop}: must be >= 0 (percentage points)")
    if calib is None:
        raise UserError("--max-drop: INT8 needs calibration data; pass --calib")
    base = dict(options or {})
    key = plan_key(backend=backend, onnx_path=Path(onnx_path), profile=profile, calib=calib, val=val,
                   val_samples=val_samples, max_drop=max_drop, options=base, task=task, engine_batch=engine_batch,
                   timed=timed)
    work_dir = Path(work_dir)
    plan_path = work_dir / PLAN_FILE
    try:
        cached = json.loads(plan_path.read_text())
        if cached.get("key") == key:
            if log is not None:
                log(f"reusing {plan_path}")
            return cached["options"], cached["report"]
    except (OSError, ValueError):
        pass
    reference = compute_reference(model, val, batch_size=val_batch, limit=val_samples, task=task)
    if reference.degenerate:
        raise UserError(f"--max-drop: {reference.degenerate}; a budget against it means nothing")
    if not reference.scorer.can_budget(reference):
        raise UserError(f"--max-drop: the model is validated as {reference.task} (tensor metrics only), so there is "
                        f"no accuracy to budget; drop --max-drop or pass --task classify|detect")
    speed = None
    if timed and not backend.capabilities.offline_build:  # a device-built engine cannot be timed here
        sample = next(reference.source.iter_batches(1, limit=1))[0]
        speed = SpeedProbe(backend, Path(onnx_path), profile, work_dir / "speed", sample, engine_batch=engine_batch,
                           interval=interval)
    try:
        result = search(backend=backend, onnx_path=Path(onnx_path), profile=profile, calib=calib,
                        reference=reference, max_drop=float(max_drop), work_dir=work_dir, base_options=base,
                        module_names=module_names_of(model), speed=speed, log=log)
    finally:
        if speed is not None:
            speed.close()
    shutil.rmtree(work_dir / "scratch", ignore_errors=True)
    shutil.rmtree(work_dir / "sensitivity", ignore_errors=True)
    accepted = accepted_options(backend)
    plan_options = {k: v for k, v in result.options.items() if k in accepted}
    report = result.to_dict()
    write_json_atomic(plan_path, {"key": key, "options": plan_options, "report": report})
    return plan_options, report
