"""The sensitivity bar plot (matplotlib, Agg backend: no display needed)."""
from __future__ import annotations

from pathlib import Path
from typing import Any


def plot_sensitivity(result: dict[str, Any], path: Path, *, ranges: list[dict[str, Any]] | None = None) -> Path:
    """Bars per layer in graph order: output noise (NSR) when the layer alone is quantized, and the noise
    removed when it alone stays in float; layers flagged by the range statistics are marked. Written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from edgerep.files.artifacts import atomic_path

    layers = sorted(result["layers"], key=lambda r: r.get("order", 0))
    flagged = {r["node"] for r in (ranges or []) if r.get("flags")}
    labels = [(r.get("module") or r["node"]) + (" *" if r["node"] in flagged else "") for r in layers]
    all_nsr = result["all_int8"]["nsr"] or 0.0
    quant_one = np.array([r["quant_one"]["nsr"] or 0.0 for r in layers])
    gain = np.array([all_nsr - (r["float_one"]["nsr"] or 0.0) for r in layers])
    positive = np.concatenate([quant_one[quant_one > 0], gain[gain > 0], [all_nsr] if all_nsr > 0 else []])
    # Log axis: a layer whose noise is 10^4 below the whole model's does not matter; no bar goes below that.
    floor = max(positive.min() / 2, positive.max() * 1e-4) if positive.size else 1e-9
    quant_one, gain = np.maximum(quant_one, floor), np.maximum(gain, floor)
    y = np.arange(len(layers))
    fig, ax = plt.subplots(figsize=(8, max(2.5, 0.32 * len(layers) + 1.2)))
    ax.barh(y - 0.2, quant_one, height=0.4, label="only this layer in INT8: output noise", color="#d62728")
    ax.barh(y + 0.2, gain, height=0.4, label="this layer alone in float: noise removed", color="#1f77b4")
    ax.set_xscale("log")
    ax.set_xlim(left=floor)
    ax.axvline(all_nsr, color="gray", linestyle="--", linewidth=1, label=f"all layers INT8: {all_nsr:.2e}")
    ax.set_yticks(y)
    ax.set_yticklabels(labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("output noise-to-signal ratio (log)")
    s = result.get("settings", {})
    ax.set_title(f"INT8 sensitivity per layer ({s.get('style')} Q/DQ, {s.get('calib_method')})"
                 + ("; * = range outlier" if flagged else ""), fontsize=9)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12 - 1.2 / max(len(layers), 4)), ncol=2)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(str(tmp), format=path.suffix.lstrip(".") or "png", dpi=110)
    plt.close(fig)
    return path


def plot_frontier(plan: dict[str, Any], path: Path, *, title: str = "") -> Path | None:
    """The INT8 plan's candidates as points: speed-up over FP32 (x, with its interval) against drop (y, ± its
    standard error), each labelled with its float layers; the budget and min_speedup as lines, the chosen plan
    circled. None (nothing written) when no candidate was timed. Written atomically."""
    rows = [r for r in plan.get("frontier") or [] if r.get("speedup") is not None]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from edgerep.files.artifacts import atomic_path

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in rows:
        x, y = r["speedup"], r["drop"]
        low, high = r.get("speedup_interval") or (x, x)
        color = "tab:green" if r.get("pareto") else "tab:gray"
        ax.errorbar([x], [y], xerr=[[max(x - low, 0.0)], [max(high - x, 0.0)]], yerr=[[r.get("drop_se") or 0.0]] * 2,
                    fmt="o", color=color, ecolor=color, alpha=0.8, capsize=2, markersize=5)
        ax.annotate(f"{r['float_layers']}f", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        if r.get("chosen"):
            ax.plot([x], [y], "o", markersize=13, markerfacecolor="none", markeredgecolor="tab:red")
    ax.axhline(float(plan["max_drop"]), color="tab:red", linestyle="--", linewidth=1,
               label=f"budget {plan['max_drop']:g} pt")
    if plan.get("min_speedup") is not None:
        ax.axvline(float(plan["min_speedup"]), color="tab:blue", linestyle=":", linewidth=1,
                   label=f"min speed-up {plan['min_speedup']:g}x")
    ax.axvline(1.0, color="gray", linewidth=0.8)
    ax.set_xlabel("speed-up over FP32 at the deploy batch (interval over interleaved rounds)")
    ax.set_ylabel(f"drop, pt of {plan.get('drop_metric') or 'the metric'} (± standard error)")
    ax.set_title(title or "INT8 plan candidates (green: Pareto frontier, circled: chosen; Nf = N float layers)",
                 fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(str(tmp), format="png", dpi=110)
    plt.close(fig)
    return path
