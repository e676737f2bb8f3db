"""`edgerep matrix`: models x targets x precisions. This module holds the matrix file (parsed and validated),
its cells (one model on one target, built at several precisions) with their content keys, and the two pieces
of work a cell is made of:

  build_cell    edgerep.pipeline.build.build() without timing: load, data, fuse, export, engines, reference, accuracy,
                report. Cells run it in parallel (a local process pool or Ray tasks, edgerep.matrix.executors).
  time_cell     stages.latency_stage on each engine of a built cell, scheduled one cell at a time per machine
                so no timing shares the cores with another cell's work.

A cell is reused without any work when its key (every input: options, the files they name, the target profile,
the precisions, package versions) matches its cell.json and the cell finished; otherwise build() runs, and its
own content-keyed stages reuse whatever did not change (after a kill, only the missing engines are built).

Matrix file (TOML), e.g. examples/matrix.toml:

    targets = ["openvino-cpu", "onnxruntime-cpu"]    # profile names or .toml files (relative to this file)
    precisions = ["fp32", "int8"]                     # optional; default: every precision of each target
    [defaults]                                        # optional: options every model gets unless it sets its own
    val_samples = 200
    [ray]                                             # optional: resources declared per cell on Ray
    num_cpus = 1
    num_gpus = 1                                      # TensorRT cells only; 0: device bundles on CPU nodes
    [[models]]
    spec = "zoo:repvgg_digits"                        # required; any `edgerep build --model` spec
    name = "repvgg"                                   # optional; default from the spec
"""
from __future__ import annotations

import hashlib
import json
import re
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from edgerep.errors import UserError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

CELL_STATE = "cell.json"
CELL_SCHEMA = 1

# Model keys -> BuildOptions fields, with the TOML type each takes.
MODEL_OPTIONS: dict[str, tuple[str, type | tuple[type, ...]]] = {
    "spec": ("model", str), "weights": ("weights", str), "input_shape": ("input_shape", str),
    "num_classes": ("num_classes", int), "trust_pickle": ("trust_pickle", bool), "calib": ("calib", str),
    "val": ("val", str), "calib_samples": ("calib_samples", int), "calib_method": ("calib_method", str),
    "val_samples": ("val_samples", int), "val_batch": ("val_batch", int), "mean": ("mean", list),
    "std": ("std", list), "resize": ("resize", int), "interpolation": ("interpolation", str),
    "channel_order": ("channel_order", str), "simplifier": ("simplifier", str), "seed": ("seed", int),
    "max_drop": ("max_drop", (int, float)), "fuse_tol": ("fuse_tol", (int, float)),
    "export_tol": ("export_tol", (int, float)),
    # INT8: layers kept in float on every backend, as `edgerep build --keep-float` (ONNX node names or module paths)
    "keep_float": ("keep_float", list),
    # what accuracy means for this model (edgerep.tasks), and the detect thresholds
    "task": ("task", str), "score_threshold": ("score_threshold", (int, float)),
    "iou_threshold": ("iou_threshold", (int, float)),
}
PATH_OPTIONS = ("weights", "calib", "val")
TOP_KEYS = ("targets", "precisions", "defaults", "models", "ray")
RAY_KEYS = {"num_cpus": (int, float), "num_gpus": (int, float)}
STATE_RECHECKED_BYTES = 1 << 20  # finish_cell re-hashes the listed files up to this size (the rewritten reports)


@dataclass
class Cell:
    """One model on one target: one build of its precisions."""

    model: str  # the model's name in the matrix
    target: str  # the profile's name
    target_arg: str  # what build() gets: a profile name or an absolute .toml path
    backend: str
    precisions: list[str]  # the ones this target builds
    unsupported: list[str]  # asked for by the matrix, not built by this target
    options: dict[str, Any]  # BuildOptions keywords (paths absolute)
    key: str = ""

    @property
    def name(self) -> str:
        return f"{self.model}--{self.target}"


