"""CLI verbs for retrieval and context: `loramem index`, `loramem retrieve`, `loramem bench counterfact`,
`loramem bench rag-icl`. Thin: each parses flags and calls the library."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from loramem.cli import app, bench_app, console, csv_list, run_bench
from loramem.errors import UserError


def _tokenizer(model: str):
    """The base model's tokenizer (without loading the model where the registry allows)."""
    if model in ("smollm2-135m", "tiny-random"):
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
    model: str = typer.Option("smollm2-135m", help="base model whose tokenizer counts chunk tokens"),
    method: str | None = typer.Option(None, help="bm25 (default), dense (all-MiniLM-L6-v2) or hybrid"),
    chunk_tokens: int | None = typer.Option(None, help="chunk length in tokens (default 128)"),
    overlap: int | None = typer.Option(None, help="tokens shared by consecutive chunks (default 32)"),
    k: int | None = typer.Option(None, help="chunks per question at answer time (default 3)"),
) -> None:
    """Chunk documents and build a RAG index folder (rebuilt only when documents or settings change)."""
    from loramem.retrieval import ensure_index, index_dir_for_bank, read_documents

    if (out is None) == (bank is None):
        raise UserError("give exactly one of --out DIR or --bank DIR")
    folder = out if out is not None else index_dir_for_bank(bank)
    cfg = _retrieval_config(method=method, chunk_tokens=chunk_tokens, overlap=overlap, k=k)
    index, rebuilt = ensure_index(read_documents(docs), folder, cfg, _tokenizer(model))
    what = "built" if rebuilt else "up to date"
    console.print(f"index {what}: {folder} ({index.meta['n_documents']} documents, {len(index.chunks)} chunks, "
                  f"{cfg.method}, {cfg.chunk_tokens} tokens/chunk, overlap {cfg.overlap})")


@app.command("retrieve")
def retrieve_cmd(
    query: str = typer.Argument(..., help="question or search text"),
    index: Path = typer.Option(..., help="index folder from `loramem index`"),
    k: int | None = typer.Option(None, "-k", "--k", help="how many chunks (default: the index's k)"),
    method: str | None = typer.Option(None, help="bm25, dense or hybrid (must be in the index)"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Show the chunks a RAG answer would put in the prompt."""
    from loramem.retrieval import Index

    hits = Index.load(index).search(query, k=k, method=method)
    rows = [{"rank": h.rank, "chunk": h.chunk.id, "score": round(h.score, 4), "text": h.chunk.text} for h in hits]
    if as_json:
        print(json.dumps(rows))
    else:
        for r in rows:
            print(f"{r['rank']:>2} {r['chunk']:<24} {r['score']:.4f}  {r['text'][:100]!r}")
