"""`edgerep build`: the stages of edgerep.pipeline.stages composed - load -> data -> fuse + export -> engine per precision
-> reference -> validate -> report.

Each stage that makes a file is keyed by a content hash of everything it depends on, recorded in a small
manifest (DIR/stages.json, see edgerep.pipeline.stages). A re-run whose key matches, and whose files still match their
sidecars, reuses the stage; --force rebuilds. Artifacts are written under temporary names and renamed, so a kill
or a full disk never leaves a file that looks finished; the next run resumes after the last finished stage.

Default output folder: runs/<model-name>-<target> (e.g. runs/repvgg_digits-openvino-cpu).
"""
from __future__ import annotations

import time
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from edgerep.errors import UserError
from edgerep.files.output_lock import output_lock
from edgerep.pipeline import stages
from edgerep.pipeline.stages import DEMO_MODEL, StageLog

if TYPE_CHECKING:
    from rich.console import Console


@dataclass
class BuildOptions:
    """Everything `edgerep build` takes; the CLI fills it from flags."""

    model: str | None = None  # None: the demo (zoo:repvgg_digits with its shipped weights and data)
    weights: Path | None = None
    input_shape: str | tuple[int, ...] | None = None
    num_classes: int | None = None
    trust_pickle: bool = False
    target: str = "openvino-cpu"
    precisions: list[str] | str | None = None  # None: every precision of the target
    calib: Path | None = None
    val: Path | None = None
    force: bool = False
    output: Path | None = None  # None: runs/<model-name>-<target>
    # preprocessing overrides for image data (None: from the model spec)
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    resize: int | None = None
    interpolation: str | None = None
    channel_order: str | None = None
    calib_samples: int | None = None  # None: the profile's calibration.num_samples
    calib_method: str | None = None  # None: the profile's calibration.method
    val_samples: int | None = None  # None: every validation sample
    val_batch: int = 32
    simplifier: str = "onnxsim"
    fuse_tol: float = 1e-4
    export_tol: float = 1e-4
    seed: int = 0  # seeds random initialisation, so a model without weights is the same on every run
    backend_options: dict[str, Any] = field(default_factory=dict)  # e.g. {"ignored_nodes": [...]}
    max_drop: float | None = None  # INT8: keep the fewest sensitive layers in float until the drop is within this (points)
    isa: str | None = None  # CPU targets: the ISA the engines must hold on (None: the profile's `isa`)
    task: str | None = None  # classify | detect | raw (None: what the model says, else inferred from its output)
    score_threshold: float | None = None  # detect: a box's score to count as a detection (None: tasks.detect's)
    iou_threshold: float | None = None  # detect: NMS IoU (None: tasks.detect's)
    # The rows of what the user gets without edgerep (pipeline.baselines): the PyTorch original, its plain ONNX
    # export and, for an Ultralytics detector, Ultralytics' own export; validated and timed beside the engines.
    # On by default in `edgerep build` (--no-baselines); off for library callers (the matrix, scripts) unless asked.
    baselines: bool = False
    # INT8 of a detector: measure which head nodes pay their way in float (quant.head_islands); False: keep the
    # fixed rule (quant.float_policy: the decode and the prediction convs feeding it)
    head_search: bool = True
    static_batch: bool = False  # engines with a fixed batch of 1 (stages.static_profile), whatever the profile says
    # INT8: layers every backend keeps in float (`--keep-float`): ONNX node names or PyTorch module paths
    # (quant.layers.resolve_keep_float), merged into ignored_nodes; the --max-drop search starts from them.
    keep_float: list[str] = field(default_factory=list)


@dataclass
class BuildResult:
    exit_code: int
    out_dir: Path
    report: dict[str, Any]
    paths: tuple[Path, Path, Path] | None = None


# --- parsing ---------------------------------------------------------------------------------------






# --- the build -------------------------------------------------------------------------------------




def build(opts: BuildOptions, *, console: Console | None = None, measure_latency: bool = True) -> BuildResult:
    """The stage composition behind `edgerep build`; returns the report and the exit code.

    measure_latency=False leaves every engine's latency empty (the report's `latency.measured` says so) and
    saves the timing input as DIR/latency_input.npy, for a scheduler that times engines later on a quiet
    machine (edgerep.matrix runs stages.latency_stage then).

    The output folder is locked (files.output_lock) from the moment it is known, before its first write, until
    the build returns: a second writer stops with one line instead of mixing its files into this one's."""
    with ExitStack() as held:
        return _build(opts, console=console, measure_latency=measure_latency, hold=held.enter_context)


