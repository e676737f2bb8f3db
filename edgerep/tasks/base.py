"""The Task strategy: what "accuracy" means for a model, shared by validate, the INT8 search, sensitivity, the
report and the device bundle. A task turns reference and engine outputs into the engine's `accuracy` record,
judges it against its gate, says how many points an INT8 engine lost (the unit of --max-drop) and how its
records read in report.md, the terminal summary, the plot and the matrix. Nothing outside tasks/ branches on
a task's name: it asks the task.

The base class is the tensor view every task has (cosine, errors, and top-1 where outputs are class scores):
classify and raw read their records this way; detect overrides what differs."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

if TYPE_CHECKING:
    from edgerep.targets import TargetProfile

# Outputs that vary by less than this across samples carry no signal an FP32 engine can reproduce: float32
# rounds at about 1e-7 of a value's magnitude, and trained models' outputs are O(0.1..10).
NEAR_CONSTANT_ABS = 1e-6
NEAR_CONSTANT_REL = 1e-6  # ... or by less than this fraction of their own magnitude (a constant output)
UNTRAINED_HINT = "are the weights trained? pass --weights"


def near_constant(outputs: np.ndarray) -> str | None:
    """One line when the outputs vary across samples by less than NEAR_CONSTANT_ABS, or by less than
    NEAR_CONSTANT_REL of their RMS (the model ignores its input: typically untrained weights), else None."""
    out = np.asarray(outputs, dtype=np.float64)
    n = out.shape[0] if out.ndim else 0
    if n < 2 or out.size == 0:
        return None
    flat = out.reshape(n, -1)
    spread = float(np.max(np.std(flat, axis=0)))
    rms = float(np.sqrt(np.mean(flat * flat)))
    if spread <= max(NEAR_CONSTANT_ABS, NEAR_CONSTANT_REL * rms):
        return f"reference outputs are nearly constant (std {spread:.2g} across {n} samples): {UNTRAINED_HINT}"
    return None


def gate_value(gate: Any, key: str) -> float | None:
    value = gate.get(key) if isinstance(gate, dict) else getattr(gate, key, None)
    return None if value is None else float(value)


def fmt(value: Any, spec: str = ".4g", suffix: str = "") -> str:
    """A number for a table cell ("-" when unknown)."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:{spec}}{suffix}"
    return f"{value}{suffix}"


def latency_cell(lat: dict[str, Any]) -> str:
    """p50 in ms and, when the engines were timed in rounds, the range of the round medians."""
    spread = lat.get("spread")
    text = fmt(lat.get("p50"), ".3f")
    return text + (f" ({spread[0]:.3f}-{spread[1]:.3f})" if spread and lat.get("p50") is not None else "")


def engine_verdict(eng: dict[str, Any]) -> str:
    """An engine's gate column: pass / FAIL / n/a (gates could not judge), or its status when not built."""
    if eng["status"] != "ok":
        return str(eng["status"])
    return {True: "pass", False: "FAIL"}.get(eng["passed"], "n/a")


