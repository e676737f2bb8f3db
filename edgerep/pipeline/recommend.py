"""Which engine to ship: one rule over plain report data.

Standard library only and Python 3.6 syntax (no `from __future__ import annotations`, no dataclasses), so the
device bundle's check_engine.py (JetPack 4: Python 3.6, no edgerep) can carry a copy and apply the same rule.

The rule:
1. The deploy batch size is the profile's `[latency] deploy_batch` (default: the first of `batch_sizes`).
2. Candidates are the engines that ran (status ok), passed their gates, are not predictions (the TensorRT
   host's Q/DQ-in-ONNX-Runtime row) and have a p50 latency measured at the deploy batch size.
3. Going from the highest precision down (fp32, bf16, fp16, int8; at one precision the GPU engine, then a DLA
   engine of the same precision), a lower precision (or the DLA engine) replaces the current choice only
   when it is measurably at least MIN_SPEEDUP times faster at the deploy batch: where both engines were timed in
   interleaved rounds (validate.timing: `round_p50` at that batch), the lower end of the speed-up's interval
   (speedup_interval) must reach MIN_SPEEDUP; for records without rounds, the ratio of the p50s. Otherwise the
   report says it is not (measurably) faster and the higher precision (fewer rounding errors) stays recommended.
4. With a degenerate reference (nothing could be checked) nothing is recommended; with only engines skipped
   on the host (a TensorRT device bundle) the choice is deferred to the device.
"""
import random
import statistics
from typing import Any, Dict, List, Optional, Tuple

PRECISION_ORDER = ("fp32", "bf16", "fp16", "int8")  # highest precision first (as targets.PRECISIONS)
# A lower precision must beat a higher one by 5% to be preferred: below that, the difference is within what
# repeated runs on a shared machine move by, and the higher precision is the safer engine.
MIN_SPEEDUP = 1.05
INTERVAL_LEVEL = 0.95  # the speed-up interval: a bootstrap over rounds of this coverage
_BOOTSTRAP_DRAWS = 2000


def speedup_interval(slow_rounds: List[float], fast_rounds: List[float], *, level: float = INTERVAL_LEVEL,
                     draws: int = _BOOTSTRAP_DRAWS, seed: int = 0) -> Optional[Tuple[float, float, float]]:
    """(median, low, high) of how many times faster `fast` is than `slow`, from their interleaved rounds: round r
    of each was measured at the same minute, so the ratio of the two round medians cancels the machine's drift;
    the interval is the bootstrap (rounds drawn with replacement, `draws` times, seeded) of the median ratio.
    None with fewer than two paired rounds."""
    ratios = [s / f for s, f in zip(slow_rounds, fast_rounds) if f > 0]
    if len(ratios) < 2:
        return None
    rng = random.Random(seed)
    medians = sorted(statistics.median(rng.choices(ratios, k=len(ratios))) for _ in range(draws))
    tail = (1.0 - level) / 2.0
    low, high = medians[int(tail * draws)], medians[min(draws - 1, int((1.0 - tail) * draws))]
    return statistics.median(ratios), low, high


def rounds_at(engine: Dict[str, Any], batch: int) -> Optional[List[float]]:
    """The engine's per-round medians (ms) at `batch` (interleaved timing), or None."""
    for lat in engine.get("latency_by_batch") or []:
        if lat.get("batch_size") == batch and lat.get("round_p50"):
            return [float(v) for v in lat["round_p50"]]
    return None


def _speedup(slow: Dict[str, Any], fast: Dict[str, Any], batch: int) -> Tuple[float, Optional[List[float]]]:
    """The ratio of p50s (slow / fast) and, where both have rounds, its interval [low, high]."""
    ratio = _p50(slow, batch) / _p50(fast, batch)
    a, b = rounds_at(slow, batch), rounds_at(fast, batch)
    interval = speedup_interval(a, b) if a and b and len(a) == len(b) else None
    return ratio, ([interval[1], interval[2]] if interval else None)


