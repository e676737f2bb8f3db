"""The build pipeline's stages, each a small function with explicit inputs, outputs and (where it makes files)
a content key: load -> data -> fuse + export (one cached product: the simplified ONNX) -> engine per precision
-> reference -> accuracy and latency per engine -> report.

`edgerep build` (edgerep.pipeline.build.build) composes them in order; `edgerep matrix` (edgerep.matrix) composes the
same functions but runs the latency stage later, one cell at a time, so timings never share the cores.

Cache keys live in a small manifest (DIR/stages.json, written atomically after every finished stage):
  onnx:   model spec + a hash of the weights actually loaded + input shape + fuse/export settings + opset
          + torch/onnx versions;
  engine: the simplified ONNX's hash + backend + precision + (INT8) the calibration data's hash + options
          + the profile's build settings + the runtime's version.
A stage whose key matches, and whose files still match their sidecars, is reused; force=True rebuilds.
"""
from __future__ import annotations

import hashlib
import json
import re
import subprocess
import time
import traceback
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, TypeVar

from edgerep.errors import UserError, one_line
from edgerep.files.processes import pid_alive
from edgerep.targets import PRECISIONS

if TYPE_CHECKING:
    import numpy as np
    from rich.console import Console
    from torch import nn

    from edgerep.backends.base import Backend
    from edgerep.data.protocol import BatchSource
    from edgerep.data.sources import Preprocess
    from edgerep.files.artifacts import Artifact
    from edgerep.fuse import FuseReport
    from edgerep.models.specs import ModelInfo
    from edgerep.targets import TargetProfile
    from edgerep.tasks.base import Task
    from edgerep.validate.engine import Reference

DEMO_MODEL = "zoo:repvgg_digits"
MANIFEST = "stages.json"
MANIFEST_SCHEMA = 1
LATENCY_SAMPLE = "latency_input.npy"  # the one input the latency stage repeats to each batch size


# --- progress --------------------------------------------------------------------------------------


class StageLog:
    """Prints one status line per stage on stderr (a spinner while it runs on a terminal) and records
    each stage's name, status (built | reused | done | failed) and wall time for the report."""

    def __init__(self, console: Console | None) -> None:
        self.console = console
        self.stages: list[dict[str, Any]] = []

    @contextmanager
    def stage(self, name: str, doing: str) -> Iterator[dict[str, Any]]:
        record: dict[str, Any] = {"name": name, "status": "done", "detail": ""}
        interactive = self.console is not None and self.console.is_terminal
        spinner = (self.console.status(f"[bold]{name}[/]: {doing}...") if interactive and self.console is not None
                   else nullcontext())
        t0 = time.perf_counter()
        try:
            with spinner:
                yield record
        except BaseException:
            record["status"] = "failed"
            record["seconds"] = time.perf_counter() - t0
            self.stages.append(record)
            self._print("[red]x[/]", record)
            raise
        record["seconds"] = time.perf_counter() - t0
        self.stages.append(record)
        mark = {"reused": "[cyan]=[/]", "failed": "[red]x[/]"}.get(record["status"], "[green]✓[/]")
        self._print(mark, record)

    def _print(self, mark: str, record: dict[str, Any]) -> None:
        if self.console is None:
            return
        status = f" [cyan]({record['status']})[/]" if record["status"] in ("reused", "failed") else ""
        from rich.markup import escape

        self.console.print(f"{mark} {record['name']:<15} {escape(str(record['detail']))}{status}"
                           f"  [dim]{record['seconds']:.1f} s[/]",
                           highlight=False, soft_wrap=True)


# --- hashing and the manifest ----------------------------------------------------------------------


