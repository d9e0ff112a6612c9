"""Split a knowledge set into parts, one memory module each, and give every part the key text routing uses.

Three ways to split: by entries (N contiguous, near-equal parts), by document (JSONL rows with a "doc" or
"title" field: rows of one document stay together), or by the paper's own sector files (a routing meta JSON such
as phonebook_qa_128K_routing_meta.json lists them).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from loramem.data.examples import read_examples, row_to_example
from loramem.data.reading import loads, read_json, read_text
from loramem.errors import UserError
from loramem.formats import Example

KEY_TEXT_CHARS = 4000  # enough for a few hundred names; embedding models read the first ~256 tokens anyway


@dataclass
class Part:
    """One module's share of the knowledge: its facts, its key text and where they came from."""

    suffix: str  # appended to the module name ("" when there is one part)
    examples: list[Example]
    key_text: str
    keys: list[str]
    source: Path


def fact_key(e: Example) -> str:
    """What routing knows a fact by: its key (a PhoneBook name), else its prompt (a question), else its text."""
    return e.key or e.prompt or e.answer[:200]


def key_text(examples: list[Example], title: str = "") -> str:
    """The text a router matches questions against: a title, then the facts' keys."""
    keys = [fact_key(e) for e in examples]
    text = "; ".join(k for k in keys if k)
    return ((title + ": ") if title else "") + text[:KEY_TEXT_CHARS]


def split_even(n_items: int, n_parts: int) -> list[range]:
    """N contiguous near-equal index ranges covering 0..n_items."""
    if n_parts < 1:
        raise UserError(f"--partition must be >= 1 (got {n_parts})")
    if n_items == 0:
        raise UserError("the training file holds no facts; nothing to write")
    if n_parts > n_items:
        raise UserError(f"cannot split {n_items} facts into {n_parts} modules; use --partition {n_items} or fewer")
    bounds = [round(i * n_items / n_parts) for i in range(n_parts + 1)]
    return [range(a, b) for a, b in zip(bounds, bounds[1:], strict=False)]


def suffixes(n: int) -> list[str]:
    width = max(2, len(str(n - 1)))
    return [""] if n == 1 else [f"-{i:0{width}d}" for i in range(n)]


def is_routing_meta(path: Path) -> bool:
    if path.suffix.lower() != ".json" or not path.is_file():
        return False
    try:
        data = read_json(path)
    except UserError:
        return False
    return isinstance(data, dict) and "sector_map" in data


def partition_file(path: str | Path, n_parts: int | None = None, limit: int | None = None) -> list[Part]:
    """Parts of a training file: sectors of a routing meta, documents of JSONL rows, or N even splits."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"training file not found: {path}; pass an existing CSV, JSON or JSONL file")
    if is_routing_meta(path):
        return _sector_parts(path, n_parts)
    if n_parts is not None and n_parts > 1 and path.suffix.lower() == ".jsonl":
        docs = _documents(path)
        if docs is not None:
            return _document_parts(docs, n_parts, path)
    examples = read_examples(path)[:limit]
    n = n_parts or 1
    ranges = split_even(len(examples), n)  # refuses n > facts before n names are made
    return [Part(sfx, examples[r.start:r.stop], key_text(examples[r.start:r.stop]),
                 [fact_key(e) for e in examples[r.start:r.stop]], path)
            for sfx, r in zip(suffixes(n), ranges, strict=True)]


def _sector_parts(meta: Path, n_parts: int | None) -> list[Part]:
    from loramem.data.phonebook import read_sectors

    sectors = read_sectors(meta)
    if n_parts is not None and n_parts != len(sectors):
        raise UserError(f"{meta.name} defines {len(sectors)} sectors; drop --partition or pass --partition {len(sectors)}")
    out = []
    for sfx, s in zip(suffixes(len(sectors)), sectors, strict=True):
        ex = [e.example() for e in s.entries]
        out.append(Part(sfx, ex, key_text(ex), [fact_key(e) for e in ex], s.path))
    return out


def _documents(path: Path) -> dict[str, list[dict]] | None:
    """Rows grouped by their "doc" (or "title") field, in first-seen order; None when rows carry neither."""
    docs: dict[str, list[dict]] = {}
    for n, line in enumerate(read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        row = loads(line, f"{path}:{n}")
        doc = row.get("doc", row.get("title")) if isinstance(row, dict) else None
        if doc is None:
            return None
        docs.setdefault(str(doc), []).append(row)
    return docs or None


def _document_parts(docs: dict[str, list[dict]], n_parts: int, path: Path) -> list[Part]:
    """Whole documents per module: N groups of consecutive documents (never splitting one)."""
    titles = list(docs)
    out = []
    ranges = split_even(len(titles), n_parts)
    for sfx, r in zip(suffixes(n_parts), ranges, strict=True):
        group = titles[r.start:r.stop]
        ex = [row_to_example(row, str(path)) for t in group for row in docs[t]]
        intro = " ".join(str(row.get("text", row.get("answer", ""))) for row in docs[group[0]][:1])[:300]
        out.append(Part(sfx, ex, key_text(ex, " | ".join(group) + (" — " + intro if intro else "")),
                        [fact_key(e) for e in ex], path))
    return out
