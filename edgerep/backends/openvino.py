"""OpenVINO backend: IR (.xml + .bin) in FP32, FP16 (weights compressed) or INT8 (NNCF post-training).

At load time the CPU plugin is pinned to an inference precision: on CPUs with bfloat16 support it
would otherwise run FP32 IRs in bf16 (measured on this machine's Xeon), and the FP32 gate would test
bf16 numbers. fp32 and int8 (the layers NNCF leaves in float) run in f32; fp16 runs in f16 where the
CPU supports it, else f32 with compressed weights. The precision used is in the sidecar.
"""
from __future__ import annotations

import contextlib
import errno
import logging
import sys
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..artifacts import Artifact, atomic_files, write_sidecar
from ..cpu import int16_saturation_risk, target_isa
from ..errors import UserError
from ..onnx_files import detect_head_float_nodes, onnx_output_names
from ..threads import runtime_threads
from ..targets import BACKEND_CAPABILITIES
from .common import (COMMON_OPTIONS, calib_settings, check_ignored_nodes, check_options, engine_info, onnx_input, require_available,
                     require_calib, require_precision, sample_batches, time_calls)

# preset: "mixed" (default) or "performance"; bias_correction: NNCF's "fast" (default) or "full" (slower, can be
# more accurate on models with wide activation ranges).
KNOWN_OPTIONS = COMMON_OPTIONS | {"preset", "bias_correction"}

_METHODS = BACKEND_CAPABILITIES["openvino"].calib_methods
_PACKAGES = ("openvino", "nncf")
_MISSING = "openvino is not installed; pip install 'edgerep[openvino]'"
# The NNCF range estimator standing in for each calibration method. NNCF has no KL-divergence
# calibration: "entropy" maps to its histogram estimator, which also optimizes ranges from a histogram.
_ESTIMATORS = {"minmax": None, "percentile": "MEAN_QUANTILE", "entropy": "HISTOGRAM"}


class OpenVINOBackend:
    name = "openvino"
    precisions = BACKEND_CAPABILITIES["openvino"].precisions
    calib_methods = _METHODS

    def available(self) -> str | None:
        try:
            import openvino  # noqa: F401
        except ImportError:
            return _MISSING
        return None

    def artifact_path(self, out_dir: Path, precision: str) -> Path:
        return Path(out_dir) / f"model.{precision}.xml"

    def build(self, onnx_path: Path, precision: str, *, out_dir: Path, profile: Any = None, calib: Any = None,
              options: dict[str, Any] | None = None) -> Artifact:
        require_precision(self, precision)
        require_available(self)
        options = check_options(options, self.name, KNOWN_OPTIONS)
        import openvino as ov

        onnx_path = Path(onnx_path)
        path = self.artifact_path(out_dir, precision)
        try:
            model = ov.convert_model(str(onnx_path))
        except Exception as exc:
            raise UserError(f"openvino: cannot convert {onnx_path.name} ({type(exc).__name__}: {_line(exc)})") from None
        settings: dict[str, Any] = {"compress_to_fp16": precision == "fp16",
                                    "inference_precision": _inference_precision(precision),
                                    # the ONNX outputs in graph order: the runner returns its ports in this order
                                    "output_names": onnx_output_names(onnx_path)}
        if precision == "int8":
            require_calib(calib, self.name)
            model, quant = _quantize(model, onnx_path, calib, profile, options)
            settings.update(quant)
        with atomic_files(path) as tmp:
            try:
                ov.save_model(model, str(tmp), compress_to_fp16=precision == "fp16")
            except RuntimeError as exc:  # a failed C++ write ("basic_ios::clear: iostream error") hides its errno
                if "ios" not in str(exc):
                    raise
                raise OSError(errno.EIO, "OpenVINO could not write the IR: disk full or folder not writable",
                              str(path)) from None
        info = engine_info(backend=self.name, precision=precision, onnx_path=onnx_path, profile=profile, calib=calib,
                           settings=settings, packages=_PACKAGES)
        sidecar = write_sidecar(path, info)
        return Artifact(backend=self.name, precision=precision, path=path, sidecar=sidecar, info=info)

    def load(self, artifact: Artifact) -> "OpenVINORunner":
        require_available(self)
        if artifact.path is None or not Path(artifact.path).is_file():
            raise UserError(f"{artifact.path}: engine file not found; build it first")
        settings = artifact.info.get("settings") or {}
        hint = settings.get("inference_precision") or _inference_precision(artifact.precision)
        return OpenVINORunner(Path(artifact.path), hint, output_names=settings.get("output_names"))


