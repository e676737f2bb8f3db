"""ONNX simplification (onnxsim, onnxslim or none), its C++ output kept off the user's terminal."""
from __future__ import annotations

import contextlib
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator

from edgerep.errors import UserError, one_line
from edgerep.export.onnx_export import _check_model
from edgerep.files.onnx_files import EXTERNAL_DATA_THRESHOLD, save_onnx

# A serialized ModelProto must stay under 2 GiB (protobuf's limit); keep 64 MiB for the graph itself.
SIMPLIFIERS = ("onnxsim", "onnxslim", "none")


def simplify_onnx(in_path: Path, out_path: Path, *, method: str = "onnxsim",
                  external_data_threshold: int = EXTERNAL_DATA_THRESHOLD,
                  verify: Callable[[Path], None] | None = None) -> tuple[Path, str]:
    """Simplify an ONNX file; returns (out_path, the method that produced it).

    method "onnxsim" falls back to onnxslim, with a warning, when onnxsim raises, reports failure, or
    its result fails `verify`. "onnxslim" uses onnxslim only; "none" copies the model unchanged.
    """
    if method not in SIMPLIFIERS:
        raise UserError(f"--simplifier {method}: unknown; use one of {', '.join(SIMPLIFIERS)}")
    in_path, out_path = Path(in_path), Path(out_path)
    order = ["onnxsim", "onnxslim"] if method == "onnxsim" else [method]
    failures: list[str] = []

    def check(tmp: Path) -> None:
        _check_model(tmp, "simplify")
        if verify:
            verify(tmp)

    for name in order:
        try:
            proto = _SIMPLIFY[name](in_path)
            save_onnx(proto, out_path, external_data_threshold=external_data_threshold, verify=check)
        except _SimplifierMissing as exc:
            failures.append(str(exc))
            continue
        except Exception as exc:
            failures.append(f"{name}: {exc.message if isinstance(exc, UserError) else one_line(exc)}")
            continue
        if failures:
            warnings.warn(f"simplify: {failures[0]}; used {name} instead", UserWarning, stacklevel=2)
        return out_path, name
    if method == "onnxslim" and len(failures) == 1 and "not installed" in failures[0]:
        raise UserError("--simplifier onnxslim: onnxslim is not installed; pip install 'edgerep[slim]'")
    raise UserError(f"stage simplify: {' | '.join(failures)}; try --simplifier none to keep the exported graph")


class _SimplifierMissing(Exception):
    pass


@contextlib.contextmanager
def _native_output_silenced() -> Iterator[None]:
    """onnxsim's C++ constant folder prints a "WARNING: failed to run ... op, skip" line per shape op it leaves
    alone (a detector's decode has dozens) straight to the process's stdout, past Python's sys.stdout: point
    file descriptors 1 and 2 at /dev/null while it runs. The outcome is checked numerically right after."""
    import os

    from edgerep.files.std_fds import std_fds_to

    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        with std_fds_to(devnull):
            yield
    finally:
        os.close(devnull)


def _run_onnxsim(path: Path) -> Any:
    try:
        import onnxsim
    except ImportError:
        raise _SimplifierMissing("onnxsim is not installed; pip install onnxsim") from None
    import inspect

    kwargs: dict[str, Any] = {}
    if "certify" in inspect.signature(onnxsim.simplify).parameters:
        kwargs["certify"] = False  # the optional Z3 proof is slow; our ONNX Runtime check follows anyway
    with _native_output_silenced():
        model, ok = onnxsim.simplify(str(path), **kwargs)
    if not ok:
        raise RuntimeError("onnxsim reported that its simplified model is not equivalent")
    return model


def _run_onnxslim(path: Path) -> Any:
    try:
        import onnxslim
    except ImportError:
        raise _SimplifierMissing("onnxslim is not installed; pip install 'edgerep[slim]'") from None
    return onnxslim.slim(str(path))


def _run_none(path: Path) -> Any:
    import onnx

    return onnx.load(str(path))


_SIMPLIFY: dict[str, Callable[[Path], Any]] = {"onnxsim": _run_onnxsim, "onnxslim": _run_onnxslim, "none": _run_none}
