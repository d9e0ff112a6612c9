"""LoRA vs RAG vs ICL and their hybrids, with what each costs (the paper's complementarity results).

One cell per benchmark (PhoneBook, CounterFact, PaperQA public papers; NarrativeQA / QuALITY when their local
files are given). In a cell one LoRA module is trained on the benchmark's knowledge, one RAG index is built over
its documents, and every question is answered in each mode: base, lora (closed-book), rag, icl, lora+rag,
lora+icl; long documents add chunk-level modules (one module per chunk, routed top-1 by BM25 over chunk text),
closed-book and with RAG. Per method: score, prompt tokens per question, latency, storage bytes, training time.
Questions are answered in batches of 8 (modes.answer_many); latency is a batch's wall time shared among its
questions, the cost per question of answering in bulk (one question alone on a CPU takes ~1-4 s).

The paper's finding to check: closed-book a single LoRA is strong; open-book LoRA + RAG/ICL beats each alone.
"""

from __future__ import annotations

from pathlib import Path

from loramem.config import AnswerConfig, RetrievalConfig, WriterConfig
from loramem.errors import UserError
from loramem.experiments import context_tasks as lc
from loramem.experiments.context_tasks import release_dir
from loramem.intervals import share_interval
from loramem.report import bar_plot, markdown_table
from loramem.runs.runner import Recipe, RecipeOptions

METHODS = ("base", "lora", "rag", "icl", "lora+rag", "lora+icl")
CHUNK_METHODS = ("chunk-lora", "chunk-lora+rag")
CLOSED = ("base", "lora", "chunk-lora")

SCALES: dict[str, dict] = {
    "smoke": {"benchmarks": ["phonebook", "counterfact", "paperqa"], "entries": 16, "questions": 8, "edits": 40,
              "papers": 1, "level": 1, "chunk_modules": 0, "method": "bm25",
              "writer": {"targets": "all-linear", "layers": "top 4", "rank": 8, "lr": 5e-3, "batch_size": 8}},
    "cpu": {"benchmarks": ["phonebook", "counterfact", "paperqa"], "entries": 40, "questions": 30, "edits": 60,
            "papers": 2, "level": None, "chunk_modules": 2, "method": "hybrid",
            "writer": {"targets": "all-linear", "layers": "top 6", "rank": 8, "lr": 5e-3, "batch_size": 8}},
    "paper": {"benchmarks": ["phonebook", "counterfact", "paperqa"], "entries": 400, "questions": 200,
              "edits": 2154, "papers": 10, "level": None, "chunk_modules": 8, "method": "hybrid",
              "writer": {"targets": "all-linear", "rank": 64, "lr": 1e-3, "batch_size": 8}},
}



def retriever_ablation(scale: str) -> dict:
    """findings.ABLATIONS: the other retriever (BM25 where the scale uses hybrid, hybrid where it uses BM25)."""
    return {"method": "hybrid" if SCALES[scale]["method"] == "bm25" else "bm25"}

def _settings(opts: RecipeOptions) -> dict:
    p = opts.params
    s = {**SCALES[opts.scale], **{k: v for k, v in p.items() if k != "writer" and v is not None}}
    # writer settings: the scale's, then the benchmark's (Task.writer), then the user's flags, which win
    s["writer"] = dict(SCALES[opts.scale]["writer"])
    s["writer_user"] = {k: v for k, v in p.get("writer", {}).items() if v is not None}
    return s


def cells(opts: RecipeOptions) -> list[dict]:
    s = _settings(opts)
    names = list(s["benchmarks"])
    names += [n for n in ("narrativeqa", "quality") if s.get(n) and n not in names]
    if release_dir(opts) is None and {"counterfact", "paperqa"} & set(names):
        raise UserError("CounterFact and PaperQA need the paper's release: pass --paper-data DIR "
                        "(or --benchmarks phonebook)")
    return [{"cell": n, "benchmark": n, "settings": s} for n in names]


def run_cell(cell: dict, opts: RecipeOptions) -> dict:
    from loramem.models import load_base

    s = cell["settings"]
    base = load_base(opts.model)
    task = lc.build_task(cell["benchmark"], s, opts, base.tokenizer)
    retrieval = RetrievalConfig(method=s["method"], **task.retrieval)
    answer_cfg = AnswerConfig(template=task.template, max_new_tokens=task.max_new_tokens,
                              overflow=s.get("overflow", "truncate"))
    user = s.get("writer_user", {})
    wanted = {**s["writer"], **task.writer, **user}
    if "steps" in user:
        wanted.pop("epochs", None)
    writer = WriterConfig(seed=opts.seed, progress=False, **wanted)
    results = lc.run_methods(task, base, writer, retrieval, answer_cfg, Path(opts.out) / "modules" / task.name,
                             chunk_modules=s["chunk_modules"] if task.long else 0)
    return {"metric": task.metric, "n_questions": len(task.questions), "n_documents": len(task.documents),
            "knowledge_tokens": task.knowledge_tokens(base.tokenizer), **results}


