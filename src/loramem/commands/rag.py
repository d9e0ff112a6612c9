"""CLI verbs for retrieval and context: `loramem index`, `loramem retrieve`, `loramem bench counterfact`,
`loramem bench rag-icl`. Thin: each parses flags and calls the library."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from loramem.commands import app, bench_app, console, csv_list, run_bench
from loramem.config import DEFAULT_MODEL
from loramem.errors import UserError


def _tokenizer(model: str):
    """The base model's tokenizer (without loading the model where the registry allows)."""
    if model in (DEFAULT_MODEL, "tiny-random"):
        from loramem.models import smollm2_tokenizer

        return smollm2_tokenizer()
    from loramem.models import load_base

    return load_base(model).tokenizer


def _retrieval_config(**kw):
    from pydantic import ValidationError

    from loramem.config import RetrievalConfig

    try:
        return RetrievalConfig(**{k: v for k, v in kw.items() if v is not None})
    except ValidationError as exc:
        raise UserError("; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors())) from None


@app.command("index")
def index_cmd(
    docs: list[Path] = typer.Argument(..., help="text/markdown files, JSONL rows {id?, text} or folders of them"),
    out: Path | None = typer.Option(None, help="index folder to write"),
    bank: Path | None = typer.Option(None, help="write the index beside a bank instead (BANK/index)"),
    model: str = typer.Option(DEFAULT_MODEL, "--tokenizer", help="model whose tokenizer counts chunk tokens"),
    old_model: str | None = typer.Option(None, "--model", hidden=True),  # old name of --tokenizer
    method: str | None = typer.Option(None, help="bm25 (default), dense (all-MiniLM-L6-v2) or hybrid"),
    chunk_tokens: int | None = typer.Option(None, help="chunk length in tokens (default 128)"),
    overlap: int | None = typer.Option(None, help="tokens shared by consecutive chunks (default 32)"),
    k: int | None = typer.Option(None, "--chunks", help="chunks per question at answer time (default 3)"),
    old_k: int | None = typer.Option(None, "--k", hidden=True),  # old name of --chunks
) -> None:
    """Chunk documents and build a RAG index folder (rebuilt only when documents or settings change)."""
    from loramem.retrieval import ensure_index, index_dir_for_bank, read_documents

    if (out is None) == (bank is None):
        raise UserError("give exactly one of --out DIR or --bank DIR")
    folder = out if out is not None else index_dir_for_bank(bank)
    from loramem.retrieval.index import check_index_folder

    check_index_folder(Path(folder))  # before any work: a folder of other files is never written into
    cfg = _retrieval_config(method=method, chunk_tokens=chunk_tokens, overlap=overlap, k=k or old_k)
    index, rebuilt = ensure_index(read_documents(docs), folder, cfg, _tokenizer(old_model or model))
    what = "built" if rebuilt else "up to date"
    console.print(f"index {what}: {folder} ({index.meta['n_documents']} documents, {len(index.chunks)} chunks, "
                  f"{cfg.method}, {cfg.chunk_tokens} tokens/chunk, overlap {cfg.overlap})")


@app.command("retrieve")
def retrieve_cmd(
    query: str = typer.Argument(..., help="question or search text"),
    index: Path = typer.Option(..., help="index folder from `loramem index`"),
    k: int | None = typer.Option(None, "--chunks", help="how many chunks (default: the index's)"),
    old_k: int | None = typer.Option(None, "-k", "--k", hidden=True),  # old names of --chunks
    method: str | None = typer.Option(None, help="bm25, dense or hybrid (must be in the index)"),
    as_json: bool = typer.Option(False, "--json", help="print the chunks as one JSON object"),
) -> None:
    """Show the chunks a RAG answer would put in the prompt."""
    from loramem.retrieval import Index

    hits = Index.load(index).search(query, k=k or old_k, method=method)
    rows = [{"rank": h.rank, "chunk": h.chunk.id, "score": round(h.score, 4), "text": h.chunk.text} for h in hits]
    if as_json:
        print(json.dumps(rows))
    else:
        for r in rows:
            print(f"{r['rank']:>2} {r['chunk']:<24} {r['score']:.4f}  {r['text'][:100]!r}")


@bench_app.command("counterfact")
def bench_counterfact(
    out: Path = typer.Option(..., help="results folder"),
    model: str = typer.Option(DEFAULT_MODEL, help="base model"),
    scale: str = typer.Option("smoke", help="smoke, cpu or paper (default grid and writer settings)"),
    ranks: str | None = typer.Option(None, help="comma list of LoRA ranks, e.g. 4,16"),
    sizes: str | None = typer.Option(None, help="the paper's edit files by size, e.g. 1K,5K"),
    paper_data: Path | None = typer.Option(None, help="the paper's release folder (default: found beside the checkout)"),
    data: Path | None = typer.Option(None, help="ROME's counterfact.json instead of the paper's files"),
    limit: int | None = typer.Option(None, help="with --data: use the first N records"),
    max_probes: int | None = typer.Option(None, help="evaluate at most N edit prompts per cell"),
    targets: str | None = typer.Option(None, help="LoRA targets (default per scale)"),
    layers: str | None = typer.Option(None, help="LoRA layers: 20-29, 'top 3' or 'top 20%' (default per scale)"),
    lr: float | None = typer.Option(None), epochs: float | None = typer.Option(None),
    steps: int | None = typer.Option(None),
    seed: int = typer.Option(0),
) -> None:
    """CounterFact: train edits into LoRA modules; efficacy, generation accuracy, locality, cost."""
    from loramem.config import paper_release_dir

    rank_list = csv_list(ranks, int, "--ranks")
    if rank_list and min(rank_list) < 1:
        raise UserError("ranks must be >= 1 (e.g. --ranks 4,16)")
    if data is None:
        paper_data = paper_data or paper_release_dir()
        if paper_data is None:
            raise UserError("the paper's release folder was not found; pass --paper-data DIR (or --data counterfact.json)")
    elif not data.is_file():
        raise UserError(f"{data} does not exist; pass ROME's counterfact.json")
    params = {"ranks": rank_list, "sizes": csv_list(sizes, str, "--sizes"), "data": str(data) if data else None,
              "limit": limit, "writer": {"targets": targets, "layers": layers, "lr": lr, "epochs": epochs,
                                         "steps": steps}}
    if max_probes is not None:
        params["max_probes"] = max_probes
    summary = run_bench("counterfact", out, model, scale, seed, paper_data, params)
    for cell, v in summary.get("per_cell", {}).items():
        eff = "-" if v["efficacy"] is None else f"{v['efficacy']:.3f}"
        print(f"{cell}: efficacy {eff}, generation accuracy {v['generation_accuracy']:.3f}, "
              f"known facts retained {v['known_retained']}, {v['train_s']:.0f} s")


@bench_app.command("rag-icl")
def bench_rag_icl(
    out: Path = typer.Option(..., help="results folder (results.jsonl, rag_icl.md, plots)"),
    model: str = typer.Option(DEFAULT_MODEL, help="base model"),
    scale: str = typer.Option("smoke", help="smoke (minutes on a CPU), cpu or paper"),
    benchmarks: str | None = typer.Option(None, help="comma list from phonebook,counterfact,paperqa (default all)"),
    questions: int | None = typer.Option(None, help="questions per benchmark"),
    paper_data: Path | None = typer.Option(None, help="the paper's release folder (default: found beside the checkout)"),
    narrativeqa: Path | None = typer.Option(None, help="a NarrativeQA checkout (adds the narrativeqa benchmark)"),
    quality: Path | None = typer.Option(None, help="a QuALITY JSONL file, e.g. QuALITY.v1.0.1.htmlstripped.dev"),
    documents: int | None = typer.Option(None, help="long documents to use from NarrativeQA / QuALITY (default 1)"),
    method: str | None = typer.Option(None, help="retrieval: bm25, dense or hybrid (default per scale)"),
    overflow: str = typer.Option("truncate", help="ICL over the context budget: truncate (recorded) or error"),
    rank: int | None = typer.Option(None), layers: str | None = typer.Option(None, help="LoRA layers: 20-29, 'top 3' or 'top 20%'"),
    targets: str | None = typer.Option(None), lr: float | None = typer.Option(None),
    steps: int | None = typer.Option(None, help="training steps per module (default: epochs per benchmark)"),
    seed: int = typer.Option(0),
) -> None:
    """LoRA vs RAG vs ICL and hybrids on PhoneBook, CounterFact, PaperQA (+ long documents), with costs."""
    from loramem.config import paper_release_dir

    known = ("phonebook", "counterfact", "paperqa")
    names = csv_list(benchmarks, str, "--benchmarks")
    if names and set(names) - set(known):
        raise UserError(f"unknown benchmark(s) {', '.join(sorted(set(names) - set(known)))}; choose from {', '.join(known)}")
    if overflow not in ("truncate", "error"):
        raise UserError("--overflow must be truncate or error")
    if method not in (None, "bm25", "dense", "hybrid"):
        raise UserError("--method must be bm25, dense or hybrid")
    for path in (narrativeqa, quality):
        if path is not None and not path.exists():
            raise UserError(f"{path} does not exist")
    params = {"benchmarks": names, "questions": questions, "method": method, "overflow": overflow,
              "narrativeqa": str(narrativeqa) if narrativeqa else None, "quality": str(quality) if quality else None,
              "documents": documents, "writer": {"rank": rank, "layers": layers, "targets": targets, "lr": lr, "steps": steps}}
    summary = run_bench("rag-icl", out, model, scale, seed, paper_data or paper_release_dir(), params)
    from loramem.findings import sentence

    verdict = sentence(summary["finding_lora_plus_context_best"]) if summary.get("finding_lora_plus_context_best") \
        else "not measured"
    print(f"finding 'closed-book LoRA strong; open-book LoRA + RAG/ICL beats each alone': {verdict}; "
          f"table in {out}/rag_icl.md")
