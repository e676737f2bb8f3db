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
