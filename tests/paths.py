"""Where the repository's files are, for a test in any folder: the one place that climbs from __file__."""
from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]  # tests/paths.py -> the repository root
CALIB = REPO / "calib"
DIGITS_DET = CALIB / "digits_det"  # the shipped detection set: train/ and val/, YOLO labels