def state_sha256(module: nn.Module) -> str:
    """Hash of every parameter and buffer (name, dtype, shape, bytes): the weights actually loaded."""
    import torch

    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def content_key(obj: dict[str, Any]) -> str:
    """A stage's cache key: sha256 of its inputs as canonical JSON."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def read_manifest(out_dir: Path) -> dict[str, Any]:
    path = Path(out_dir) / MANIFEST
    try:
        data: dict[str, Any] = json.loads(path.read_text())
        if data.get("schema") == MANIFEST_SCHEMA:
            return data
    except (OSError, ValueError):
        pass
    return {"schema": MANIFEST_SCHEMA, "onnx": None, "engines": {}}


def write_manifest(out_dir: Path, manifest: dict[str, Any]) -> None:
    from edgerep.files.artifacts import write_json_atomic

    guard_io(lambda: write_json_atomic(Path(out_dir) / MANIFEST, manifest), Path(out_dir))


def remove_stale_partials(out_dir: Path) -> None:
    """Drop temporaries of killed runs (name.partial-<pid>, with a pid that no longer runs)."""
    import shutil

    for path in list(Path(out_dir).rglob("*.partial-*")):
        m = re.search(r"\.partial-(\d+)$", path.name)
        if not m or pid_alive(int(m.group(1))):
            continue
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def versions(*names: str) -> dict[str, str | None]:
    from edgerep.files.artifacts import package_versions

    return package_versions(*names)


# --- stage: check (cheap, before any work) ---------------------------------------------------------


@dataclass
class Plan:
    """What to build: the target profile, its backend and the precisions asked for."""

    profile: TargetProfile
    backend: Backend
    precisions: list[str]


def parse_precisions(value: list[str] | str | None, profile: TargetProfile, backend: Backend) -> list[str]:
    """The precisions to build, checked against the target profile and its backend. A precision the profile
    lists but this machine cannot build for it (profile.unavailable: bf16 without BF16 here) is left out of the
    default and refused by name."""
    if value is None:
        items = list(profile.precisions)
        if not items and profile.unavailable:
            p, why = next(iter(profile.unavailable.items()))
            raise UserError(f"--target {profile.name}: lists only {', '.join(profile.unavailable)}, and {p}: {why}")
    else:
        raw = value.split(",") if isinstance(value, str) else list(value)
        items = [p.strip().lower() for p in raw if p.strip()]
        if not items:
            raise UserError("--precision: empty; use e.g. fp32,fp16,int8")
    for p in items:
        if p not in PRECISIONS:
            raise UserError(f"--precision {p}: unknown precision; use {', '.join(PRECISIONS)}")
        if p in profile.unavailable and p in backend.capabilities.precisions:
            raise UserError(f"--precision {p}: {profile.unavailable[p]}")
        if p not in backend.capabilities.precisions or p not in profile.precisions:
            can = [q for q in profile.precisions if q in backend.capabilities.precisions]
            raise UserError(f"--precision {p}: target {profile.name} ({profile.backend}) builds {', '.join(can)}; "
                            f"pick from those or another --target")
    return list(dict.fromkeys(items))


def plan_stage(target: str, precisions: list[str] | str | None, *, backend_options: dict[str, Any],
               max_drop: float | None, isa: str | None = None, console: Console | None = None,
               static_batch: bool = False) -> Plan:
    """Cheap checks first: a bad target, precision or missing runtime fails before any work.
    `static_batch`: every engine with a fixed batch of 1, timed at batch 1 only (static_profile)."""
    from edgerep.backends import backend_for, backends_taking
    from edgerep.targets import load_target

    profile = load_target(target, isa=isa)
    if static_batch:
        profile = static_profile(profile)
    backend = backend_for(profile)
    chosen = parse_precisions(precisions, profile, backend)
    if max_drop is not None:
        if max_drop < 0:
            raise UserError(f"--max-drop {max_drop:g}: must be >= 0 (points of top-1); pass e.g. --max-drop 0.5")
        if "int8" not in chosen and console is not None:
            console.print(f"[yellow]warning:[/] --max-drop applies to INT8 engines only; "
                          f"{', '.join(chosen)} build without it", highlight=False)
    foreign = sorted(k for k in backend_options if k not in backend.capabilities.options)
    if foreign:
        flag = "--" + foreign[0].replace("_", "-")
        takers = backends_taking(foreign[0])
        where = " or ".join(b.capabilities.title for b in takers) or "no"
        raise UserError(f"{flag}: only for {where} targets, not {profile.name} ({profile.backend}); drop it or pick "
                        f"a target whose backend takes it (`edgerep targets` lists them)")
    reason = backend.available()
    if reason is not None and not backend.capabilities.offline_build:  # TensorRT: device bundle instead
        raise UserError(reason)
    return Plan(profile=profile, backend=backend, precisions=chosen)


def static_profile(profile: TargetProfile) -> TargetProfile:
    """The profile with static shapes at batch 1 (`--static-batch`): a runtime plans a fixed-shape graph once, with
    no shape arithmetic left in it (the Shape/Gather/Unsqueeze a dynamic batch axis adds), which ONNX Runtime above
    all runs faster; its latency is then measured at batch 1 only."""
    from dataclasses import replace

    lat = profile.latency
    deploy = lat.deploy_batch or lat.batch_sizes[0]
    if deploy != 1:
        raise UserError(f"--static-batch: builds engines at batch 1, but target {profile.name} deploys at batch "
                        f"{deploy}; drop --static-batch or use a profile whose [latency] deploy_batch is 1")
    return replace(profile, dynamic_batch=False, latency=replace(lat, batch_sizes=[1], deploy_batch=None))


# --- stage: load -----------------------------------------------------------------------------------


@dataclass
class Loaded:
    info: ModelInfo  # the unfused module and its input facts
    weights_sha256: str  # hash of the weights actually loaded (part of the ONNX key)
    # How to load the same model again (models.load_model's arguments, the input shape resolved): the timing
    # process loads the PyTorch original itself, under the same --trust-pickle, rather than unpickling ours.
    load_args: dict[str, Any] | None = None


def load_stage(log: StageLog, spec: str, *, weights: Path | None, input_shape: tuple[int, ...] | str | None,
               num_classes: int | None,
               trust_pickle: bool, seed: int, data_paths: tuple[Path | None, ...] = ()) -> Loaded:
    """Load the model. `data_paths` (--calib, --val): when the spec gives no input shape and one of them is a
    .npy/.npz of preprocessed inputs, the model takes that shape instead of a guess."""
    with log.stage("load", "loading the model") as st:
        import torch

        from edgerep.data.sources import array_input_shape
        from edgerep.models.specs import load_model

        torch.manual_seed(seed)
        fallback = array_input_shape(*data_paths) if input_shape is None else None
        info = load_model(spec, weights=weights, input_shape=input_shape, num_classes=num_classes,
                          trust_pickle=trust_pickle, fallback_shape=fallback)
        loaded = Loaded(info=info, weights_sha256=state_sha256(info.module),
                        load_args={"spec": spec, "weights": str(weights) if weights is not None else None,
                                   "input_shape": list(info.input_shape), "num_classes": num_classes,
                                   "trust_pickle": trust_pickle, "seed": seed})
        st["detail"] = f"{info.spec} input {'x'.join(map(str, info.input_shape))}"
    return loaded


# --- stage: task ----------------------------------------------------------------------------------


def task_stage(log: StageLog, info: ModelInfo, *, task: str | None, score_threshold: float | None,
               iou_threshold: float | None) -> Any:
    """What accuracy means for this model (edgerep.tasks): --task, else what the model says, else its output.
    A --task that cannot apply fails here, before anything is written."""
    with log.stage("task", "choosing the accuracy metric") as st:
        from edgerep.tasks import resolve_task

        chosen = resolve_task(info, task, score_threshold=score_threshold, iou_threshold=iou_threshold)
        st["detail"] = chosen.detail()
    return chosen



# --- stage: data -----------------------------------------------------------------------------------


@dataclass
class Data:
    calib: BatchSource | None
    val: BatchSource | None  # None: the calibration data validates too

    @property
    def val_source(self) -> BatchSource:
        source = self.val if self.val is not None else self.calib
        if source is None:  # data_stage always opens one of them
            raise ValueError("no validation data: neither --val nor --calib was opened")
        return source


def data_stage(log: StageLog, info: ModelInfo, *, calib: Path | None, val: Path | None, need_calib: bool,
               preprocess: dict[str, Any]) -> Data:
    """Open the calibration and validation data (before any heavy stage, so bad data fails fast).
    `preprocess`: image preprocessing overrides (mean, std, resize, interpolation, channel_order; None = the model's)."""
    with log.stage("data", "opening calibration and validation data") as st:
        data = Data(*_open_data(info, calib, val, need_calib=need_calib, preprocess=preprocess))
        src = data.val_source
        st["detail"] = (f"calib {data.calib.path} ({data.calib.num_samples})" if data.calib is not None else "no calibration") + \
            f", val {src.path} ({src.num_samples}{', labelled' if src.has_labels else ''})"
    return data


def _open_data(info: ModelInfo, calib_path: Path | None, val_path: Path | None, *, need_calib: bool,
               preprocess: dict[str, Any]) -> tuple[BatchSource | None, BatchSource | None]:
    from edgerep.data.sources import default_data_paths, needs_preprocess, open_data, preprocess_for

    shape = tuple(info.input_shape)

    def pre() -> Preprocess:
        chosen: Preprocess = preprocess_for(info, **preprocess)
        return chosen

    if calib_path is None and val_path is None:
        # The shipped data: the demo's digits (calib + labelled val), else calib/images for both.
        calib_path, val_path = default_data_paths(info)
    elif calib_path is None and need_calib:
        calib_path = default_data_paths(info)[0]
    calib = None
    if calib_path is not None:
        calib = open_data(calib_path, pre() if needs_preprocess(calib_path) else None, expect_shape=shape, role="calib")
    val = None
    if val_path is not None:
        val = open_data(val_path, pre() if needs_preprocess(val_path) else None, expect_shape=shape, role="val")
    return calib, val


def prepare_output(out_dir: Path) -> dict[str, Any]:
    """Create the output folder, drop a killed run's temporaries, and return its manifest."""
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"-o {out_dir}: cannot create the output folder ({exc.strerror or exc})") from None
    remove_stale_partials(out_dir)
    return read_manifest(out_dir)


