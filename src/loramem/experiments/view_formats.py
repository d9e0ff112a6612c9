"""Q4: which supervision format stores a document best at equal training tokens: raw text, QA pairs, summaries
or rewrites; curves over data volume (token budget per module).

Per cell (format x budget x paper): the paper's views are cut to exactly the budget (cycled when short), one module
is written with fixed epochs (so every format sees the same number of tokens), and the paper's questions are
answered and scored. The paper found QA the most token-efficient, and every synthetic format above raw text.
"""

from __future__ import annotations

from loramem.experiments import docqa
from loramem.report import line_plot, markdown_table
from loramem.runs.runner import Recipe, RecipeOptions

FORMATS = {"raw": "raw", "qa": "qa80", "summary": "summary8", "rewrite": "rewrite4"}
BUDGETS = {"smoke": [250, 750], "cpu": [500, 1000], "paper": [500, 1000, 2000, 4000, 8000]}


def cells(opts: RecipeOptions) -> list[dict]:
    p = opts.params
    formats = p.get("formats") or list(FORMATS)
    bad = [f for f in formats if f not in FORMATS]
    if bad:
        from loramem.errors import UserError

        raise UserError(f"unknown format(s) {bad}; choose from {', '.join(FORMATS)}")
    docs = docqa.papers(opts)
    return [{"cell": f"{f}-b{b}-p{d.id}", "format": f, "view": FORMATS[f], "budget": b, "paper": d.id,
             "generator": p.get("generator") or "template"}
            for b in (p.get("budgets") or BUDGETS[opts.scale]) for f in formats for d in docs]


def run_cell(cell: dict, opts: RecipeOptions) -> dict:
    return run_cells([cell], opts)[0]


def run_cells(cells: list[dict], opts: RecipeOptions) -> list[dict]:
    """Each cell's views, then one module per cell, all trained in one pass over the base."""
    from loramem.config import GeneratorConfig, ViewsConfig
    from loramem.generators import make_generator
    from loramem.models import load_base
    from loramem.views import make_views

    base = load_base(opts.model)
    docs = {d.id: d for d in docqa.papers(opts)}
    views = []
    for cell in cells:
        gen = make_generator(GeneratorConfig(kind=cell["generator"], model=opts.model))
        views.append(make_views(docs[cell["paper"]], cell["view"], gen, base.tokenizer,
                                ViewsConfig(budget_tokens=cell["budget"])))
    outs = docqa.write_and_score_many(base, [(docs[c["paper"]], vs.rows) for c, vs in zip(cells, views, strict=True)],
                                      docqa.writer_config(opts), docqa.judge_for(opts), docqa.answer_tokens(opts))
    return [{**out, "views": vs.parts} for out, vs in zip(outs, views, strict=True)]


def finding_qa_beats_raw(rows: list[dict], metric: str | None = None) -> tuple[dict | None, dict]:
    """QA minus raw on the same paper, budget and question (judge / 10, else token F1, or `metric`); the synthetic
    formats' own gaps (qa minus summary/rewrite, summary/rewrite minus raw) are evidence beside it."""
    from loramem.findings import item_scores, paired_effect

    key = docqa.score_key(rows, metric)
    scores = {f: item_scores([r for r in rows if r["format"] == f], lambda r: (r["paper"], r["budget"]), key,
                             10.0 if key == "judge" else 1.0)
              for f in dict.fromkeys(r["format"] for r in rows)}
    ev = {"metric": key, "by_format": {f: round(sum(v.values()) / len(v), 4) for f, v in scores.items() if v}}
    if not scores.get("qa") or not scores.get("raw"):
        return None, {**ev, "why": "needs the raw and qa formats with kept predictions"}
    for f in ("summary", "rewrite"):
        if scores.get(f):
            ev[f"qa_minus_{f}"] = paired_effect(scores["qa"], scores[f], arms=("qa", f))
            ev[f"{f}_minus_raw"] = paired_effect(scores[f], scores["raw"], arms=(f, "raw"))
    return paired_effect(scores["qa"], scores["raw"], arms=("qa", "raw")), ev


def summarize(rows: list[dict], opts: RecipeOptions) -> dict:
    key = docqa.score_key(rows)
    formats = list(dict.fromkeys(r["format"] for r in rows))
    budgets = sorted({r["budget"] for r in rows})
    table_rows, curves, cis, groups = [], {}, {}, []
    for f in formats:
        ys = []
        for b in budgets:
            sub = [r for r in rows if r["format"] == f and r["budget"] == b]
            if not sub:
                continue
            avg = {k: sum(r.get(k) or 0 for r in sub) / len(sub) for k in docqa.SCORE_KEYS}
            table_rows.append({"format": f, "budget": b, "papers": len(sub), **avg,
                               "tokens_seen": sum(r["tokens_seen"] for r in sub) / len(sub)})
            ys.append((b, avg[key], docqa.pooled_interval(sub, key)))
            groups.append(sub)
        curves[f] = ([x for x, _, _ in ys], [y for _, y, _ in ys])
        cis[f] = [ci for _, _, ci in ys]
    line_plot(opts.out / "formats_score_vs_tokens.png", curves, f"Q4: {key} vs training tokens per module",
              "training tokens (budget)", key, n=docqa.questions_n(groups), intervals=cis, logx=len(budgets) > 2)
    table = markdown_table(table_rows, ["format", "budget", "papers", "judge", "f1", "rougeL", "bleu", "em",
                                        "tokens_seen"],
                           fmt={k: ".3f" for k in docqa.SCORE_KEYS} | {"tokens_seen": ".0f"})
    from loramem.findings import sentence, verdict_of

    verdict = verdict_of("qa-beats-raw", rows)
    judge = next((r.get("judge_name") for r in rows if r.get("judge_name")), "none")
    (opts.out / "formats.md").write_text(
        f"### Q4: supervision formats at equal training tokens ({opts.model}, judge {judge}, 0-10)\n\n{table}\n"
        f"Paper: QA is the most token-efficient; all synthetic formats beat raw. This run: "
        f"{sentence(verdict)}; QA minus raw, paired over questions ({verdict['evidence'].get('by_format')}).\n")
    by_format = {f: {k: docqa.mean_by([r for r in rows if r["format"] == f], "format", k).get(f)
                     for k in docqa.SCORE_KEYS} for f in formats}
    return {"metric": key, "by_format": by_format, "budgets": budgets, "qa_beats_raw": verdict}


RECIPE = Recipe("formats", "Q4: raw vs QA vs summary vs rewrite at equal training tokens", cells, run_cell, summarize,
                run_cells=run_cells, together=docqa.together)
