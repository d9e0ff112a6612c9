"""Q10: merge methods over the top-k routed candidates, with the gold module among them.

Per question the candidates are the gold module plus the k-1 other modules the embedding router ranks highest
(the paper's set-up: routing returns several candidates and merging must keep the right one's knowledge).
Facts with the same candidate set share one merged adapter. `none` (the gold module alone) and the single large
LoRA are the references. Each row keeps every fact's candidates, teacher-forced prediction and scores
(`predictions`, a sample of 200 on a large book).
"""

from __future__ import annotations

import time
from statistics import mean

from loramem.bank.merging import check_method, merge_weights
from loramem.bank.routing import build_router, route_many
from loramem.config import MergeConfig
from loramem.experiments.partitioned import eval_groups, grid, predictions, questions, read, scores, setup
from loramem.intervals import share_interval
from loramem.registry import MERGES as MERGE_METHODS
from loramem.report import bar_plot, markdown_table
from loramem.runs.runner import Recipe, RecipeOptions


def merges() -> list[str]:
    """Every registered merge method: PEFT's and loramem's exact ones, side by side."""
    return [m for m in MERGE_METHODS.names() if m != "none"]


# loramem's exact merges cost an SVD per layer (~5-10 s a merge, and a cell merges one candidate set per fact group:
# 48 at cpu scale). Per scale, the exact merges that run by default and whether the exact ones also run unscaled:
# smoke (the demo) leaves them out (n-modules still runs exact-linear there); cpu keeps exact-linear and exact-ties
# with their default weights (the Q10 ablation's arm), not exact-dare nor the unscaled exact sums (~20 min more);
# paper runs them all.
SCALES: dict[str, dict] = {
    "smoke": {"exact": (), "exact_sums": True},  # sums of the exact merges when asked for
    "cpu": {"exact": ("exact-linear", "exact-ties"), "exact_sums": False},
    "paper": {"exact": None, "exact_sums": True},  # None: every exact merge
}


def cells(opts: RecipeOptions) -> list[dict]:
    g, s = grid(opts), SCALES[opts.scale]
    default = [m for m in merges() if not m.startswith("exact-") or s["exact"] is None or m in s["exact"]]
    methods = [check_method(m) for m in opts.params.get("methods") or default]
    refs = [{"cell": "single", "method": "single"}, {"cell": "gold-only", "method": "none"}]
    # each method with its default weights, and the additive ones also unscaled (weights 1: no dilution)
    unscaled = [m for m in methods if m not in ("ties", "dare_ties", "exact-ties")
                and (s["exact_sums"] or not m.startswith("exact-"))]
    merged = [{"cell": f"merge-{m}", "method": m, "weights": "auto"} for m in methods] + [
        {"cell": f"merge-{m}-sum", "method": m, "weights": "sum"} for m in unscaled]
    return [{**c, "top_k": g["top_k"], "modules": g["modules"]} for c in refs + merged]


def candidate_sets(s, k: int) -> list[tuple[int, ...]]:
    """Per fact: the gold part and the k-1 other parts the embedding router ranks highest (sorted tuple)."""
    router = build_router("embed", s.parts, keys=s.bank.row_keys(s.parts))
    sets = []
    for routed, gold in zip(route_many(router, questions(s), len(s.parts)), s.gold, strict=True):
        ranked = [s.parts.index(x.module) for x in routed]
        sets.append(tuple(sorted([gold] + [p for p in ranked if p != gold][: k - 1])))
    return sets


def run_cell(cell: dict, opts: RecipeOptions) -> dict:
    s = setup(opts)
    n = len(s.entries)
    if cell["method"] == "single":
        reads = dict(enumerate(read(s, s.resident.ensure(s.single), list(range(n)))))
        return {**scores(reads), "merge_ms": 0.0, "n_merges": 0,
                **predictions(s, reads, lambda i: [s.single.name])}
    if cell["method"] == "none":
        groups: dict[tuple, list[int]] = {}
        for i, g in enumerate(s.gold):
            groups.setdefault((g,), []).append(i)
        reads = eval_groups(s, groups, lambda key: s.resident.ensure(s.parts[key[0]]))
        return {**scores(reads), "merge_ms": 0.0, "n_merges": 0,
                **predictions(s, reads, lambda i: [s.parts[s.gold[i]].name])}
    cfg = MergeConfig(method=cell["method"], weights=cell.get("weights", "auto"), seed=opts.seed)
    groups = {}
    sets = candidate_sets(s, cell["top_k"])
    for i, key in enumerate(sets):
        groups.setdefault(key, []).append(i)
    times = []

    def activate(key: tuple) -> str:
        mods = [s.parts[p] for p in key]
        for m in mods:
            s.resident.ensure(m)
        t0 = time.perf_counter()
        name, _ = s.resident.merged(mods, merge_weights(cfg, len(mods)), cfg)
        times.append((time.perf_counter() - t0) * 1000)
        return name

    reads = eval_groups(s, groups, activate)
    return {**scores(reads), "merge_ms": round(mean(times), 2), "n_merges": len(groups),
            **predictions(s, reads, lambda i: [s.parts[p].name for p in sets[i]])}


