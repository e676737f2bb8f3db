"""Target profiles: one TOML file per deployment target (targets/*.toml), validated on load.

A profile says which backend builds the engine, which precisions it may build, the ONNX opset cap,
latency settings, the accuracy gates per precision and, for TensorRT, the device facts.
The validation is a small hand-written schema check: tomllib has none, and one that names the file and
the field in a single line is what users need (a pydantic dependency would be heavier than the check).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from edgerep.cpu.isa import ISAS, precision_unavailable
from edgerep.errors import UserError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

DEFAULT_TARGET = "openvino-cpu"
# `--target tensorrt`: the name users type for "this desktop's TensorRT". It is no file: it resolves to the
# desktop profile of the installed TensorRT's major (resolve_tensorrt_alias), and without TensorRT installed
# (a bundle made on a host for a GPU machine) to TRT_ALIAS_DEFAULT, saying so in one line either way.
TRT_ALIAS = "tensorrt"
TRT_DESKTOP = {10: "tensorrt-10", 11: "tensorrt-11"}
# Without TensorRT here: 10.x, the major every TensorRT GPU box of the last two years can have and the one whose
# bundles need no FP16 graph; `--target tensorrt-11` (or installing TensorRT 11 here) chooses 11.
TRT_ALIAS_DEFAULT = "tensorrt-10"
# Highest first. bf16 (OpenVINO: the FP32 IR computed in bf16) builds only where the CPU computes it
# (cpu.isa.precision_unavailable): a profile may list it, and it is dropped on load where it cannot be validated.
PRECISIONS = ("fp32", "bf16", "fp16", "int8")
CALIB_METHODS = ("entropy", "minmax", "percentile")
INT8_MODES = ("calibrate", "qdq")
# The opsets the TorchScript ONNX exporter can write (export.py uses it).
MIN_OPSET, MAX_OPSET = 9, 20


@dataclass
class Gate:
    """Accuracy thresholds for one precision; None means "not checked"."""

    max_abs_err: float | None = None
    min_cosine: float | None = None
    min_top1_agreement: float | None = None  # percent of samples whose top-1 matches the reference
    max_top1_drop: float | None = None  # percentage points of labelled top-1, only where labels exist

    def to_dict(self) -> dict[str, float | None]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass
class DetectGate:
    """Accuracy thresholds of a detector for one precision (`[gates.detect.<precision>]`); None: not checked.

    Agreement is the engine's detections scored (COCO mAP, 0..1) against the unfused PyTorch model's own
    detections taken as ground truth (edgerep.tasks.detect.agreement)."""

    min_map_agreement: float | None = None  # mAP@0.5:0.95 of agreement, 0..1
    min_map50_agreement: float | None = None  # mAP@0.5 of agreement, 0..1
    max_labelled_map_drop: float | None = None  # points of labelled mAP@0.5:0.95 (100 * (ref - engine)), with labels
    max_box_count_diff: float | None = None  # mean |boxes_engine - boxes_ref| per image, at the score threshold
    min_cosine: float | None = None  # of the first (head) output
    max_abs_err: float | None = None

    def to_dict(self) -> dict[str, float | None]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class GateSchema:
    """How one gate table of a profile reads: its type, the limits' ranges, and the gates a profile without the
    table gets (None: the table is required for every listed precision)."""

    cls: type
    empty: str  # the hint when a table sets nothing
    ranges: dict[str, tuple[float, float, str]]
    non_negative: tuple[str, ...]
    defaults: dict[str, Any] | None = None


# [gates.<precision>]: what classify reads, and raw its tensor limits.
COMMON_GATES = GateSchema(Gate, "set at least min_cosine or min_top1_agreement",
                          {"min_cosine": (-1.0, 1.0, ""), "min_top1_agreement": (0.0, 100.0, "a percentage, ")},
                          ("max_abs_err", "max_top1_drop"))
# [gates.<task>.<precision>]: the tables of tasks with gates of their own (Task.gate_table names its entry).
# Detect, for a profile without the table (a custom profile written before detectors): fp32 differs from PyTorch
# by rounding only, so its boxes agree almost exactly; fp16 moves boxes by a fraction of a pixel (the 0.5:0.95
# IoU ladder sees it); bf16 (8 significand bits to fp16's 11) moves them more; INT8 is held to the usual PTQ
# budget of 1 point of labelled mAP.
TASK_GATES: dict[str, GateSchema] = {
    "detect": GateSchema(
        DetectGate, "set at least min_map_agreement",
        {"min_map_agreement": (0.0, 1.0, "an mAP, "), "min_map50_agreement": (0.0, 1.0, "an mAP, "),
         "min_cosine": (-1.0, 1.0, "")},
        ("max_labelled_map_drop", "max_box_count_diff", "max_abs_err"),
        defaults={"fp32": DetectGate(min_map_agreement=0.99, min_map50_agreement=0.99),
                  "bf16": DetectGate(min_map_agreement=0.93, min_map50_agreement=0.96),
                  "fp16": DetectGate(min_map_agreement=0.95, min_map50_agreement=0.97),
                  "int8": DetectGate(min_map_agreement=0.85, min_map50_agreement=0.90, max_labelled_map_drop=1.0)}),
}


def task_gate_defaults(table: str) -> dict[str, Any]:
    """The gates per precision a profile without `[gates.<table>]` gets."""
    return dict(TASK_GATES[table].defaults or {})


@dataclass
class LatencySettings:
    batch_sizes: list[int] = field(default_factory=lambda: [1])
    warmup: int = 10
    iterations: int = 50  # timed calls per engine and batch size, spread over the rounds (at least 10 a round)
    deploy_batch: int | None = None  # the batch the engine ships at (the recommendation's); None: batch_sizes[0]
    rounds: int = 5  # interleaved rounds: the engines take turns, so a ratio's interval sees the machine's drift


@dataclass
class TensorRTSettings:
    version: str  # a version prefix: "8.5" matches 8.5.x, "10" any 10.x (backends.tensorrt.versions.version_matches)
    jetpack: str | None = None
    workspace_mb: int = 1024
    int8_mode: str = "qdq"  # "calibrate" (calibrator + cache, TRT 8.x-10.x) or "qdq" (Q/DQ ONNX from the host)
    dla_core: int | None = None  # use this DLA core by default (None: GPU)
    dla_cores: int = 0  # how many DLA cores the device has (0: none)
    gpu: str | None = None
    compute_capability: str | None = None  # "5.3" (Nano), "7.2" (Xavier), "8.7" (Orin): INT8 needs 6.1 or >= 7.0


@dataclass
class CalibrationSettings:
    method: str | None = None  # None: the backend's default (backends.backend_for fills it in)
    num_samples: int = 300


@dataclass
class Int8Settings:
    # The INT8 plan search (quant.mixed) stops adding float layers when the engine's measured speed-up over FP32
    # at the deploy batch falls below this: an "INT8" engine no faster than FP32 is FP32 with rounding errors.
    min_speedup: float = 1.3


@dataclass
class TargetProfile:
    name: str
    description: str
    backend: str
    precisions: list[str]
    opset: int
    dynamic_batch: bool = False
    latency: LatencySettings = field(default_factory=LatencySettings)
    gates: dict[str, Gate] = field(default_factory=dict)  # [gates.<precision>]
    task_gates: dict[str, dict[str, Any]] = field(default_factory=dict)  # [gates.<task>.<precision>], per TASK_GATES
    tensorrt: TensorRTSettings | None = None
    calibration: CalibrationSettings = field(default_factory=CalibrationSettings)
    int8: Int8Settings = field(default_factory=Int8Settings)
    # The CPU instruction set the engine must hold on (CPU backends): "auto" (the machine running edgerep)
    # or one of edgerep.cpu.isa.ISAS. INT8 choices depend on it (see edgerep/cpu/isa.py).
    isa: str = "auto"
    source: Path | None = None
    # Precisions the file lists that this machine cannot build for this target, with why (cpu.isa
    # .precision_unavailable); they are not in `precisions`. Filled by load_target and list_targets.
    unavailable: dict[str, str] = field(default_factory=dict)

    def gate(self, precision: str, table: str | None = None) -> Any:
        """The gate of `precision` in a task's own table (`table`, a key of TASK_GATES: [gates.<table>.*] or its
        defaults), else in [gates.<precision>]."""
        if table is None:
            return self.gates.get(precision, Gate())
        own = self.task_gates.get(table, {}).get(precision)
        return own or task_gate_defaults(table).get(precision) or TASK_GATES[table].cls()

    def to_dict(self) -> dict[str, Any]:
        """Plain data for reports and sidecars."""
        out: dict[str, Any] = {
            "name": self.name, "description": self.description, "backend": self.backend,
            "precisions": list(self.precisions), "opset": self.opset, "dynamic_batch": self.dynamic_batch,
            "latency": vars(self.latency).copy(),
            "gates": {k: g.to_dict() for k, g in self.gates.items()},
            **{f"{t}_gates": {k: g.to_dict() for k, g in tables.items()} for t, tables in self.task_gates.items()},
            "calibration": vars(self.calibration).copy(),
            "int8": vars(self.int8).copy(),
            "isa": self.isa,
            "source": str(self.source) if self.source else None,
            "unavailable": dict(self.unavailable),
        }
        if self.tensorrt is not None:
            out["tensorrt"] = vars(self.tensorrt).copy()
        return out


# --- where profiles live ---------------------------------------------------------------------------


def targets_dirs() -> list[Path]:
    """Folders holding profiles: the installed package data (edgerep/targets, a wheel install) and
    the repository's targets/ (a source checkout or editable install)."""
    pkg = Path(__file__).resolve().parent
    dirs = [pkg / "targets", pkg.parent / "targets"]
    return [d for d in dirs if d.is_dir() and any(d.glob("*.toml"))]