def _build(opts: BuildOptions, *, console: Console | None, measure_latency: bool,
           hold: Callable[[AbstractContextManager[None]], None]) -> BuildResult:
    log = StageLog(console)
    plan = stages.plan_stage(opts.target, opts.precisions, backend_options=opts.backend_options,
                             max_drop=opts.max_drop, isa=opts.isa, console=console, static_batch=opts.static_batch)
    profile, backend, precisions = plan.profile, plan.backend, plan.precisions

    loaded = stages.load_stage(log, opts.model or DEMO_MODEL, weights=opts.weights, input_shape=opts.input_shape,
                               num_classes=opts.num_classes, trust_pickle=opts.trust_pickle, seed=opts.seed,
                               data_paths=(opts.calib, opts.val))
    info = loaded.info
    task = stages.task_stage(log, info, task=opts.task, score_threshold=opts.score_threshold,
                             iou_threshold=opts.iou_threshold)
    if opts.max_drop is not None and not task.has_accuracy and "int8" in precisions:
        raise UserError(f"--max-drop {opts.max_drop:g}: {info.spec} is validated as raw tensors ({task.note or 'no task'}), "
                        f"so there is no accuracy to budget; pass --task classify|detect or drop --max-drop")
    data = stages.data_stage(log, info, calib=opts.calib, val=opts.val, need_calib="int8" in precisions,
                             preprocess=dict(mean=opts.mean, std=opts.std, resize=opts.resize,
                                             interpolation=opts.interpolation, channel_order=opts.channel_order))
    out_dir = Path(opts.output) if opts.output is not None else default_output(info.name, profile.name)
    hold(output_lock(out_dir))
    manifest = stages.prepare_output(out_dir)

    onnx = stages.onnx_stage(log, loaded, profile, out_dir, manifest, force=opts.force, seed=opts.seed,
                             fuse_tol=opts.fuse_tol, export_tol=opts.export_tol, simplifier=opts.simplifier)

    keep_float: list[str] = []
    if opts.keep_float and "int8" in precisions:
        from edgerep.quant.layers import module_names_of, resolve_keep_float

        keep_float = resolve_keep_float(opts.keep_float, onnx.sim_path, module_names_of(info.module))
    artifacts: dict[str, Any] = {}
    engine_records: dict[str, dict[str, Any]] = {}
    for precision in precisions:
        options = stages.engine_options(opts.backend_options, precision, onnx_path=onnx.sim_path,
                                        calib_samples=opts.calib_samples,
                                        calib_method=opts.calib_method)
        if precision == "int8" and keep_float:
            options["ignored_nodes"] = list(dict.fromkeys([*(options.get("ignored_nodes") or []), *keep_float]))
        int8_plan = head_plan = None
        if precision == "int8" and opts.head_search and opts.max_drop is None:
            options, head_plan = stages.head_plan_stage(
                log, backend=backend, onnx=onnx, profile=profile, data=data, model=info.module, task=task,
                options=options, out_dir=out_dir, manifest=manifest, force=opts.force,
                user_options=opts.backend_options)
        if precision == "int8" and opts.max_drop is not None:
            plan_options, int8_plan = stages.int8_plan_stage(
                log, backend=backend, onnx=onnx, profile=profile, data=data, model=info.module,
                max_drop=opts.max_drop, options=options, work_dir=out_dir / "quant", val_samples=opts.val_samples,
                val_batch=opts.val_batch, task=task)
            options.update(plan_options)
        artifact = stages.engine_stage(log, backend, onnx, precision, profile, data.calib, options, out_dir, manifest,
                                       force=opts.force)
        artifacts[precision] = artifact
        engine_records[precision] = stages.engine_record(artifact)
        if precision == "int8":
            engine_records[precision]["float_layers"] = list(options.get("ignored_nodes") or [])
            if int8_plan is not None:
                engine_records[precision]["int8_plan"] = int8_plan
            if head_plan is not None:
                engine_records[precision]["head_plan"] = head_plan

    reference = stages.reference_stage(log, info.module, data.val_source, batch_size=opts.val_batch,
                                       limit=opts.val_samples, task=task)
    if console is not None and reference.scorer is not task and reference.scorer.note:  # a fallback on real data
        from rich.markup import escape

        console.print(f"[yellow]note:[/] {escape(reference.scorer.note)}", highlight=False, soft_wrap=True)
    engine_batch = stages.engine_batch_for(profile, info, opts.val_batch)
    from edgerep.validate.engine import gate_to_dict

    for precision in precisions:
        artifact, record = artifacts[precision], engine_records[precision]
        record["gate"] = gate_to_dict(reference.scorer.gate(profile, precision))
        if artifact.status != "ok":
            continue
        stages.validate_stage(log, backend, artifact, record, reference, profile, precision,
                              engine_batch=engine_batch, out_dir=out_dir)
        stages.int8_plan_gate(record)  # a --max-drop plan that is not met fails the INT8 engine, saying why
    import numpy as np

    from edgerep.files.artifacts import atomic_path

    baselines = None
    if opts.baselines and not backend.capabilities.offline_build:  # device engines are not comparable here
        from edgerep.pipeline.baselines import baselines_stage

        baselines = baselines_stage(log, loaded, profile, backend, reference, data, out_dir, manifest,
                                    engine_batch=engine_batch, force=opts.force, calib_samples=opts.calib_samples)
    sample = stages.latency_sample(reference)
    if measure_latency:  # every engine (and baseline) side by side, after all of them are validated
        stages.latency_stage(log, [engine_records[p] for p in precisions] + (baselines.records if baselines else []),
                             sample, profile, engine_batch=engine_batch,
                             modules=baselines.modules if baselines else None,
                             fixed_batch=baselines.fixed_batch if baselines else None)
    else:  # edgerep matrix times the cell later, with the machine to itself
        with atomic_path(out_dir / stages.LATENCY_SAMPLE) as tmp, open(tmp, "wb") as fh:
            np.save(fh, sample)
    # TensorRT adds rows once the reference exists: the INT8 Q/DQ model run in ONNX Runtime as a prediction of
    # the device engine, and the reference written into the device bundle.
    extra_records: list[dict[str, Any]] = []
    if backend.capabilities.offline_build:
        from edgerep.pipeline.tensorrt_finish import finish_offline

        with log.stage("finish", f"{backend.name}: predictions and device bundle") as st:
            extra_records = finish_offline(artifacts, reference, profile=profile, engine_batch=engine_batch)
            st["detail"] = ", ".join(f"{r['backend']} {r['precision']}: cosine {r['accuracy'].get('cosine') or 0:.4f}"
                                     for r in extra_records) or "done"

    pictures = None
    if reference.scorer.draws_pictures:  # a detector's boxes per engine (pipeline.pictures)
        from edgerep.pipeline.pictures import pictures_stage

        pictures = pictures_stage(log, backend, artifacts, reference, info, profile, out_dir)

    # --- report
    report = {
        "schema": 1,
        "model": {"spec": info.spec, "name": info.name, "input_shape": list(info.input_shape),
                  "weights": info.weights, "weights_sha256": loaded.weights_sha256, "num_classes": info.num_classes,
                  "deploy": info.deploy, "seed": opts.seed},
        "target": profile.to_dict(),
        "reference": {"kind": "pytorch-unfused", "data": data.val_source.describe(),
                      "num_samples": int(reference.outputs.shape[0]), "top1": reference.top1,
                      "labelled": reference.labels is not None, "same_as_calibration": data.val is None,
                      "degenerate": reference.degenerate, **reference.report_fields()},
        "calibration": data.calib.describe() if data.calib is not None else None,
        "engines": [engine_records[p] for p in precisions] + extra_records,
        "fuse": onnx.fuse_info,
        "export": onnx.export_info,
        "stages": [{k: v for k, v in s.items()} for s in log.stages],
        "versions": stages.versions("edgerep", "torch", "onnx", "onnxruntime", "onnxsim", "openvino", "nncf", "timm"),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "output_dir": str(out_dir),
        "pictures": pictures,
        "baselines": baselines.records if baselines else [],
        "baseline_notes": baselines.notes if baselines else [],
    }
    if not measure_latency:
        report["latency"] = {"measured": False, "how": "deferred: timed later by the scheduler"}
    paths = stages.report_stage(out_dir, report)  # adds `recommended` (edgerep.pipeline.recommend) first
    failed = stages.failed_engines(report)
    if console is not None:
        from edgerep.pipeline.report import failure_lines

        for line in failure_lines(report):
            console.print(line, highlight=False, soft_wrap=True)
    return BuildResult(exit_code=1 if failed else 0, out_dir=out_dir, report=report, paths=paths)


def default_output(model_name: str, target: str) -> Path:
    return Path("runs") / f"{model_name}-{target}"
