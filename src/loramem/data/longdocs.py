"""Long-document QA benchmarks in their published local formats (users download them; loramem reads them).

NarrativeQA (github.com/deepmind/narrativeqa), a folder with
    documents.csv                       document_id, set, kind, story_url, ..., wiki_title, ...
    qaps.csv                            document_id, set, question, answer1, answer2, *_tokenized
    third_party/wikipedia/summaries.csv document_id, set, summary, summary_tokenized
    tmp/<document_id>.content           full stories, as the repo's download_stories.sh leaves them
QuALITY (github.com/nyu-mll/quality), JSON-lines files such as QuALITY.v1.0.1.htmlstripped.dev: one article per
    line {article_id, title, article, questions: [{question, options: [4], gold_label: 1-4, ...}]}
    (the test split has no gold_label: its questions are skipped).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from loramem.data.reading import csv_rows, read_text
from loramem.errors import UserError


@dataclass(frozen=True)
class LongQA:
    """A question about a long document: free-form answers, or options with the index of the right one."""

    question: str
    answers: tuple[str, ...] = ()
    options: tuple[str, ...] = ()
    gold: int | None = None  # index into options (0-based)


@dataclass
class LongDoc:
    id: str
    title: str
    text: str
    questions: list[LongQA] = field(default_factory=list)


def read_narrativeqa(folder: str | Path, split: str = "test", text: str = "summary",
                     limit: int | None = None) -> list[LongDoc]:
    """NarrativeQA documents of a split with their questions; text 'summary' (Wikipedia) or 'story' (full)."""
    root = Path(folder)
    if not (root / "qaps.csv").is_file():
        raise UserError(f"{root} is not a NarrativeQA folder (no qaps.csv); clone github.com/deepmind/narrativeqa")
    if text not in ("summary", "story"):
        raise UserError(f"NarrativeQA text must be 'summary' or 'story', not '{text}'")
    titles = {r["document_id"]: r.get("wiki_title", "") for r in _csv(root / "documents.csv")} \
        if (root / "documents.csv").is_file() else {}
    if text == "summary":
        path = root / "third_party" / "wikipedia" / "summaries.csv"
        if not path.is_file():
            raise UserError(f"{path} is missing; it ships with the NarrativeQA repository")
        texts = {r["document_id"]: r["summary"] for r in _csv(path) if r["set"] == split}
    else:
        texts = {}
        for doc_id in titles or {r["document_id"] for r in _csv(root / "qaps.csv")}:
            f = root / "tmp" / f"{doc_id}.content"
            if f.is_file():
                texts[doc_id] = f.read_text(encoding="utf-8", errors="replace")
        if not texts:
            raise UserError(f"no stories under {root / 'tmp'}; run the repository's download_stories.sh first")
    docs: dict[str, LongDoc] = {}
    for r in _csv(root / "qaps.csv"):
        if r["set"] != split or r["document_id"] not in texts:
            continue
        d = docs.get(r["document_id"])
        if d is None:
            if limit is not None and len(docs) >= limit:
                continue
            d = docs[r["document_id"]] = LongDoc(r["document_id"], titles.get(r["document_id"], ""),
                                                 texts[r["document_id"]])
        d.questions.append(LongQA(r["question"].strip(), (r["answer1"].strip(), r["answer2"].strip())))
    if not docs:
        raise UserError(f"no NarrativeQA questions in split '{split}' of {root}; use train, valid or test")
    return list(docs.values())


def read_quality(path: str | Path, limit: int | None = None) -> list[LongDoc]:
    """QuALITY articles with their multiple-choice questions (questions without a gold label are skipped)."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"QuALITY file {p} does not exist; download it from github.com/nyu-mll/quality")
    docs = []
    for n, line in enumerate(read_text(p).splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            qs = [LongQA(q["question"].strip(), options=tuple(q["options"]), gold=int(q["gold_label"]) - 1)
                  for q in row["questions"] if q.get("gold_label")]
            docs.append(LongDoc(str(row["article_id"]), row.get("title", ""), row["article"], qs))
        except (json.JSONDecodeError, RecursionError, KeyError, TypeError, ValueError):
            raise UserError(f"{p}:{n} is not a QuALITY article row (article_id, article, questions)") from None
        if limit is not None and len(docs) >= limit:
            break
    return docs


def _csv(path: Path) -> list[dict]:
    return csv_rows(path)[1]