# --- stage: fuse + export (one cached product: the simplified ONNX) --------------------------------


class FuseFailed(UserError):
    """The fuse check failed: a problem of the model/fuser, reported like a gate failure (exit 1)."""

    exit_code = 1


@dataclass
class OnnxProduct:
    sim_path: Path
    sim_sha256: str
    fuse_info: dict[str, Any] | None
    export_info: dict[str, Any] | None


def onnx_key(loaded: Loaded, profile: TargetProfile, *, fuse_tol: float, export_tol: float, simplifier: str) -> str:
    info = loaded.info
    return content_key({
        "spec": info.spec, "weights_sha256": loaded.weights_sha256, "input_shape": list(info.input_shape),
        "num_classes": info.num_classes, "fuse_tol": fuse_tol, "export_tol": export_tol,
        "opset": profile.opset, "dynamic_batch": profile.dynamic_batch, "simplifier": simplifier,
        "versions": versions("edgerep", "torch", "onnx", "onnxsim", "onnxslim"),
    })


def fuse_stage(log: StageLog, info: ModelInfo, *, seed: int, tol: float) -> tuple[nn.Module, dict[str, Any]]:
    """Fuse the re-parameterizable blocks; returns the fused module and the fuse summary. FuseFailed when the
    fused model differs from the original by more than `tol`."""
    with log.stage("fuse", "fusing re-parameterizable blocks") as st:
        import torch

        from edgerep.fuse import fuse

        example = torch.randn(*info.input_shape, generator=torch.Generator().manual_seed(seed))
        fused = fuse(info.module, example)
        fuse_info = _fuse_summary(fused.report)
        st["detail"] = (f"{fuse_info['regions']} region(s) fused (traced by {fused.report.method}), "
                        f"ops {fuse_info['ops_before_total']} -> "
                        f"{fuse_info['ops_after_total']}, max rel err {fused.report.max_rel_err:.2g}")
        if not fused.report.passed(tol):
            st["status"] = "failed"
            raise FuseFailed(f"fuse: the fused model differs from the original (max relative error "
                             f"{fused.report.max_rel_err:.3g} > {tol:g} {fused.report.failure(tol)}); "
                             f"not building engines from it")
    return fused.model, fuse_info


