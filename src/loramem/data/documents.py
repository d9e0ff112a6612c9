"""User documents -> `Document`s: plain text, Markdown, JSONL, PaperQA files, and structured facts.

    docs = load_documents("papers.jsonl")        # or notes.md, report.txt, paperQA_public.json, a folder

- .txt / .md: one document per file (Markdown: the first `# ` heading is the title);
- .jsonl: one document per line, {"text": ...} with optional "id", "title", "questions": [{question, answer,
  level}];
- .json: a PaperQA-format file (see data/paperqa.py), or a list of {"question", "answer"} facts (the paper's
  PhoneBook/CounterFact eval files) as one document of facts;
- .csv: a PhoneBook file as one document of facts;
- a folder: every supported file in it, sorted.
Questions, when a document has them, are what `loramem eval` and the recipes score answers on.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from loramem.data.reading import loads, read_json, read_text
from loramem.errors import UserError

SUFFIXES = (".txt", ".md", ".markdown", ".jsonl", ".json", ".csv")


@dataclass(frozen=True)
class Question:
    """A question about a document with its gold answer; level 1-3 as in PaperQA (None when unknown)."""

    question: str
    answer: str
    level: int | None = None
    doc: str = ""


@dataclass(frozen=True)
class Fact:
    """A structured fact: `prompt` completed by `answer` (a PhoneBook entry, a CounterFact edit)."""

    subject: str
    prompt: str  # "What is the phone number of Jeffrey Buck" / "Lenta.ru is written in"
    answer: str
    question_like: bool = True  # False: prompt is a sentence prefix (CounterFact), not a question


@dataclass
class Document:
    id: str
    title: str
    text: str
    questions: list[Question] = field(default_factory=list)
    facts: list[Fact] = field(default_factory=list)
    source: str = ""
    meta: dict = field(default_factory=dict)

    @property
    def hash(self) -> str:
        """Content hash: what the view cache is keyed by (title, text and facts; not questions)."""
        h = hashlib.sha256(json.dumps([self.title, self.text, [list(vars(f).values()) for f in self.facts]])
                           .encode("utf-8"))
        return h.hexdigest()[:16]


def load_documents(path: str | Path) -> list[Document]:
    """Documents from a file or a folder of files (text, Markdown, JSONL, PaperQA JSON, facts)."""
    p = Path(path)
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.suffix.lower() in SUFFIXES)
        if not files:
            raise UserError(f"{p} has no document files ({', '.join(SUFFIXES)})")
        return [d for f in files for d in load_documents(f)]
    if not p.is_file():
        raise UserError(f"document file not found: {p}; pass a .txt, .md, .jsonl, .json or .csv file or a folder")
    suffix = p.suffix.lower()
    if suffix in (".txt", ".md", ".markdown"):
        return [_text_file(p)]
    if suffix == ".jsonl":
        return _jsonl(p)
    if suffix == ".json":
        return _json(p)
    if suffix == ".csv":
        return [_phonebook(p)]
    raise UserError(f"{p}: unsupported document type '{p.suffix}'; use .txt, .md, .jsonl, .json or .csv")


def load_questions(path: str | Path) -> list[Question]:
    """The questions of every document in a file (PaperQA JSON, JSONL documents, or JSONL question rows)."""
    p = Path(path)
    if p.suffix.lower() == ".jsonl" and p.is_file():
        rows = jsonl_rows(p)
        if rows and "question" in rows[0][1] and "text" not in rows[0][1]:
            return [_row_question(row, f"{p}:{n}") for n, row in rows]
    docs = load_documents(p)
    qs = [q for d in docs for q in d.questions]
    if not qs:
        qs = [Question(f.prompt, f.answer, None, d.id) for d in docs for f in d.facts]
    if not qs:
        raise UserError(f"{p} has no questions; pass a PaperQA file or JSONL rows with question and answer")
    return qs


def _text_file(p: Path) -> Document:
    text = read_text(p).strip()
    if not text:
        raise UserError(f"{p} is empty; a document needs text")
    title = p.stem
    if p.suffix.lower() != ".txt":
        m = re.search(r"^#\s+(.+)$", text, flags=re.M)
        if m:
            title = m.group(1).strip()
    return Document(id=p.stem, title=title, text=text, source=str(p))


def jsonl_rows(p: Path) -> list[tuple[int, dict]]:
    """(line number, object) per non-empty line of a JSONL file; a clear error for bad JSON or no rows."""
    rows = []
    for n, line in enumerate(read_text(p).splitlines(), start=1):
        if not line.strip():
            continue
        row = loads(line, f"{p}:{n}")
        if not isinstance(row, dict):
            raise UserError(f"{p}:{n}: each line must be a JSON object")
        rows.append((n, row))
    if not rows:
        raise UserError(f"{p} has no rows")
    return rows


def _row_question(row: dict, where: str, doc: str = "") -> Question:
    if not isinstance(row, dict) or "question" not in row or "answer" not in row:
        raise UserError(f"{where}: a question needs 'question' and 'answer'")
    level = row.get("level")
    try:
        level = int(level) if level is not None else None
    except (TypeError, ValueError):
        raise UserError(f"{where}: level must be an integer (got {level!r})") from None
    return Question(str(row["question"]), str(row["answer"]), level, str(row.get("doc", doc)))


def _jsonl(p: Path) -> list[Document]:
    docs = []
    for n, row in jsonl_rows(p):
        text = row.get("text") or row.get("introduction")
        if not isinstance(text, str) or not text.strip():
            raise UserError(f"{p}:{n}: a document row needs non-empty 'text' (has {sorted(row)})")
        doc_id = str(row.get("id", n))
        qs = row.get("questions") or row.get("QA") or []
        if not isinstance(qs, list):
            raise UserError(f"{p}:{n}: 'questions' must be a list of {{question, answer, level}}")
        questions = [_row_question(q, f"{p}:{n} question {j}", doc_id) for j, q in enumerate(qs)]
        docs.append(Document(id=doc_id, title=str(row.get("title", doc_id)), text=text.strip(),
                             questions=questions, source=str(p)))
    return docs


def _json(p: Path) -> list[Document]:
    from loramem.data.paperqa import looks_like_paperqa, papers_from_json

    data = read_json(p)
    if looks_like_paperqa(data):
        return papers_from_json(data, str(p))
    if isinstance(data, list) and data and all(isinstance(r, dict) and {"question", "answer"} <= set(r)
                                               for r in data):
        facts = [_fact(str(r["question"]), str(r["answer"])) for r in data]
        return [Document(id=p.stem, title=p.stem, text=facts_text(facts), facts=facts, source=str(p))]
    raise UserError(f"{p}: not a PaperQA file (a list of papers with title, introduction, QA) nor a list of "
                    "{question, answer} facts")


def _fact(prompt: str, answer: str) -> Fact:
    m = re.match(r"what is the phone number of (.+?)\??$", prompt.strip(), flags=re.I)
    if m:
        return Fact(m.group(1), prompt.rstrip("?"), answer, True)
    question_like = prompt.rstrip().endswith("?") or prompt.split(" ", 1)[0].lower() in (
        "what", "who", "where", "when", "which", "how", "why")
    return Fact(prompt.split(",")[0].strip(), prompt.strip(), answer, question_like)


def _phonebook(p: Path) -> Document:
    from loramem.data import phonebook

    facts = [Fact(e.name, f"What is the phone number of {e.name}", e.number) for e in phonebook.read(p)]
    return Document(id=p.stem, title=p.stem, text=facts_text(facts), facts=facts, source=str(p))


def fact_statement(f: Fact) -> str:
    """A fact as one declarative sentence."""
    m = re.match(r"what is the phone number of (.+)$", f.prompt, flags=re.I)
    if m:
        return f"The phone number of {m.group(1)} is {f.answer}."
    if f.question_like:
        return f"{f.prompt.rstrip('?')}? {f.answer}."
    return f"{f.prompt} {f.answer}."


def facts_text(facts: list[Fact]) -> str:
    return "\n".join(fact_statement(f) for f in facts)
