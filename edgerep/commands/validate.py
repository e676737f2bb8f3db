"""`edgerep validate`: one built engine file against the unfused PyTorch model, with a summary table or JSON."""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from edgerep.errors import UserError
from edgerep.validate.engine import (
    check_on_target_isa,
    compute_reference,
    gate_to_dict,
    isa_warnings,
    runner_accuracy,
    task_gate,
)
from edgerep.validate.timing import time_engines


def run_validate(*, model: str, engine: Path, target: str | None = None, val: Path | None = None,
                 weights: Path | None = None, input_shape: str | None = None, num_classes: int | None = None,
                 trust_pickle: bool = False, val_samples: int | None = None, val_batch: int = 32, seed: int = 0,
                 isa: str | None = None, task: str | None = None, score_threshold: float | None = None,
                 iou_threshold: float | None = None, inference_precision: str | None = None, as_json: bool = False,
                 out: Any = None, console: Any = None) -> int:
    """`edgerep validate`: check a built engine file against the unfused PyTorch model.

    The backend comes from the engine's sidecar; the gates from --target (default: the target recorded in
    the sidecar). `inference_precision` (--inference-precision, OpenVINO): run the engine at it instead of its
    compile.json's ("default": with no hint, as a plain deployment runs it); a warning says when the engine then runs
    at another precision than it was validated at. Returns 0 when the engine passes its gate, 1 when it does not."""
    import json

    import torch

    from edgerep.backends import get_backend
    from edgerep.data.sources import default_data_paths, needs_preprocess, open_data, preprocess_for
    from edgerep.files.artifacts import load_artifact
    from edgerep.models.specs import load_model
    from edgerep.pipeline.report import engine_entry, normalize, summary_table
    from edgerep.pipeline.stages import latency_sample
    from edgerep.targets import list_targets, load_target
    from edgerep.tasks import resolve_task

    if not Path(engine).is_file():
        raise UserError(f"--engine {engine}: file not found; pass an engine edgerep build wrote "
                        f"(runs/<model>-<target>/engines/model.<precision>.*)")
    artifact = load_artifact(Path(engine))
    backend = get_backend(artifact.backend)
    reason = backend.available()
    if reason is not None:
        raise UserError(reason)
    if target is not None:
        profile = load_target(target)
    elif artifact.info.get("target"):
        profile = load_target(artifact.info["target"])
    else:
        found = next((p for p in list_targets() if p.backend == artifact.backend), None)
        if found is None:
            raise UserError(f"--engine {engine}: no target profile for backend {artifact.backend}; pass --target")
        profile = found
    if profile.backend != artifact.backend:
        raise UserError(f"--target {profile.name}: its backend is {profile.backend} but {Path(engine).name} is a "
                        f"{artifact.backend} engine; pick a {artifact.backend} target")
    check_inference_precision(inference_precision, backend, Path(engine))
    target_isa_name = isa_warnings(artifact.info, isa, console)
    torch.manual_seed(seed)
    info = load_model(model, weights=weights, input_shape=input_shape, num_classes=num_classes, trust_pickle=trust_pickle)
    scorer = resolve_task(info, task, score_threshold=score_threshold, iou_threshold=iou_threshold)
    shape = tuple(info.input_shape)
    engine_shape: list[int | None] | None = artifact.info.get("input_shape")
    if engine_shape and len(engine_shape) == len(shape) and any(
            e is not None and e != m for e, m in zip(engine_shape[1:], shape[1:])):
        raise UserError(f"--engine {engine}: takes input {engine_shape} but the model takes {list(shape)}; "
                        f"pass the matching --model/--input-shape")
    if val is not None:
        val_path = Path(val)
    else:  # the shipped data: the demo's labelled digits, else the photos in calib/images
        default_calib, default_val = default_data_paths(info)
        val_path = default_val or default_calib
    source = open_data(val_path, preprocess_for(info) if needs_preprocess(val_path) else None, expect_shape=shape,
                       role="val")
    reference = compute_reference(info.module, source, batch_size=val_batch, limit=val_samples, task=scorer)
    if console is not None and reference.scorer.note:
        from rich.markup import escape

        console.print(f"[yellow]note:[/] {escape(reference.scorer.note)}", highlight=False, soft_wrap=True)
    gate = task_gate(profile, artifact.precision, reference)
    dynamic = engine_shape is not None and len(engine_shape) > 0 and engine_shape[0] is None
    engine_batch = val_batch if dynamic else int((engine_shape or list(shape))[0] or 1)
    with inference_precision_env(inference_precision):  # the timing and ISA children inherit it
        with backend.load(artifact) as runner:
            warning = runner.precision_warning()
            if warning and console is not None:
                from rich.markup import escape

                console.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False, soft_wrap=True)
            result = runner_accuracy(runner, reference, engine_batch=engine_batch, gate=gate)
        # latency as a build measures it: in rounds, in a fresh process, once the accuracy run is over
        lat = profile.latency
        result.update(time_engines({artifact.precision: engine}, latency_sample(reference),
                                   batch_sizes=list(lat.batch_sizes), engine_batch=engine_batch, dynamic_batch=dynamic,
                                   rounds=lat.rounds, warmup=lat.warmup, iterations=lat.iterations)[artifact.precision])
        if target_isa_name is not None:
            check_on_target_isa(result, artifact, reference, target=target_isa_name, engine_batch=engine_batch,
                                gate=gate)
    if warning:
        result["precision_warning"] = warning
    record = engine_entry(artifact.backend, artifact.precision, path=str(engine), **result,
                          gate=gate_to_dict(gate))
    report = normalize({"model": {"spec": info.spec, "input_shape": list(shape), "weights": info.weights},
                        "target": {"name": profile.name, "backend": profile.backend},
                        "reference": {"kind": "pytorch-unfused", "data": source.describe(),
                                      "num_samples": int(reference.outputs.shape[0]), "top1": reference.top1,
                                      "degenerate": reference.degenerate, **reference.report_fields()},
                        "engines": [record]})
    if out is not None:
        if as_json:
            import sys

            sys.stdout.write(json.dumps(report) + "\n")
        else:
            out.print(summary_table(report))
    if console is not None and not record["passed"]:
        from rich.markup import escape

        console.print(f"[bold red]FAILED[/] {artifact.backend} {artifact.precision}: {escape(str(record['reason']))}",
                      highlight=False, soft_wrap=True)
    return 0 if record["passed"] else 1


