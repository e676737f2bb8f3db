"""Accuracy-budgeted mixed precision: keep the fewest, most sensitive layers in float until the INT8 engine's
drop is within `max_drop` points of the task's metric (edgerep.tasks): for classifiers labelled top-1 where
labels exist, else top-1 agreement with the reference; for detectors labelled mAP@0.5:0.95, else agreement
mAP@0.5:0.95 with the reference's detections.

The search, for one backend:
  1. calibration: build the plain INT8 engine with each calibration choice the backend offers (methods, and
     per-channel / bias-correction options where the backend takes them) and keep the best;
  2. stop if it is within budget; else rank the layers by sensitivity (sensitivity.py, ONNX Runtime Q/DQ in
     the backend's quantizer placement);
  3. keep the top-k layers in float for k = 1, 2, ... until the engine is within budget, then try dropping each
     chosen layer again (fewest layers);
  4. on OpenVINO, also run NNCF's quantize_with_accuracy_control, express its float layers as the same
     exclusion list, rebuild, and keep whichever result is better (within budget, fewer float layers, smaller drop).
Every candidate is the backend's real engine (backend.build with options), scored on the validation data, so
the chosen list is what the final build gets. The list holds ONNX node names: `ignored_nodes` is applied as
NNCF's IgnoredScope on OpenVINO, nodes_to_exclude on ONNX Runtime, and in TensorRT's Q/DQ model.
The budget is checked on the same validation data the search uses; the report says so.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from edgerep.backends.base import Backend
from edgerep.errors import UserError
from edgerep.quant.evaluate import brief, eval_batch, evaluate_onnx, evaluate_runner
from edgerep.quant.layers import owning_module, quantizable_layers

PLAN_FILE = "int8_plan.json"
PLAN_SCHEMA = 1
MAX_PRUNE = 6  # try removing chosen layers one by one only for short lists (k evaluations)
LINEAR_STEPS = 8  # k = 1..8 one by one, then doubling (large models)


@dataclass
class Candidate:
    name: str
    source: str  # calibration | edgerep | nncf-accuracy-control
    options: dict[str, Any]
    float_layers: list[str]
    metrics: dict[str, Any]
    seconds: float
    engine_float_layers: list[str] | None = None  # read back from the built engine
    note: str | None = None

    @property
    def drop(self) -> float:
        return float(self.metrics["drop"])

    def meets(self, max_drop: float) -> bool:
        return self.drop <= max_drop + 1e-9

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "source": self.source, "options": self.options, "float_layers": self.float_layers,
                "engine_float_layers": self.engine_float_layers, "metrics": self.metrics, "seconds": self.seconds,
                "note": self.note}


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

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.chosen.options)

    def to_dict(self) -> dict[str, Any]:
        c = self.chosen
        return {
            "max_drop": self.max_drop, "drop_metric": self.drop_metric, "drop_unit": self.drop_unit,
            "task": self.task, "met": c.meets(self.max_drop),
            "float_layers": c.float_layers, "float_modules": [self.modules.get(n) for n in c.float_layers],
            "chosen": c.to_dict(), "calibration": self.calibration, "sensitivity": self.sensitivity,
            "nncf_accuracy_control": self.nncf, "candidates": [x.to_dict() for x in self.candidates],
            "seconds": self.seconds,
            "note": "the budget is measured on the validation data the search also used; hold out data to confirm it",
        }


class Evaluator:
    """Builds one INT8 engine with the backend in a scratch folder and scores it against the reference."""

    def __init__(self, backend: Any, onnx_path: Path, profile: Any, calib: Any, reference: Any, work_dir: Path,
                 log: Callable[[str], None] | None = None) -> None:
        self.backend, self.onnx_path, self.profile, self.calib = backend, Path(onnx_path), profile, calib
        self.reference, self.work_dir, self.log = reference, Path(work_dir), log
        self.batch = eval_batch(self.onnx_path)
        self.count = 0

    def __call__(self, name: str, source: str, options: dict[str, Any]) -> Candidate:
        t0 = time.perf_counter()
        self.count += 1
        out_dir = self.work_dir / f"candidate-{self.count}"
        shutil.rmtree(out_dir, ignore_errors=True)
        try:
            artifact = self.backend.build(self.onnx_path, "int8", out_dir=out_dir, profile=self.profile,
                                          calib=self.calib, options=dict(options))
            metrics, engine_floats = self._score(artifact, options.get("ignored_nodes") or [])
        finally:
            shutil.rmtree(out_dir, ignore_errors=True)
        cand = Candidate(name=name, source=source, options=dict(options),
                         float_layers=list(options.get("ignored_nodes") or []), metrics=brief(metrics),
                         seconds=time.perf_counter() - t0, engine_float_layers=engine_floats)
        if self.log is not None:
            self.log(f"{name}: drop {cand.drop:.2f} pp, nsr {cand.metrics['nsr']:.2e} ({cand.seconds:.1f} s)")
        return cand

    def _score(self, artifact: Any, ignored: list[str]) -> tuple[dict[str, Any], list[str] | None]:
        from edgerep.quant.precision import ov_float_layers, qdq_float_layers

        nodes = [layer.node for layer in quantizable_layers(self.onnx_path)]
        if artifact.status == "ok":
            with self.backend.load(artifact) as runner:
                metrics = evaluate_runner(runner, self.reference, self.batch)
            path = Path(artifact.path)
            if path.suffix == ".xml":
                return metrics, ov_float_layers(path, nodes)
            if path.suffix == ".onnx":
                return metrics, qdq_float_layers(path, nodes)
            return metrics, None
        qdq = (artifact.info or {}).get("qdq")
        if qdq and Path(qdq).is_file():  # TensorRT without a GPU: its Q/DQ model in ONNX Runtime predicts the engine
            return evaluate_onnx(Path(qdq), self.reference), qdq_float_layers(Path(qdq), nodes)
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


def _better(a: Candidate, b: Candidate, max_drop: float) -> bool:
    """a is better than b: within budget first, then fewer float layers, then a smaller drop."""
    ka = (not a.meets(max_drop), len(a.float_layers), a.drop, a.metrics.get("nsr") or 0.0)
    kb = (not b.meets(max_drop), len(b.float_layers), b.drop, b.metrics.get("nsr") or 0.0)
    return ka < kb


def search(*, backend: Any, onnx_path: Path, profile: Any, calib: Any, reference: Any, max_drop: float,
           work_dir: Path, base_options: dict[str, Any] | None = None, module_names: set[str] | None = None,
           compare_nncf: bool = True, prune: bool = True,
           log: Callable[[str], None] | None = None) -> MixedResult:
    """The accuracy-budgeted search for one backend (see the module docstring)."""
    from edgerep.quant.qdq import METHODS as QDQ_METHODS
    from edgerep.quant.qdq import weights_for
    from edgerep.quant.sensitivity import layer_sensitivity

    if max_drop < 0:
        raise UserError(f"--max-drop {max_drop}: must be >= 0 (percentage points)")
    t0 = time.perf_counter()
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    base = {k: v for k, v in (base_options or {}).items() if k != "ignored_nodes"}
    fixed_float = list((base_options or {}).get("ignored_nodes") or [])
    evaluate = Evaluator(backend, onnx_path, profile, calib, reference, work_dir / "scratch", log)
    layers = quantizable_layers(onnx_path, module_names)
    names = set(module_names or ())
    # A layer of the fused graph maps to its own module, else to the unfused model's module that holds it.
    modules = {layer.node: layer.module or (owning_module(layer.node, names) if names else None) for layer in layers}

    # 1. calibration choices on the plain engine
    choices, notes = calibration_choices(backend, base, profile)
    tried = []
    for opts in choices:
        label = ", ".join(f"{k}={v}" for k, v in opts.items()
                          if k in ("calib_method", "per_channel", "bias_correction", "int8_weights"))
        tried.append(evaluate(f"plain INT8 ({label})", "calibration", {**opts, **_floats(fixed_float)}))
    best_plain = min(tried, key=lambda c: (c.drop, c.metrics.get("nsr") or 0.0))
    calib_opts = {k: v for k, v in best_plain.options.items() if k != "ignored_nodes"}
    calibration = {"tried": [{"options": {k: v for k, v in c.options.items() if k != "ignored_nodes"},
                              "drop": c.drop, "nsr": c.metrics.get("nsr"), "cosine": c.metrics.get("cosine")}
                             for c in tried],
                   "chosen": calib_opts, "not_selectable": notes,
                   "rule": "smallest drop, then smallest output noise (NSR), on the plain INT8 engine"}
    candidates = list(tried)
    chosen = best_plain
    ranking: list[dict[str, Any]] = []
    nncf_info = None
    if not best_plain.meets(max_drop):
        # 2. rank layers by sensitivity, in this backend's quantizer placement
        chosen_method = calib_opts.get("calib_method")
        method = str(chosen_method) if chosen_method in QDQ_METHODS else "minmax"
        num = int(calib_opts.get("num_samples") or profile.calibration.num_samples)
        style = backend.capabilities.qdq_style
        sens = layer_sensitivity(onnx_path, calib, reference, work_dir / "sensitivity",
                                 style=style, method=method, num_samples=num, module_names=module_names,
                                 weights=calib_opts.get("int8_weights") or weights_for(style, profile))
        ranking = [s.to_dict() for s in sens.layers]
        order = [n for n in sens.ranked_nodes() if n not in fixed_float]
        if log is not None:
            log(f"sensitivity: {', '.join(order[:5])}{' ...' if len(order) > 5 else ''}")
        # 3. top-k in float until within budget
        found = None
        for k in _ks(len(order)):
            cand = evaluate(f"top-{k} in float", "edgerep", {**calib_opts, **_floats(fixed_float + order[:k])})
            candidates.append(cand)
            if cand.meets(max_drop):
                found = cand
                break
        if found is not None and prune and 1 < len(found.float_layers) - len(fixed_float) <= MAX_PRUNE:
            keep = [n for n in found.float_layers if n not in fixed_float]
            for node in list(reversed(keep)):
                trial = [n for n in keep if n != node]
                cand = evaluate(f"without {node}", "edgerep", {**calib_opts, **_floats(fixed_float + trial)})
                candidates.append(cand)
                if cand.meets(max_drop):
                    keep, found = trial, cand
        chosen = found if found is not None else min(candidates, key=lambda c: (c.drop, len(c.float_layers)))
        # 4. NNCF's accuracy control on OpenVINO, as an exclusion list the other backends can apply too
        if compare_nncf and backend.name == "openvino":
            nncf_info, nncf_cand = _nncf_candidate(onnx_path, calib, reference, max_drop, profile, calib_opts,
                                                   fixed_float, work_dir, evaluate)
            if nncf_cand is not None:
                candidates.append(nncf_cand)
                if _better(nncf_cand, chosen, max_drop):
                    chosen = nncf_cand
    if log is not None:
        log(f"chosen: {chosen.name} ({chosen.source}), float layers {chosen.float_layers or 'none'}, drop {chosen.drop:.2f} pp")
    from edgerep.quant.evaluate import drop_unit

    metrics = {**chosen.metrics, "task": reference.task}
    return MixedResult(max_drop=max_drop, drop_metric=chosen.metrics.get("drop_metric") or "", chosen=chosen,
                       candidates=candidates, calibration=calibration, sensitivity=ranking, nncf=nncf_info,
                       modules=modules, seconds=time.perf_counter() - t0, drop_unit=drop_unit(metrics),
                       task=reference.task)


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


def plan_int8(*, backend: Any, onnx_path: Path, profile: Any, calib: Any, val: Any, model: Any, max_drop: float,
              options: dict[str, Any] | None, work_dir: Path, val_samples: int | None = None, val_batch: int = 32,
              log: Callable[[str], None] | None = None, task: Any = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """What `edgerep build --max-drop X` calls for an INT8 engine: returns (build options to merge, e.g.
    {"calib_method": ..., "ignored_nodes": [...]}, and the report entry with `float_layers`).

    `task`: the tasks.Task whose metric is budgeted (None: inferred from the outputs). The result is cached in
    work_dir/int8_plan.json by a hash of everything it depends on."""
    from edgerep.files.artifacts import package_versions, write_json_atomic
    from edgerep.files.onnx_files import onnx_sha256
    from edgerep.quant.layers import module_names_of
    from edgerep.validate.engine import compute_reference

    if max_drop < 0:
        raise UserError(f"--max-drop {max_drop}: must be >= 0 (percentage points)")
    if calib is None:
        raise UserError("--max-drop: INT8 needs calibration data; pass --calib")
    base = dict(options or {})
    key = hashlib.sha256(json.dumps({
        "schema": PLAN_SCHEMA, "onnx": onnx_sha256(Path(onnx_path)), "calib": calib.sha256(), "val": val.sha256(),
        "val_samples": val_samples, "backend": backend.name, "max_drop": float(max_drop), "options": base,
        "task": [getattr(task, "name", task), task.options() if hasattr(task, "options") else None],
        "profile": {k: v for k, v in profile.to_dict().items() if k in ("name", "backend", "opset", "calibration", "tensorrt")},
        "versions": package_versions("edgerep", "onnxruntime", "openvino", "nncf", "tensorrt"),
    }, sort_keys=True, default=str).encode()).hexdigest()
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
    result = search(backend=backend, onnx_path=Path(onnx_path), profile=profile, calib=calib, reference=reference,
                    max_drop=float(max_drop), work_dir=work_dir, base_options=base,
                    module_names=module_names_of(model), log=log)
    shutil.rmtree(work_dir / "scratch", ignore_errors=True)
    shutil.rmtree(work_dir / "sensitivity", ignore_errors=True)
    accepted = accepted_options(backend)
    plan_options = {k: v for k, v in result.options.items() if k in accepted}
    report = result.to_dict()
    write_json_atomic(plan_path, {"key": key, "options": plan_options, "report": report})
    return plan_options, report
