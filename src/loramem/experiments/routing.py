"""Q9: routing. Each router picks one module (top-1) per question; routing accuracy (the gold module picked)
is reported apart from answer accuracy (teacher-forced exact match with the picked module), against the single
large LoRA of the same parameter budget and the oracle. Each row keeps every fact's picked module, gold module,
teacher-forced prediction and scores (`predictions`, a sample of 200 on a large book).

Routers: oracle, embed / bm25 / hybrid over the modules' training rows (fact-level keys), embed-module /
bm25-module over one key text per module (the paper's setting), and lora (LoRA-aware: each candidate module's
confidence in its own answer). benchmarks/routing_quality.py measures routing accuracy on more cases.
"""

from __future__ import annotations

import time
from statistics import mean

from loramem.bank.routing import ROUTERS, build_router, route_many
from loramem.experiments.partitioned import eval_groups, grid, predictions, questions, read, scores, setup
from loramem.intervals import interval, rounded, share_interval
from loramem.report import bar_plot, markdown_table
from loramem.runs.runner import Recipe, RecipeOptions


def cells(opts: RecipeOptions) -> list[dict]:
    g = grid(opts)
    routers = opts.params.get("routers") or ROUTERS.names()
    return [{"cell": "single", "router": "single", "modules": g["modules"]}] + [
        {"cell": f"route-{r}", "router": r, "modules": g["modules"]} for r in routers]


def run_cell(cell: dict, opts: RecipeOptions) -> dict:
    s = setup(opts)
    n = len(s.entries)
    if cell["router"] == "single":
        reads = dict(enumerate(read(s, s.resident.ensure(s.single), list(range(n)))))
        return {**_answer(scores(reads)), "routing_accuracy": None, "route_ms": 0.0,
                **predictions(s, reads, lambda i: [s.single.name])}
    # fact-level keys of the bank's modules (banks cached before row keys existed fall back to module key texts)
    lora = {"candidates": len(s.parts)} if cell["router"] == "lora" else {}  # the LoRA-aware router asks every part
    router = build_router(cell["router"], s.parts, resident=s.resident, keys=s.bank.row_keys(s.parts), **lora)
    qs = questions(s)
    router.route(qs[-1], 1)  # warm: the query encoder and the modules load once per process, not per question
    t0 = time.perf_counter()
    timed = [s.parts.index(router.route(q, 1)[0].module) for q in qs[:8]]  # one at a time: latency
    route_ms = (time.perf_counter() - t0) * 1000 / len(timed)
    picked = [s.parts.index(r[0].module) for r in route_many(router, qs, 1)]
    groups: dict[tuple, list[int]] = {}
    for i, p in enumerate(picked):
        groups.setdefault((p,), []).append(i)
    reads = eval_groups(s, groups, lambda key: s.resident.ensure(s.parts[key[0]]))
    routed = [p == g for p, g in zip(picked, s.gold, strict=True)]
    return {**_answer(scores(reads)), "routing_accuracy": mean(routed),
            "routing_accuracy_ci": rounded(interval(routed)), "route_ms": round(route_ms, 3),
            **predictions(s, reads, lambda i: [s.parts[picked[i]].name])}


def _answer(sc: dict) -> dict:
    """The partitioned scores under this recipe's names (answer_accuracy is its exact match)."""
    return {"answer_accuracy": sc["accuracy"], "answer_accuracy_ci": sc["accuracy_ci"],
            "token_accuracy": sc["token_accuracy"], "n_eval": sc["n_eval"]}


def summarize(rows: list[dict], opts: RecipeOptions) -> dict:
    out = opts.out
    rows = sorted(rows, key=lambda r: (r["router"] != "single", r["router"]))
    ans = {r["router"]: r["answer_accuracy"] for r in rows}
    rte = {r["router"]: r["routing_accuracy"] for r in rows if r["routing_accuracy"] is not None}
    n_eval = sorted({r.get("n_eval") for r in rows if r.get("n_eval")})
    # a row cached before intervals were stored gets Wilson's from its share and n
    cis = [r.get("answer_accuracy_ci") or share_interval(r["answer_accuracy"], r.get("n_eval")) for r in rows]
    bar_plot(out / "routing.png", list(ans), list(ans.values()), "Q9: answer accuracy by router (top-1)",
             "exact match", n=f"n = {'/'.join(map(str, n_eval)) or '?'} facts per router", intervals=cis)
    # as a fraction of the oracle: what a router keeps of the answers its modules could give
    oracle = ans.get("oracle")
    of_oracle = {k: round(v / oracle, 4) if oracle else None for k, v in ans.items()}  # None: the oracle scored 0
    table = [{**r, "answer_of_oracle": of_oracle.get(r["router"])} for r in rows]
    (out / "routing.md").write_text("### Q9: routing (top-1) vs the single LoRA\n\n" + markdown_table(
        table, ["router", "routing_accuracy", "answer_accuracy", "answer_accuracy_ci", "answer_of_oracle", "route_ms",
                "n_eval", "modules"],
        headers=["router", "routing_accuracy", "answer_accuracy", "95% CI", "answer / oracle's", "route_ms", "n_eval",
                 "modules"],
        fmt={"routing_accuracy": ".3f", "answer_accuracy": ".3f", "answer_of_oracle": ".3f", "route_ms": ".2f"}))
    return {"answer_accuracy": ans, "routing_accuracy": rte, "answer_of_oracle": of_oracle,
            "route_ms": {r["router"]: r["route_ms"] for r in rows if r["router"] != "single"},
            "best_practical_router": max((k for k in rte if k != "oracle"), key=lambda k: ans[k], default=None)}


def finding_embed_can_fall_below(rows: list[dict], router: str | None = None) -> tuple[dict | None, dict]:
    """The single LoRA minus module-level embedding routing (the paper's router: one embedding per module;
    `embed` in results written before fact-level keys), answer exact match on the same facts; `router` names
    another router as the arm (an ablation: fact-level `embed`)."""
    from loramem.findings import item_scores, paired_effect

    by = {r["router"]: r for r in rows if "router" in r}
    emb = router or ("embed-module" if "embed-module" in by else "embed")
    if not {"single", emb} <= by.keys():
        return None, {"why": "needs the single and route-embed-module cells"}
    ev = {"answer_accuracy": {k: round(float(r["answer_accuracy"]), 4) for k, r in by.items()}, "router": emb,
          "embed_routing_accuracy": by[emb].get("routing_accuracy")}
    one = lambda r: 0  # noqa: E731 - the same facts in every cell
    return paired_effect(item_scores([by["single"]], one), item_scores([by[emb]], one),
                         arms=("single", emb)), ev


RECIPE = Recipe("routing", "Q9: embedding / BM25 / LoRA-aware routing vs oracle vs the single LoRA", cells,
                run_cell, summarize)