def summarize(rows: list[dict], opts: RecipeOptions) -> dict:
    out = opts.out
    rows = sorted(rows, key=lambda r: (r["method"] not in ("single", "none"), -r["accuracy"]))
    for r in rows:
        r["variant"] = r["method"] + ("" if r.get("weights", "auto") == "auto" else f" ({r['weights']})")
    acc = {r["variant"]: r["accuracy"] for r in rows}
    # both metrics: the finding falls back to token accuracy when exact match cannot tell the methods apart;
    # a row cached before intervals were stored gets Wilson's for exact match and none for token accuracy
    n_eval = sorted({r.get("n_eval") for r in rows if r.get("n_eval")})
    bar_plot(out / "merging.png", list(acc), list(acc.values()),
             f"Q10: merge of the top-{rows[0]['top_k']} candidates (gold among them)", "score",
             n=f"n = {'/'.join(map(str, n_eval)) or '?'} facts per method",
             reference=[r.get("token_accuracy") or 0.0 for r in rows], reference_label="answer-token accuracy",
             label="exact match",
             intervals=[r.get("accuracy_ci") or share_interval(r["accuracy"], r.get("n_eval")) for r in rows],
             reference_intervals=[r.get("token_accuracy_ci") for r in rows])
    (out / "merging.md").write_text("### Q10: merge methods (gold module among the candidates)\n\n" + markdown_table(
        rows, ["variant", "accuracy", "accuracy_ci", "token_accuracy", "token_accuracy_ci", "merge_ms", "n_merges",
               "n_eval", "top_k", "modules"],
        headers=["variant", "accuracy", "95% CI", "token_accuracy", "95% CI", "merge_ms", "n_merges", "n_eval",
                 "top_k", "modules"],
        fmt={"accuracy": ".3f", "token_accuracy": ".3f", "merge_ms": ".1f"}))
    merged = {k: v for k, v in acc.items() if k not in ("single", "none")}
    return {"accuracy": acc, "token_accuracy": {r["variant"]: r.get("token_accuracy") for r in rows},
            "best_merge": max(merged, key=merged.get) if merged else None,
            "merge_ms": {r["variant"]: r["merge_ms"] for r in rows if r["variant"] in merged}}


def finding_ties_most_robust(rows: list[dict], ties: str = "ties") -> tuple[dict | None, dict]:
    """TIES minus the best other merge method (each with its default weights; best by mean), on the same facts:
    exact match, or answer-token accuracy when exact match cannot tell the methods apart (e.g. all 0). `ties`:
    which TIES is the arm (PEFT's `ties` trims the factors A and B; loramem's `exact-ties` trims the update BA);
    the other TIES is left out of the comparison."""
    from loramem.findings import item_scores, paired_effect

    other_ties = {"ties": "exact-ties", "exact-ties": "ties"}.get(ties)
    merged = {r["method"]: r for r in rows if r.get("method") not in (None, "single", "none", other_ties)
              and r.get("weights", "auto") == "auto"}
    metric = "accuracy"
    if len({r["accuracy"] for r in merged.values()}) == 1 and all(r.get("token_accuracy") is not None
                                                                   for r in merged.values()):
        metric = "token_accuracy"
    if ties not in merged or len(merged) < 2:
        return None, {"why": f"needs the {ties} cell and at least one other merge method"}
    acc = {m: float(r[metric]) for m, r in sorted(merged.items())}
    best = max((m for m in acc if m != ties), key=acc.get)
    item = "exact" if metric == "accuracy" else "token_accuracy"
    one = lambda r: 0  # noqa: E731 - the same facts in every cell
    effect = paired_effect(item_scores([merged[ties]], one, item), item_scores([merged[best]], one, item),
                           arms=(ties, best))
    return effect, {metric: {k: round(v, 4) for k, v in acc.items()}, "metric": metric, "best_other": best}


RECIPE = Recipe("merging", "Q10: merge methods over top-k routed modules (gold among them)", cells, run_cell,
                summarize)