def deploy_batch(profile: Optional[Dict[str, Any]]) -> int:
    """The batch size the engine is deployed at: `[latency] deploy_batch`, else the first measured batch size."""
    latency = (profile or {}).get("latency") or {}
    if latency.get("deploy_batch"):
        return int(latency["deploy_batch"])
    sizes = latency.get("batch_sizes") or [1]
    return int(sizes[0])


def p50_at(engine: Dict[str, Any], batch: int) -> Optional[float]:
    """The engine's median latency (ms) at `batch`, or None when it was not measured there."""
    for lat in engine.get("latency_by_batch") or []:
        if lat.get("batch_size") == batch and lat.get("p50") is not None:
            return float(lat["p50"])
    if engine.get("latency_batch_size") == batch and (engine.get("latency_ms") or {}).get("p50") is not None:
        return float(engine["latency_ms"]["p50"])
    return None


def _p50(engine: Dict[str, Any], batch: int) -> float:
    """p50_at for an engine known to be measured at `batch`."""
    value = p50_at(engine, batch)
    if value is None:
        raise ValueError("{}: no latency at batch {}".format(engine.get("precision"), batch))
    return value


def _rank(engine: Dict[str, Any]) -> Tuple[int, int]:
    """Highest precision first; within one precision the GPU engine before a DLA one (a TensorRT bundle for a
    DLA profile builds both): the DLA engine replaces it only when measurably MIN_SPEEDUP faster, as a lower
    precision does."""
    prec = engine.get("precision")
    order = PRECISION_ORDER.index(prec) if prec in PRECISION_ORDER else len(PRECISION_ORDER)
    return order, 0 if engine.get("dla_core") is None else 1


def label(engine: Dict[str, Any]) -> str:
    """The engine's name in the reason and notes: its precision, plus "dla<N>" for a DLA engine."""
    name = str(engine.get("precision"))
    return name if engine.get("dla_core") is None else "{} dla{}".format(name, engine["dla_core"])


def accuracy_text(engine: Dict[str, Any]) -> str:
    acc = engine.get("accuracy") or {}
    if acc.get("labelled_map_drop") is not None:
        return "mAP drop {:.1f} pp".format(acc["labelled_map_drop"])
    if acc.get("map_agreement") is not None:
        return "mAP agreement {:.3f}".format(acc["map_agreement"])
    if acc.get("top1_drop") is not None:
        return "top-1 drop {:.1f} pp".format(acc["top1_drop"])
    if acc.get("top1_agreement") is not None:
        return "top-1 agreement {:.1f}%".format(acc["top1_agreement"])
    if acc.get("cosine") is not None:
        return "cosine {:.4f}".format(acc["cosine"])
    return "accuracy not measured"


def _empty(batch: Optional[int], reason: str, notes: List[str], deferred: Optional[str] = None) -> Dict[str, Any]:
    return {"backend": None, "precision": None, "path": None, "batch_size": batch, "p50_ms": None, "speedup": None,
            "baseline": None, "reason": reason, "notes": notes, "not_faster": [], "deferred": deferred}


