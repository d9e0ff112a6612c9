"""Q9: routing. Each router picks one module (top-1) per question; routing accuracy (the gold module picked)
is reported apart from answer accuracy (teacher-forced exact match with the picked module), against the single
large LoRA of the same parameter budget and the oracle.

Routers: oracle, embed / bm25 / hybrid over the modules' training rows (fact-level keys), embed-module /
bm25-module over one key text per module (the paper's setting), and lora (LoRA-aware: each candidate module's
confidence in its own answer). benchmarks/routing_quality.py measures routing accuracy on more cases.
"""

from __future__ import annotations

import time
from statistics import mean

from loramem.bank.routing import ROUTERS, build_router, route_many
from loramem.experiments.partitioned import eval_groups, exact_match, grid, questions, setup
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
        hits = exact_match(s, s.resident.ensure(s.single), list(range(n)))
        return {"answer_accuracy": mean(hits), "routing_accuracy": None, "route_ms": 0.0, "n_eval": n}
    # fact-level keys of the bank's modules (banks cached before row keys existed fall back to module key texts)
    router = build_router(cell["router"], s.parts, resident=s.resident, candidates=len(s.parts),
                          keys=s.bank.row_keys(s.parts))
    qs = questions(s)
    t0 = time.perf_counter()
    timed = [s.parts.index(router.route(q, 1)[0].module) for q in qs[:8]]  # one at a time: latency
    route_ms = (time.perf_counter() - t0) * 1000 / len(timed)
    picked = [s.parts.index(r[0].module) for r in route_many(router, qs, 1)]
    groups: dict[tuple, list[int]] = {}
    for i, p in enumerate(picked):
        groups.setdefault((p,), []).append(i)
    hits = eval_groups(s, groups, lambda key: s.resident.ensure(s.parts[key[0]]))
    return {"answer_accuracy": mean(hits[i] for i in range(n)),
            "routing_accuracy": mean(p == g for p, g in zip(picked, s.gold, strict=True)),
            "route_ms": round(route_ms, 3), "n_eval": n}


def summarize(rows: list[dict], opts: RecipeOptions) -> dict:
    out = opts.out
    rows = sorted(rows, key=lambda r: (r["router"] != "single", r["router"]))
    ans = {r["router"]: r["answer_accuracy"] for r in rows}
    rte = {r["router"]: r["routing_accuracy"] for r in rows if r["routing_accuracy"] is not None}
    bar_plot(out / "routing.png", list(ans), list(ans.values()), "Q9: answer accuracy by router (top-1)",
             "exact match")
    (out / "routing.md").write_text("### Q9: routing (top-1) vs the single LoRA\n\n" + markdown_table(
        rows, ["router", "routing_accuracy", "answer_accuracy", "route_ms", "n_eval", "modules"],
        fmt={"routing_accuracy": ".3f", "answer_accuracy": ".3f", "route_ms": ".2f"}))
    return {"answer_accuracy": ans, "routing_accuracy": rte,
            "route_ms": {r["router"]: r["route_ms"] for r in rows if r["router"] != "single"},
            "best_practical_router": max((k for k in rte if k != "oracle"), key=lambda k: ans[k], default=None)}


def finding_embed_can_fall_below(rows: list[dict]) -> tuple[bool | None, dict]:
    """Embedding routing can fall below the single LoRA (while the oracle does not). The paper's embedding router
    keys each module by one embedding: `embed-module` here (`embed` in results written before fact-level keys)."""
    ans = {r["router"]: float(r["answer_accuracy"]) for r in rows if "router" in r}
    emb = "embed-module" if "embed-module" in ans else "embed"
    if not {"single", emb} <= ans.keys():
        return None, {"why": "needs the single and route-embed-module cells"}
    ev = {"answer_accuracy": {k: round(v, 4) for k, v in ans.items()}, "router": emb,
          "embed_routing_accuracy": next((r.get("routing_accuracy") for r in rows if r.get("router") == emb),
                                         None)}
    return ans[emb] < ans["single"], ev


RECIPE = Recipe("routing", "Q9: embedding / BM25 / LoRA-aware routing vs oracle vs the single LoRA", cells,
                run_cell, summarize)
