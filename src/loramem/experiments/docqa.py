"""Shared steps of the document recipes (Q4-Q7): pick PaperQA papers and questions, write one module per paper from
its view rows, answer the paper's questions with it, and score the answers (metrics + judge).

Each paper gets its own module, as in the paper; every cell records the writer settings, view records
(generator, prompt version, rows, tokens) and the judge's name and prompt version next to the scores.
"""

from __future__ import annotations

from pathlib import Path

from loramem.config import JudgeConfig, WriterConfig
from loramem.data.documents import Document
from loramem.errors import UserError
from loramem.intervals import Interval, interval
from loramem.runs.runner import RecipeOptions, kept_predictions

METRICS = ("em", "f1", "rougeL", "bleu", "judge")
SCORE_KEYS = ("judge", "f1", "rougeL", "bleu", "em")

# Writer settings per scale: small LoRAs on the top layers (prefix cache) on CPU; all layers at paper scale.
WRITERS: dict[str, dict] = {
    "smoke": {"rank": 8, "targets": "all-linear", "layers": "top 3", "lr": 5e-3, "epochs": 6, "batch_size": 4},
    "cpu": {"rank": 8, "targets": "all-linear", "layers": "top 4", "lr": 5e-3, "epochs": 8, "batch_size": 8},
    "paper": {"rank": 32, "targets": "all-linear", "layers": None, "lr": 1e-4, "epochs": 20, "batch_size": 8},
}
PAPERS = {"smoke": 1, "cpu": 3, "paper": 10}  # smoke: 1 paper keeps each bench near 15 min on 2 busy cores
QUESTIONS = {"smoke": 6, "cpu": 30, "paper": 30}
# longest generated answer: PaperQA's gold answers are a phrase or a sentence; smoke cuts decoding a third shorter
ANSWER_TOKENS = {"smoke": 32, "cpu": 48, "paper": 48}


def paperqa_file(opts: RecipeOptions) -> Path:
    from loramem.config import paper_release_dir

    root = opts.paper_data or paper_release_dir()
    f = Path(opts.params.get("paperqa") or (root / "paperqa" / "paperQA_public.json" if root else ""))
    if not f.is_file():
        raise UserError("PaperQA file not found; pass --paper-data pointing at the paper's release folder "
                        "(with paperqa/paperQA_public.json)")
    return f


def papers(opts: RecipeOptions, scale_papers: dict[str, int] | None = None) -> list[Document]:
    """The first N papers of the PaperQA file, each with a level-balanced subset of its questions. N: --papers, else
    `scale_papers` (a side-result recipe's own counts), else PAPERS."""
    from loramem.data.paperqa import read_paperqa

    n = opts.params.get("papers") or (scale_papers or PAPERS)[opts.scale]
    k = opts.params.get("questions") or QUESTIONS[opts.scale]
    docs = read_paperqa(paperqa_file(opts))[:n]
    for d in docs:
        d.questions = balanced(d.questions, k)
    return docs


def balanced(questions: list, k: int) -> list:
    """Up to k questions taking levels in turn (1, 2, 3, 1, ...), in file order within a level."""
    by_level: dict = {}
    for q in questions:
        by_level.setdefault(q.level, []).append(q)
    out, levels = [], sorted(by_level, key=lambda x: (x is None, x))
    while len(out) < min(k, len(questions)):
        for lv in levels:
            if by_level[lv] and len(out) < k:
                out.append(by_level[lv].pop(0))
    return out


def writer_config(opts: RecipeOptions) -> WriterConfig:
    w = {**WRITERS[opts.scale], **{k: v for k, v in opts.params.get("writer", {}).items() if v is not None}}
    # fixed epochs, no early stop: tokens seen are then equal for equal training tokens
    return WriterConfig(seed=opts.seed, progress=False, target_em=None, loss="answer", format="plain", **w)


def judge_for(opts: RecipeOptions):
    from loramem.config import EndpointConfig
    from loramem.judges import make_judge

    return make_judge(JudgeConfig(kind=opts.params.get("judge") or "embed", endpoint=EndpointConfig.from_env()))


def scores(result: dict) -> dict:
    """Flat score columns of an evaluate_questions result: overall and per level."""
    out = {k: result["overall"].get(k) for k in SCORE_KEYS if k in result["overall"]}
    for lv, vals in result["by_level"].items():
        out.update({f"{k}_l{lv}": vals.get(k) for k in SCORE_KEYS if k in vals})
    out["n_questions"] = result["overall"]["n"]
    if "judge" in result:
        out["judge_name"] = result["judge"]["name"]
        out["judge_prompt_version"] = result["judge"]["prompt_version"]
    return out


def answer_tokens(opts: RecipeOptions) -> int:
    return int(opts.params.get("answer_tokens") or ANSWER_TOKENS[opts.scale])