@dataclass
class Matrix:
    path: Path
    models: list[str]
    targets: list[str]
    precisions: list[str]  # the union, in a stable order
    cells: list[Cell]
    ray: dict[str, float] = field(default_factory=dict)


# --- the matrix file -------------------------------------------------------------------------------


def load_matrix(path: Path | str) -> Matrix:
    """Parse and validate a matrix file; every problem is one UserError naming the file and the key."""
    from edgerep.backends import backend_for
    from edgerep.targets import PRECISIONS, load_target

    path = Path(path)
    shipped = _shipped_example(path.name) if not path.is_file() and path.parent.name == "examples" else None
    if shipped is not None:
        path = shipped  # run from another folder than the checkout
    if not path.is_file():
        raise UserError(f"{path}: matrix file not found; pass a .toml like examples/matrix.toml")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise UserError(f"{path}: not a readable TOML file ({exc})") from None
    base = path.resolve().parent

    def fail(key: str, what: str) -> UserError:
        return UserError(f"{path}: {key}: {what}")

    for key in data:
        if key not in TOP_KEYS:
            raise fail(key, f"unknown key; the matrix takes {', '.join(TOP_KEYS)}")
    targets_raw = data.get("targets")
    if not isinstance(targets_raw, list) or not targets_raw or not all(isinstance(t, str) for t in targets_raw):
        raise fail("targets", 'required: a list of profile names or .toml files, e.g. ["openvino-cpu"]')
    asked = data.get("precisions")
    if asked is not None:
        if not isinstance(asked, list) or not asked or not all(isinstance(p, str) for p in asked):
            raise fail("precisions", 'a list like ["fp32", "int8"]')
        for i, p in enumerate(asked):
            if p.lower() not in PRECISIONS:
                raise fail(f"precisions[{i}]", f"{p!r} is not a precision; use {', '.join(PRECISIONS)}")
        asked = list(dict.fromkeys(p.lower() for p in asked))
    ray = data.get("ray", {})
    if not isinstance(ray, dict):
        raise fail("ray", "a table like [ray] num_cpus = 1")
    for key, value in ray.items():
        if key not in RAY_KEYS:
            raise fail(f"ray.{key}", f"unknown key; [ray] takes {', '.join(RAY_KEYS)}")
        if isinstance(value, bool) or not isinstance(value, RAY_KEYS[key]) or value < 0:
            raise fail(f"ray.{key}", f"{value!r}: expected a number >= 0")
    defaults = data.get("defaults", {})
    if not isinstance(defaults, dict):
        raise fail("defaults", "a table of model options")
    _check_options(defaults, "defaults", fail, allow={k for k in MODEL_OPTIONS if k != "spec"})

    profiles = []
    for i, text in enumerate(targets_raw):
        arg = str((base / text).resolve()) if text.endswith(".toml") else text
        try:
            profile = load_target(arg)
        except UserError as exc:
            raise fail(f"targets[{i}]", f"{text!r}: {re.sub(r'^--target [^:]*: ', '', exc.message)}") from None
        profiles.append((arg, profile))
    names = [p.name for _, p in profiles]
    if len(set(names)) != len(names):
        raise fail("targets", "a target is listed twice; list each once")

    models_raw = data.get("models")
    if not isinstance(models_raw, list) or not models_raw or not all(isinstance(m, dict) for m in models_raw):
        raise fail("models", 'required: one or more [[models]] tables with spec = "zoo:..."')
    models: list[tuple[str, dict[str, Any]]] = []
    for i, entry in enumerate(models_raw):
        where = f"models[{i}]"
        _check_options(entry, where, fail, allow=set(MODEL_OPTIONS) | {"name"})
        if "spec" not in entry:
            raise fail(f"{where}.spec", 'missing: the model, e.g. spec = "zoo:repvgg_digits"')
        name = entry.get("name", _spec_name(entry["spec"]))
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            raise fail(f"{where}.name", f"{name!r}: use letters, digits, '_', '.', '-'")
        if name in (n for n, _ in models):
            raise fail(f"{where}.name", f"{name!r} is used twice; give each model its own name")
        merged = {**defaults, **{k: v for k, v in entry.items() if k != "name"}}
        models.append((name, _build_options(merged, base)))

    cells = []
    for name, options in models:
        for arg, profile in profiles:
            can = [p for p in profile.precisions if p in backend_for(profile).capabilities.precisions]
            chosen = [p for p in (asked or can) if p in can]
            cells.append(Cell(model=name, target=profile.name, target_arg=arg, backend=profile.backend,
                              precisions=chosen, unsupported=[p for p in (asked or []) if p not in can],
                              options=options))
    if asked and not any(c.precisions for c in cells):
        raise fail("precisions", f"none of the targets builds {', '.join(asked)}")
    union = [p for p in PRECISIONS if any(p in c.precisions or p in c.unsupported for c in cells)]
    return Matrix(path=path, models=[n for n, _ in models], targets=names, precisions=union, cells=cells,
                  ray={k: float(v) for k, v in ray.items()})