def recommend_engines(engines: List[Dict[str, Any]], *, batch: int, degenerate: Optional[str] = None,
                      min_speedup: float = MIN_SPEEDUP) -> Dict[str, Any]:
    """The engine to ship among `engines` (report.json engine records) at deploy batch size `batch`.

    Returns report.json's `recommended`: backend, precision, path, batch_size, p50_ms, speedup (over the
    baseline: the highest precision measured at that batch), baseline, reason (one line), notes (engines that
    could not be chosen and why), not_faster (passing lower precisions that were not MIN_SPEEDUP faster:
    precision, than, speedup, p50_ms, than_p50_ms) and deferred ("device" for a device bundle, else null)."""
    real = [e for e in engines if not e.get("prediction")]
    if degenerate:
        return _empty(batch, "none: the accuracy could not be checked (the reference is degenerate)", [])
    if real and all(e.get("status") == "skipped" for e in real):
        return _empty(batch, "deferred to the device: the engines are built and validated there", [],
                      deferred="device")
    notes: List[str] = []
    measured = sorted((e for e in real if e.get("status") == "ok" and p50_at(e, batch) is not None), key=_rank)
    candidates = []
    for e in sorted(real, key=_rank):
        name = label(e)
        if e.get("status") != "ok":
            notes.append("{}: {} ({})".format(name, e.get("status"), e.get("reason") or "no reason given"))
        elif not e.get("passed"):
            notes.append("{}: failed its gates ({})".format(name, e.get("reason") or "no reason given"))
        elif p50_at(e, batch) is None:
            notes.append("{}: no latency measured at batch {}".format(name, batch))
        else:
            candidates.append(e)
    if not candidates:
        return _empty(batch, "none: no engine passed its gates", notes)
    baseline = measured[0]
    choice = candidates[0]
    not_faster: List[Dict[str, Any]] = []
    for e in candidates[1:]:
        ratio, interval = _speedup(choice, e, batch)
        if (interval[0] if interval else ratio) >= min_speedup:
            choice = e
        else:  # `measurable`: False when the ratio alone would pass but its interval reaches below the threshold
            not_faster.append({"precision": label(e), "than": label(choice), "speedup": ratio,
                               "interval": interval, "measurable": ratio < min_speedup,
                               "p50_ms": _p50(e, batch), "than_p50_ms": _p50(choice, batch)})
    p50 = _p50(choice, batch)
    speedup = _p50(baseline, batch) / p50 if p50 > 0 else float("inf")  # inf: null in report.json
    interval = None if choice is baseline else _speedup(baseline, choice, batch)[1]
    if choice is baseline:
        speed = "p50 {:.3g} ms at batch {}".format(p50, batch)
    else:
        speed = "{:.1f}x {} at batch {}".format(speedup, label(baseline), batch)
        if interval:
            speed += " ({:.0%} interval {:.2f}-{:.2f}x)".format(INTERVAL_LEVEL, interval[0], interval[1])
    reason = "{}: {}, {}".format(label(choice), speed, accuracy_text(choice))
    # The one line names the lower precisions the chosen engine was kept over; the rest stay in not_faster.
    kept_over = [_not_faster_text(n) for n in not_faster if n["than"] == label(choice)]
    if kept_over:
        reason += "; not measurably faster here: {}".format(", ".join(kept_over))
    return {"backend": choice.get("backend"), "precision": choice.get("precision"), "path": choice.get("path"),
            "batch_size": batch, "p50_ms": p50, "speedup": speedup, "speedup_interval": interval,
            "baseline": baseline.get("precision"),
            "reason": reason, "notes": notes, "not_faster": not_faster, "deferred": None}


def _not_faster_text(entry: Dict[str, Any]) -> str:
    text = "{} {:.2f}x".format(entry["precision"], entry["speedup"])
    if entry.get("interval"):
        text += " ({:.2f}-{:.2f}x)".format(entry["interval"][0], entry["interval"][1])
    return text


def recommend(report: Dict[str, Any], profile: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """`recommended` for a build's report (profile: the target as a dict, default report["target"])."""
    profile = profile if profile is not None else report.get("target")
    degenerate = (report.get("reference") or {}).get("degenerate")
    return recommend_engines(report.get("engines") or [], batch=deploy_batch(profile), degenerate=degenerate)


def format_recommendation(rec: Optional[Dict[str, Any]]) -> str:
    """One line for a terminal or a Markdown file."""
    if not rec:
        return "recommended: -"
    if rec.get("precision") is None:
        return "recommended: {}".format(rec.get("reason"))
    return "recommended: {} {} ({})".format(rec.get("backend"), rec.get("precision"), rec.get("reason"))


# --- for the device side (to wire in after the TensorRT rework is merged) -------------------------------------


def recommend_on_device(records: List[Dict[str, Any]], profile: Dict[str, Any]) -> Dict[str, Any]:
    """INTEGRATION POINT for `edgerep validate --bundle` and the bundle's check_engine.py: the same rule over
    the engine records validated on the device (one per engine, as `validate --bundle` makes them; their
    `latency_by_batch` at the bundle's batch size) with the bundle's profile (bundle.json "profile")."""
    return recommend_engines(records, batch=deploy_batch(profile))
