"""The `edgerep` command line: it parses flags, calls the library, and prints. No backend is imported here.

User errors (edgerep.errors.UserError) print one line and exit 2, without a traceback; `--debug` (on any
command, or EDGEREP_DEBUG=1) shows the traceback behind an error.
Each command body lives in the library; the functions here only translate flags.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, List, Optional

import typer
from rich.console import Console
from typer.core import TyperCommand, TyperGroup

from edgerep.errors import UserError


def _plain_flags(params: list[Any]) -> list[Any]:
    """typer 0.29's rich help prints a flag's type beside it (`--json <bool>`, `--help <bool>`) as if it took a
    value; an empty metavar prints nothing there. Flags only: an option that takes a value keeps its type."""
    for param in params:
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""
    return params


class _Group(TyperGroup):
    def get_params(self, ctx: Any) -> list[Any]:  # includes the --help option click adds
        return _plain_flags(super().get_params(ctx))


class _Command(TyperCommand):
    def get_params(self, ctx: Any) -> list[Any]:
        return _plain_flags(super().get_params(ctx))


class _App(typer.Typer):
    """The app whose commands show plain flags in their help (_Command)."""

    def command(self, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("cls", _Command)
        return super().command(*args, **kwargs)


app = _App(cls=_Group, add_completion=False, no_args_is_help=True,
           help="Re-parameterize, export, build and validate edge engines.",
           epilog="--debug on any command (anywhere on the line), or EDGEREP_DEBUG=1, shows the traceback behind "
                  "an error.")
console = Console(stderr=True)
out = Console()

# help texts several commands share
_MODEL_HELP = "zoo:NAME, timm:NAME, ultralytics:CFG.yaml, best.pt, file.pt2 or package.module:factory"
_TRUST_PICKLE_HELP = "allow a full pickle in --weights or an Ultralytics checkpoint (only files you trust)"
_ISA_HELP = (
    "CPU targets: the instruction set the engine must hold on: auto (this CPU), avx2, avx_vnni, avx512, avx512_vnni, amx or "
    "arm64 (default: the profile's)"
)
_TASK_HELP = (
    "what accuracy means: classify (top-1), detect (mAP of decoded boxes) or raw (tensor errors); default: what the model "
    "says, else inferred from its output"
)
_SCORE_HELP = "detect: the score a box needs to count as a detection (default 0.25)"
_IOU_HELP = "detect: the NMS IoU threshold (default 0.7)"
_DETECT_VAL_HELP = (
    "detectors: a YOLO-format split (DIR with images/ + labels/), a COCO .json (images in images/ beside it) or an image "
    "folder (agreement only)"
)

_KEEP_FLOAT_HELP = ("INT8: keep this layer in float on every backend (repeatable): an ONNX node name "
                    "(/stages.1.0.reparam/Conv) or a PyTorch module path (stages.1.0); `edgerep sensitivity` lists them")


def _print_version(value: bool) -> None:
    if value:
        from edgerep import __version__

        out.print(f"edgerep {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def _options(version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                          help="print edgerep's version and exit")) -> None:
    """Re-parameterize, export, build and validate edge engines."""


@app.command("models")
def models_cmd() -> None:
    """List the zoo models (use them as --model zoo:NAME)."""
    from edgerep.commands.listing import run_models

    raise typer.Exit(run_models(out=out))


@app.command("fuse")
def fuse_cmd(
    model: str = typer.Option(..., "--model", "-m", help=_MODEL_HELP),
    weights: Optional[Path] = typer.Option(None, "--weights", help=".safetensors or a .pt/.pth state dict"),
    input_shape: Optional[str] = typer.Option(None, "--input-shape", help="e.g. 1x3x224x224"),
    num_classes: Optional[int] = typer.Option(None, "--num-classes"),
    trust_pickle: bool = typer.Option(False, "--trust-pickle", help=_TRUST_PICKLE_HELP),
    output: Path = typer.Option(Path("fused"), "-o", "--output", help="output folder"),
    tol: float = typer.Option(1e-4, "--tol", help="max relative error allowed between fused and original (FP32)"),
    as_json: bool = typer.Option(False, "--json", help="print the report as one JSON object on stdout"),
) -> None:
    """Fuse every re-parameterizable block into plain convolutions and prove it computes the same function."""
    from edgerep.commands.fuse import run_fuse

    code = run_fuse(model=model, weights=weights, input_shape=input_shape, num_classes=num_classes,
                    trust_pickle=trust_pickle, output=output, tol=tol, as_json=as_json, out=out, console=console)
    raise typer.Exit(code)


@app.command("build")
def build_cmd(
    model: Optional[str] = typer.Option(None, "--model", "-m", help=_MODEL_HELP + " (default: the demo zoo:repvgg_digits)"),
    weights: Optional[Path] = typer.Option(None, "--weights", help=".safetensors or a .pt/.pth state dict"),
    input_shape: Optional[str] = typer.Option(None, "--input-shape", help="e.g. 1x3x224x224"),
    num_classes: Optional[int] = typer.Option(None, "--num-classes"),
    trust_pickle: bool = typer.Option(False, "--trust-pickle", help=_TRUST_PICKLE_HELP),
    target: str = typer.Option("openvino-cpu", "--target", "-t", help="a profile name (`edgerep targets`) or a .toml file"),
    precision: Optional[str] = typer.Option(None, "--precision", "-p", help="comma list, e.g. fp32,int8 (default: every "
                                                                            "precision of the target)"),
    calib: Optional[Path] = typer.Option(None, "--calib", help="calibration data: image folder, ImageFolder tree, .npy or .npz "
                                                               "(x, NCHW float32); detectors: images letterboxed (a YOLO "
                                                               "split's images/ too)"),
    val: Optional[Path] = typer.Option(None, "--val", help="validation data, same kinds; labels (ImageFolder classes or npz y) "
                                                           "give top-1; " + _DETECT_VAL_HELP),
    calib_samples: Optional[int] = typer.Option(None, "--calib-samples", help="calibration samples (default: the profile's)"),
    calib_method: Optional[str] = typer.Option(None, "--calib-method", help="minmax, entropy or percentile (default: the "
                                                                            "profile's)"),
    val_samples: Optional[int] = typer.Option(None, "--val-samples", help="validate on the first N samples (default: all)"),
    mean: Optional[str] = typer.Option(None, "--mean", help="image preprocessing mean per channel, e.g. 0.485,0.456,0.406"),
    std: Optional[str] = typer.Option(None, "--std", help="image preprocessing std per channel"),
    resize: Optional[int] = typer.Option(None, "--resize", help="resize the shorter image side to this before the centre crop"),
    interpolation: Optional[str] = typer.Option(None, "--interpolation", help="bilinear, bicubic, nearest, ..."),
    channel_order: Optional[str] = typer.Option(None, "--channel-order", help="RGB or BGR"),
    simplifier: str = typer.Option("onnxsim", "--simplifier", help="onnxsim (onnxslim as fallback), onnxslim or none"),
    force: bool = typer.Option(False, "--force", help="rebuild every stage, even those whose inputs did not change"),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="output folder (default: runs/<model-name>-<target>)"),
    int8_mode: Optional[str] = typer.Option(None, "--int8-mode", help="TensorRT INT8: calibrate (cache) or qdq (Q/DQ ONNX); "
                                                                      "default: the profile's"),
    dla_core: Optional[int] = typer.Option(None, "--dla-core", help="TensorRT: build FP16/INT8 for this DLA core, GPU fallback "
                                                                    "(default: the profile's)"),
    isa: Optional[str] = typer.Option(None, "--isa", help=_ISA_HELP),
    max_drop: Optional[float] = typer.Option(None, "--max-drop", help="INT8: keep the fewest, most sensitive layers in float "
                                                                      "until the drop is within this many points of the task's "
                                                                      "metric: top-1 (agreement without labels), or for detect "
                                                                      "mAP@0.5:0.95 (agreement without labels)"),
    task: Optional[str] = typer.Option(None, "--task", help=_TASK_HELP),
    score_threshold: Optional[float] = typer.Option(None, "--score-threshold", help=_SCORE_HELP),
    iou_threshold: Optional[float] = typer.Option(None, "--iou-threshold", help=_IOU_HELP),
    baselines: bool = typer.Option(True, "--baselines/--no-baselines",
                                   help="also validate and time what you get without edgerep: the PyTorch original, "
                                        "its plain ONNX export and (Ultralytics detectors) Ultralytics' own export"),
    head_search: bool = typer.Option(True, "--head-search/--no-head-search",
                                     help="detector INT8: measure which head nodes pay their way in float (default); "
                                          "off: keep the decode and the prediction convs feeding it in float"),
    static_batch: bool = typer.Option(False, "--static-batch",
                                      help="engines with a fixed batch of 1, timed at batch 1 (no dynamic axes: faster "
                                           "on ONNX Runtime)"),
    keep_float: Optional[List[str]] = typer.Option(None, "--keep-float", help=_KEEP_FLOAT_HELP),
) -> None:
    """Fuse, export, build and validate engines for a target; writes report.json, report.md and a plot.

    With no arguments: the demo (zoo:repvgg_digits, its shipped weights and digits data, openvino-cpu, every precision).
    Exit 0 when every engine passes its gates, 1 when one fails (named with the reason), 2 on bad input."""
    from edgerep.commands.build import parse_floats, run_build

    code = run_build(model=model, weights=weights, input_shape=input_shape, num_classes=num_classes,
                     trust_pickle=trust_pickle, target=target, precisions=precision, calib=calib, val=val,
                     calib_samples=calib_samples, calib_method=calib_method, val_samples=val_samples,
                     mean=parse_floats(mean, "--mean"), std=parse_floats(std, "--std"), resize=resize,
                     interpolation=interpolation, channel_order=channel_order, simplifier=simplifier,
                     force=force, output=output, console=console, out=out, max_drop=max_drop, isa=isa,
                     task=task, score_threshold=score_threshold, iou_threshold=iou_threshold, baselines=baselines,
                     head_search=head_search, static_batch=static_batch, keep_float=list(keep_float or []),
                     backend_options={k: v for k, v in (("int8_mode", int8_mode), ("dla_core", dla_core)) if v is not None})
    raise typer.Exit(code)


@app.command("matrix")
def matrix_cmd(
    matrix_file: Path = typer.Argument(..., help="the matrix: models, targets, precisions (see examples/matrix.toml)"),
    ray_address: Optional[str] = typer.Argument(None, metavar="[ADDRESS]", help="with --ray: auto (the cluster running here), "
                                                                                "host:port or ray://host:port"),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="output folder (default: runs/matrix-<file name>); on "
                                                                       "Ray, a path every node reaches"),
    workers: Optional[int] = typer.Option(None, "--workers", "-w", help="local worker processes (default: the cores, up to 4); "
                                                                        "runtime threads per worker = cores // workers"),
    ray: bool = typer.Option(False, "--ray", help="run the cells as Ray tasks: --ray alone starts a local cluster, --ray "
                                                  "ADDRESS joins one (pip install 'edgerep\\[ray]')"),
    force: bool = typer.Option(False, "--force", help="rebuild every cell and stage, even unchanged ones"),
) -> None:
    """Build and validate every model on every target at every precision; one report (matrix.json, matrix.md,
    matrix.png). Cells build in parallel; latency is timed afterwards one cell at a time per machine.
    Exit 0 when every engine passes, 1 when any fails, 2 on a bad matrix file."""
    from edgerep.commands.matrix import run_matrix

    raise typer.Exit(run_matrix(matrix_file=matrix_file, output=output, workers=workers, ray=ray,
                                ray_address=ray_address, force=force, out=out, console=console))


@app.command("validate")
def validate_cmd(
    model: Optional[str] = typer.Option(None, "--model", "-m", help="the model the engine was built from (the unfused "
                                                                    "reference)"),
    engine: list[Path] = typer.Option(..., "--engine", "-e", help="a built engine file (its sidecar JSON names the backend); "
                                                                  "with --bundle, repeat it to validate several and get the "
                                                                  "one to ship"),
    bundle: Optional[Path] = typer.Option(None, "--bundle", help="a TensorRT device bundle: validate against its reference, no "
                                                                 "PyTorch"),
    target: Optional[str] = typer.Option(None, "--target", "-t", help="profile whose gates apply (default: the engine's)"),
    val: Optional[Path] = typer.Option(None, "--val", help="validation data: image folder, ImageFolder tree, .npy or .npz; "
                                                           + _DETECT_VAL_HELP),
    weights: Optional[Path] = typer.Option(None, "--weights", help=".safetensors or a .pt/.pth state dict"),
    input_shape: Optional[str] = typer.Option(None, "--input-shape", help="e.g. 1x3x224x224"),
    num_classes: Optional[int] = typer.Option(None, "--num-classes"),
    trust_pickle: bool = typer.Option(False, "--trust-pickle"),
    val_samples: Optional[int] = typer.Option(None, "--val-samples", help="validate on the first N samples"),
    isa: Optional[str] = typer.Option(None, "--isa", help=_ISA_HELP),
    as_json: bool = typer.Option(False, "--json", help="print the result as one JSON object on stdout"),
    task: Optional[str] = typer.Option(None, "--task", help=_TASK_HELP),
    score_threshold: Optional[float] = typer.Option(None, "--score-threshold", help=_SCORE_HELP),
    iou_threshold: Optional[float] = typer.Option(None, "--iou-threshold", help=_IOU_HELP),
    inference_precision: Optional[str] = typer.Option(None, "--inference-precision",
                                                      help="OpenVINO: run the engine at f32, bf16 or f16 instead of "
                                                           "its compile.json's, or at default (no hint: what a plain "
                                                           "compile_model(xml, 'CPU') runs on this CPU); a warning says "
                                                           "when that is not the precision it was validated at"),
) -> None:
    """Validate a built engine against the unfused PyTorch model: accuracy, latency and the target's gates."""
    if bundle is not None:  # on the device: the bundle carries the reference; TensorRT (or ONNX Runtime for .onnx) only
        from edgerep.commands.validate_bundle import run_validate_bundle

        raise typer.Exit(run_validate_bundle(bundle=bundle, engine=engine, as_json=as_json, out=out, console=console))
    if model is None:
        raise UserError("--model: required (the unfused model the engine was built from), or --bundle DIR on a device")
    if len(engine) != 1:
        raise UserError(f"--engine: give one engine to validate against --model (got {len(engine)}); several go with --bundle")
    from edgerep.commands.validate import run_validate

    code = run_validate(model=model, engine=engine[0], target=target, val=val, weights=weights, input_shape=input_shape,
                        num_classes=num_classes, trust_pickle=trust_pickle, val_samples=val_samples, isa=isa,
                        task=task, score_threshold=score_threshold, iou_threshold=iou_threshold,
                        inference_precision=inference_precision, as_json=as_json, out=out, console=console)
    raise typer.Exit(code)