def finding_lora_plus_context_best(rows: list[dict]) -> tuple[dict | None, dict]:
    """Per benchmark, the best hybrid (lora+rag, lora+icl) minus the best single method (lora, rag, icl), each
    picked by its mean score, on the same questions, pooled over benchmarks (the bootstrap draws benchmarks
    first); closed-book, lora minus base is evidence beside it."""
    from loramem.findings import paired_effect

    hybrid, single, per = {}, {}, {}
    for r in rows:
        m = {k: v["score"] for k, v in r["methods"].items()}
        items: dict[str, dict] = {}
        for p in r.get("predictions") or []:
            if p.get("score") is not None:
                items.setdefault(p["method"], {})[(r["benchmark"], p.get("i"), p["question"])] = float(p["score"])
        h = max(("lora+rag", "lora+icl"), key=lambda k: m.get(k, -1))
        s = max(("lora", "rag", "icl"), key=lambda k: m.get(k, -1))
        per[r["benchmark"]] = {"best_hybrid": h, "best_single": s, **{k: round(v, 4) for k, v in m.items()}}
        if h in items and s in items:
            hybrid.update(items[h])
            single.update(items[s])
    ev = {"benchmarks": per}
    if not hybrid:
        return None, {**ev, "why": "no benchmark rows with kept predictions"}
    return paired_effect(hybrid, single, arms=("best hybrid", "best single")), ev


def _flat(rows: list[dict]) -> list[dict]:
    out = []
    for r in rows:
        for method, v in r["methods"].items():
            out.append({"benchmark": r["benchmark"], "metric": r["metric"], "method": method, **v})
    return out


def _interval(row: dict, method: str) -> tuple[float, float] | None:
    """A method's 95% interval: stored with the cell, else (a row cached before intervals were stored) Wilson's
    for a metric that is right or wrong per question, else none."""
    v = row["methods"][method]
    if v.get("score_ci") is not None:
        return tuple(v["score_ci"])
    if row.get("metric") in ("exact_match", "starts_with", "choice_accuracy"):
        return share_interval(v["score"], row.get("n_questions"))
    return None


def summarize(rows: list[dict], opts: RecipeOptions) -> dict:
    out = Path(opts.out)
    order = {m: i for i, m in enumerate(METHODS + CHUNK_METHODS)}
    flat = sorted(_flat(rows), key=lambda r: (r["benchmark"], order.get(r["method"], 99)))
    cols = ["benchmark", "metric", "method", "score", "score_ci", "prompt_tokens", "latency_ms", "storage_bytes",
            "train_s", "truncated_tokens"]
    table = markdown_table(flat, cols, headers=["benchmark", "metric", "method", "score", "95% CI",
                                                "prompt tokens / q", "latency ms / q (batched)", "storage bytes",
                                                "training s", "ctx tokens cut / q"],
                           fmt={"score": ".3f", "prompt_tokens": ".1f", "latency_ms": ".0f", "train_s": ".1f",
                                "truncated_tokens": ".1f"})
    from loramem.findings import sentence, verdict_of

    verdict = verdict_of("lora-plus-rag-icl", rows)
    lines = [f"- {b}: closed-book lora {v.get('lora', 0):.3f} vs base {v.get('base', 0):.3f}; open-book best hybrid "
             f"{v['best_hybrid']} {v.get(v['best_hybrid'], 0):.3f} vs best single {v['best_single']} "
             f"{v.get(v['best_single'], 0):.3f}" for b, v in verdict["evidence"].get("benchmarks", {}).items()]
    (out / "rag_icl.md").write_text(
        "### LoRA vs RAG vs ICL (methods x benchmarks, with costs)\n\n" + table
        + "\n### Finding: open-book LoRA + RAG/ICL beats each alone (best hybrid minus best single, paired)\n\n"
        f"This run: {sentence(verdict)}.\n\n" + "\n".join(lines) + "\n")
    for r in rows:
        ms = [m for m in METHODS + CHUNK_METHODS if m in r["methods"]]
        bar_plot(out / f"scores_{r['benchmark']}.png", ms, [r["methods"][m]["score"] for m in ms],
                 f"{r['benchmark']}: {r['metric']} by method", r["metric"],
                 n=f"n = {r.get('n_questions', '?')} questions per method",
                 intervals=[_interval(r, m) for m in ms])
    return {"finding_lora_plus_context_best": verdict,
            "scores": {r["benchmark"]: {m: v["score"] for m, v in r["methods"].items()} for r in rows},
            "prompt_tokens": {r["benchmark"]: {m: v["prompt_tokens"] for m, v in r["methods"].items()} for r in rows}}


RECIPE = Recipe("rag-icl", "Q: LoRA vs RAG vs ICL and hybrids (complementarity, costs)", cells, run_cell, summarize)