def export_stage(log: StageLog, info: ModelInfo, fused_model: nn.Module, profile: TargetProfile, onnx_dir: Path, *,
                 simplifier: str,
                 tol: float) -> tuple[Path, dict[str, Any]]:
    """Export the fused model to ONNX at the profile's opset and simplify it; returns (sim path, export info)."""
    with log.stage("export", f"exporting ONNX (opset {profile.opset}) and simplifying") as st:
        from edgerep.export.pipeline import export_pipeline

        result = guard_io(lambda: export_pipeline(info, fused_model, onnx_dir, opset=profile.opset,
                                                  dynamic_batch=profile.dynamic_batch,
                                                  simplifier=simplifier, tol=tol), onnx_dir)
        sim_path = Path(result.sim_path)
        worst = max((c["max_rel_err"] for c in result.checks), default=0.0)
        st["status"], st["detail"] = "built", f"{sim_path} ({result.simplifier}, max rel err vs PyTorch {worst:.2g})"
    return sim_path, result.to_dict()


def onnx_stage(log: StageLog, loaded: Loaded, profile: TargetProfile, out_dir: Path, manifest: dict[str, Any], *,
               force: bool, seed: int, fuse_tol: float, export_tol: float, simplifier: str) -> OnnxProduct:
    """Fuse + export, reused when the manifest's key matches and the simplified ONNX is intact."""
    from edgerep.files.onnx_files import onnx_sha256

    key = onnx_key(loaded, profile, fuse_tol=fuse_tol, export_tol=export_tol, simplifier=simplifier)
    onnx_dir = Path(out_dir) / "onnx"
    cached = manifest.get("onnx") or {}
    sim_path = onnx_dir / "model.sim.onnx"
    if not force and cached.get("key") == key and _onnx_intact(sim_path, cached.get("sim_sha256")):
        fuse_info, export_info = cached.get("fuse"), cached.get("export")
        with log.stage("fuse", "reusing") as st:
            st["status"], st["detail"] = "reused", f"{(fuse_info or {}).get('regions', '?')} region(s) fused earlier"
        with log.stage("export", "reusing") as st:
            st["status"], st["detail"] = "reused", str(sim_path)
        return OnnxProduct(sim_path, cached["sim_sha256"], fuse_info, export_info)
    manifest["onnx"] = None  # invalid until the stage finishes
    manifest["engines"] = {}
    fused_model, fuse_info = fuse_stage(log, loaded.info, seed=seed, tol=fuse_tol)
    sim_path, export_info = export_stage(log, loaded.info, fused_model, profile, onnx_dir, simplifier=simplifier,
                                         tol=export_tol)
    sha = onnx_sha256(sim_path)
    manifest["onnx"] = {"key": key, "sim": rel_path(sim_path, out_dir), "sim_sha256": sha,
                        "fuse": fuse_info, "export": export_info}
    write_manifest(out_dir, manifest)
    return OnnxProduct(sim_path, sha, fuse_info, export_info)


def _onnx_intact(path: Path, sha: str | None) -> bool:
    if sha is None or not path.is_file():
        return False
    from edgerep.files.onnx_files import onnx_sha256

    return onnx_sha256(path) == sha


def _fuse_summary(report: FuseReport) -> dict[str, Any]:
    d = report.to_dict()
    regions = d.pop("regions", [])
    unfused = d.pop("unfused", [])
    d["regions"] = len(regions)
    d["unfused"] = unfused
    d["ops_before_total"] = sum((d.get("ops_before") or {}).values())
    d["ops_after_total"] = sum((d.get("ops_after") or {}).values())
    return d


# --- stage: engine (one per precision) -------------------------------------------------------------


