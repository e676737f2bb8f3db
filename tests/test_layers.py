"""The package keeps docs/ARCHITECTURE.md's layer rule (scripts/check_layers.py), and the checker sees a breach."""
from __future__ import annotations

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _checker():
    spec = importlib.util.spec_from_file_location("check_layers", REPO / "scripts" / "check_layers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_package_keeps_the_layer_rule():
    assert _checker().broken_rules(REPO / "edgerep") == {}


def test_a_ground_module_importing_the_pipeline_is_reported(tmp_path):
    pkg = tmp_path / "edgerep"
    (pkg / "files").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "files" / "x.py").write_text("def f():\n    from edgerep.pipeline import stages\n")
    (pkg / "files" / "y.py").write_text("from edgerep.errors import UserError\n")  # ground uses ground: fine
    assert _checker().broken_rules(pkg) == {"files -> pipeline": {"edgerep.files.x imports edgerep.pipeline",
                                                                  "edgerep.files.x imports edgerep.pipeline.stages"}}