def score_base(base, doc: Document, judge, new_tokens: int = 48) -> dict:
    """Scores of the base model alone (no module), closed-book."""
    import contextlib

    from loramem.evaluate import evaluate_questions

    host = base.extra.get("peft")
    # with no adapter left on the wrapper, the wrapped model already answers as the base model
    ctx = host.disable_adapter() if host is not None and host.peft_config else contextlib.nullcontext()
    with ctx:
        res = evaluate_questions(base.model, base, doc.questions, "plain", METRICS, judge, max_new_tokens=new_tokens)
    return {**scores(res), **kept_predictions(predictions(res))}


def write_and_score(base, doc: Document, rows: list[dict], cfg: WriterConfig, judge, adapter: str = "docqa",
                    new_tokens: int = 48) -> dict:
    """Train a module on `rows`, answer the document's questions with it, score; the adapter is deleted after."""
    return write_and_score_many(base, [(doc, rows)], cfg, judge, new_tokens, prefix=adapter)[0]


def write_and_score_many(base, jobs: list[tuple[Document, list[dict]]], cfg: WriterConfig, judge,
                         new_tokens: int = 48, prefix: str = "docqa") -> list[dict]:
    """One module per (document, rows), trained together in one pass over the base (`write_modules`: each its own
    init, data order, optimizer and record, as `write_module` alone would give), then each document's questions
    answered with its own module and scored. Every adapter is deleted after, whatever happens."""
    from loramem.data.examples import row_to_example
    from loramem.evaluate import evaluate_questions
    from loramem.writer import WriteJob, write_modules

    names = [prefix if len(jobs) == 1 else f"{prefix}{i}" for i in range(len(jobs))]
    out = []
    try:
        results = write_modules([WriteJob([row_to_example(r) for r in rows], cfg, adapter=name)
                                 for (_, rows), name in zip(jobs, names, strict=True)], base)
        for (doc, rows), res in zip(jobs, results, strict=True):
            res.model.set_adapter(res.adapter)
            ev = evaluate_questions(res.model, base, doc.questions, "plain", METRICS, judge, max_new_tokens=new_tokens)
            rec = res.record
            out.append({**scores(ev), "train_tokens": rec["knowledge_tokens"], "tokens_seen": rec["tokens_seen"],
                        "steps": rec["steps"], "n_params": rec["n_params"], "layers_resolved": rec.get("layers_resolved"),
                        "train_s": rec["train_s"], "modules_together": rec.get("modules_together", 1),
                        "rows": len(rows), "layers": cfg.layers, "rank": cfg.rank, "lr": cfg.lr,
                        "answer_tokens": new_tokens, **kept_predictions(predictions(ev))})
    finally:  # also when the shared pass itself failed: no adapter of this call stays on the shared host
        host = base.extra.get("peft")
        for name in names if host is not None else []:
            if name in host.peft_config:
                host.delete_adapter(name)
    return out


def together(cell: dict) -> str | None:
    """Cells that write a module share a pass over the base (one writer setting per recipe run); a cell without
    views (the base model alone) runs alone."""
    return "docqa" if cell.get("views", cell.get("view")) else None


def predictions(result: dict) -> list[dict]:
    """Every question's answer with its gold and scores, kept in the recipe's rows so a verdict can be audited."""
    keep = ("question", "gold", "prediction", "level", *SCORE_KEYS)
    return [{k: r[k] for k in keep if k in r} for r in result["rows"]]


def pooled_interval(rows: list[dict], value: str, field: str = "predictions") -> Interval | None:
    """95% interval of `value` over every question the rows answered (their kept predictions, pooled over
    papers); None for rows cached before predictions were kept."""
    return interval([p.get(value) for r in rows for p in r.get(field) or []])


def questions_n(groups: list[list[dict]], per: str = "point") -> str:
    """What each point (or bar) of a plot is measured on, from the rows behind each: "n = Q questions
    (P papers) per point", with the range when they differ."""
    def span(xs: list[int]) -> str:
        return str(xs[0]) if min(xs) == max(xs) else f"{min(xs)}-{max(xs)}"

    qs = [sum(r.get("n_questions") or 0 for r in g) for g in groups if g] or [0]
    ps = [len(g) for g in groups if g] or [0]
    return f"n = {span(qs)} questions ({span(ps)} paper{'s' if max(ps) != 1 else ''}) per {per}"


def mean_by(rows: list[dict], key: str, value: str) -> dict:
    """Mean of `value` per distinct `key` (rows without the value are skipped), in first-seen order."""
    groups: dict = {}
    for r in rows:
        if r.get(value) is not None and r.get(key) is not None:
            groups.setdefault(r[key], []).append(float(r[value]))
    return {k: sum(v) / len(v) for k, v in groups.items()}


def score_key(rows: list[dict], metric: str | None = None) -> str:
    """The judge score when the rows have it, else token F1; `metric` names one (an ablation's other scorer)."""
    if metric is not None:
        return metric
    return "judge" if any(r.get("judge") is not None for r in rows) else "f1"
