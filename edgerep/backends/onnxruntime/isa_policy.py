"""Which INT8 weight format a target ISA can run without int16 saturation (full-range s8 needs VNNI)."""
from __future__ import annotations

from edgerep.backends.onnxruntime.quantize import WEIGHT_FORMATS
from edgerep.cpu.isa import int16_saturation_risk
from edgerep.errors import UserError


def weight_format_for(isa: str, requested: str | None = None) -> str:
    """The weight format for a target ISA: full-range s8 where the integer kernels cannot saturate, else 7-bit.
    Asking for s8 on a saturating ISA is refused: it is the -8 point trap this check exists for."""
    if requested is None:
        return "s7" if int16_saturation_risk(isa) else "s8"
    if requested not in WEIGHT_FORMATS:
        raise UserError(f"int8_weights {requested!r}: use one of {', '.join(WEIGHT_FORMATS)}")
    if requested == "s8" and int16_saturation_risk(isa):
        raise UserError(f"int8_weights s8: full-range int8 weights can saturate int16 sums on {isa} (no VNNI); "
                        f"use s7 or u8, or a target whose isa has VNNI")
    return requested


def weight_formats_for(isa: str) -> list[str]:
    """Weight formats an INT8 search tries for a target ISA (the default first). uint8 (U8U8) is left out:
    it ran slower than FP32 in scripts/bench_int8.py (bench/int8_isa.json), so it is an explicit option only."""
    return ["s7"] if int16_saturation_risk(isa) else ["s8", "s7"]