class Task:
    """Base of the tasks. `note` is a line the report and console show (e.g. why the task was chosen)."""

    name = "task"
    budget_unit = "points"
    # The task's own gate table in a profile ([gates.<gate_table>.<precision>]); None: [gates.<precision>].
    gate_table: str | None = None
    # Keys a record of this task's accuracy has beyond report.ACCURACY_KEYS (null when unknown), and those an
    # INT8 plan keeps per candidate beyond the common ones.
    accuracy_keys: tuple[str, ...] = ()
    plan_keys: tuple[str, ...] = ()
    has_accuracy = False  # a task-level accuracy metric beyond tensor error (what --max-drop budgets)
    draws_pictures = False  # the build draws each engine's outputs on validation images (pipeline.pictures)
    lists_outputs = False  # report.md lists each output's errors even for a single output

    def __init__(self, *, explicit: bool = False, note: str | None = None) -> None:
        self.explicit = explicit  # the user asked for it (--task): a failure to apply it is an error, not a fallback
        self.note = note

    def options(self) -> dict[str, Any]:
        """The settings that change the metrics (recorded in the report)."""
        return {}

    def prepare(self, reference: Any) -> None:
        """Compute what the task needs from the reference once (e.g. the reference's detections)."""

    def degenerate(self, reference: Any) -> str | None:
        return near_constant(reference.outputs)

    def reference_info(self, reference: Any) -> dict[str, Any]:
        """The task's facts about the reference for report.json's `reference`."""
        return {}

    def score(self, reference: Any, outputs_all: Sequence[np.ndarray]) -> dict[str, Any]:
        raise NotImplementedError

    def drop(self, metrics: dict[str, Any]) -> float:
        """Points lost in budget_unit; ValueError when the metrics carry nothing to budget."""
        raise ValueError(f"task {self.name}: no accuracy metric to budget; --max-drop needs --task classify or detect")

    def drop_metric(self, metrics: dict[str, Any]) -> str | None:
        """The name of the metric drop() used on these metrics (e.g. "top1", "map_agreement")."""
        return None

    def check_gate(self, metrics: dict[str, Any], gate: Any, has_labels: bool) -> tuple[bool, str | None]:
        raise NotImplementedError

    def finish(self, metrics: dict[str, Any], reference: Any, outputs_all: Sequence[np.ndarray], n: int) -> dict[str, Any]:
        """Add what every task's record has: each output's errors (`outputs`) and the task's note."""
        from edgerep.tasks.tensors import output_errors

        metrics["outputs"] = output_errors([o[:n] for o in reference.outputs_all], outputs_all, reference.output_names)
        if self.note:
            metrics["note"] = self.note
        return metrics

    def summary(self, metrics: dict[str, Any]) -> str:
        """The accuracy part of a stage's one-line detail."""
        return f"cosine {metrics.get('cosine', 0.0):.6f}"

    def detail(self) -> str:
        """The task stage's line: the task and what decides its metrics."""
        return self.name + (f"; {self.note}" if self.note else "")

    def can_budget(self, reference: Any) -> bool:
        """Whether --max-drop has an accuracy to budget on this reference."""
        return False

    # --- the reference, in words ---

    def reference_detail(self, reference: Any) -> str:
        """The reference stage's line (after the sample count)."""
        return f", top-1 {reference.top1:.2f}%" if reference.top1 is not None else ", no labels"

    def reference_line(self, report: dict[str, Any]) -> str:
        """report.md's line on the reference."""
        ref = report.get("reference") or {}
        top1 = ref.get("top1")
        return (f"- reference: unfused PyTorch model on `{(ref.get('data') or {}).get('path')}`, "
                f"{ref.get('num_samples')} samples" + (f", top-1 {top1:.2f}%" if top1 is not None else ", no labels"))

    def reference_text(self, reference: dict[str, Any]) -> str:
        """The reference's accuracy in a few words (`edgerep sensitivity`)."""
        return f"reference top-1 {fmt(reference.get('top1'), '.2f')}%"

    # --- engines, in tables ---

    table_headers = ["backend", "precision", "gate", "max abs err", "cosine", "SQNR dB", "top-1 agree", "top-1",
                     "drop pp", "p50 ms (rounds)", "p99 ms", "inputs/s", "reason"]
    table_note = "top-1 drop is against the unfused PyTorch model's own labelled top-1."
    summary_columns = ("engine", "gate", "cosine", "agree%", "top-1%", "drop", "p50 ms", "p99 ms", "in/s")

    def table_row(self, eng: dict[str, Any]) -> list[str]:
        """report.md's row of one engine (columns: table_headers)."""
        acc, lat = eng["accuracy"], eng["latency_ms"]
        return [eng["backend"], eng["precision"], engine_verdict(eng),
                fmt(acc.get("max_abs_err"), ".3g"), fmt(acc.get("cosine"), ".6f"), fmt(acc.get("sqnr_db"), ".1f"),
                fmt(acc.get("top1_agreement"), ".2f", "%"), fmt(acc.get("top1"), ".2f", "%"),
                fmt(acc.get("top1_drop"), "+.2f"),
                latency_cell(lat), fmt(lat.get("p99"), ".3f"), fmt(eng.get("throughput_ips"), ".1f"),
                eng.get("reason") or ""]

    def summary_cells(self, acc: dict[str, Any]) -> list[str]:
        """The accuracy cells of the terminal summary (between "gate" and "p50 ms" of summary_columns)."""
        return [fmt(acc.get("cosine"), ".5f"), fmt(acc.get("top1_agreement"), ".2f"), fmt(acc.get("top1"), ".2f"),
                fmt(acc.get("top1_drop"), "+.2f")]

    def console_lines(self, acc: dict[str, Any]) -> list[str]:
        """An engine's accuracy as `edgerep validate --bundle` prints it."""
        line = (f"  max abs err {acc['max_abs_err']:.3g}, cosine {acc['cosine']:.6f}, "
                f"top-1 agreement {_pct(acc.get('top1_agreement'))}")
        if acc.get("top1") is not None:
            line += f", top-1 {_pct(acc.get('top1'))} (reference {_pct(acc.get('ref_top1'))})"
        return [line]

    def plot_metric(self, accuracies: list[dict[str, Any]]) -> tuple[str, str, float]:
        """(accuracy key, axis label, scale) for the latency/accuracy plot: labelled top-1 where labels exist,
        else top-1 agreement, else cosine."""
        if any(a.get("top1") is not None for a in accuracies):
            return "top1", "labelled top-1 (%)", 1.0
        if any(a.get("top1_agreement") is not None for a in accuracies):
            return "top1_agreement", "top-1 agreement with reference (%)", 1.0
        return "cosine", "cosine similarity", 1.0

    def key_metric(self, acc: dict[str, Any]) -> dict[str, Any]:
        """The one figure per engine a matrix heat map shows, in points lost (lower is better)."""
        if acc.get("top1_drop") is not None:
            return {"name": "top1_drop", "value": acc["top1_drop"], "unit": "pp"}
        if acc.get("top1_agreement") is not None:
            return {"name": "top1_disagreement", "value": 100.0 - acc["top1_agreement"], "unit": "pp"}
        if acc.get("cosine") is not None:
            return {"name": "cosine_loss", "value": 100.0 * (1.0 - acc["cosine"]), "unit": "pp"}
        return {"name": None, "value": None, "unit": "pp"}

    # --- gates from a device bundle's profile (plain data) ---

    def bundle_gates(self, profile: dict[str, Any]) -> dict[str, Any]:
        """The gates per precision of a bundle's profile dict for this task: its own table (the shipped defaults
        where the profile has none), else the common one."""
        if self.gate_table is None:
            return profile.get("gates") or {}
        from edgerep.targets import task_gate_defaults

        own = profile.get(f"{self.gate_table}_gates")
        return own or {k: g.to_dict() for k, g in task_gate_defaults(self.gate_table).items()}

    def gate(self, profile: TargetProfile, precision: str) -> Any:
        """This task's gate of `precision` in a profile."""
        return profile.gate(precision, self.gate_table)


def _pct(value: Any) -> str:
    return "-" if value is None else f"{value:.2f}%"


def tensor_gate_problems(metrics: dict[str, Any], gate: Any) -> list[str]:
    """The broken tensor limits (max_abs_err, min_cosine) of a gate."""
    problems = []
    limit = gate_value(gate, "max_abs_err")
    if limit is not None and metrics.get("max_abs_err") is not None and not metrics["max_abs_err"] <= limit:
        problems.append(f"max_abs_err {metrics['max_abs_err']:.3g} > {limit:g}")
    limit = gate_value(gate, "min_cosine")
    if limit is not None and metrics.get("cosine") is not None and not metrics["cosine"] >= limit:
        problems.append(f"cosine {metrics['cosine']:.6f} < {limit:g}")
    return problems


def verdict(problems: list[str]) -> tuple[bool, str | None]:
    return (not problems), ("; ".join(problems) if problems else None)
