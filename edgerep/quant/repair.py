"""Range repairs before INT8 (cross-layer equalization, bias correction): the INT8 search's entry point.

The implementation is edgerep.backends.repair, because every backend's INT8 build applies it (a backend may not
import quant); this module is the name the search and the report use.
"""
from __future__ import annotations

from edgerep.backends.repair import REPAIR_OPTION, REPAIRS, apply_repairs, check_repairs, repair_capable

__all__ = ["REPAIRS", "REPAIR_OPTION", "apply_repairs", "check_repairs", "repair_capable"]