def _shipped_example(name: str) -> Path | None:
    package_dir = Path(__file__).resolve().parents[1]  # edgerep/
    for folder in (package_dir / "examples", package_dir.parent / "examples"):
        if (folder / name).is_file():
            return folder / name
    return None


def _check_options(table: dict[str, Any], where: str, fail: Any, *, allow: set[str]) -> None:
    for key, value in table.items():
        if key not in allow:
            raise fail(f"{where}.{key}", f"unknown key; a model takes {', '.join(sorted(allow))}")
        if key == "name":
            continue
        kind = MODEL_OPTIONS[key][1]
        if (isinstance(value, bool) and kind is not bool) or not isinstance(value, kind):
            names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            raise fail(f"{where}.{key}", f"{value!r}: expected {names}")
        numbers = isinstance(value, list) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        if key in ("mean", "std") and not numbers:
            raise fail(f"{where}.{key}", f"{value!r}: expected a list of numbers like [0.485, 0.456, 0.406]")
        if key == "keep_float" and not (isinstance(value, list) and all(isinstance(v, str) and v for v in value)):
            raise fail(f"{where}.{key}", f"{value!r}: expected a list of layer names like [\"stages.1.0\"]")


def _build_options(entry: dict[str, Any], base: Path) -> dict[str, Any]:
    """Matrix keys -> BuildOptions keywords; relative paths are relative to the matrix file."""
    options: dict[str, Any] = {}
    for key, value in entry.items():
        field_name = MODEL_OPTIONS[key][0]
        if key in PATH_OPTIONS:
            value = str((base / value).resolve())
        elif key == "spec" and (value.endswith(".pt2") or value.endswith(".pt")) and (base / value).exists():
            value = str((base / value).resolve())
        elif key in ("mean", "std"):
            value = tuple(float(v) for v in value)
        elif key == "keep_float":
            value = list(value)
        options[field_name] = value
    return options


def _spec_name(spec: Any) -> str:
    text = str(spec).split("/")[-1].split(":")[-1]
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text) or "model"


# --- content keys ----------------------------------------------------------------------------------


def cell_keys(matrix: Matrix) -> None:
    """Fill each cell's key: a hash of every input of its build (options, the content of the files they name, the
    target profile, the precisions, the shipped assets and package versions). Files are hashed once per run."""
    from edgerep.pipeline.stages import content_key, versions

    memo: dict[str, str] = {}
    shipped = _shipped_assets_sha256(memo)
    vers = versions("edgerep", "torch", "onnx", "onnxsim", "onnxslim", "onnxruntime", "openvino", "nncf", "timm",
                    "tensorrt")
    from edgerep.targets import load_target

    profiles = {c.target_arg: load_target(c.target_arg).to_dict() for c in matrix.cells}
    for cell in matrix.cells:
        files = {k: _path_sha256(Path(cell.options[k]), memo) for k in ("weights", "calib", "val", "model")
                 if isinstance(cell.options.get(k), str) and Path(cell.options[k]).exists()}
        code = _factory_source_sha256(cell.options.get("model"), memo)
        cell.key = content_key({"options": cell.options, "files": files, "factory_source": code,
                                "profile": profiles[cell.target_arg], "precisions": cell.precisions,
                                "shipped": shipped, "versions": vers, "schema": CELL_SCHEMA})


