"""The paper's findings, each a pure function of a datasheet run's result rows: does this run agree?

A verdict is True/False when the run measured what decides it, None when it did not (recipe skipped, failed or
too small to tell). Evidence carries the numbers the verdict was computed from. Nothing here is typed by hand:
change the data, and the table changes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from statistics import mean

Rows = dict[str, list[dict]]  # recipe name -> its ok rows


@dataclass(frozen=True)
class Finding:
    id: str
    statement: str
    recipe: str
    check: Callable[[list[dict]], tuple[bool | None, dict]]


def _r(x: float) -> float:
    return round(float(x), 4)


def interval95(values: list[float]) -> tuple[float, float, float]:
    """Mean and 95% Student t interval of per-seed values; with one value the interval is that value."""
    from loramem.intervals import mean_interval

    return mean_interval(values)


def capacity_saturates(rows: list[dict]) -> tuple[bool | None, dict]:
    """Accuracy falls as size grows at a fixed rank, and the largest rank holds more than the smallest.

    Accuracies are means over training seeds. With several seeds, "holds more" is the per-seed gain (largest rank
    minus smallest, same PhoneBook) and is decided only when its 95% interval excludes zero (or every seed shows the
    same gain; no gain at all is "does not hold more").
    """
    from loramem.experiments.capacity import curves, rank_gain, seeds_run

    curve = curves(rows)
    ranks = list(curve)
    if len(ranks) < 2:
        return None, {"why": "needs at least two ranks"}
    falls = {k: pts[0]["accuracy"] - pts[-1]["accuracy"] for k, pts in curve.items() if len(pts) >= 2}
    by_rank = {k: mean(p["accuracy"] for p in pts) for k, pts in curve.items()}
    saturates = any(d > 0.05 for d in falls.values())
    gains = rank_gain(curve, ranks[0], ranks[-1])
    n_seeds = seeds_run(curve)
    if not gains or (n_seeds > 1 and len(gains) < 2):
        return (False if not saturates else None), {
            "why": f"fewer than two of the {n_seeds} seeds finished the same sizes at rank {ranks[0]} and "
                   f"rank {ranks[-1]}; rerun to resume the failed cells",
            "accuracy_drop_smallest_to_largest_size": {k: _r(v) for k, v in falls.items()}}
    m, lo, hi = interval95(list(gains.values()))
    evidence = {"mean_accuracy_by_rank": {k: _r(v) for k, v in by_rank.items()},
                "accuracy_drop_smallest_to_largest_size": {k: _r(v) for k, v in falls.items()},
                "seeds": len(gains),
                f"rank_{ranks[-1]}_minus_rank_{ranks[0]}": {"by_seed": {s: _r(g) for s, g in gains.items()},
                                                            "mean": _r(m), "ci95": [_r(lo), _r(hi)]}}
    if len(gains) < 2 or lo > 0 or hi < 0 or lo == hi:  # one seed, or every seed the same gain: its sign
        grows: bool | None = m > 0
    else:
        grows = None
    if not saturates:
        return False, evidence
    if grows is None:
        evidence["why"] = (f"rank {ranks[-1]} vs rank {ranks[0]}: the seeds disagree (95% interval of the gain "
                           f"{_r(lo)} to {_r(hi)} holds 0); more seeds or steps would decide it")
    return grows, evidence


def efficiency_peaks_low(rows: list[dict]) -> tuple[bool | None, dict]:
    """Efficiency = T_max / N_params (on the mean over seeds) is highest below the largest rank tried."""
    from loramem.experiments.capacity import curves, t_max

    tau = rows[0].get("tau", 0.9)
    curve = curves(rows)
    ranks = list(curve)
    tmax = {k: t_max(pts, tau) for k, pts in curve.items()}
    eff = {k: tmax[k] / curve[k][0]["n_params"] for k in ranks}
    if len(ranks) < 2 or not any(tmax.values()):
        return None, {"why": "no rank reached the threshold" if ranks else "no rows", "t_max": tmax}
    best = max(eff, key=eff.get)
    return best < ranks[-1], {"tau": tau, "t_max": tmax, "efficiency": {k: f"{v:.3g}" for k, v in eff.items()},
                             "peak_rank": best}


def delegated(module: str, func: str) -> Callable[[list[dict]], tuple[bool | None, dict]]:
    """A check that lives beside its recipe: loramem.experiments.<module>.<func>(rows) -> (agrees, evidence)."""

    def check(rows: list[dict]) -> tuple[bool | None, dict]:
        import importlib

        try:
            fn = getattr(importlib.import_module(f"loramem.experiments.{module}"), func)
        except (ImportError, AttributeError):
            return None, {"why": f"check {module}.{func} is not available in this version"}
        return fn(rows)

    return check


def _continual_findings() -> list:
    try:
        from loramem.experiments.continual_report import FINDINGS as CONTINUAL
    except ImportError:  # a checkout without the recipe
        return []
    return CONTINUAL


FINDINGS: list[Finding] = [
    Finding("capacity-saturates", "Capacity saturates: at a fixed rank accuracy falls as knowledge grows, "
            "and a larger rank stores more", "capacity", capacity_saturates),
    Finding("efficiency-low-rank", "Efficiency (T_max / N_params) peaks at low rank", "capacity",
            efficiency_peaks_low),
    Finding("qa-beats-raw", "QA supervision beats summary/rewrite, which beat raw text, at equal tokens",
            "formats", delegated("formats", "finding_qa_best")),
    Finding("mixes-beat-single", "Multi-view mixes beat single views", "mixes",
            delegated("mixes", "finding_mixes_beat_single")),
    Finding("oracle-multi-beats-single", "With oracle routing, N small LoRAs beat one large LoRA of the same "
            "parameter budget", "multi-lora", delegated("multi_lora", "finding_oracle_beats_single")),
    Finding("embed-routing-can-fall-below", "Embedding routing can fall below a single LoRA", "routing",
            delegated("routing", "finding_embed_can_fall_below")),
    Finding("ties-most-robust", "TIES is the most robust merge method", "merging",
            delegated("merging", "finding_ties_most_robust")),
    Finding("merge-n-degrades", "Accuracy falls as the number N of merged modules grows", "n-modules",
            delegated("n_modules", "finding_accuracy_falls_with_n")),
    Finding("lora-plus-rag-icl", "Open-book, LoRA + RAG/ICL beats each alone", "rag-icl",
            delegated("rag_icl", "finding_lora_plus_context_best")),
    # beyond the paper: a memory that changes (statements and checks beside the recipe)
    *(Finding(fid, text, "continual", delegated("continual_report", fn.__name__))
      for fid, text, fn in _continual_findings()),
]


def evaluate(rows: Rows) -> list[dict]:
    """One entry per finding: finding, recipe, agrees (True/False/None), evidence."""
    out = []
    for f in FINDINGS:
        got = rows.get(f.recipe) or []
        if not got:
            agrees, evidence = None, {"why": f"recipe '{f.recipe}' was not run or has no finished cells"}
        else:
            try:
                agrees, evidence = f.check(got)
            except (KeyError, ValueError, ZeroDivisionError, TypeError) as exc:
                agrees, evidence = None, {"why": f"rows lack what decides it ({type(exc).__name__}: {exc})"}
        out.append({"id": f.id, "finding": f.statement, "recipe": f.recipe, "agrees": agrees, "evidence": evidence,
                    "measured": bool(got)})
    return out


def label(verdict: dict) -> str:
    """agrees / disagrees; undecided when the recipe ran but its numbers cannot tell; not measured when it did not."""
    if verdict["agrees"] is not None:
        return "agrees" if verdict["agrees"] else "disagrees"
    return "undecided" if verdict.get("measured") else "not measured"
