"""Benchmarks as QA tasks over documents, and answering them in every memory/context mode (used by rag-icl).

A `Task` is what every mode needs: the documents (for RAG and ICL), the training examples (for the LoRA module),
the questions with their gold answers and how answers are scored. `run_methods` trains the module(s), builds the
index, answers every question in every mode and returns per-method score and cost.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from loramem.errors import UserError
from loramem.formats import Example

TRAIN_CHUNK_TOKENS = 96  # long documents are trained as raw-text pieces of this many tokens


@dataclass(frozen=True)
class Question:
    text: str
    golds: tuple[str, ...] = ()
    doc: str | None = None  # the document it is about (ICL on long documents uses that one only)
    options: tuple[str, ...] = ()
    gold: int | None = None


@dataclass
class Task:
    name: str
    metric: str  # exact_match | starts_with | token_f1 | choice_accuracy
    documents: dict[str, str]
    train: list[Example]
    questions: list[Question]
    template: str = "qa"
    max_new_tokens: int = 16
    long: bool = False  # long documents: chunk-level modules too, ICL with the question's own document
    retrieval: dict = field(default_factory=dict)
    writer: dict = field(default_factory=dict)

    def knowledge_tokens(self, tokenizer) -> int:
        return sum(len(tokenizer(t, add_special_tokens=False).input_ids) for t in self.documents.values())


def release_dir(opts) -> Path | None:
    """The paper's release folder: the recipe option, else where loramem.config finds it (e.g. for datasheets)."""
    from loramem.config import paper_release_dir

    return opts.paper_data or paper_release_dir()


# ---- scoring (pure) ---------------------------------------------------------------------------------------

def token_f1(prediction: str, gold: str) -> float:
    """SQuAD token F1 between a generated answer and a gold answer."""
    from loramem.evaluate import normalize

    p, g = re.findall(r"\w+", normalize(prediction)), re.findall(r"\w+", normalize(gold))
    common = sum((Counter(p) & Counter(g)).values())
    if not p or not g or common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(g)
    return 2 * precision * recall / (precision + recall)


def score(metric: str, q: Question, out: dict) -> float:
    from loramem.evaluate import exact_match
    from loramem.likelihood import starts_with_answer

    if metric == "choice_accuracy":
        return float(out["choice"] == q.gold)
    if metric == "exact_match":
        return float(any(exact_match(out["answer"], g) for g in q.golds))
    if metric == "starts_with":
        return float(any(starts_with_answer(out["answer"], g) for g in q.golds))
    return max(token_f1(out["answer"], g) for g in q.golds)


# ---- benchmarks -------------------------------------------------------------------------------------------

def build_task(name: str, s: dict, opts, tokenizer) -> Task:
    builders = {"phonebook": _phonebook, "counterfact": _counterfact, "paperqa": _paperqa,
                "narrativeqa": _narrativeqa, "quality": _quality}
    if name not in builders:
        raise UserError(f"unknown benchmark '{name}'; choose from {', '.join(builders)}")
    return builders[name](s, opts, tokenizer)


def _phonebook(s: dict, opts, tokenizer) -> Task:
    from loramem.data import phonebook

    entries = phonebook.generate(s["entries"], opts.seed)
    qs = [Question(e.question(), (e.number,)) for e in entries[: s["questions"]]]
    return Task("phonebook", "exact_match", {"phonebook": "\n".join(e.row() for e in entries)},
                [e.example() for e in entries], qs, "qa", 16,
                retrieval={"chunk_tokens": 64, "overlap": 16, "k": 2}, writer={"epochs": 80, "target_em": 1.0})


def _counterfact(s: dict, opts, tokenizer) -> Task:
    from loramem.data import counterfact as cf

    es = cf.load_paper("1K", release_dir(opts))
    edits = es.edits[: s["edits"]]
    kept = set(edits)
    qs = [Question(p.prompt, (p.new,)) for p in es.probes if f"{p.prompt} {p.new}" in kept][: s["questions"]]
    return Task("counterfact", "starts_with", {"edits": "\n".join(edits)}, [Example("", e) for e in edits], qs,
                "completion", 6, retrieval={"chunk_tokens": 32, "overlap": 8, "k": 2},
                writer={"epochs": 15, "target_em": None})


def read_paperqa(path: str | Path) -> list[dict]:
    """The PaperQA public file: [{id, title, introduction, QA: [{level, question, answer}]}]."""
    try:
        papers = json.loads(Path(path).read_text())
        return [{"id": str(p["id"]), "title": p.get("title", ""), "text": p["introduction"],
                 "qa": [(int(q.get("level", 1)), q["question"], q["answer"]) for q in p["QA"]]} for p in papers]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise UserError(f"cannot read PaperQA file {path} ({type(exc).__name__}); expected paperQA_public.json") from None