def _profile_files() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for folder in targets_dirs():
        for path in sorted(folder.glob("*.toml")):
            found.setdefault(path.stem, path)  # the first folder wins
    return found


def list_targets() -> list[TargetProfile]:
    """Every profile shipped with edgerep, the default first then by name."""
    files = _profile_files()
    names = sorted(files, key=lambda n: (n != DEFAULT_TARGET, n))
    return [_on_this_cpu(_load_file(files[n])) for n in names]


def load_target(name_or_path: str | Path, *, isa: str | None = None) -> TargetProfile:
    """A profile by name (`openvino-cpu`) or by path to a .toml file; `isa` (the --isa flag) overrides its isa."""
    profile = _find_target(str(name_or_path))
    if isa is not None:
        if profile.tensorrt is not None:
            raise UserError(f"--isa {isa}: applies to CPU targets; {profile.name} is a TensorRT target")
        if isa != "auto" and isa not in ISAS:
            raise UserError(f"--isa {isa}: unknown ISA; use auto or one of {', '.join(ISAS)}")
        profile.isa = isa
    return _on_this_cpu(profile)


def _on_this_cpu(profile: TargetProfile) -> TargetProfile:
    """The profile with the precisions this machine cannot build for it (a CPU target's bf16 without BF16 here)
    moved from `precisions` to `unavailable`: its default precisions are then what builds here, and an explicit
    --precision of another gets the reason (pipeline.stages.parse_precisions)."""
    if profile.tensorrt is not None:
        return profile
    for p in list(profile.precisions):
        why = precision_unavailable(p, profile.isa)
        if why is not None:
            profile.precisions.remove(p)
            profile.unavailable[p] = why
    return profile