@app.command("export")
def export_cmd(
    model: str = typer.Option(..., "--model", "-m", help=_MODEL_HELP),
    weights: Optional[Path] = typer.Option(None, "--weights", help=".safetensors or a .pt/.pth state dict"),
    input_shape: Optional[str] = typer.Option(None, "--input-shape", help="e.g. 1x3x224x224"),
    num_classes: Optional[int] = typer.Option(None, "--num-classes"),
    trust_pickle: bool = typer.Option(False, "--trust-pickle", help=_TRUST_PICKLE_HELP),
    target: str = typer.Option("openvino-cpu", "--target", "-t", help="target profile name or .toml (sets the opset)"),
    dynamic_batch: Optional[bool] = typer.Option(None, "--dynamic-batch/--static-batch", help="default: the target's setting"),
    simplifier: str = typer.Option("onnxsim", "--simplifier", help="onnxsim (onnxslim as fallback), onnxslim or none"),
    output: Path = typer.Option(Path("export"), "-o", "--output", help="output folder"),
    tol: float = typer.Option(1e-4, "--tol", help="max relative error of ONNX Runtime vs PyTorch after each stage"),
    as_json: bool = typer.Option(False, "--json", help="print the result as one JSON object on stdout"),
) -> None:
    """Fuse the model, export it to ONNX (opset from the target), simplify it, and check each stage in ONNX Runtime."""
    from edgerep.commands.export import run_export

    code = run_export(model=model, weights=weights, input_shape=input_shape, num_classes=num_classes,
                      trust_pickle=trust_pickle, target=target, dynamic_batch=dynamic_batch, simplifier=simplifier,
                      output=output, tol=tol, as_json=as_json, out=out, console=console)
    raise typer.Exit(code)


