"""Q11: how many modules to merge. With ground-truth routing, merge the gold module with 0..N-1 others
(the next parts in a fixed cyclic order) and measure exact match against N."""

from __future__ import annotations

from loramem.bank.merging import merge_weights
from loramem.config import MergeConfig
from loramem.experiments.partitioned import eval_groups, grid, predictions, scores, setup
from loramem.intervals import share_interval
from loramem.report import line_plot, markdown_table
from loramem.runs.runner import Recipe, RecipeOptions

# PEFT's sidewise merges beside the same merges in weight space (the ablation of the N = 1 -> 2 cliff)
DEFAULT_METHODS = ("linear", "ties", "exact-linear", "exact-ties")


# Per scale: the largest N, the methods, and the largest N of the weight-space merges (None: max_n). smoke keeps the
# demo short: N up to 3 (the drop is at N = 2) and one weight-space merge beside PEFT's two. cpu: the weight-space
# merges (the cliff's ablation, 2-4 min a cell) stop at N = 3: the first cpu run had them at 0.00-0.01 from N = 2
# on, and N = 4, 5 cost 17 of the recipe's 54 minutes. A `max_n` param sets both.
SCALES: dict[str, dict] = {
    "smoke": {"max_n": 3, "methods": DEFAULT_METHODS[:3], "exact_max_n": None},
    "cpu": {"max_n": 5, "methods": DEFAULT_METHODS, "exact_max_n": 3},
    "paper": {"max_n": 5, "methods": DEFAULT_METHODS, "exact_max_n": None},
}


def cells(opts: RecipeOptions) -> list[dict]:
    g, s = grid(opts), SCALES[opts.scale]
    max_n = min(opts.params.get("max_n") or s["max_n"], g["modules"])
    methods = [opts.params["method"]] if opts.params.get("method") else list(s["methods"])
    exact_n = max_n if opts.params.get("max_n") or s["exact_max_n"] is None else min(max_n, s["exact_max_n"])
    return [{"cell": f"{m}-n{n}", "method": m, "n": n, "modules": g["modules"]}
            for m in methods for n in range(1, (exact_n if m.startswith("exact-") else max_n) + 1)]


def run_cell(cell: dict, opts: RecipeOptions) -> dict:
    s = setup(opts)
    k = len(s.parts)
    cfg = MergeConfig(method=cell["method"], seed=opts.seed)
    groups: dict[tuple, list[int]] = {}
    sets = [tuple((g + j) % k for j in range(cell["n"])) for g in s.gold]
    for i, key in enumerate(sets):
        groups.setdefault(key, []).append(i)

    def activate(key: tuple) -> str:
        mods = [s.parts[p] for p in key]
        if len(mods) == 1:
            return s.resident.ensure(mods[0])
        return s.resident.merged(mods, merge_weights(cfg, len(mods)), cfg)[0]

    reads = eval_groups(s, groups, activate)
    return {**scores(reads), **predictions(s, reads, lambda i: [s.parts[p].name for p in sets[i]])}


def summarize(rows: list[dict], opts: RecipeOptions) -> dict:
    out = opts.out
    methods = sorted({r["method"] for r in rows})
    curves, tok_curves, by, by_tok, cis, tok_cis = {}, {}, {}, {}, {}, {}
    for m in methods:
        rs = sorted((r for r in rows if r["method"] == m), key=lambda r: r["n"])
        curves[m] = ([r["n"] for r in rs], [r["accuracy"] for r in rs])
        by[m] = {str(r["n"]): r["accuracy"] for r in rs}
        by_tok[m] = {str(r["n"]): r.get("token_accuracy") for r in rs}
        tok_curves[m] = ([r["n"] for r in rs], [r.get("token_accuracy", 0.0) for r in rs])
        # rows cached before intervals were stored: Wilson's from the share for exact match, none for tokens
        cis[m] = [r.get("accuracy_ci") or share_interval(r["accuracy"], r.get("n_eval")) for r in rs]
        tok_cis[m] = [r.get("token_accuracy_ci") for r in rs]
    n_eval = max((r.get("n_eval", 0) for r in rows), default=0)
    # one metric per plot: the finding reads exact match; token accuracy (partial recall) gets its own axis
    line_plot(out / "n_modules.png", curves, "Q11: exact match vs N merged modules (gold included)",
              "N merged modules", "exact match", n=f"n = {n_eval} facts per point", intervals=cis, integer_x=True)
    line_plot(out / "n_modules_token_accuracy.png", tok_curves, "Q11: answer-token accuracy vs N merged modules",
              "N merged modules", "answer-token accuracy", n=f"n = {n_eval} facts per point", intervals=tok_cis,
              integer_x=True)
    (out / "n_modules.md").write_text("### Q11: accuracy vs N\n\n" + markdown_table(
        sorted(rows, key=lambda r: (r["method"], r["n"])), ["method", "n", "accuracy", "token_accuracy", "n_eval", "modules"],
        fmt={"accuracy": ".3f", "token_accuracy": ".3f"}))
    first = methods[0] if methods else None
    return {"accuracy_by_method": by, "token_accuracy_by_method": by_tok, "accuracy_by_n": by.get("ties", by.get(first, {})) if first else {}}


def finding_accuracy_falls_with_n(rows: list[dict], methods: tuple[str, ...] | None = None) -> tuple[dict | None, dict]:
    """Exact match at N = 1 minus at the largest N, on the same facts, pooled over the merge methods (or those in
    `methods`; the bootstrap draws methods first); each method's curve and own effect are evidence."""
    from loramem.findings import item_scores, paired_effect

    methods = sorted({r["method"] for r in rows if "method" in r and "n" in r
                      and (methods is None or r["method"] in methods)})
    one, most, ev = {}, {}, {"accuracy_by_n": {}, "by_method": {}}
    for m in methods:
        rs = {int(r["n"]): r for r in rows if r.get("method") == m}
        ns = sorted(rs)
        if len(ns) < 2 or ns[0] != 1:
            continue
        ev["accuracy_by_n"][m] = {str(n): round(float(rs[n]["accuracy"]), 4) for n in ns}
        a, b = item_scores([rs[1]], lambda r: r["method"]), item_scores([rs[ns[-1]]], lambda r: r["method"])
        ev["by_method"][m] = paired_effect(a, b, arms=("N=1", f"N={ns[-1]}"))
        one.update(a)
        most.update(b)
    if not one:
        return None, {"why": "needs N = 1 and a larger N for at least one method"}
    return paired_effect(one, most, arms=("N=1", "largest N")), ev


RECIPE = Recipe("n-modules", "Q11: accuracy vs the number N of merged modules (gold included)", cells, run_cell,
                summarize)
