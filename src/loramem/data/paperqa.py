"""The paper's PaperQA format: a JSON list of papers, each with a title, an introduction and graded questions.

    [{"id": 0, "title": "...", "introduction": "...", "link": "...", "conference": "ICML",
      "QA": [{"level": 1, "question": "...", "answer": "..."}, ...]}, ...]

Levels: 1 information recall, 2 contextual understanding, 3 logical structure. Any file of this shape loads;
a malformed one is a one-line UserError that says what is wrong and where.
"""

from __future__ import annotations

import json
from pathlib import Path

from loramem.data.documents import Document, Question
from loramem.data.reading import read_json
from loramem.errors import UserError

LEVELS = {1: "recall", 2: "contextual understanding", 3: "logical structure"}


def looks_like_paperqa(data) -> bool:
    """True for a JSON list of objects whose first names a paper's fields (title, introduction or QA)."""
    return (isinstance(data, list) and bool(data) and isinstance(data[0], dict)
            and bool({"introduction", "QA"} & set(data[0])))


def read_paperqa(path: str | Path) -> list[Document]:
    """Papers of a PaperQA-format file as Documents (text = introduction, questions = its QA)."""
    p = Path(path)
    try:
        data = read_json(p)
    except FileNotFoundError:
        raise UserError(f"PaperQA file not found: {p}") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"{p}: not valid JSON ({exc.msg} at line {exc.lineno}); pass a PaperQA-format file") from None
    return papers_from_json(data, str(p))


def papers_from_json(data, where: str) -> list[Document]:
    if not isinstance(data, list) or not data:
        raise UserError(f"{where}: a PaperQA file is a non-empty JSON list of papers")
    docs, seen = [], set()
    for i, paper in enumerate(data):
        at = f"{where}: paper {i}"
        if not isinstance(paper, dict):
            raise UserError(f"{at} is not a JSON object")
        for key in ("title", "introduction", "QA"):
            if key not in paper:
                raise UserError(f"{at} lacks '{key}' (a paper needs title, introduction and QA)")
        if not isinstance(paper["introduction"], str) or not paper["introduction"].strip():
            raise UserError(f"{at}: 'introduction' must be non-empty text")
        if not isinstance(paper["QA"], list):
            raise UserError(f"{at}: 'QA' must be a list of {{level, question, answer}}")
        doc_id = str(paper.get("id", i))
        if doc_id in seen:
            raise UserError(f"{at}: duplicate id {doc_id}")
        seen.add(doc_id)
        questions = [_question(q, f"{at} question {j}", doc_id) for j, q in enumerate(paper["QA"])]
        meta = {k: paper[k] for k in ("link", "conference") if k in paper}
        docs.append(Document(id=doc_id, title=str(paper["title"]), text=paper["introduction"].strip(),
                             questions=questions, source=where, meta=meta))
    return docs


def _question(q, at: str, doc_id: str) -> Question:
    if not isinstance(q, dict) or not {"question", "answer"} <= set(q):
        raise UserError(f"{at}: needs 'question' and 'answer'")
    level = q.get("level")
    if level is not None:
        try:
            level = int(level)
        except (TypeError, ValueError):
            raise UserError(f"{at}: level must be 1, 2 or 3 (got {level!r})") from None
        if level not in LEVELS:
            raise UserError(f"{at}: level must be 1, 2 or 3 (got {level})")
    return Question(question=str(q["question"]), answer=str(q["answer"]), level=level, doc=doc_id)