@app.command("sensitivity")
def sensitivity_cmd(
    model: str = typer.Option(..., "--model", "-m", help=_MODEL_HELP),
    weights: Optional[Path] = typer.Option(None, "--weights", help=".safetensors or a .pt/.pth state dict"),
    input_shape: Optional[str] = typer.Option(None, "--input-shape", help="e.g. 1x3x224x224"),
    num_classes: Optional[int] = typer.Option(None, "--num-classes"),
    trust_pickle: bool = typer.Option(False, "--trust-pickle", help=_TRUST_PICKLE_HELP),
    target: str = typer.Option("openvino-cpu", "--target", "-t", help="profile whose backend's quantizer placement, opset and "
                                                                      "calibration apply"),
    calib: Optional[Path] = typer.Option(None, "--calib", help="calibration data (default: the model's shipped data)"),
    val: Optional[Path] = typer.Option(None, "--val", help="validation data; labels give top-1 (default: the shipped data); "
                                                           + _DETECT_VAL_HELP),
    calib_samples: Optional[int] = typer.Option(None, "--calib-samples", help="calibration samples (default: the profile's)"),
    calib_method: Optional[str] = typer.Option(None, "--calib-method", help="minmax, entropy or percentile (default: the "
                                                                            "profile's)"),
    val_samples: Optional[int] = typer.Option(None, "--val-samples", help="use the first N validation samples"),
    top: int = typer.Option(10, "--top", help="rows in the table of the most sensitive layers"),
    isa: Optional[str] = typer.Option(None, "--isa", help=_ISA_HELP),
    study: bool = typer.Option(True, "--study/--no-study", help="also compare calibration methods and per-channel/per-tensor "
                                                                "weights"),
    output: Path = typer.Option(Path("sensitivity"), "-o", "--output", help="output folder"),
    as_json: bool = typer.Option(False, "--json", help="print the result as one JSON object on stdout"),
    task: Optional[str] = typer.Option(None, "--task", help=_TASK_HELP),
    score_threshold: Optional[float] = typer.Option(None, "--score-threshold", help=_SCORE_HELP),
    iou_threshold: Optional[float] = typer.Option(None, "--iou-threshold", help=_IOU_HELP),
    keep_float: Optional[List[str]] = typer.Option(None, "--keep-float", help=_KEEP_FLOAT_HELP + "; they stay float in "
                                                                              "every measurement"),
) -> None:
    """INT8 sensitivity per layer (ONNX node and PyTorch module), weight/activation range outliers, and a
    calibration study; writes sensitivity.json, sensitivity.md and sensitivity.png."""
    from edgerep.commands.sensitivity import run_sensitivity

    code = run_sensitivity(model=model, weights=weights, input_shape=input_shape, num_classes=num_classes,
                           trust_pickle=trust_pickle, target=target, calib=calib, val=val, calib_samples=calib_samples,
                           calib_method=calib_method, val_samples=val_samples, top=top, study=study, output=output, isa=isa,
                           task=task, score_threshold=score_threshold, iou_threshold=iou_threshold,
                           keep_float=list(keep_float or []), as_json=as_json, out=out, console=console)
    raise typer.Exit(code)


