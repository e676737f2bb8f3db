"""`edgerep matrix` files and a local Ray cluster, for tests/matrix and for scripts/bench_matrix.py (which puts the
repository root on sys.path to import this module), so the two write their matrices the same way."""
from __future__ import annotations

import json
from contextlib import contextmanager


def matrix_toml(models: list[dict], targets: list[str], precisions: list[str] | None = None, **defaults) -> str:
    """The text of a matrix file: `targets`, `precisions`, a [defaults] table of `defaults`, one [[models]] table
    per dict in `models` (its keys and values as written)."""

    def value(v) -> str:  # strings, numbers, booleans and lists of them read the same in TOML as in JSON
        return json.dumps(v)

    lines = [f"targets = {value(targets)}"]
    if precisions is not None:
        lines.append(f"precisions = {value(precisions)}")
    if defaults:
        lines += ["", "[defaults]", *(f"{k} = {value(v)}" for k, v in defaults.items())]
    for model in models:
        lines += ["", "[[models]]", *(f"{k} = {value(v)}" for k, v in model.items())]
    return "\n".join(lines) + "\n"


@contextmanager
def local_ray(num_cpus: int = 2):
    """A local Ray cluster of `num_cpus` CPUs for the block (no dashboard, worker logs kept off the driver)."""
    import ray

    ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        yield ray
    finally:
        ray.shutdown()