def engine_options(backend_options: dict[str, Any], precision: str, *, onnx_path: Path, calib_samples: int | None,
                   calib_method: str | None) -> dict[str, Any]:
    """The backend options of one engine: the shared ones plus (INT8) the calibration overrides and the nodes
    INT8 keeps in float by default (quant.float_policy: a detector's head)."""
    options = dict(backend_options)
    if precision == "int8":
        from edgerep.quant.float_policy import with_float_policy

        if calib_samples is not None:
            options["num_samples"] = calib_samples
        if calib_method is not None:
            options["calib_method"] = calib_method
        options = with_float_policy(onnx_path, options)
    return options


def int8_plan_stage(log: StageLog, *, backend: Backend, onnx: OnnxProduct, profile: TargetProfile, data: Data, model: nn.Module,
                    max_drop: float, options: dict[str, Any], work_dir: Path, val_samples: int | None,
                    val_batch: int, task: Task | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Accuracy-budgeted mixed precision (edgerep.quant.mixed): the options that keep the fewest sensitive layers in
    float until the drop is within `max_drop` while the engine stays `[int8] min_speedup` times faster than FP32
    (timed at the deploy batch), and the plan for the report; its frontier plot goes beside the report
    (int8_frontier.png, FRONTIER_PLOT)."""
    from edgerep.pipeline.recommend import deploy_batch, speedup_interval
    from edgerep.quant.mixed import plan_int8
    from edgerep.quant.plot import plot_frontier

    with log.stage("int8 plan", f"choosing the layers to keep in float (max drop {max_drop:g} pp, "
                                f">= {profile.int8.min_speedup:g}x FP32)") as st:
        plan, int8_plan = plan_int8(backend=backend, onnx_path=onnx.sim_path, profile=profile, calib=data.calib,
                                    val=data.val_source, model=model, max_drop=max_drop, options=options,
                                    work_dir=work_dir, val_samples=val_samples, val_batch=val_batch, task=task,
                                    engine_batch=deploy_batch(profile.to_dict()), interval=speedup_interval)
        picture = plot_frontier(int8_plan, Path(work_dir).parent / FRONTIER_PLOT,
                                title=f"INT8 plan candidates, {backend.name} (green: Pareto frontier, circled: "
                                      f"chosen; Nf = N float layers)")
        int8_plan["frontier_plot"] = FRONTIER_PLOT if picture is not None else None
        st["detail"] = int8_plan_detail(int8_plan)
        if not int8_plan.get("met"):
            st["status"] = "failed"
    return plan, int8_plan


FRONTIER_PLOT = "int8_frontier.png"


def int8_plan_detail(plan: dict[str, Any]) -> str:
    """The stage line of an INT8 plan: float layers, drop ± its error, speed-up, and any verdict or warning."""
    chosen = plan["chosen"]
    se = chosen["metrics"].get("drop_se")
    speed = f" at {chosen['speedup']:.2f}x FP32" if chosen.get("speedup") is not None else ""
    text = (f"{len(plan['float_layers'])} layer(s) in float, drop {chosen['metrics']['drop']:.2f}"
            + (f" ± {se:.2f}" if se is not None else "") + f" pp of {plan.get('drop_metric')}{speed} "
            f"({chosen['source']})")
    if not plan.get("met") and plan.get("verdict"):
        text += f"; NOT met: {plan['verdict']}"
    return "; ".join([text, *[f"warning: {w}" for w in plan.get("warnings") or []]])


def int8_plan_gate(record: dict[str, Any]) -> None:
    """An INT8 engine whose plan is not met fails its gate with the plan's one-line verdict (the engine is still
    the best plan that is fast enough, validated and timed, so the report shows what was found)."""
    plan = record.get("int8_plan")
    if not isinstance(plan, dict) or plan.get("met", True) or record.get("status") != "ok":
        return
    verdict = plan.get("verdict") or f"INT8 plan not within --max-drop {plan.get('max_drop')}"
    reason = record.get("reason") if record.get("passed") is False else None
    record.update(passed=False, reason=f"{verdict}; {reason}" if reason else verdict)


HEAD_SAMPLES = 200  # calibration images the head search scores its probes on


def head_plan_stage(log: StageLog, *, backend: Backend, onnx: OnnxProduct, profile: TargetProfile, data: Data,
                    model: nn.Module, task: Task, options: dict[str, Any], out_dir: Path, manifest: dict[str, Any],
                    force: bool, user_options: dict[str, Any] | None = None
                    ) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """A detector's INT8 head by measurement (quant.head_islands): the options with the head nodes that pay
    their way in float, and the plan for the report (None when there is nothing to decide: no head islands, the
    user's own head_float_nodes, or no calibration data). Cached in the manifest by everything it depends on."""
    from edgerep.quant.float_policy import HEAD_OPTION
    from edgerep.quant.head_islands import head_islands

    # TensorRT: the engine is built on the device, where its head cannot be measured from here (fixed rule)
    if (HEAD_OPTION in (user_options or {}) or data.calib is None or backend.capabilities.offline_build
            or not head_islands(onnx.sim_path)[1]):
        return options, None
    from edgerep.pipeline.recommend import deploy_batch

    base = {k: v for k, v in options.items() if k != HEAD_OPTION}
    engine_batch = deploy_batch(profile.to_dict())  # the probes are timed where the engine ships
    key = content_key({"schema": 1, "onnx_sha256": onnx.sim_sha256, "backend": backend.name, "options": base,
                       "calib_sha256": data.calib.sha256(), "profile": build_settings(profile),
                       "latency": profile.to_dict().get("latency"), "engine_batch": engine_batch,
                       "versions": versions("edgerep", *backend.capabilities.packages)})
    cached = (manifest.get("head_plans") or {}).get(backend.name) or {}
    with log.stage("int8 head", "measuring which head nodes pay their way in float") as st:
        if not force and cached.get("key") == key:
            floats, plan = cached["floats"], cached["plan"]
            st["status"] = "reused"
        else:
            from edgerep.pipeline.recommend import speedup_interval
            from edgerep.quant.head_islands import choose_head_floats
            from edgerep.validate.engine import compute_reference

            reference = compute_reference(model, data.calib, batch_size=32, limit=HEAD_SAMPLES, task=task)
            if reference.degenerate or not reference.scorer.can_budget(reference):
                st["status"], st["detail"] = "done", f"fixed rule kept (nothing to measure: {reference.degenerate})"
                return options, None
            try:
                floats, plan = choose_head_floats(backend=backend, onnx_path=onnx.sim_path, profile=profile,
                                                  calib=data.calib, reference=reference, options=base,
                                                  work_dir=Path(out_dir) / "quant" / "head",
                                                  sample=latency_sample(reference), engine_batch=engine_batch,
                                                  interval=speedup_interval)
            except UserError:
                raise
            except Exception as exc:  # a probe that crashes leaves the fixed rule, and says so
                save_traceback(Path(out_dir), f"int8-head-{backend.name}")
                st["status"], st["detail"] = "failed", f"fixed rule kept: {one_line(exc)}"
                return options, {"error": one_line(exc), "kept": None}
            manifest.setdefault("head_plans", {})[backend.name] = {"key": key, "floats": floats, "plan": plan}
            write_manifest(out_dir, manifest)
        st["detail"] = (f"{len(plan['kept'])} of {len(plan['candidates'])} head node(s) kept in float "
                        f"(base drop {plan.get('base_drop', 0):.2f} pts)")
    return {**base, HEAD_OPTION: floats}, plan


def engine_key(onnx: OnnxProduct, backend: Backend, precision: str, options: dict[str, Any], calib: BatchSource | None,
               profile: TargetProfile) -> str:
    return content_key({
        "onnx_sha256": onnx.sim_sha256, "backend": backend.name, "precision": precision, "options": options,
        "calib_sha256": calib.sha256() if precision == "int8" and calib is not None else None,
        "profile": build_settings(profile), "versions": versions("edgerep", *backend.capabilities.packages),
    })


def engine_stage(log: StageLog, backend: Backend, onnx: OnnxProduct, precision: str, profile: TargetProfile,
                 calib: BatchSource | None,
                 options: dict[str, Any], out_dir: Path, manifest: dict[str, Any], *, force: bool) -> Any:
    """Build (or reuse) one engine; returns its Artifact (status failed with a reason when the build crashed)."""
    from edgerep.files.artifacts import load_artifact, read_sidecar

    key = engine_key(onnx, backend, precision, options, calib, profile)
    name = f"{backend.name}:{precision}"
    with log.stage(f"build {precision}", f"building the {backend.name} {precision} engine") as st:
        prior = manifest["engines"].get(name) or {}
        path = Path(out_dir) / prior["path"] if prior.get("path") else None
        if not force and prior.get("key") == key and path is not None and read_sidecar(path) is not None:
            artifact = load_artifact(path)
            st["status"], st["detail"] = "reused", str(path)
            return artifact
        manifest["engines"].pop(name, None)
        artifact = _build_engine(backend, onnx.sim_path, precision, Path(out_dir) / "engines", profile, calib, options)
        st["status"] = "built" if artifact.status == "ok" else artifact.status
        st["detail"] = str(artifact.path) if artifact.status == "ok" else f"{artifact.status}: {artifact.reason}"
        if artifact.status == "ok":
            manifest["engines"][name] = {"key": key, "path": rel_path(Path(artifact.path), out_dir)}
            write_manifest(out_dir, manifest)
    return artifact


def _build_engine(backend: Backend, onnx_path: Path, precision: str, out_dir: Path, profile: TargetProfile,
                  calib: BatchSource | None,
                  options: dict[str, Any]) -> Any:
    from edgerep.files.artifacts import Artifact

    try:
        return backend.build(onnx_path, precision, out_dir=out_dir, profile=profile,
                             calib=calib if precision == "int8" else None, options=options or None)
    except UserError:
        raise
    except OSError as exc:
        raise UserError(io_message(exc, out_dir)) from None
    except Exception as exc:  # a converter/quantizer crash fails this engine, the others still build
        save_traceback(out_dir.parent, f"build-{backend.name}-{precision}")
        return Artifact(backend=backend.name, precision=precision, path=None, status="failed",
                        reason=f"build failed: {one_line(exc)}")


def engine_record(artifact: Artifact) -> dict[str, Any]:
    """The engine's row of report.json before validation (schema keys from report.engine_entry)."""
    from edgerep.pipeline.report import engine_entry

    return engine_entry(artifact.backend, artifact.precision, path=str(artifact.path) if artifact.path else None,
                        status=artifact.status, reason=artifact.reason,
                        sidecar=str(artifact.sidecar) if artifact.sidecar else None,
                        settings=(artifact.info or {}).get("settings"))


def build_settings(profile: TargetProfile) -> dict[str, Any]:
    """The parts of a profile that change an engine (not the gates or the latency settings)."""
    d = profile.to_dict()
    return {k: d.get(k) for k in ("backend", "opset", "dynamic_batch", "calibration", "tensorrt")}


# --- stage: reference ------------------------------------------------------------------------------


def reference_stage(log: StageLog, model: nn.Module, source: BatchSource, *, batch_size: int, limit: int | None,
                    task: Task | None = None) -> Reference:
    """The unfused PyTorch model's outputs on the validation data, and what its task needs from them (for a
    detector, its own detections): validate.Reference. `task`: a tasks.Task (None: inferred from the outputs)."""
    from edgerep.validate.engine import compute_reference

    with log.stage("reference", "running the unfused PyTorch model on the validation data") as st:
        reference = compute_reference(model, source, batch_size=batch_size, limit=limit, task=task)
        st["detail"] = reference_detail(reference)
    return reference


def reference_detail(reference: Reference) -> str:
    text = f"{reference.outputs.shape[0]} samples" + reference.scorer.reference_detail(reference)
    return text + (f"; {reference.degenerate}" if reference.degenerate else "")


def latency_sample(reference: Reference) -> np.ndarray:
    """The one input (batch 1) the latency stage repeats to each batch size: the first validation sample."""
    return next(reference.source.iter_batches(1, limit=1))[0]


# --- stage: validate (accuracy, and latency unless it is scheduled apart) --------------------------


def validate_stage(log: StageLog, backend: Backend, artifact: Artifact, record: dict[str, Any], reference: Reference,
                   profile: TargetProfile,
                   precision: str, *, engine_batch: int, out_dir: Path) -> None:
    """Run the engine against the reference: accuracy and gate, into `record` (latency comes later, every engine
    side by side: latency_stage). A crash of the engine fails this engine only (status failed, traceback under
    logs/)."""
    from edgerep.validate.engine import runner_accuracy

    with log.stage(f"validate {precision}", f"validating the {precision} engine") as st:
        try:
            with backend.load(artifact) as runner:
                record.update(runner_accuracy(runner, reference, engine_batch=engine_batch,
                                              gate=reference.scorer.gate(profile, precision)))
                if profile.tensorrt is None:
                    isa_stage(artifact, record, reference, profile, engine_batch)
        except UserError:
            raise
        except Exception as exc:  # the engine ran but crashed: a failed engine, not a failed build
            record.update(status="failed", passed=False, reason=f"validation failed: {one_line(exc)}")
            save_traceback(Path(out_dir), f"validate-{backend.name}-{precision}")
        st["status"] = "done" if record.get("passed") else "failed"
        st["detail"] = _validate_detail(record)


def isa_stage(artifact: Artifact, record: dict[str, Any], reference: Reference, profile: TargetProfile,
              engine_batch: int) -> None:
    """Where the engine was validated, and a second run on the target's ISA where this machine can give one
    (edgerep.validate.isa_check); a failed gate there fails the engine. The sidecar keeps both ISAs."""
    from edgerep.cpu.isa import target_isa
    from edgerep.files.artifacts import update_sidecar
    from edgerep.validate.engine import check_on_target_isa

    isa = check_on_target_isa(record, artifact, reference, target=target_isa(profile), engine_batch=engine_batch,
                              gate=reference.scorer.gate(profile, artifact.precision))
    if artifact.path is None:  # a device-built engine has nothing here to re-check
        return
    update_sidecar(Path(artifact.path), validated={"isa": isa["measured_on"], "target_isa": isa["target"],
                                                   "method": isa["method"], "passed": record.get("passed"),
                                                   "accuracy": record.get("accuracy")})


def latency_stage(log: StageLog, records: list[dict[str, Any]], sample: np.ndarray, profile: TargetProfile, *,
                  engine_batch: int, modules: dict[str, Any] | None = None,
                  fixed_batch: dict[str, int] | None = None) -> None:
    """Time every built engine (`records` of report.json, with their paths; a baseline row is keyed by its
    `name`, an engine by its precision) side by side on `sample`, into each record: interleaved rounds in a fresh
    process, after every engine is validated (validate.timing). `modules`: name -> how to load a PyTorch model timed with
    them (the `pytorch` baseline); `fixed_batch`: name -> the one batch size an engine takes. A timing that fails
    leaves the accuracy results as they are and says why in each record's `latency_note`."""
    from edgerep.validate.timing import time_engines

    timed = {timing_name(r): Path(r["path"]) for r in records if r.get("status") == "ok" and r.get("path")}
    modules = {n: m for n, m in (modules or {}).items() if any(timing_name(r) == n for r in records)}
    if not timed and not modules:
        return
    names = [*timed, *modules]
    lat = profile.latency
    with log.stage("latency", f"timing {', '.join(names)} side by side ({lat.rounds} interleaved rounds)") as st:
        try:
            fields = time_engines(timed, sample, batch_sizes=list(lat.batch_sizes), engine_batch=engine_batch,
                                  dynamic_batch=profile.dynamic_batch, rounds=lat.rounds, warmup=lat.warmup,
                                  iterations=lat.iterations, modules=modules, fixed_batch=fixed_batch)
        except (OSError, RuntimeError, subprocess.TimeoutExpired) as exc:
            for r in records:
                if timing_name(r) in names:
                    r["latency_note"] = f"latency not measured: {one_line(exc)}"
            st["status"], st["detail"] = "failed", f"latency not measured: {one_line(exc)}"
            return
        for r in records:
            if timing_name(r) in fields:
                r.update(fields[timing_name(r)])
        st["detail"] = ", ".join(_latency_detail(n, fields[n]) for n in fields)


def timing_name(record: dict[str, Any]) -> str:
    """A record's name in the latency stage: a baseline's `name`, else its precision."""
    return str(record.get("name") or record["precision"])


def _latency_detail(precision: str, fields: dict[str, Any]) -> str:
    if "latency_ms" not in fields:
        return f"{precision} {fields.get('latency_note') or 'not measured'}"
    lat = fields["latency_ms"]
    if lat.get("p50") is None:
        return f"{precision} not measured"
    low, high = lat.get("spread") or (lat["p50"], lat["p50"])
    return f"{precision} p50 {lat['p50']:.3f} ms ({low:.3f}-{high:.3f})"


def _validate_detail(record: dict[str, Any]) -> str:
    if record["status"] != "ok":
        return f"failed: {record.get('reason')}"
    from edgerep.tasks import get_task

    acc, lat = record["accuracy"], record["latency_ms"]
    return (get_task(acc.get("task") or "classify").summary(acc)
            + (f", p50 {lat['p50']:.3f} ms" if lat.get("p50") is not None else "")
            + ("" if record.get("passed") else f"; {record.get('reason')}" if record.get("passed") is None
               else f"; GATE FAILED: {record.get('reason')}"))


def engine_batch_for(profile: TargetProfile, info: ModelInfo, val_batch: int) -> int:
    """The batch the engine runs validation at: val_batch when its batch is dynamic, else the model's."""
    return val_batch if profile.dynamic_batch else int(info.input_shape[0])


# --- stage: report ---------------------------------------------------------------------------------


def failed_engines(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Engines that fail the build: skipped engines (built on the device) and prediction rows do not."""
    return [e for e in report["engines"] if not e.get("prediction") and e["status"] != "skipped"
            and (e["status"] != "ok" or not e.get("passed"))]


def report_stage(out_dir: Path, report: dict[str, Any]) -> tuple[Path, Path, Path]:
    """The engine to ship (`recommended`, edgerep.pipeline.recommend: it needs the latencies, so it is decided here),
    then report.json, report.md and the plot (atomically); returns their paths."""
    from edgerep.pipeline.recommend import recommend
    from edgerep.pipeline.report import write_report

    report["recommended"] = recommend(report, report.get("target"))
    if report.get("baselines"):
        from edgerep.pipeline.comparisons import comparisons
        from edgerep.pipeline.recommend import deploy_batch

        report["comparisons"] = comparisons(report["engines"], report["baselines"],
                                            batch=deploy_batch(report.get("target")))
    return guard_io(lambda: write_report(Path(out_dir), report), Path(out_dir))


# --- small helpers ---------------------------------------------------------------------------------


def rel_path(path: Path, base: Path) -> str:
    """A path relative to the output folder, so a moved folder still resumes."""
    try:
        return str(Path(path).resolve().relative_to(Path(base).resolve()))
    except ValueError:
        return str(Path(path).resolve())


T = TypeVar("T")


def guard_io(call: Callable[[], T], where: Path) -> T:
    """Turn an OS-level write failure (full disk, unwritable folder) into a one-line UserError."""
    try:
        return call()
    except OSError as exc:
        raise UserError(io_message(exc, where)) from None


def io_message(exc: OSError, where: Path) -> str:
    target = exc.filename or where
    return (f"{target}: cannot write ({exc.strerror or type(exc).__name__}); free space or fix permissions and "
            f"re-run - finished stages are kept and reused")


def save_traceback(out_dir: Path, name: str) -> None:
    try:
        (Path(out_dir) / "logs").mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / "logs" / f"{name}.txt").write_text(traceback.format_exc())
    except OSError:
        pass



