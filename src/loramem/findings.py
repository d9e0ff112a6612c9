"""The paper's findings, each a pure function of a datasheet run's result rows: does this run agree?

A verdict is True/False when the run measured what decides it, None when it did not (recipe skipped, failed or
too small to tell). Evidence carries the numbers the verdict was computed from. Nothing here is typed by hand:
change the data, and the table changes.
"""

from __future__ import annotations

from collections import defaultdict
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


def _by(rows: list[dict], key: str, value: str) -> dict:
    groups: dict = defaultdict(list)
    for r in rows:
        if r.get(key) is not None and r.get(value) is not None:
            groups[r[key]].append(float(r[value]))
    return {k: mean(v) for k, v in sorted(groups.items(), key=lambda kv: _num(kv[0]))}


def _num(x):
    try:
        return (0, float(x))
    except (TypeError, ValueError):
        return (1, str(x))


def _r(x: float) -> float:
    return round(float(x), 4)


def capacity_saturates(rows: list[dict]) -> tuple[bool | None, dict]:
    """Accuracy falls as size grows at a fixed rank, and a larger rank holds more (mean accuracy rises)."""
    ranks = sorted({r["rank"] for r in rows})
    if len(ranks) < 2:
        return None, {"why": "needs at least two ranks"}
    curves = {k: _by([r for r in rows if r["rank"] == k], "size_tokens", "accuracy") for k in ranks}
    falls = {k: (list(c.values())[0] - list(c.values())[-1]) for k, c in curves.items() if len(c) >= 2}
    by_rank = {k: mean(c.values()) for k, c in curves.items()}
    saturates = any(d > 0.05 for d in falls.values())
    grows = by_rank[ranks[-1]] > by_rank[ranks[0]]
    return saturates and grows, {
        "mean_accuracy_by_rank": {k: _r(v) for k, v in by_rank.items()},
        "accuracy_drop_smallest_to_largest_size": {k: _r(v) for k, v in falls.items()},
    }


def efficiency_peaks_low(rows: list[dict]) -> tuple[bool | None, dict]:
    """Efficiency = T_max / N_params is highest below the largest rank tried."""
    tau = rows[0].get("tau", 0.9)
    ranks = sorted({r["rank"] for r in rows})
    eff, tmax = {}, {}
    for k in ranks:
        cells = [r for r in rows if r["rank"] == k]
        ok = [r["size_tokens"] for r in cells if r["accuracy"] >= tau]
        tmax[k] = max(ok) if ok else 0
        eff[k] = tmax[k] / cells[0]["n_params"]
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
        out.append({"id": f.id, "finding": f.statement, "recipe": f.recipe, "agrees": agrees, "evidence": evidence})
    return out
