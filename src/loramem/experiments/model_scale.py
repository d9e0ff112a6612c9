"""Q6: model scale. The same views of the same papers written into base models of different sizes (default
tiny-random and the run's model; any larger model given with --models). Each cell also scores the base model
alone, so the gain a module brings is visible at every size. The paper (Qwen3 0.6B-14B) found larger bases
internalize more from the same data.
"""

from __future__ import annotations

from loramem.experiments import docqa
from loramem.report import bar_plot, markdown_table
from loramem.runs.runner import Recipe, RecipeOptions

VIEWS = {"smoke": "summary1+qa10", "cpu": "summary2+qa20", "paper": "raw+summary8+rewrite4+qa40"}

# a side result (no finding reads it): one paper at cpu scale
PAPERS = {"smoke": 1, "cpu": 1, "paper": 10}


def _models(opts: RecipeOptions) -> list[str]:
    given = opts.params.get("models")
    return list(dict.fromkeys(given or ["tiny-random", opts.model]))


def cells(opts: RecipeOptions) -> list[dict]:
    views = opts.params.get("views") or VIEWS[opts.scale]
    gen = opts.params.get("generator") or "template"
    return [{"cell": f"{m}-p{d.id}", "base_model": m, "views": views, "paper": d.id, "generator": gen}
            for m in _models(opts) for d in docqa.papers(opts, PAPERS)]


def run_cell(cell: dict, opts: RecipeOptions) -> dict:
    from loramem.config import GeneratorConfig
    from loramem.generators import make_generator
    from loramem.models import load_base
    from loramem.views import make_views

    base = load_base(cell["base_model"])
    doc = next(d for d in docqa.papers(opts, PAPERS) if d.id == cell["paper"])
    judge = docqa.judge_for(opts)
    before = docqa.score_base(base, doc, judge, docqa.answer_tokens(opts))
    gen = make_generator(GeneratorConfig(kind=cell["generator"], model=opts.model))
    vs = make_views(doc, cell["views"], gen, base.tokenizer)
    out = docqa.write_and_score(base, doc, vs.rows, docqa.writer_config(opts), judge,
                                new_tokens=docqa.answer_tokens(opts))
    n_base_params = sum(p.numel() for n, p in base.model.named_parameters() if "lora_" not in n)
    return {**out, **{f"base_{k}": v for k, v in before.items() if k in docqa.SCORE_KEYS},
            "base_predictions": before["predictions"],
            "base_params": n_base_params, "n_layers": base.n_layers, "view_records": vs.parts}


def summarize(rows: list[dict], opts: RecipeOptions) -> dict:
    models = list(dict.fromkeys(r["base_model"] for r in rows))
    models.sort(key=lambda m: next(r["base_params"] for r in rows if r["base_model"] == m))
    by_model, table = {}, []
    for m in models:
        sub = [r for r in rows if r["base_model"] == m]
        avg = {k: sum(r.get(k) or 0 for r in sub) / len(sub) for k in docqa.SCORE_KEYS}
        avg.update({f"base_{k}": sum(r.get(f"base_{k}") or 0 for r in sub) / len(sub) for k in docqa.SCORE_KEYS})
        by_model[m] = {**avg, "base_params": sub[0]["base_params"], "papers": len(sub),
                       "gain_judge": avg["judge"] - avg["base_judge"]}
        table.append({"model": m, **by_model[m]})
    md = markdown_table(table, ["model", "base_params", "base_judge", "judge", "gain_judge", "f1", "base_f1", "rougeL",
                                "papers"], fmt={k: ".3f" for k in ("base_judge", "judge", "gain_judge", "f1",
                                                                     "base_f1", "rougeL")})
    views = rows[0]["views"]
    (opts.out / "model_scale.md").write_text(f"### Q6: model scale (views {views}, judge 0-10)\n\n{md}")
    subs = [[r for r in rows if r["base_model"] == m] for m in models]
    bar_plot(opts.out / "model_scale.png", models, [by_model[m]["judge"] for m in models],
             f"Q6: judge score with a module ({views})", "judge score (0-10)",
             n=docqa.questions_n(subs, "bar"),
             reference=[by_model[m]["base_judge"] for m in models], reference_label="base alone",
             intervals=[docqa.pooled_interval(sub, "judge") for sub in subs],
             reference_intervals=[docqa.pooled_interval(sub, "judge", "base_predictions") for sub in subs])
    larger_better = None
    if len(models) >= 2:
        larger_better = by_model[models[-1]]["judge"] > by_model[models[0]]["judge"]
    return {"by_model": by_model, "views": views, "larger_model_scores_higher": larger_better}


RECIPE = Recipe("model-scale", "Q6: the same views written into base models of different sizes", cells, run_cell,
                summarize)