def _path_sha256(path: Path, memo: dict[str, str]) -> str:
    from edgerep.files.artifacts import file_sha256

    key = str(path.resolve())
    if key not in memo:
        if path.is_dir():
            h = hashlib.sha256()
            for f in sorted(p for p in path.rglob("*") if p.is_file()):
                h.update(str(f.relative_to(path)).encode() + b"\0" + bytes.fromhex(file_sha256(f)))
            memo[key] = h.hexdigest()
        else:
            memo[key] = file_sha256(path)
    return memo[key]


def _shipped_assets_sha256(memo: dict[str, str]) -> str:
    """The demo weights and data inside the package: a model that uses them changes when they do."""
    from edgerep.data.sources import calib_root

    h = hashlib.sha256()
    for folder in (Path(__file__).resolve().parents[1] / "zoo" / "weights", calib_root()):
        if folder.is_dir():
            h.update(_path_sha256(folder, memo).encode())
    return h.hexdigest()


def _factory_source_sha256(spec: Any, memo: dict[str, str]) -> str | None:
    """For a `pkg.module:factory` spec, the module's source file (the model's code is an input too)."""
    if not isinstance(spec, str) or spec.startswith(("zoo:", "timm:")) or ":" not in spec or Path(spec).exists():
        return None
    import importlib.util

    try:
        found = importlib.util.find_spec(spec.split(":", 1)[0])
    except (ImportError, ValueError):
        return None
    origin = getattr(found, "origin", None)
    return _path_sha256(Path(origin), memo) if origin and Path(origin).is_file() else None


# --- cell state ------------------------------------------------------------------------------------


def read_cell_state(cell_dir: Path) -> dict[str, Any] | None:
    try:
        state = json.loads((Path(cell_dir) / CELL_STATE).read_text())
    except (OSError, ValueError):
        return None
    return state if state.get("schema") == CELL_SCHEMA else None


def write_cell_state(cell_dir: Path, state: dict[str, Any]) -> None:
    from edgerep.files.artifacts import write_json_atomic

    write_json_atomic(Path(cell_dir) / CELL_STATE, {"schema": CELL_SCHEMA, **state})


def reusable(cell: Cell, cell_dir: Path, *, force: bool) -> dict[str, Any] | None:
    """The finished state of a cell whose key still matches (its report in place), else None. Results that
    follow from the inputs (passed, a failed gate or fuse check) are kept; errors and crashes are retried."""
    if force:
        return None
    state = read_cell_state(cell_dir)
    if state is None or state.get("key") != cell.key or state.get("phase") != "done":
        return None
    if state.get("status") in ("error", "crashed"):  # bad input or a crash may be fixed outside the key: retry
        return None
    if state.get("report") and not (Path(cell_dir) / "report.json").is_file():
        return None
    for entry in state.get("files") or []:  # delivered by Ray: every file it listed is still here, whole
        path = Path(cell_dir) / entry["path"]
        if not path.is_file() or path.stat().st_size != entry["size"]:
            return None
    return state


# --- the work of one cell (runs in a worker process or a Ray task) ---------------------------------


def build_cell(job: dict[str, Any]) -> dict[str, Any]:
    """Build one cell without timing: edgerep.pipeline.build.build(..., measure_latency=False) into job["cell_dir"].

    Never raises for a problem of the cell: bad input, a failed gate and a crash come back as the outcome's
    status (error | failed | crashed) with a one-line reason, so the other cells go on. What the runtimes print
    (NNCF's progress bars, converter warnings) goes to the cell's logs/build.log, not the matrix's terminal."""
    from edgerep.cpu.threads import cap_threads

    if job.get("threads"):
        cap_threads(job["threads"])
    cell_dir = Path(job["cell_dir"])
    with _output_to(cell_dir / "logs" / "build.log"):
        return _build_cell(job, cell_dir)


