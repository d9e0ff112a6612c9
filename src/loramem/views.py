"""Views: the training rows a document becomes. `raw` (its text), `qaN` (N QA pairs), `summaryM` (M summaries),
`rewriteK` (K rewrites), and mixes joined with '+', named as in the paper: qa40, summary8+qa40, rewrite4+qa40,
raw+summary8+rewrite4+qa40.

    vs = make_views(doc, "summary8+qa40", generator, tokenizer)
    vs.rows        # [{"question", "answer", "view", "doc"} | {"text", "view", "doc"}, ...] -> write_module
    vs.parts       # per atomic view: generator, prompt version, rows, tokens, cached

Each atomic view is cached on disk by (document hash, view, generator); a cached view written with another
prompt version is regenerated. `fit_budget` fixes a view's training tokens for equal-token comparisons (Q4).
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from loramem.config import ViewsConfig
from loramem.data.documents import Document
from loramem.data.examples import row_to_example
from loramem.errors import UserError
from loramem.formats import render
from loramem.generators import Generator

KINDS = ("raw", "qa", "summary", "rewrite")
PAPER_MIXES = {  # the paper's Q5 conditions -> our view specs
    "Original": "raw", "QA40": "qa40", "Original+QA40": "raw+qa40", "Summary8+QA40": "summary8+qa40",
    "Rewrite4+QA40": "rewrite4+qa40", "All mixed": "raw+summary8+rewrite4+qa40",
}


@dataclass(frozen=True)
class ViewPart:
    kind: str
    count: int | None  # None for raw

    @property
    def name(self) -> str:
        return self.kind if self.count is None else f"{self.kind}{self.count}"


@dataclass
class ViewSet:
    doc: str
    spec: str
    rows: list[dict] = field(default_factory=list)
    parts: dict[str, dict] = field(default_factory=dict)  # atomic view name -> record
    tokens: int = 0  # training tokens of `rows` (after any budget)


def parse_spec(spec: str, cfg: ViewsConfig | None = None) -> list[ViewPart]:
    """'raw+summary8+qa40' -> parts; a bare 'qa' takes the default count from ViewsConfig."""
    cfg = cfg or ViewsConfig()
    parts = []
    for item in [s.strip().lower() for s in spec.split("+") if s.strip()]:
        m = re.fullmatch(r"(raw|original|qa|summary|rewrite)(\d*)", item)
        if not m:
            raise UserError(f"unknown view '{item}' in '{spec}'; use raw, qaN, summaryM, rewriteK joined by + "
                            "(e.g. summary8+qa40)")
        kind = "raw" if m.group(1) == "original" else m.group(1)
        if kind == "raw":
            if m.group(2):
                raise UserError(f"'{item}': raw takes no count")
            parts.append(ViewPart("raw", None))
            continue
        count = int(m.group(2)) if m.group(2) else getattr(cfg, kind)
        if count < 1:
            raise UserError(f"'{item}': the count must be >= 1")
        parts.append(ViewPart(kind, count))
    if not parts:
        raise UserError("no views given; use e.g. --views qa40 or summary8+qa40")
    if len({p.kind for p in parts}) != len(parts):
        raise UserError(f"'{spec}' names a view kind twice")
    return parts


def row_tokens(row: dict, tokenizer) -> int:
    """Training tokens of one row as the writer renders it (plain format)."""
    return len(render(row_to_example(row), tokenizer, "plain").ids)


def make_views(doc: Document, spec: str, generator: Generator, tokenizer, cfg: ViewsConfig | None = None
               ) -> ViewSet:
    """Training rows of `doc` for a view spec, each atomic view from the cache when there."""
    cfg = cfg or ViewsConfig()
    out = ViewSet(doc=doc.id, spec=spec)
    for part in parse_spec(spec, cfg):
        rows, record = _atomic(doc, part, generator, tokenizer, cfg)
        out.rows += rows
        out.parts[part.name] = record
    if cfg.budget_tokens is not None:
        out.rows = fit_budget(out.rows, cfg.budget_tokens, tokenizer)
        out.parts = {k: {**v, "budget_tokens": cfg.budget_tokens} for k, v in out.parts.items()}
    out.tokens = sum(row_tokens(r, tokenizer) for r in out.rows)
    return out


def _atomic(doc: Document, part: ViewPart, gen: Generator, tokenizer, cfg: ViewsConfig) -> tuple[list[dict], dict]:
    path = cache_path(cfg.cache_root(), doc, part.name, gen.name)
    cached = _read_cache(path, gen.prompt_version) if not cfg.refresh else None
    t0 = time.time()
    if cached is not None:
        rows = cached
    else:
        rows = _generate(doc, part, gen, tokenizer, cfg)
        if not rows:
            raise UserError(f"generator {gen.name} wrote no {part.name} rows for document '{doc.id}'; try another "
                            "--generator")
        _write_cache(path, {"doc": doc.id, "doc_hash": doc.hash, "view": part.name, "generator": gen.name,
                            "prompt_version": gen.prompt_version, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                            "rows": rows})
    rows = [{**r, "view": part.name, "doc": doc.id} for r in rows]
    record = {"generator": gen.name, "prompt_version": gen.prompt_version, "rows": len(rows),
              "tokens": sum(row_tokens(r, tokenizer) for r in rows), "cached": cached is not None,
              "generate_s": 0.0 if cached is not None else round(time.time() - t0, 2)}
    if part.count is not None and len(rows) < part.count and part.kind == "qa":
        record["short_by"] = part.count - len(rows)  # a weak generator may not reach N distinct pairs
    return rows, record


def _generate(doc: Document, part: ViewPart, gen: Generator, tokenizer, cfg: ViewsConfig) -> list[dict]:
    if part.kind == "raw":
        return [{"text": t} for t in raw_chunks(doc.text, tokenizer, cfg.raw_chunk_tokens)]
    if part.kind == "qa":
        return [{"question": p["question"], "answer": p["answer"]} for p in gen.qa_pairs(doc, part.count)]
    texts = gen.summaries(doc, part.count) if part.kind == "summary" else gen.rewrites(doc, part.count)
    rows = []
    for t in texts:
        if t.strip():  # a long rewrite is cut into rows the writer can take
            rows += [{"text": c} for c in raw_chunks(t, tokenizer, cfg.raw_chunk_tokens)]
    return rows


def raw_chunks(text: str, tokenizer, max_tokens: int) -> list[str]:
    """Text cut into pieces of at most `max_tokens` tokens, at paragraph then sentence boundaries where possible."""
    from loramem.generators import sentences

    def n(t: str) -> int:
        return len(tokenizer(t, add_special_tokens=False).input_ids)

    pieces: list[str] = []
    for para in [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]:
        for s in (sentences(para) if n(para) > max_tokens else [para]):
            if n(s) > max_tokens:  # one giant sentence: cut by tokens
                ids = tokenizer(s, add_special_tokens=False).input_ids
                pieces += [tokenizer.decode(ids[i:i + max_tokens]) for i in range(0, len(ids), max_tokens)]
            elif pieces and n(pieces[-1] + "\n\n" + s) <= max_tokens:
                pieces[-1] += ("\n\n" if s is para else " ") + s
            else:
                pieces.append(s)
    return pieces


def fit_budget(rows: list[dict], budget: int, tokenizer) -> list[dict]:
    """Rows in order, cycled if short, until `budget` training tokens; the last text row is cut to fit."""
    if budget < 1 or not rows:
        raise UserError(f"token budget must be >= 1 and there must be rows (budget {budget}, rows {len(rows)})")
    out, used, i = [], 0, 0
    while used < budget and i < len(rows) * 1000:
        row = rows[i % len(rows)]
        i += 1
        t = row_tokens(row, tokenizer)
        if used + t <= budget:
            out.append(row)
            used += t
        elif "text" in row:
            ids = tokenizer(row["text"], add_special_tokens=False).input_ids
            keep = budget - used - (t - len(ids))
            if keep > 0:
                out.append({**row, "text": tokenizer.decode(ids[:keep])})
            break
        else:
            break
    return out or rows[:1]


def cache_path(root: Path, doc: Document, view: str, generator: str) -> Path:
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", generator)
    return Path(root) / doc.hash / view / f"{slug}.json"


def _read_cache(path: Path, prompt_version: str) -> list[dict] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data["rows"] if data.get("prompt_version") == prompt_version and data.get("rows") else None


def _write_cache(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(path)


def write_view_files(docs: list[Document], spec: str, generator: Generator, tokenizer, out: Path,
                     cfg: ViewsConfig | None = None, progress: bool = False) -> dict:
    """One JSONL of training rows per document in `out`, plus out/views.json describing how each was made."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    listing = {"spec": spec, "generator": generator.name, "prompt_version": generator.prompt_version,
               "budget_tokens": (cfg or ViewsConfig()).budget_tokens, "documents": []}
    used: set[str] = set()
    for doc in _progress(docs, f"views {spec}", progress):
        vs = make_views(doc, spec, generator, tokenizer, cfg)
        name = _file_name(doc.id, used)
        with (out / name).open("w", encoding="utf-8") as f:
            for row in vs.rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        listing["documents"].append({"id": doc.id, "title": doc.title, "hash": doc.hash, "file": name,
                                     "rows": len(vs.rows), "tokens": vs.tokens,
                                     "views": vs.parts})
    (out / "views.json").write_text(json.dumps(listing, indent=2))
    return listing


def _file_name(doc_id: str, used: set[str]) -> str:
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", doc_id).strip("._") or "doc"
    name, k = f"{stem}.jsonl", 1
    while name in used:
        k += 1
        name = f"{stem}-{k}.jsonl"
    used.add(name)
    return name


def _progress(items: list, label: str, enabled: bool):
    if not enabled:
        yield from items
        return
    from rich.progress import track

    yield from track(items, description=label, transient=True)