def _paperqa(s: dict, opts, tokenizer) -> Task:
    root = Path(release_dir(opts))
    path = root / "paperqa" / "paperQA_public.json" if (root / "paperqa").is_dir() else root / "paperQA_public.json"
    papers = read_paperqa(path)[: s["papers"]]
    per_paper = max(1, s["questions"] // len(papers))
    docs, qs = {}, []
    for p in papers:
        doc = f"paper{p['id']}"
        docs[doc] = f"{p['title']}\n\n{p['text']}"
        picked = [(q, a) for lvl, q, a in p["qa"] if s.get("level") in (None, lvl)][:per_paper]
        qs += [Question(q, (a,), doc) for q, a in picked]
    return _long_task("paperqa", "token_f1", docs, qs, tokenizer, 40)


def _narrativeqa(s: dict, opts, tokenizer) -> Task:
    from loramem.data.longdocs import read_narrativeqa

    docs = read_narrativeqa(s["narrativeqa"], s.get("split", "test"), s.get("narrativeqa_text", "summary"),
                            s.get("documents", 1))
    qs = [Question(q.question, q.answers, d.id) for d in docs for q in d.questions][: s["questions"]]
    return _long_task("narrativeqa", "token_f1", {d.id: d.text for d in docs}, qs, tokenizer, 24)


def _quality(s: dict, opts, tokenizer) -> Task:
    from loramem.data.longdocs import read_quality

    docs = read_quality(s["quality"], s.get("documents", 1))
    qs = [Question(q.question, (), d.id, q.options, q.gold) for d in docs for q in d.questions][: s["questions"]]
    return _long_task("quality", "choice_accuracy", {d.id: d.text for d in docs}, qs, tokenizer, 0)


def _long_task(name: str, metric: str, docs: dict[str, str], qs: list[Question], tokenizer, new_tokens: int) -> Task:
    """A long-document task: the module is trained on the documents as raw-text chunks (sequence loss)."""
    from loramem.retrieval import Document, chunk_document

    train = [Example("", c.text) for d, t in docs.items()
             for c in chunk_document(Document(d, t), tokenizer, TRAIN_CHUNK_TOKENS, 0)]
    return Task(name, metric, docs, train, qs, "qa", new_tokens, long=True,
                retrieval={"chunk_tokens": 128, "overlap": 32, "k": 2}, writer={"epochs": 20, "target_em": None})


# ---- running every method ---------------------------------------------------------------------------------

def _dir_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file() and f.name.startswith("adapter_"))


def _ask(task: Task, q: Question, base, mode: str, host, index, cfg) -> dict:
    from loramem.answer.pipeline import answer, answer_choice

    docs = {q.doc: task.documents[q.doc]} if (task.long and q.doc) else task.documents
    if task.metric == "choice_accuracy":
        return answer_choice(q.text, q.options, base, mode, host=host, index=index, documents=docs, cfg=cfg)
    return answer(q.text, base, mode, host=host, index=index, documents=docs, cfg=cfg)


def _ask_all(task: Task, qs: list[Question], base, mode: str, host, index, cfg) -> list[dict]:
    """Every question in one mode; free-text answers are generated in batches (multiple choice one by one)."""
    from loramem.answer.pipeline import answer_many

    if task.metric == "choice_accuracy":
        return [_ask(task, q, base, mode, host, index, cfg) for q in qs]
    each = [{q.doc: task.documents[q.doc]} if (task.long and q.doc) else task.documents for q in qs]
    return answer_many([q.text for q in qs], base, mode, host=host, index=index, cfg=cfg, documents_each=each)


def _method_row(task: Task, outs: list[dict], storage: int, train_s: float, qs: list[Question]) -> dict:
    from loramem.intervals import interval, rounded

    n = max(1, len(outs))
    each = [score(task.metric, q, o) for q, o in zip(qs, outs, strict=True)]
    return {"score": sum(each) / n, "score_ci": rounded(interval(each)), "n": len(each),
            "prompt_tokens": sum(o["prompt_tokens"] for o in outs) / n,
            "latency_ms": sum(o["latency_ms"] for o in outs) / n,
            "truncated_tokens": sum(o["truncated_tokens"] for o in outs) / n,
            "storage_bytes": storage, "train_s": round(train_s, 2)}


def _predictions(task: Task, method: str, outs: list[dict], qs: list[Question]) -> list[dict]:
    """Each question's answer in one method, with its gold answers and score (kept in the rag-icl rows)."""
    from loramem.runs.runner import kept_predictions

    def gold(q: Question):
        return list(q.golds) if q.golds else (q.options[q.gold] if q.gold is not None else None)

    preds = [{"method": method, "question": q.text, "gold": gold(q),
              "prediction": o["answer"], "score": score(task.metric, q, o)} for q, o in zip(qs, outs, strict=True)]
    return kept_predictions(preds)["predictions"]


