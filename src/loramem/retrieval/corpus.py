"""The documents a RAG index or an ICL prompt is built from: id + text, read from files, hashed for staleness."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from loramem.data.reading import loads, read_text
from loramem.errors import UserError

TEXT_SUFFIXES = (".txt", ".md")


@dataclass(frozen=True)
class Document:
    """One source document. `id` names it in retrieval hits and in the index."""

    id: str
    text: str
    title: str = ""

    @property
    def sha(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()[:16]


def as_documents(docs: Iterable[Document] | Mapping[str, str] | Iterable[str]) -> list[Document]:
    """Accept Documents, an {id: text} mapping or plain strings (ids doc0, doc1, ...)."""
    if isinstance(docs, Mapping):
        out = [Document(str(k), v) for k, v in docs.items()]
    else:
        out = [d if isinstance(d, Document) else Document(f"doc{i}", str(d)) for i, d in enumerate(docs)]
    ids = [d.id for d in out]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise UserError(f"document ids must be unique; repeated: {', '.join(dup[:5])}")
    return out


def read_documents(paths: Iterable[str | Path]) -> list[Document]:
    """Text files (.txt, .md: one document each), JSONL rows {id?, title?, text} and folders of those."""
    docs: list[Document] = []
    for p in map(Path, paths):
        if p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in (*TEXT_SUFFIXES, ".jsonl"))
            if not files:
                raise UserError(f"folder {p} has no .txt, .md or .jsonl documents")
            for f in files:
                docs.extend(_read_file(f, str(f.relative_to(p))))
        elif p.is_file():
            docs.extend(_read_file(p, p.name))
        else:
            raise UserError(f"document {p} does not exist; pass text files, JSONL files or folders")
    if not docs:
        raise UserError("no documents given; pass at least one text file, JSONL file or folder")
    return as_documents(docs)


def _read_file(f: Path, name: str) -> list[Document]:
    if f.suffix == ".jsonl":
        out = []
        for n, line in enumerate(read_text(f).splitlines(), 1):
            if not line.strip():
                continue
            row = loads(line, f"{f}:{n}")
            try:
                out.append(Document(str(row.get("id", f"{name}:{n}")), row["text"], str(row.get("title", ""))))
            except (KeyError, TypeError, AttributeError):
                raise UserError(f"{f}:{n}: a document row must be JSON with a 'text' field") from None
        return out
    return [Document(name, read_text(f))]


def corpus_hash(docs: Iterable[Document]) -> str:
    """One hash over ids and texts: the index is stale when it changes."""
    h = hashlib.sha256()
    for d in docs:
        h.update(json.dumps([d.id, d.sha]).encode())
    return h.hexdigest()[:16]
