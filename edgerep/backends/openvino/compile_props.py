"""The compile properties an OpenVINO engine was validated with: `<engine stem>.compile.json` beside its IR.

    {"device": "CPU", "properties": {"INFERENCE_PRECISION_HINT": "f32"}}

is what `core.compile_model(xml, cfg["device"], cfg["properties"])` takes as it is. Without it the CPU plugin picks
its own inference precision: bf16 on a CPU with BF16 (edgerep.cpu.isa.BF16_FLAGS), for the float layers of FP32,
FP16 and INT8 IRs alike, and an IR cannot carry the choice (its rt_info `runtime_options/INFERENCE_PRECISION_HINT`
is not applied at compile, checked on 2026.4). The runner compiles with exactly these properties, the one record of
how to run the engine as it was validated; the sidecar lists the file and the precision it was validated at.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edgerep.errors import UserError

SUFFIX = ".compile.json"
DEVICE = "CPU"
HINT = "INFERENCE_PRECISION_HINT"
HINTS = ("f32", "bf16", "f16")  # the values edgerep writes and `edgerep validate --inference-precision` takes


def inference_precision(precision: str) -> str:
    """The inference precision an engine of `precision` is validated at on this CPU: bf16 computes the FP32 IR in
    bf16; fp16 runs in f16 where the CPU has FP16 arithmetic, else in f32 on its compressed weights; fp32 and the
    float layers of int8 in f32."""
    if precision == "bf16":
        return "bf16"
    if precision != "fp16":
        return "f32"
    import openvino as ov

    caps = ov.Core().get_property(DEVICE, "OPTIMIZATION_CAPABILITIES")
    return "f16" if "FP16" in caps else "f32"


def config_for(hint: str) -> dict[str, Any]:
    """The compile.json body of an engine validated at `hint`."""
    return {"device": DEVICE, "properties": {HINT: hint}}


def config_path(xml: Path) -> Path:
    """model.fp32.xml -> model.fp32.compile.json"""
    return Path(xml).with_suffix(SUFFIX)


def write_config(xml: Path, config: dict[str, Any]) -> str:
    """Write `config` beside `xml` (inside atomic_files' folder, so it lands with the IR); returns its file name,
    which the sidecar lists (settings.compile_properties)."""
    path = config_path(xml)
    path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return path.name


def read_config(xml: Path, settings: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """(compile.json body, its file name) of the engine `xml` whose sidecar settings are `settings`. An engine
    built before compile.json existed gets the body its recorded inference precision implies (file name None)."""
    name = settings.get("compile_properties")
    if not name:
        return config_for(settings.get("inference_precision") or "f32"), None
    path = Path(xml).with_name(str(name))
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: missing, but {Path(xml).name}'s sidecar lists it (the properties the engine was "
                        f"validated with); copy it back beside the IR or rebuild the engine") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: not readable JSON ({exc}); restore it or rebuild the engine") from None
    if not isinstance(body, dict) or not isinstance(body.get("properties"), dict) or not isinstance(body.get("device"), str):
        raise UserError(f'{path}: expected {{"device": "CPU", "properties": {{...}}}}; restore it or rebuild the engine')
    return body, path.name


def precision_name(value: Any) -> str:
    """An inference precision as OpenVINO answers it (an element Type, or its name) in edgerep's spelling: f32."""
    name = value.get_type_name() if hasattr(value, "get_type_name") else str(value)
    return {"float32": "f32", "bfloat16": "bf16", "float16": "f16"}.get(name, name)


def precision_warning(engine: str, *, validated: str, actual: str, asked: str | None, config_file: str | None,
                      configured: str | None = None, cpu: Any = None) -> str | None:
    """One line when `engine` runs here at another inference precision than it was validated at (`validated`, the
    sidecar's), or at another than `edgerep validate --inference-precision` asked for (`asked`, "default" for no
    hint); None when they agree. `actual` is what the compiled model says it runs at, `configured` the hint of its
    compile.json (`config_file`) when no flag overrode it."""
    if actual != validated:
        if asked == "default":
            why = "--inference-precision default: OpenVINO's own choice on this CPU"
        elif asked is not None:
            why = f"--inference-precision {asked}"
        elif configured is not None and configured != validated:
            why = f"{config_file} now asks for {configured}"
        else:
            why = _fallback(validated, cpu)
        source = f" ({config_file})" if config_file else ""
        return (f"{engine} was validated at inference precision {validated}{source} but runs at {actual} here ({why}): "
                f"the accuracy and latency below are {actual}'s, not the validated engine's")
    if asked not in (None, "default") and actual != asked:
        return (f"--inference-precision {asked}: OpenVINO runs {engine} at {actual} on this CPU "
                f"({_fallback(str(asked), cpu)}), the precision it was validated at")
    return None


def _fallback(hint: str, cpu: Any) -> str:
    """Why OpenVINO ran another precision than `hint` here: it falls back to f32 where the CPU lacks the type."""
    if hint == "bf16":
        from edgerep.cpu.isa import host_cpu

        missing = (cpu or host_cpu()).bf16_missing()
        return f"{missing}, so OpenVINO falls back to f32" if missing else "OpenVINO's fallback"
    if hint == "f16":
        return "no FP16 arithmetic in this CPU's OPTIMIZATION_CAPABILITIES, so OpenVINO falls back to f32"
    return "OpenVINO's fallback"