def _build_cell(job: dict[str, Any], cell_dir: Path) -> dict[str, Any]:
    from edgerep.errors import one_line
    from edgerep.pipeline.build import BuildOptions, build
    from edgerep.pipeline.stages import save_traceback

    t0 = time.perf_counter()
    outcome: dict[str, Any] = {"cell": job["cell"], "key": job["key"], "status": "ok", "reason": None,
                               "report": None, "engine_batch": None, "stages": [], "node": _node_name()}
    try:
        if not job["precisions"]:
            raise UserError(f"target {job['target_arg']} builds none of the precisions asked for")
        result = build(BuildOptions(**job["options"], target=job["target_arg"], precisions=job["precisions"],
                                    output=cell_dir, force=job.get("force", False)),
                       console=None, measure_latency=False)
        report = result.report
        outcome["report"] = "report.json"
        outcome["stages"] = report.get("stages", [])
        shape = (report.get("model") or {}).get("input_shape") or [1]
        dynamic = bool((report.get("target") or {}).get("dynamic_batch"))  # as stages.engine_batch_for
        outcome["engine_batch"] = int(job["options"].get("val_batch", 32)) if dynamic else int(shape[0])
        if result.exit_code != 0:
            from edgerep.pipeline.stages import failed_engines

            bad = failed_engines(report)
            outcome["status"] = "failed"
            outcome["reason"] = "; ".join(f"{e['precision']}: {e.get('reason')}" for e in bad)
    except UserError as exc:  # bad input for this cell, or the fuse check failed (exit code 1)
        outcome["status"] = "failed" if exc.exit_code == 1 else "error"
        outcome["reason"] = exc.message
    except Exception as exc:  # a bug or a runtime crash: this cell fails, the matrix goes on
        outcome["status"], outcome["reason"] = "crashed", one_line(exc)
        save_traceback(cell_dir, "cell")
    outcome["seconds"] = time.perf_counter() - t0
    try:
        write_cell_state(cell_dir, {**outcome, "phase": "accuracy" if outcome["report"] else "done"})
    except OSError as exc:
        outcome["status"], outcome["reason"] = "error", f"{cell_dir}: cannot write ({exc.strerror or exc})"
    return outcome


def time_cell(job: dict[str, Any]) -> dict[str, Any]:
    """Time every built engine of one cell side by side (stages.latency_stage). Run with the machine to itself: no thread
    cap, one cell at a time. Returns {"latency": {precision: fields}, "stages": [...], "node", "reason"}."""
    import numpy as np

    from edgerep.errors import one_line
    from edgerep.pipeline.stages import LATENCY_SAMPLE, StageLog, latency_stage
    from edgerep.targets import load_target

    cell_dir = Path(job["cell_dir"])
    log = StageLog(None)
    fields = ("latency_ms", "latency_batch_size", "latency_by_batch", "throughput_ips")
    result: dict[str, Any] = {"cell": job["cell"], "latency": {}, "stages": [], "node": _node_name(), "reason": None}
    try:
        profile = load_target(job["target_arg"])
        sample = np.load(cell_dir / LATENCY_SAMPLE)
        records = [dict(eng) for eng in job["engines"]]
        latency_stage(log, records, sample, profile, engine_batch=job["engine_batch"])
        for record in records:
            if "latency_by_batch" in record:
                result["latency"][record["precision"]] = {k: record.get(k) for k in fields}
            elif record.get("latency_note"):
                result["reason"] = record["latency_note"]
    except Exception as exc:  # timing failed: the accuracy results stand, the latency stays empty
        result["reason"] = f"latency not measured: {one_line(exc)}"
    result["stages"] = log.stages
    return result


