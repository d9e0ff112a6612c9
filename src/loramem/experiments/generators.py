"""Q7: generator quality. The same view mix of the same papers written by different generators (template, a local
small model, an OpenAI-compatible endpoint when one is configured), then the same writer and the same judge.
The paper (GPT-4.1 vs Llama-3.1-8B as generator) found better generators give better modules.
"""

from __future__ import annotations

from loramem.experiments import docqa
from loramem.report import bar_plot, markdown_table
from loramem.runs.runner import Recipe, RecipeOptions

VIEWS = {"smoke": "qa8", "cpu": "qa20", "paper": "summary8+rewrite4+qa40"}

# a side result (no finding reads it): one paper at cpu scale
PAPERS = {"smoke": 1, "cpu": 1, "paper": 10}


def _generators(opts: RecipeOptions) -> list[str]:
    from loramem.config import EndpointConfig
    from loramem.errors import UserError

    ep = EndpointConfig.from_env()
    configured = bool(ep.base_url or ep.api_key) and bool(ep.model)
    given = opts.params.get("generators")
    if given:
        bad = [g for g in given if g not in ("template", "local", "openai")]
        if bad:
            raise UserError(f"unknown generator(s) {bad}; use template, local, openai")
        if "openai" in given and not configured:
            raise UserError("generator 'openai' needs an endpoint: set LORAMEM_OPENAI_BASE_URL and "
                            "LORAMEM_OPENAI_MODEL")
        return list(given)
    return ["template", "local"] + (["openai"] if configured else [])


def cells(opts: RecipeOptions) -> list[dict]:
    views = opts.params.get("views") or VIEWS[opts.scale]
    gen_model = opts.params.get("gen_model") or opts.model
    return [{"cell": f"{g}-p{d.id}", "generator": g, "gen_model": gen_model if g == "local" else None,
             "views": views, "paper": d.id} for g in _generators(opts) for d in docqa.papers(opts, PAPERS)]


def run_cell(cell: dict, opts: RecipeOptions) -> dict:
    from loramem.config import EndpointConfig, GeneratorConfig
    from loramem.generators import make_generator
    from loramem.models import load_base
    from loramem.views import make_views

    base = load_base(opts.model)
    doc = next(d for d in docqa.papers(opts, PAPERS) if d.id == cell["paper"])
    gen_cfg = GeneratorConfig(kind=cell["generator"], model=cell["gen_model"] or opts.model,
                              endpoint=EndpointConfig.from_env())
    gen = make_generator(gen_cfg)
    vs = make_views(doc, cell["views"], gen, base.tokenizer)
    out = docqa.write_and_score(base, doc, vs.rows, docqa.writer_config(opts), docqa.judge_for(opts),
                                new_tokens=docqa.answer_tokens(opts))
    return {**out, "generator_name": gen.name, "prompt_version": gen.prompt_version, "view_records": vs.parts,
            "view_tokens": vs.tokens, "generate_s": sum(p["generate_s"] for p in vs.parts.values()),
            "qa_short_by": sum(p.get("short_by", 0) for p in vs.parts.values()),
            "sample_rows": vs.rows[:2]}


def summarize(rows: list[dict], opts: RecipeOptions) -> dict:
    names = list(dict.fromkeys(r["generator_name"] for r in rows))
    by_gen, table = {}, []
    for g in names:
        sub = [r for r in rows if r["generator_name"] == g]
        avg = {k: sum(r.get(k) or 0 for r in sub) / len(sub) for k in docqa.SCORE_KEYS}
        by_gen[g] = {**avg, "view_tokens": sum(r["view_tokens"] for r in sub) / len(sub),
                     "generate_s": sum(r["generate_s"] for r in sub), "qa_short_by": sum(r["qa_short_by"] for r in sub),
                     "prompt_version": sub[0]["prompt_version"], "papers": len(sub)}
        table.append({"generator": g, **by_gen[g]})
    md = markdown_table(table, ["generator", "prompt_version", "judge", "f1", "rougeL", "bleu", "view_tokens",
                                "qa_short_by", "generate_s", "papers"],
                        fmt={k: ".3f" for k in docqa.SCORE_KEYS} | {"view_tokens": ".0f", "generate_s": ".1f"})
    views = rows[0]["views"]
    (opts.out / "generators.md").write_text(f"### Q7: generator quality (views {views}, writer and judge fixed)\n\n"
                                            f"{md}")
    subs = [[r for r in rows if r["generator_name"] == g] for g in names]
    bar_plot(opts.out / "generators.png", names, [by_gen[g]["judge"] for g in names],
             f"Q7: judge score by view generator ({views})", "judge score (0-10)",
             n=docqa.questions_n(subs, "bar"),
             intervals=[docqa.pooled_interval(sub, "judge") for sub in subs])
    return {"by_generator": by_gen, "views": views,
            "best_generator": max(by_gen, key=lambda g: by_gen[g]["judge"]) if by_gen else None}


RECIPE = Recipe("generators", "Q7: view generator quality (template vs local model vs HTTP endpoint)", cells, run_cell,
                summarize)