def _line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else ""


def _inference_precision(precision: str) -> str:
    if precision != "fp16":
        return "f32"
    import openvino as ov

    caps = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    return "f16" if "FP16" in caps else "f32"


class OpenVINORunner:
    """A model compiled for the CPU; `run`, `run_all` and `latency` use synchronous infer requests.

    Outputs are found by their tensor names on the compiled model's ports (the ONNX frontend keeps the ONNX
    output names), in the order of `output_names` when given (the ONNX graph's, recorded at build), else in
    port order; never by the order of the result dict."""

    def __init__(self, path: Path, inference_precision: str = "f32", *, output_names: list[str] | None = None) -> None:
        import openvino as ov
        import openvino.properties.hint as hints

        core = ov.Core()
        config: dict[Any, Any] = {hints.inference_precision: inference_precision}
        threads = runtime_threads()  # set by `edgerep matrix` workers so parallel cells share the cores
        if threads is not None:
            import openvino.properties as props

            config[props.inference_num_threads] = threads
        try:
            self.compiled = core.compile_model(str(path), "CPU", config)
        except Exception as exc:
            raise UserError(f"{path}: OpenVINO cannot compile it ({type(exc).__name__}: {_line(exc)})") from None
        self.request = self.compiled.create_infer_request()
        self.input_name = self.compiled.input(0).get_any_name()
        self.output_names, self._ports = _output_ports(self.compiled, output_names, path)
        self.inference_precision = inference_precision
        self.path = path

    def run(self, batch: np.ndarray) -> np.ndarray:
        """The first output."""
        result = self.request.infer({0: np.ascontiguousarray(batch, dtype=np.float32)})
        return np.array(result[self._ports[0]], dtype=np.float32)  # copy: the request reuses its buffer

    def run_all(self, batch: np.ndarray) -> list[np.ndarray]:
        """Every output, in `output_names` order."""
        result = self.request.infer({0: np.ascontiguousarray(batch, dtype=np.float32)})
        return [np.array(result[port], dtype=np.float32) for port in self._ports]

    def latency(self, batch: np.ndarray, warmup: int, iterations: int) -> list[float]:
        feed = {0: np.ascontiguousarray(batch, dtype=np.float32)}
        return time_calls(lambda: self.request.infer(feed), warmup, iterations)

    def close(self) -> None:
        self.request = None
        self.compiled = None


def _output_ports(compiled: Any, wanted: list[str] | None, path: Path) -> tuple[list[str], list[Any]]:
    """(names, ports) of the compiled model's outputs: in `wanted` order, each port found by its tensor names;
    without `wanted` (an IR built before the names were recorded), in port order under each port's first name."""
    ports = list(compiled.outputs)
    if not wanted:
        return [_port_name(p, i) for i, p in enumerate(ports)], ports
    by_name = {name: port for port in ports for name in port.get_names()}
    missing = [name for name in wanted if name not in by_name]
    if missing or len(wanted) != len(ports):
        raise UserError(f"{path}: the compiled model's outputs {[_port_name(p, i) for i, p in enumerate(ports)]} "
                        f"do not match the ONNX outputs {wanted} recorded at build (missing: {missing}); rebuild it")
    return list(wanted), [by_name[name] for name in wanted]


def _port_name(port: Any, index: int) -> str:
    try:
        return str(port.get_any_name())
    except RuntimeError:  # a port without tensor names
        return f"output{index}"


# --- INT8 through NNCF -----------------------------------------------------------------------------


class _Samples:
    """A re-iterable view of the calibration data as single samples (NNCF may pass over it more than once,
    and counts subset_size in items, so one item is one sample)."""

    def __init__(self, calib: Any, limit: int, batch: int | None) -> None:
        self.calib, self.limit, self.batch = calib, limit, batch

    def __iter__(self) -> Iterator[np.ndarray]:
        step = self.batch or 1
        for x in sample_batches(self.calib, step, self.limit, exact=True):
            yield x

    def __len__(self) -> int:
        step = self.batch or 1
        return min(int(self.calib.num_samples), self.limit) // step