def installed_tensorrt() -> str | None:
    """`tensorrt.__version__` when TensorRT is importable here, else None (tensorrt-stubs alone imports as an
    empty namespace package without __version__: not TensorRT)."""
    import importlib.util

    try:
        if "tensorrt" not in sys.modules and importlib.util.find_spec("tensorrt") is None:
            return None
        import tensorrt
    except Exception:  # installed but broken (missing CUDA libraries): as good as absent for choosing a profile
        return None
    version = getattr(tensorrt, "__version__", None)
    return str(version) if version else None


def resolve_tensorrt_alias(installed: str | None) -> tuple[str, str]:
    """(profile name, the line that says why) for `--target tensorrt` given the installed TensorRT version."""
    if installed is None:
        return TRT_ALIAS_DEFAULT, (f"--target {TRT_ALIAS}: TensorRT is not installed here, so {TRT_ALIAS_DEFAULT} "
                                   f"(TensorRT 10.x on the GPU machine; --target tensorrt-11 for TensorRT 11)")
    head = installed.strip().split(".")[0]
    major = int(head) if head.isdigit() else None
    if major not in TRT_DESKTOP:
        raise UserError(f"--target {TRT_ALIAS}: TensorRT {installed} is installed here, and the desktop profiles are "
                        f"{' and '.join(TRT_DESKTOP.values())}; install TensorRT 10 or 11 (pip install "
                        f"'edgerep[tensorrt]'), pick the jetson-* profile of this device, or pass a profile .toml "
                        f"with its [tensorrt] version (docs/targets.md)")
    name = TRT_DESKTOP[major]
    return name, f"--target {TRT_ALIAS}: TensorRT {installed} is installed here, so {name}"