@app.command("targets")
def targets_cmd() -> None:
    """List the target profiles (use them as --target NAME)."""
    from edgerep.commands.listing import run_targets

    raise typer.Exit(run_targets(out=out))


@app.command("doctor")
def doctor_cmd(as_json: bool = typer.Option(False, "--json", help="print everything as one JSON object on stdout")) -> None:
    """What edgerep sees here: runtimes (installed or why not), CPU INT8 features, GPUs, and which targets build."""
    from edgerep.commands.doctor import run_doctor

    raise typer.Exit(run_doctor(as_json=as_json, out=out))


@app.command("check")
def check_cmd(
    target: str = typer.Option(..., "--target", "-t", help="a TensorRT profile: tensorrt or jetson-*"),
    model: str = typer.Option(..., "--model", "-m", help="file.onnx, or a model spec (zoo:NAME, timm:NAME, ...) exported as "
                                                         "build would"),
    weights: Optional[Path] = typer.Option(None, "--weights", help=".safetensors or a .pt/.pth state dict"),
    input_shape: Optional[str] = typer.Option(None, "--input-shape", help="e.g. 1x3x224x224"),
    num_classes: Optional[int] = typer.Option(None, "--num-classes"),
    trust_pickle: bool = typer.Option(False, "--trust-pickle"),
    as_json: bool = typer.Option(False, "--json", help="print the findings as one JSON object on stdout"),
) -> None:
    """Lint an ONNX model for the target's TensorRT parser (opset, operators, attributes, INT64, dynamic shapes).
    Exit 1 when it has errors, 0 when only warnings."""
    from edgerep.commands.check import run_check

    code = run_check(target=target, model=model, weights=weights, input_shape=input_shape, num_classes=num_classes,
                     trust_pickle=trust_pickle, as_json=as_json, out=out, console=console)
    raise typer.Exit(code)


