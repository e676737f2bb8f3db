"""What "accuracy" means per task: classify (top-1), detect (decode, NMS, mAP vs the
reference and labels), raw (tensor metrics only). A task is a small strategy (base.Task): metrics from
reference and engine outputs, gates per precision, and the unit of --max-drop.

Which task: --task (or `task` in a matrix model entry) when given; else what the model says (ModelInfo.task:
zoo, timm and Ultralytics models set it); else, for a model that says nothing, its output: one (N, classes)
tensor is read as class scores (classify, as edgerep always did for such models, with a note), anything else
is raw with a note suggesting --task.
"""
from __future__ import annotations

from typing import Any, Sequence

from edgerep.errors import UserError
from edgerep.tasks.base import Task

TASKS = ("classify", "detect", "raw")


def get_task(name: str, **options: Any) -> Task:
    """A Task by name; detect takes score_threshold, iou_threshold, layout, num_classes (None: defaults)."""
    from edgerep.tasks.classify import ClassifyTask
    from edgerep.tasks.raw import RawTask

    explicit, note = options.pop("explicit", False), options.pop("note", None)
    if name == "detect":
        from edgerep.tasks.detect_task import DetectTask

        return DetectTask(explicit=explicit, note=note, **options)
    if name == "classify":
        return ClassifyTask(explicit=explicit, note=note)
    if name == "raw":
        return RawTask(explicit=explicit, note=note)
    raise UserError(f"--task {name}: unknown task; use {', '.join(TASKS)}")


def task_named(name: str | None) -> Task:
    """A task with default options, to read records of it (report views, gates): classify when unnamed."""
    return get_task(name or "classify")


def _shape(outputs: Sequence[Any]) -> tuple[int, ...]:
    return tuple(int(d) for d in getattr(outputs[0], "shape", ())) if outputs else ()


def _shape_text(shape: Sequence[int]) -> str:
    return "(" + ", ".join(map(str, shape)) + ")"


def infer_task(model_info: Any, outputs: Sequence[Any]) -> tuple[str, str | None]:
    """(task name, note) for a model: ModelInfo.task when set; else classify for a lone (N, classes) output
    (with a note saying it was read from the shape); else raw, with a note that says so."""
    from edgerep.tasks.classify import is_class_scores

    task = getattr(model_info, "task", None) if model_info is not None else None
    if task in TASKS:
        return task, None
    shape = _shape(outputs)
    if len(outputs) == 1 and is_class_scores(shape):
        return "classify", (f"task not known: its output {_shape_text(shape)} is read as class scores (classify); "
                            f"pass --task raw for tensor metrics only")
    return "raw", (f"task not known: tensor metrics only (outputs {', '.join(_shape_text(_shape([o])) for o in outputs)}); "
                   f"pass --task classify|detect")


def choose_task(model_info: Any, outputs: Sequence[Any], requested: str | None = None, *,
                score_threshold: float | None = None, iou_threshold: float | None = None) -> Task:
    """The Task for a model whose outputs (on any input) are `outputs`, checked before any work is done.

    An explicit --task that cannot apply is one line (UserError): classify on outputs that are not class scores,
    detect on a head no layout fits. An inferred detect whose head cannot be decoded falls back to raw with a
    note (never a crash)."""
    from edgerep.tasks.classify import is_class_scores
    from edgerep.tasks.detect import HeadLayoutError
    from edgerep.tasks.detect_task import DetectTask

    spec = getattr(model_info, "spec", "the model")
    shape = _shape(outputs)
    if requested is not None and requested not in TASKS:
        raise UserError(f"--task {requested}: unknown task; use {', '.join(TASKS)}")
    name, note = (requested, None) if requested else infer_task(model_info, outputs)
    if name != "detect":
        for flag, value in (("--score-threshold", score_threshold), ("--iou-threshold", iou_threshold)):
            if value is not None:
                raise UserError(f"{flag} {value:g}: only for detectors (--task detect); {spec} is validated as {name}")
    if name == "classify" and not is_class_scores(shape):
        hint = "raw"
        try:
            DetectTask().resolve(shape)
            hint = "detect"
        except HeadLayoutError:
            pass
        what = "looks like a detection head" if hint == "detect" else "has no class axis to take the arg-max of"
        raise UserError(f"--task classify: {spec}'s output {_shape_text(shape)} is not class scores (N, classes): it "
                        f"{what}; pass --task {hint}")
    if name == "detect":
        for flag, value in (("--score-threshold", score_threshold), ("--iou-threshold", iou_threshold)):
            if value is not None and not 0.0 <= value <= 1.0:
                raise UserError(f"{flag} {value:g}: must be within [0, 1]")
        task = DetectTask(score_threshold=score_threshold, iou_threshold=iou_threshold,
                          layout=getattr(model_info, "head_layout", None), explicit=requested == "detect", note=note)
        try:
            task.resolve(shape)
        except HeadLayoutError as exc:
            if requested == "detect":
                raise UserError(f"--task detect: {exc.message}; pass --task raw for tensor metrics only") from None
            return get_task("raw", note=fallback_note(exc))
        return task
    return get_task(name, explicit=requested is not None, note=note or ("--task raw: tensor metrics only"
                                                                        if name == "raw" else None))


def fallback_note(exc: Any) -> str:
    return f"detection head not decoded ({getattr(exc, 'message', exc)}): tensor metrics only (task raw)"


def probe_outputs(model_info: Any, seed: int = 0) -> list[Any]:
    """The model's outputs (numpy, ONNX order) on one random input of its shape: enough to choose the task."""
    import torch

    from edgerep.models.outputs import to_numpy_list

    x = torch.randn(*model_info.input_shape, generator=torch.Generator().manual_seed(seed))
    model_info.module.eval()
    with torch.inference_mode():
        return to_numpy_list(model_info.module(x))


def resolve_task(model_info: Any, requested: str | None = None, *, score_threshold: float | None = None,
                 iou_threshold: float | None = None) -> Task:
    """choose_task on the model's outputs for one random input (probe_outputs)."""
    return choose_task(model_info, probe_outputs(model_info), requested, score_threshold=score_threshold,
                       iou_threshold=iou_threshold)
