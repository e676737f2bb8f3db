"""What the pipeline needs of any data source: classification images and arrays (data.sources) and letterboxed
detection sets (data.detect_source) alike."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Protocol

import numpy as np


class BatchSource(Protocol):
    @property
    def path(self) -> Path: ...

    @property
    def kind(self) -> str: ...

    @property
    def has_labels(self) -> bool: ...

    @property
    def num_samples(self) -> int: ...

    @property
    def sample_shape(self) -> tuple[int, ...]: ...

    def iter_batches(self, batch_size: int, limit: int | None = None) -> Iterator[tuple[np.ndarray, Any]]:
        """(NCHW float32 inputs, their labels or None), `batch_size` at a time, up to `limit` samples."""
        ...

    def sha256(self) -> str: ...

    def describe(self) -> dict[str, Any]: ...