def _quantize(model: Any, onnx_path: Path, calib: Any, profile: Any, options: dict) -> tuple[Any, dict]:
    try:
        # NNCF imports torch.utils.cpp_extension, which warns "No CUDA runtime is found" on every CPU-only run.
        logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
        import nncf
    except ImportError:
        raise UserError("nncf is not installed (needed for OpenVINO INT8); pip install 'edgerep[openvino]'") from None
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    method, num = calib_settings(profile, options, "minmax", _METHODS)
    preset_name = options.get("preset", "mixed")
    bias_correction = options.get("bias_correction", "fast")
    if bias_correction not in ("fast", "full"):
        raise UserError(f"openvino bias_correction {bias_correction!r}: use 'fast' or 'full'")
    presets = {"performance": nncf.QuantizationPreset.PERFORMANCE, "mixed": nncf.QuantizationPreset.MIXED}
    if preset_name not in presets:
        raise UserError(f"openvino preset {preset_name!r}: use 'performance' (symmetric) or 'mixed' (asymmetric activations)")
    ignored = check_ignored_nodes(onnx_path, options.get("ignored_nodes"))
    # A detector's prediction convs and decode stay in float, as on every backend (onnx_files.detect_head_float_nodes;
    # the decode's non-weighted ops are left alone by NNCF anyway, the convs are not).
    head = [n for n in detect_head_float_nodes(onnx_path) if n not in ignored]
    ov_ignored = _ov_names(model, ignored + head)

    _, shape = onnx_input(onnx_path)
    fixed_batch = shape[0] if shape and shape[0] is not None else None
    samples = _Samples(calib, num, fixed_batch)
    count = len(samples)
    if count == 0:
        raise UserError(f"--calib {calib.path}: {calib.num_samples} samples, fewer than the model's batch of {fixed_batch}")
    estimator = _ESTIMATORS[method]
    isa = target_isa(profile)
    overflow_fix = overflow_fix_for(isa)
    advanced = AdvancedQuantizationParameters(overflow_fix=OverflowFix(overflow_fix))
    if estimator is not None:
        advanced.activations_range_estimator_params = getattr(RangeEstimatorParametersSet, estimator)
    # MIXED (asymmetric activations) is the default: it keeps the range of non-ReLU activations
    # (SiLU, HardSwish, GELU) and costs the CPU plugin next to nothing; PERFORMANCE is selectable.
    nncf_log = logging.getLogger("nncf")
    level = nncf_log.level
    nncf_log.setLevel(logging.ERROR)  # NNCF logs progress bars and notes at INFO/WARNING
    try:
        # NNCF draws rich progress bars on stdout; keep stdout clean for `--json` output.
        with contextlib.redirect_stdout(sys.stderr):
            quantized = nncf.quantize(
                model, nncf.Dataset(samples), preset=presets[preset_name], subset_size=count,
                target_device=nncf.TargetDevice.CPU, fast_bias_correction=bias_correction == "fast",
                ignored_scope=nncf.IgnoredScope(names=ov_ignored, validate=False) if ov_ignored else None,
                advanced_parameters=advanced,
            )
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"openvino INT8: nncf.quantize failed on {onnx_path.name} ({type(exc).__name__}: {_line(exc)})") from None
    finally:
        nncf_log.setLevel(level)
    return quantized, {"quantizer": "nncf.quantize", "preset": preset_name, "calib_method": method,
                       "bias_correction": bias_correction, "isa": isa, "overflow_fix": overflow_fix,
                       "range_estimator": estimator or "nncf default (MINMAX weights, MEAN_MINMAX activations)",
                       "calib_samples": count * (fixed_batch or 1), "ignored_nodes": ignored,
                       "ignored_openvino_ops": ov_ignored, "float_head_nodes": len(head)}


def overflow_fix_for(isa: str) -> str:
    """NNCF's overflow fix for a target ISA. Without VNNI, oneDNN's u8*s8 kernels add product pairs into a
    saturating int16 as ONNX Runtime's do; NNCF's fix stores weights in 7 bits so no pair can overflow.
    "enable" (every layer) where the target lacks VNNI; "disable" (full 8-bit weights) where it cannot
    overflow (VNNI, AMX, ARM64). NNCF's own default, "first_layer_only", is a compromise for unknown CPUs."""
    return "enable" if int16_saturation_risk(isa) else "disable"


def _ov_names(model: Any, onnx_names: list[str]) -> list[str]:
    """OpenVINO op names for ONNX node names. The ONNX frontend names an op after its ONNX node, or
    "<node>/<part>" when it splits one node into several (a Conv with bias becomes
    "<node>/WithoutBiases" + an Add "<node>")."""
    if not onnx_names:
        return []
    ops = [op.get_friendly_name() for op in model.get_ordered_ops()]
    found: list[str] = []
    for name in onnx_names:
        matches = [op for op in ops if op == name or op.startswith(name + "/")]
        found.extend(m for m in matches if m not in found)
    return found


BACKEND = OpenVINOBackend()
