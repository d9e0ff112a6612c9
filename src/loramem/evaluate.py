"""Reading memory back: exact match by teacher forcing (fast, exact) and by real greedy generation."""

from __future__ import annotations

import re
import string
from collections.abc import Sequence

from loramem.config import Format
from loramem.formats import Example, render
from loramem.models import Base
from loramem.reads import exact_match_items
from loramem.writer import autocast_for


def normalize(text: str) -> str:
    """Lower-case, strip punctuation at the ends and collapse spaces (SQuAD-style, keeps inner dashes)."""
    text = text.strip().lower()
    text = re.sub(r"\s+", " ", text)
    return text.strip(string.punctuation + " ")


def exact_match(prediction: str, gold: str) -> bool:
    return normalize(prediction) == normalize(gold)


def teacher_forced_em(model, base: Base, examples: Sequence[Example], fmt: Format = "plain") -> list[bool]:
    """Per example: greedy decoding would produce exactly the answer and stop (one forward pass, no generate)."""
    from loramem.config import WriterConfig

    items = [render(e, base.tokenizer, fmt) for e in examples]
    return exact_match_items(model, items, base.tokenizer.pad_token_id, autocast_for(WriterConfig(), base.device))


def generate_rows(model, base: Base, examples: Sequence[Example], fmt: Format = "plain",
                  max_new_tokens: int | None = None, batch_size: int = 16, min_new_tokens: int = 0) -> list[dict]:
    """Greedy answers to each example's prompt (the row's prompt in `fmt`, through the one decoding loop), cut at
    the terminator (or the end of the line in plain format), one row per example: prompt, gold, prediction, exact
    match, prompt tokens and hash. min_new_tokens > 0 forbids stopping before that many tokens (free-text answers
    must not be empty). Default limit: the gold answer's length + 8 tokens."""
    from loramem.answer.decode import decode
    from loramem.answer.prompt import build_prompt, prompt_hash

    tok = base.tokenizer
    prompts = [build_prompt(e.prompt, tok, fmt, template="completion") for e in examples]
    limits = max_new_tokens or [len(render(e, tok, fmt).target_ids) + 8 for e in examples]
    rows = decode(model, tok, prompts, limits, batch_size=batch_size, min_new_tokens=min_new_tokens)
    return [{"prompt": e.prompt, "gold": e.answer, "prediction": r.text, "exact": exact_match(r.text, e.answer),
             "prompt_tokens": len(p.ids), "prompt_hash": prompt_hash(p.ids)}
            for e, p, r in zip(examples, prompts, rows, strict=True)]


def generate_answers(model, base: Base, examples: Sequence[Example], fmt: Format = "plain",
                     max_new_tokens: int | None = None, batch_size: int = 16, min_new_tokens: int = 0) -> list[str]:
    """The predictions of `generate_rows`."""
    return [r["prediction"] for r in generate_rows(model, base, examples, fmt, max_new_tokens, batch_size,
                                                   min_new_tokens)]


def generated_em(model, base: Base, examples: Sequence[Example], fmt: Format = "plain") -> list[bool]:
    return [r["exact"] for r in generate_rows(model, base, examples, fmt)]


def evaluate_questions(model, base: Base, questions: Sequence, fmt: Format = "plain",
                       metrics: Sequence[str] = ("em", "f1", "rougeL", "bleu"), judge=None,
                       max_new_tokens: int = 64, batch_size: int = 16) -> dict:
    """Generate an answer to each question (data.documents.Question) and score it: each metric overall and per
    level, plus the judge's 0-10 score when `judge` is given (its name and prompt version are recorded)."""
    from loramem.errors import UserError
    from loramem.formats import question_prompt
    from loramem.judges import JudgeItem
    from loramem.metrics import METRICS, score_rows

    unknown = [m for m in metrics if m not in METRICS and m != "judge"]
    if unknown:
        raise UserError(f"unknown metric(s) {unknown}; choose from {', '.join([*METRICS, 'judge'])}")
    examples = [Example(question_prompt(q.question), q.answer) for q in questions]
    # an instruct model often ends its turn at once after "Answer:"; a free-text answer must say something
    answers = generate_answers(model, base, examples, fmt, max_new_tokens=max_new_tokens, batch_size=batch_size,
                               min_new_tokens=3)
    rows = []
    for q, a in zip(questions, answers, strict=True):
        row = {"question": q.question, "gold": q.answer, "prediction": a, "level": q.level, "doc": q.doc}
        row.update({m: METRICS[m](a, q.answer) for m in metrics if m in METRICS})
        rows.append(row)
    names = [m for m in metrics if m in METRICS]
    result: dict = {}
    if "judge" in metrics:
        if judge is None:
            raise UserError("metric 'judge' needs a judge; pass --judge embed|openai|local")
        scores = judge.score([JudgeItem(q.question, q.answer, a, q.level) for q, a in zip(questions, answers,
                                                                                         strict=True)])
        for row, s in zip(rows, scores, strict=True):
            row["judge"] = s
        names.append("judge")
        result["judge"] = {"name": judge.name, "prompt_version": judge.prompt_version, "scale": "0-10",
                           "unparsed": sum(s is None for s in scores)}
    return {**score_rows(rows, names), **result, "metrics": names, "rows": rows}
