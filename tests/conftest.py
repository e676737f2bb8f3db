"""Fixtures shared by tests in several folders. (Plain helpers live in modules beside this file: cli_helpers,
digits_demo, detect_helpers, paths, reparam_helpers.)"""
from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Tiny convs gain nothing from intra-op threads, and on a loaded 2-core machine OpenMP's spin-waiting
    made each forward ~100x slower (2 s instead of 12 ms). Restored after the module. A module takes it with
    `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