def _click_exception_types() -> dict[str, tuple[type[Any], ...]]:
    """Usage-error and abort classes of click and of the copy of click newer typer releases vendor (imported
    by name: no one static type covers both copies)."""
    import importlib

    usage: list[type[Any]] = []
    abort: list[type[Any]] = []
    for name in ("click.exceptions", "typer._click.exceptions", "typer.exceptions"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        usage += [module.ClickException] if hasattr(module, "ClickException") else []
        abort += [module.Abort] if hasattr(module, "Abort") else []
    return {"usage": tuple(usage), "abort": tuple(abort)}


def _interrupted() -> None:
    console.print("[bold red]interrupted[/]; finished stages are kept, the next run resumes")
    sys.exit(130)


DEBUG_ENV = "EDGEREP_DEBUG"


def _split_debug(argv: Optional[list[str]]) -> tuple[list[str], bool]:
    """Take `--debug` out of the arguments, wherever it stands (before a `--`): one switch for every command."""
    import os

    args = list(sys.argv[1:] if argv is None else argv)
    end = args.index("--") if "--" in args else len(args)
    debug = "--debug" in args[:end]
    args = [a for i, a in enumerate(args) if i >= end or a != "--debug"]
    return args, debug or os.environ.get(DEBUG_ENV, "").strip() not in ("", "0")


def _print_traceback(exc: BaseException) -> None:
    """The traceback behind an error; for a UserError, the one of the exception it was made from."""
    import traceback

    inner = exc.__cause__ or exc.__context__ if isinstance(exc, UserError) else None
    shown = inner or exc
    console.print("".join(traceback.format_exception(type(shown), shown, shown.__traceback__)).rstrip(),
                  markup=False, highlight=False, soft_wrap=True, emoji=False)


def main(argv: Optional[list[str]] = None) -> None:
    """Console entry point: user errors become one line and exit code 2; a bug is one line and exit 1.

    `--debug` (anywhere on the command line) or EDGEREP_DEBUG=1 prints the traceback as well.
    """
    from rich.markup import escape

    args, debug = _split_debug(argv)
    try:
        # standalone_mode=False: click returns a command's typer.Exit code instead of raising it.
        code = app(args=args, standalone_mode=False)
    except UserError as exc:
        if debug:
            _print_traceback(exc)
        # escape: messages hold text like 'edgerep[openvino]' that rich would take for markup
        console.print(f"[bold red]error:[/] {escape(exc.message)}", highlight=False, soft_wrap=True, emoji=False)
        sys.exit(exc.exit_code)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        _interrupted()
    except Exception as exc:
        # Usage errors (missing option, bad value): typer raises them from its own bundled copy of click,
        # so match the exception classes of whichever click raised them.
        click_exc = _click_exception_types()
        if isinstance(exc, click_exc["abort"]):  # click turns Ctrl-C into Abort
            _interrupted()
        if isinstance(exc, click_exc["usage"]):
            exc.show()
            sys.exit(2 if exc.exit_code in (1, 2) else exc.exit_code)
        if debug:
            raise
        # A bug in edgerep (not something the user can fix): one line, the traceback behind --debug.
        text = (str(exc).strip().splitlines() or [""])[0][:300]
        console.print(f"[bold red]internal error:[/] {escape(type(exc).__name__)}: {escape(text)} "
                      f"(run again with --debug for the traceback, and please report it)",
                      highlight=False, soft_wrap=True, emoji=False)
        sys.exit(1)
    if code == 130:  # typer turned Ctrl-C into Exit(130), which standalone_mode=False returns
        _interrupted()
    if isinstance(code, int) and code:
        sys.exit(code)


if __name__ == "__main__":
    main()