def check_inference_precision(value: str | None, backend: Any, engine: Path) -> None:
    """--inference-precision, checked before any work: the engine's backend takes it, and this CPU runs it (a bf16
    run where the CPU has no BF16 would be f32 again, silently)."""
    if value is None:
        return
    from edgerep.backends import backend_names, get_backend
    from edgerep.cpu.isa import host_cpu

    takes = backend.capabilities.inference_precisions
    if not takes:
        titles = [b.capabilities.title for b in map(get_backend, backend_names()) if b.capabilities.inference_precisions]
        raise UserError(f"--inference-precision {value}: only for {' or '.join(titles)} engines; {engine.name} is "
                        f"built for {backend.capabilities.title}, which runs it as built; drop the flag")
    if value not in takes:
        raise UserError(f"--inference-precision {value}: not one of {', '.join(takes)}")
    missing = host_cpu().bf16_missing() if value == "bf16" else None
    if missing:
        raise UserError(f"--inference-precision bf16: {missing}, so OpenVINO would run f32 here; validate on a CPU "
                        f"with BF16 (--inference-precision default shows what this CPU runs)")


@contextmanager
def inference_precision_env(value: str | None) -> Iterator[None]:
    """INFERENCE_PRECISION_ENV set to `value` while the engine is loaded and timed (children inherit it)."""
    from edgerep.backends.base import INFERENCE_PRECISION_ENV

    before = os.environ.get(INFERENCE_PRECISION_ENV)
    if value is None:
        os.environ.pop(INFERENCE_PRECISION_ENV, None)
    else:
        os.environ[INFERENCE_PRECISION_ENV] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(INFERENCE_PRECISION_ENV, None)
        else:
            os.environ[INFERENCE_PRECISION_ENV] = before