_ALIAS_SAID: set[str] = set()


def _find_target(text: str) -> TargetProfile:
    """A profile by name or .toml path (`tensorrt` by the installed TensorRT: resolve_tensorrt_alias)."""
    if text == TRT_ALIAS and TRT_ALIAS not in _profile_files():
        text, line = resolve_tensorrt_alias(installed_tensorrt())
        if line not in _ALIAS_SAID:  # once a process: a build loads its profile several times
            _ALIAS_SAID.add(line)
            print(line, file=sys.stderr)
    path = Path(text)
    if text.endswith(".toml") or path.is_file():
        if not path.is_file():
            raise UserError(f"--target {text}: file not found; check the path, or pass a profile name "
                            f"(`edgerep targets` lists them)")
        return _load_file(path)
    files = _profile_files()
    if text not in files:
        known = ", ".join(sorted(files)) or "none found"
        raise UserError(f"--target {text}: no such target (known: {known}; {TRT_ALIAS} picks the tensorrt-* of the "
                        f"installed TensorRT); `edgerep targets` lists them, or pass a .toml path")
    return _load_file(files[text])



# --- validation ------------------------------------------------------------------------------------


class _Checker:
    """Reads typed fields out of a TOML table, raising UserError "<file>: <field>: ..." on any problem."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, where: str, what: str) -> UserError:
        return UserError(f"{self.path}: {where}: {what}; fix the profile (see targets/openvino-cpu.toml)")

    def table(self, data: Any, where: str) -> dict[str, Any]:
        if not isinstance(data, dict):
            raise self.fail(where, f"expected a table, got {type(data).__name__}")
        return data

    def no_unknown(self, data: dict[str, Any], allowed: set[str], prefix: str) -> None:
        for key in data:
            if key not in allowed:
                raise self.fail(f"{prefix}{key}", f"unknown field (allowed: {', '.join(sorted(allowed))})")

    def get(self, data: dict[str, Any], key: str, kind: type | tuple[type, ...], prefix: str = "", *, required: bool = False,
            default: Any = None) -> Any:
        where = f"{prefix}{key}"
        if key not in data:
            if required:
                raise self.fail(where, "missing required field")
            return default
        value = data[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        # A float field takes a whole number too (`max_top1_drop = 1`); bool is an int in Python, and a profile
        # saying `opset = true` is a mistake, not 1.
        accepted = kinds + ((int,) if float in kinds and int not in kinds else ())
        ok = isinstance(value, accepted) and not (isinstance(value, bool) and bool not in kinds)
        if not ok:
            names = " or ".join(k.__name__ for k in kinds)
            raise self.fail(where, f"expected {names}, got {type(value).__name__} {value!r}")
        if float in kinds and isinstance(value, int):
            value = float(value)
        return value

    def int_list(self, data: dict[str, Any], key: str, prefix: str, default: list[int]) -> list[int]:
        value = self.get(data, key, list, prefix, default=default)
        if not value or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value):
            raise self.fail(f"{prefix}{key}", f"expected a non-empty list of positive integers, got {value!r}")
        return list(value)

    def choice(self, value: Any, choices: tuple[str, ...], where: str) -> None:
        if value not in choices:
            raise self.fail(where, f"{value!r} is not one of {', '.join(choices)}")


_TOP = {"name", "description", "backend", "precisions", "opset", "dynamic_batch", "latency", "gates",
        "tensorrt", "calibration", "isa", "int8"}


def _load_file(path: Path) -> TargetProfile:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{path}: not valid TOML ({exc}); fix the profile") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read it ({exc.strerror})") from None
    return parse_profile(data, path)


def parse_profile(data: dict[str, Any], path: Path) -> TargetProfile:
    """Validate a parsed TOML document and build the profile."""
    c = _Checker(path)
    c.no_unknown(data, _TOP, "")
    name = c.get(data, "name", str, required=True)
    if name != path.stem:
        raise c.fail("name", f"{name!r} differs from the file name {path.stem!r}; make them equal")
    description = c.get(data, "description", str, required=True)
    backend = c.get(data, "backend", str, required=True)  # checked against the backend by backends.backend_for

    precisions = c.get(data, "precisions", list, required=True)
    if not precisions:
        raise c.fail("precisions", "empty; list at least one of " + ", ".join(PRECISIONS))
    for p in precisions:
        c.choice(p, PRECISIONS, "precisions")
    if len(set(precisions)) != len(precisions):
        raise c.fail("precisions", f"listed twice in {precisions!r}")

    opset = c.get(data, "opset", int, required=True)
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise c.fail("opset", f"{opset} is outside the exporter's range {MIN_OPSET}..{MAX_OPSET}")
    dynamic_batch = c.get(data, "dynamic_batch", bool, default=False)

    lat_data = c.table(data.get("latency", {}), "latency")
    c.no_unknown(lat_data, {"batch_sizes", "warmup", "iterations", "deploy_batch", "rounds"}, "latency.")
    latency = LatencySettings(
        batch_sizes=c.int_list(lat_data, "batch_sizes", "latency.", [1]),
        warmup=c.get(lat_data, "warmup", int, "latency.", default=10),
        iterations=c.get(lat_data, "iterations", int, "latency.", default=50),
        deploy_batch=c.get(lat_data, "deploy_batch", int, "latency."),
        rounds=c.get(lat_data, "rounds", int, "latency.", default=5),
    )
    if latency.deploy_batch is not None and latency.deploy_batch not in latency.batch_sizes:
        raise c.fail("latency.deploy_batch", f"{latency.deploy_batch} is not among batch_sizes "
                                             f"{latency.batch_sizes}, so its latency would not be measured; add it there")
    if latency.warmup < 0 or latency.iterations < 1 or latency.rounds < 2:
        raise c.fail("latency", "warmup must be >= 0, iterations >= 1 and rounds >= 2 (an interval needs two rounds)")
    if not dynamic_batch and any(b != 1 for b in latency.batch_sizes):
        raise c.fail("latency.batch_sizes", "batch sizes other than 1 need dynamic_batch = true")

    gate_data = dict(c.table(data.get("gates", {}), "gates"))
    task_tables = {t: c.table(gate_data.pop(t), f"gates.{t}") for t in TASK_GATES if t in gate_data}
    unknown = f"unknown precision or task (use {', '.join(PRECISIONS)}, or {', '.join(TASK_GATES)} for a task's own gates)"
    gates = _gate_tables(c, gate_data, precisions, "gates", COMMON_GATES, unknown=unknown,
                         missing="every listed precision needs its accuracy gate")
    task_gates = {t: (_gate_tables(c, task_tables[t], precisions, f"gates.{t}", schema,
                                   unknown=f"unknown precision (use {', '.join(PRECISIONS)})",
                                   missing=f"every listed precision needs its {t} gate")
                      if t in task_tables else {p: g for p, g in (schema.defaults or {}).items() if p in precisions})
                  for t, schema in TASK_GATES.items()}

    trt = None
    if "tensorrt" in data:
        if backend != "tensorrt":
            raise c.fail("tensorrt", f"only for backend 'tensorrt', this profile's backend is {backend!r}")
        trt = _parse_tensorrt(c, c.table(data["tensorrt"], "tensorrt"))
    elif backend == "tensorrt":
        raise c.fail("tensorrt", "missing required table [tensorrt] (version, ...)")

    cal_data = c.table(data.get("calibration", {}), "calibration")
    c.no_unknown(cal_data, {"method", "num_samples"}, "calibration.")
    method = c.get(cal_data, "method", str, "calibration.")
    if method is not None:
        c.choice(method, CALIB_METHODS, "calibration.method")
    num_samples = c.get(cal_data, "num_samples", int, "calibration.", default=300)
    if num_samples < 1:
        raise c.fail("calibration.num_samples", "must be >= 1")

    int8_data = c.table(data.get("int8", {}), "int8")
    c.no_unknown(int8_data, {"min_speedup"}, "int8.")
    min_speedup = c.get(int8_data, "min_speedup", float, "int8.", default=Int8Settings.min_speedup)
    if not 0 < float(min_speedup) <= 100:
        raise c.fail("int8.min_speedup", f"{min_speedup} must be a speed-up over FP32 in (0, 100], e.g. 1.3")

    isa = c.get(data, "isa", str, default="auto")
    if backend == "tensorrt" and "isa" in data:
        raise c.fail("isa", "applies to CPU backends only; a TensorRT profile describes its GPU in [tensorrt]")
    c.choice(isa, ("auto",) + ISAS, "isa")

    return TargetProfile(name=name, description=description, backend=backend, precisions=list(precisions),
                         opset=opset, dynamic_batch=dynamic_batch, latency=latency, gates=gates,
                         task_gates=task_gates, tensorrt=trt,
                         calibration=CalibrationSettings(method=method, num_samples=num_samples), isa=isa,
                         int8=Int8Settings(min_speedup=float(min_speedup)), source=path)








def _gate_tables(c: _Checker, data: dict[str, Any], precisions: list[str], where: str, schema: GateSchema, *,
                 unknown: str, missing: str) -> dict[str, Any]:
    """One gate table per listed precision (`where`.<precision>), each field a float checked against its range."""
    cls, empty, ranges, non_negative = schema.cls, schema.empty, schema.ranges, schema.non_negative
    for key in data:
        if key not in PRECISIONS:
            raise c.fail(f"{where}.{key}", unknown)
        if key not in precisions:
            raise c.fail(f"{where}.{key}", f"a gate for a precision the profile does not list ({', '.join(precisions)})")
    gates: dict[str, Any] = {}
    for p in precisions:
        if p not in data:
            raise c.fail(f"{where}.{p}", f"missing: {missing}")
        table = c.table(data[p], f"{where}.{p}")
        prefix = f"{where}.{p}."
        c.no_unknown(table, {f.name for f in fields(cls)}, prefix)
        gate = cls(**{f.name: c.get(table, f.name, float, prefix) for f in fields(cls)})
        if all(v is None for v in gate.to_dict().values()):
            raise c.fail(f"{where}.{p}", f"empty; {empty}")
        for name, (low, high, what) in ranges.items():
            value = getattr(gate, name)
            if value is not None and not low <= value <= high:
                raise c.fail(f"{prefix}{name}", f"{value} is {what}outside [{low:g}, {high:g}]")
        for name in non_negative:
            value = getattr(gate, name)
            if value is not None and value < 0:
                raise c.fail(f"{prefix}{name}", f"{value} is negative")
        gates[p] = gate
    return gates


def _parse_tensorrt(c: _Checker, data: dict[str, Any]) -> TensorRTSettings:
    prefix = "tensorrt."
    c.no_unknown(data, {f.name for f in fields(TensorRTSettings)}, prefix)
    settings = TensorRTSettings(
        version=c.get(data, "version", str, prefix, required=True),
        jetpack=c.get(data, "jetpack", str, prefix),
        workspace_mb=c.get(data, "workspace_mb", int, prefix, default=1024),
        int8_mode=c.get(data, "int8_mode", str, prefix, default="qdq"),
        dla_core=c.get(data, "dla_core", int, prefix),
        dla_cores=c.get(data, "dla_cores", int, prefix, default=0),
        gpu=c.get(data, "gpu", str, prefix),
        compute_capability=c.get(data, "compute_capability", str, prefix),
    )
    parts = settings.version.split(".")
    if not all(p.isdigit() for p in parts):
        raise c.fail(f"{prefix}version", f"{settings.version!r} is not a version like '8.5' or '10.3'")
    c.choice(settings.int8_mode, INT8_MODES, f"{prefix}int8_mode")
    if settings.int8_mode == "calibrate" and int(parts[0]) >= 11:
        raise c.fail(f"{prefix}int8_mode", "TensorRT 11 removed implicit quantization (calibrators); use 'qdq'")
    if settings.workspace_mb < 1:
        raise c.fail(f"{prefix}workspace_mb", "must be >= 1")
    if settings.dla_core is not None and not 0 <= settings.dla_core < settings.dla_cores:
        raise c.fail(f"{prefix}dla_core", f"{settings.dla_core} but the device has {settings.dla_cores} DLA core(s) (dla_cores)")
    return settings
