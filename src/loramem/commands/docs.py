"""Documents into memory: `loramem views make`, `loramem eval --metrics`, and the Q4-Q7 benches."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from loramem.commands import app, bench_app, console, csv_list, run_bench
from loramem.config import DEFAULT_MODEL
from loramem.errors import UserError

views_app = typer.Typer(no_args_is_help=True, help="Synthetic training views of documents (raw, qa, summary, rewrite).")
app.add_typer(views_app, name="views")


def generator_config(generator: str, gen_model: str | None, endpoint_url: str | None, endpoint_model: str | None,
                     seed: int = 0):
    """GeneratorConfig from CLI flags (endpoint details not given come from the environment)."""
    from loramem.config import EndpointConfig, GeneratorConfig

    if generator not in ("template", "local", "openai"):
        raise UserError(f"unknown generator '{generator}'; use template, local or openai")
    endpoint = EndpointConfig.from_env(base_url=endpoint_url, model=endpoint_model)
    return GeneratorConfig(kind=generator, endpoint=endpoint, seed=seed,
                           **({"model": gen_model} if gen_model else {}))


@views_app.command("make")
def views_make(
    file: Path = typer.Argument(..., help="documents: .txt, .md, .jsonl, a PaperQA .json, facts .json/.csv, or a folder"),
    views: str = typer.Option("qa40", help="view mix, e.g. qa40, summary8+qa40, raw+summary8+rewrite4+qa40"),
    generator: str = typer.Option("template", help="template (no model), local (HF model) or openai (endpoint)"),
    out: Path = typer.Option(..., help="folder for one JSONL of training rows per document + views.json"),
    gen_model: str | None = typer.Option(None, help="local generator model (default smollm2-135m)"),
    endpoint_url: str | None = typer.Option(None, help="OpenAI-compatible base URL (else LORAMEM_OPENAI_BASE_URL)"),
    endpoint_model: str | None = typer.Option(None, help="model name at the endpoint (else LORAMEM_OPENAI_MODEL)"),
    model: str = typer.Option(DEFAULT_MODEL, "--tokenizer", help="model whose tokenizer counts training tokens"),
    old_model: str | None = typer.Option(None, "--model", hidden=True),  # old name of --tokenizer
    budget: int | None = typer.Option(None, help="fix each document's training tokens (equal-token comparisons)"),
    cache: Path | None = typer.Option(None, help="view cache folder (default $LORAMEM_HOME/views)"),
    refresh: bool = typer.Option(False, "--refresh", help="regenerate views even when cached"),
    limit: int | None = typer.Option(None, help="only the first N documents"),
) -> None:
    """Turn documents into training rows (one JSONL per document) with a record of how each view was made."""
    from loramem.config import ViewsConfig
    from loramem.data.documents import load_documents
    from loramem.generators import make_generator
    from loramem.models import load_base
    from loramem.views import parse_spec, write_view_files

    cfg = ViewsConfig(budget_tokens=budget, cache_dir=cache, refresh=refresh)
    parse_spec(views, cfg)  # a bad spec fails before any model loads
    docs = load_documents(file)[:limit]
    gen = make_generator(generator_config(generator, gen_model, endpoint_url, endpoint_model))
    tok = load_base(old_model or model).tokenizer
    listing = write_view_files(docs, views, gen, tok, out, cfg, progress=True)
    for d in listing["documents"]:
        cached = sum(v["cached"] for v in d["views"].values())
        console.print(f"{d['file']}: {d['rows']} rows, {d['tokens']} tokens ({cached}/{len(d['views'])} views cached)")
    console.print(f"wrote {len(listing['documents'])} documents to {out} (views.json lists generator, prompt version, "
                  "rows and tokens)")


def eval_metrics(module: Path, data: Path, base, fmt: str, metrics: list[str], judge: str, max_new_tokens: int,
                 as_json: bool) -> None:
    """Body of `loramem eval MODULE --metrics ...`: generate answers, score overall and per level."""
    from loramem.adapters import load_adapter
    from loramem.config import EndpointConfig, JudgeConfig
    from loramem.data.documents import load_questions
    from loramem.evaluate import evaluate_questions
    from loramem.judges import make_judge

    if not metrics:
        raise UserError("--metrics is empty; give e.g. em,f1,rougeL,bleu,judge")
    questions = load_questions(data)
    jd = None
    if "judge" in metrics:
        if judge not in ("embed", "openai", "local"):
            raise UserError(f"unknown judge '{judge}'; use embed, openai or local")
        jd = make_judge(JudgeConfig(kind=judge, endpoint=EndpointConfig.from_env()))
    host = load_adapter(base, module, "module_eval")
    res = evaluate_questions(host, base, questions, fmt, metrics, jd, max_new_tokens)
    res.update(module=str(module), data=str(data), format=fmt)
    if as_json:
        print(json.dumps({k: v for k, v in res.items() if k != "rows"} | {"answers": res["rows"]}))
        return
    names = res["metrics"]
    print(f"{'':10s} " + " ".join(f"{m:>8s}" for m in names) + "       n")
    for label, vals in [("overall", res["overall"])] + [(f"level {k}", v) for k, v in res["by_level"].items()]:
        print(f"{label:10s} " + " ".join(f"{vals[m]:8.3f}" if vals[m] is not None else f"{'-':>8s}" for m in names)
              + f" {vals['n']:7d}")
    if "judge" in res:
        print(f"judge: {res['judge']['name']} ({res['judge']['prompt_version']}, 0-10)")


def _bench_params(papers: int | None, questions: int | None, judge: str, **more) -> dict:
    if judge not in ("embed", "openai", "local"):
        raise UserError(f"unknown judge '{judge}'; use embed, openai or local")
    return {"papers": papers, "questions": questions, "judge": judge, **{k: v for k, v in more.items()
                                                                        if v is not None}}


_PAPERS = typer.Option(None, help="number of PaperQA papers (default per scale)")
_QUESTIONS = typer.Option(None, help="questions per paper (default per scale; 30 = all)")
_JUDGE = typer.Option("embed", help="judge: embed (offline), openai (endpoint) or local")
_GENERATOR = typer.Option("template", help="view generator: template, local or openai")


@bench_app.command("formats")
def bench_formats(
    out: Path = typer.Option(..., help="results folder"), model: str = typer.Option(DEFAULT_MODEL),
    scale: str = typer.Option("smoke"), seed: int = typer.Option(0),
    paper_data: Path | None = typer.Option(None, help="the paper's release folder (has paperqa/)"),
    budgets: str | None = typer.Option(None, help="training-token budgets per module, e.g. 250,500,1000"),
    formats: str | None = typer.Option(None, help="views to compare, e.g. raw,qa,summary,rewrite"),
    papers: int | None = _PAPERS, questions: int | None = _QUESTIONS, judge: str = _JUDGE,
    generator: str = _GENERATOR,
) -> None:
    """Q4: raw vs qa vs summary vs rewrite at equal training tokens, over data volume."""
    params = _bench_params(papers, questions, judge, generator=generator,
                           budgets=csv_list(budgets, int, "--budgets"), formats=csv_list(formats, str))
    summary = run_bench("formats", out, model, scale, seed, paper_data, params)
    for fmt, v in summary.get("by_format", {}).items():
        print(f"{fmt:10s} judge {v['judge']:.3f}  f1 {v['f1']:.3f}  rougeL {v['rougeL']:.3f}")


@bench_app.command("mixes")
def bench_mixes(
    out: Path = typer.Option(..., help="results folder"), model: str = typer.Option(DEFAULT_MODEL),
    scale: str = typer.Option("smoke"), seed: int = typer.Option(0),
    paper_data: Path | None = typer.Option(None, help="the paper's release folder (has paperqa/)"),
    mixes: str | None = typer.Option(None, help="paper condition names or view specs, comma list"),
    papers: int | None = _PAPERS, questions: int | None = _QUESTIONS, judge: str = _JUDGE,
    generator: str = _GENERATOR,
) -> None:
    """Q5: the paper's view combinations (Original ... All mixed), judge scores beside the paper's."""
    params = _bench_params(papers, questions, judge, generator=generator, mixes=csv_list(mixes, str))
    summary = run_bench("mixes", out, model, scale, seed, paper_data, params)
    for name, v in summary.get("by_mix", {}).items():
        print(f"{name:16s} judge {v['judge']:.3f} (paper {v.get('paper_judge') or '-'})  f1 {v['f1']:.3f}")


@bench_app.command("model-scale")
def bench_model_scale(
    out: Path = typer.Option(..., help="results folder"), model: str = typer.Option(DEFAULT_MODEL),
    scale: str = typer.Option("smoke"), seed: int = typer.Option(0),
    paper_data: Path | None = typer.Option(None, help="the paper's release folder (has paperqa/)"),
    models: str | None = typer.Option(None, help="comma list of base models (default: tiny-random and --model)"),
    views: str | None = typer.Option(None, help="view mix to write (default per scale)"),
    papers: int | None = _PAPERS, questions: int | None = _QUESTIONS, judge: str = _JUDGE,
    generator: str = _GENERATOR,
) -> None:
    """Q6: the same views written into bases of different sizes."""
    params = _bench_params(papers, questions, judge, generator=generator, models=csv_list(models, str), views=views)
    summary = run_bench("model-scale", out, model, scale, seed, paper_data, params)
    for name, v in summary.get("by_model", {}).items():
        print(f"{name:16s} judge {v['judge']:.3f} (base alone {v['base_judge']:.3f})  f1 {v['f1']:.3f}")


@bench_app.command("generators")
def bench_generators(
    out: Path = typer.Option(..., help="results folder"), model: str = typer.Option(DEFAULT_MODEL),
    scale: str = typer.Option("smoke"), seed: int = typer.Option(0),
    paper_data: Path | None = typer.Option(None, help="the paper's release folder (has paperqa/)"),
    generators: str | None = typer.Option(None, help="template,local,openai (openai only when an endpoint is set)"),
    gen_model: str | None = typer.Option(None, help="local generator model (default: --model)"),
    views: str | None = typer.Option(None, help="view mix each generator writes (default per scale)"),
    papers: int | None = _PAPERS, questions: int | None = _QUESTIONS, judge: str = _JUDGE,
) -> None:
    """Q7: generator quality: template vs a local model vs an HTTP endpoint, same views, same writer."""
    params = _bench_params(papers, questions, judge, generators=csv_list(generators, str), gen_model=gen_model,
                           views=views)
    summary = run_bench("generators", out, model, scale, seed, paper_data, params)
    for name, v in summary.get("by_generator", {}).items():
        print(f"{name:24s} judge {v['judge']:.3f}  f1 {v['f1']:.3f}  view tokens {v['view_tokens']:.0f}")