def timed_engines(report_path: Path) -> list[dict[str, Any]]:
    """The engines of a built cell's report.json that time_cell times (built here, not a prediction)."""
    report = json.loads(Path(report_path).read_text())
    return [{"precision": e["precision"], "path": e["path"], "status": e["status"]} for e in report["engines"]
            if e.get("status") == "ok" and e.get("path") and not e.get("prediction")]


def latency_job(cell: Cell, cell_dir: Path, outcome: dict[str, Any]) -> dict[str, Any] | None:
    """The timing job of a built cell (None when it has no engine to time). On Ray it names the node and the
    scratch folder that still hold the cell's engines."""
    engines = timed_engines(Path(cell_dir) / "report.json")
    if not engines:
        return None
    return {"cell": cell.name, "cell_dir": str(cell_dir), "target_arg": cell.target_arg, "engines": engines,
            "engine_batch": outcome.get("engine_batch") or 1, "node_id": outcome.get("node_id"),
            "scratch": outcome.get("scratch"), "backend": cell.backend}


def device_resource(target_arg: str) -> str | None:
    """The Ray resource naming the device a TensorRT profile describes (a Jetson profile: its name, e.g.
    jetson-orin-nano -> "jetson_orin_nano"), None for a generic one. A node of that kind is started with
    `ray start --resources '{"jetson_orin_nano": 1}'`."""
    from edgerep.targets import load_target

    profile = load_target(target_arg)
    if profile.tensorrt is None or not profile.tensorrt.jetpack:
        return None
    return re.sub(r"[^a-z0-9]+", "_", profile.name.lower()).strip("_")


def finish_cell(cell: Cell, cell_dir: Path, outcome: dict[str, Any], timing: dict[str, Any] | None, how: str) -> None:
    """Merge the timings into the cell's report (report.json/md/plot rewritten) and mark the cell done."""
    from edgerep.pipeline.stages import report_stage

    cell_dir = Path(cell_dir)
    if outcome.get("report"):
        report = json.loads((cell_dir / "report.json").read_text())
        if timing is not None:
            for eng in report["engines"]:
                eng.update((timing["latency"] or {}).get(eng["precision"], {}) if not eng.get("prediction") else {})
            report["stages"] = list(report.get("stages") or []) + list(timing.get("stages") or [])
        report["latency"] = {"measured": bool(timing and timing["latency"]), "how": how,
                             "node": (timing or {}).get("node"), "reason": (timing or {}).get("reason")}
        report_stage(cell_dir, report)
        outcome["stages"] = report["stages"]
    if outcome.get("files"):  # the report files just rewritten: list them as they are now
        outcome["files"] = [_restat(cell_dir, e) for e in outcome["files"]]
    write_cell_state(cell_dir, {**outcome, "phase": "done", "latency_reason": (timing or {}).get("reason")})


def _restat(cell_dir: Path, entry: dict[str, Any]) -> dict[str, Any]:
    from edgerep.files.artifacts import file_sha256

    path = Path(cell_dir) / entry["path"]
    if not path.is_file() or path.stat().st_size > STATE_RECHECKED_BYTES:
        return entry
    return {**entry, "size": path.stat().st_size, "sha256": file_sha256(path)}


@contextmanager
def _output_to(log_path: Path) -> Iterator[None]:
    """Send this process's stdout and stderr (file descriptors too: native libraries write there) to a file."""
    from edgerep.files.std_fds import std_fds_to

    try:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(log_path, "a", encoding="utf-8")
    except OSError:
        yield
        return
    old_streams = sys.stdout, sys.stderr
    try:
        with std_fds_to(log.fileno()):
            sys.stdout = sys.stderr = log
            try:
                yield
            finally:
                log.flush()
                sys.stdout, sys.stderr = old_streams
    finally:
        log.close()


def _node_name() -> str:
    import socket

    return socket.gethostname()