def run_methods(task: Task, base, writer, retrieval, answer_cfg, module_dir: Path, chunk_modules: int = 0) -> dict:
    """Train, index, answer every question in every method; -> {"methods": {method: score and cost}, ...}."""
    from loramem.retrieval import Index
    from loramem.writer import write_module

    t0 = time.time()
    index = Index.build(task.documents, retrieval, base.tokenizer)
    index.save(module_dir / "index")
    index_s, index_bytes = time.time() - t0, index.storage_bytes()
    res = write_module(task.train, base, writer, out=module_dir / "whole", adapter="ragicl_whole")
    host, lora_s, lora_bytes = res.model, res.record["train_s"], _dir_bytes(module_dir / "whole")
    icl_bytes = sum(len(t.encode()) for t in task.documents.values())  # ICL stores the documents as they are
    costs = {"base": (0, 0.0), "lora": (lora_bytes, lora_s), "rag": (index_bytes, index_s), "icl": (icl_bytes, 0.0),
             "lora+rag": (lora_bytes + index_bytes, lora_s + index_s), "lora+icl": (lora_bytes + icl_bytes, lora_s)}
    methods, preds = {}, []
    try:  # a cell that fails leaves no adapter behind on the shared base for the next cell
        for mode, (storage, train_s) in costs.items():
            host.set_adapter("ragicl_whole")
            outs = _ask_all(task, task.questions, base, mode, host, index, answer_cfg)
            methods[mode] = _method_row(task, outs, storage, train_s, task.questions)
            preds += _predictions(task, mode, outs, task.questions)
        if chunk_modules:
            chunked, chunk_preds = _chunk_methods(task, base, writer, index, answer_cfg, module_dir, chunk_modules,
                                                  (index_bytes, index_s))
            methods.update(chunked)
            preds += chunk_preds
    finally:
        host.delete_adapter("ragicl_whole")
    # per method every question's answer (an evenly spaced 200 of them when there are more)
    return {"methods": methods, "predictions": preds, "predictions_of": len(task.questions) * len(methods),
            "lora_exact_match": res.record["exact_match"], "lora_params": res.record["n_params"]}


def _chunk_methods(task: Task, base, writer, index, answer_cfg, module_dir: Path, n: int,
                   rag_cost) -> tuple[dict, list[dict]]:
    """One module per chunk of each long document, routed top-1 by BM25 over the chunk texts: each method's
    score and cost, and its answers."""
    from loramem.retrieval import Document, chunk_document
    from loramem.writer import WriteJob, write_modules

    tok = base.tokenizer
    pieces: dict[str, str] = {}
    for doc, text in task.documents.items():
        n_tok = len(tok(text, add_special_tokens=False).input_ids)
        size = max(1, -(-n_tok // n))
        for c in chunk_document(Document(doc, text), tok, size, 0):
            pieces[f"ragicl_chunk{len(pieces)}"] = c.text
    # every chunk's module in one pass over the base (each its own init, order, optimizer and record); the cost is
    # the wall time of writing them all (each module's record holds its shared pass's time, so a sum would count
    # that pass once per module)
    jobs = [WriteJob([Example("", c.text) for c in chunk_document(Document(name, text), tok, TRAIN_CHUNK_TOKENS, 0)],
                     writer, out=module_dir / name, adapter=name) for name, text in pieces.items()]
    t0 = time.perf_counter()
    host = base.extra["peft"]
    try:
        write_modules(jobs, base)
        return _ask_chunks(task, base, index, answer_cfg, pieces, jobs, time.perf_counter() - t0, rag_cost)
    finally:
        host.set_adapter("ragicl_whole")  # deleting the active adapter makes PEFT warn and pick one itself
        for name in pieces:
            if name in host.peft_config:
                host.delete_adapter(name)


def _ask_chunks(task: Task, base, index, answer_cfg, pieces: dict[str, str], jobs: list, train_s: float,
                rag_cost) -> tuple[dict, list[dict]]:
    """The chunk methods' answers: each question to its top-1 chunk module by BM25, with and without RAG."""
    from loramem.config import RetrievalConfig
    from loramem.retrieval import Index

    tok, host = base.tokenizer, base.extra["peft"]
    storage = sum(_dir_bytes(Path(job.out)) for job in jobs)
    router = Index.build(pieces, RetrievalConfig(method="bm25", chunk_tokens=100000, overlap=0, k=1), tok)
    out, preds = {}, []
    for mode, extra in (("chunk-lora", (0, 0.0)), ("chunk-lora+rag", rag_cost)):
        t0 = time.perf_counter()
        groups: dict[str, list[int]] = {}
        for i, q in enumerate(task.questions):
            groups.setdefault(router.search(q.text, k=1)[0].chunk.doc, []).append(i)
        route_ms = (time.perf_counter() - t0) * 1000 / max(1, len(task.questions))
        outs: list[dict] = [{}] * len(task.questions)
        for name, idx in groups.items():  # the questions routed to one chunk module are answered together
            host.set_adapter(name)
            qs = [task.questions[i] for i in idx]
            for i, o in zip(idx, _ask_all(task, qs, base, "lora" if mode == "chunk-lora" else "lora+rag", host,
                                          index, answer_cfg), strict=True):
                o["latency_ms"] += route_ms
                outs[i] = o
        out[mode] = _method_row(task, outs, storage + extra[0], train_s + extra[1], task.questions)
        preds += _predictions(task, mode, outs, task.questions)
    return out, preds
