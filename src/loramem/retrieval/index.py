"""A RAG index on disk: documents, their chunks and a retriever over them, in one self-describing folder.

    index = ensure_index(documents, "bank/index", RetrievalConfig(method="bm25"), tokenizer)
    hits = index.search("What is Anna Smith's number?", k=3)

Folder: index.json (config, tokenizer, corpus hash, chunks), documents.jsonl (the full texts, so ICL can use
them too), bm25/ and/or dense/. `ensure_index` reuses the folder while the documents and settings are the same,
and rebuilds it when any document's hash changes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from loramem.config import RetrievalConfig
from loramem.errors import UserError
from loramem.retrieval.bm25 import BM25Retriever
from loramem.retrieval.chunking import Chunk, chunk_documents
from loramem.retrieval.corpus import Document, as_documents, corpus_hash
from loramem.retrieval.dense import DenseRetriever

INDEX_FILE = "index.json"
DOCUMENTS_FILE = "documents.jsonl"
BANK_INDEX_DIR = "index"  # a bank keeps its RAG index in BANK/index
RRF_K = 60  # reciprocal-rank-fusion constant (Cormack et al., 2009)


@dataclass(frozen=True)
class Hit:
    """One retrieved chunk with its score and rank (0 = best)."""

    chunk: Chunk
    score: float
    rank: int


def index_dir_for_bank(bank: str | Path) -> Path:
    return Path(bank) / BANK_INDEX_DIR


def bank_index(bank: str | Path, required: bool = False) -> Index | None:
    """The RAG index kept beside a bank (BANK/index), or None when it has none (a UserError if `required`)."""
    folder = index_dir_for_bank(bank)
    if (folder / INDEX_FILE).is_file():
        return Index.load(folder)
    if required:
        raise UserError(f"bank {bank} has no RAG index; build one with `loramem index DOCS --bank {bank}`")
    return None


def tokenizer_id(tokenizer) -> str:
    """A cheap identity of a tokenizer (vocabulary size + how it splits a probe text), not of its path."""
    probe = "The quick brown fox, 0123-456; naïve café — Überprüfung 東京 🙂"
    ids = tokenizer(probe, add_special_tokens=False).input_ids
    return hashlib.sha256(json.dumps([len(tokenizer), ids]).encode()).hexdigest()[:12]


def _retriever_names(method: str) -> list[str]:
    return ["bm25", "dense"] if method == "hybrid" else [method]


class Index:
    """Chunks of a set of documents plus the retrievers the config asks for."""

    def __init__(self, cfg: RetrievalConfig, documents: list[Document], chunks: list[Chunk], retrievers: dict,
                 meta: dict, folder: Path | None = None) -> None:
        self.cfg = cfg
        self.documents = documents
        self.chunks = chunks
        self.retrievers = retrievers
        self.meta = meta
        self.folder = folder

    @classmethod
    def build(cls, documents, cfg: RetrievalConfig, tokenizer) -> Index:
        """Chunk `documents` with the base model's tokenizer and build the retriever(s) in memory."""
        docs = as_documents(documents)
        t0 = time.time()
        chunks = chunk_documents(docs, tokenizer, cfg.chunk_tokens, cfg.overlap)
        if not chunks:
            raise UserError("the documents are empty; nothing to index")
        texts = [c.text for c in chunks]
        kinds = {"bm25": BM25Retriever, "dense": DenseRetriever}
        retrievers = {name: kinds[name].build(texts) for name in _retriever_names(cfg.method)}
        meta = {"corpus_hash": corpus_hash(docs), "tokenizer": tokenizer_id(tokenizer),
                "build_s": round(time.time() - t0, 3), "n_documents": len(docs), "n_chunks": len(chunks),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        return cls(cfg, docs, chunks, retrievers, meta)

    def search(self, query: str, k: int | None = None, method: str | None = None) -> list[Hit]:
        """The top-k chunks for `query` (bm25, dense, or hybrid = reciprocal-rank fusion of both)."""
        k = k or self.cfg.k
        method = method or self.cfg.method
        missing = [n for n in _retriever_names(method) if n not in self.retrievers]
        if missing:
            raise UserError(f"this index was built for '{self.cfg.method}', not '{method}'; "
                            f"rebuild it with `loramem index ... --method {method}`")
        if method != "hybrid":
            ranked = self.retrievers[method].search(query, k)
        else:
            ranked = _fuse([self.retrievers[n].search(query, len(self.chunks)) for n in ("bm25", "dense")], k)
        return [Hit(self.chunks[i], score, r) for r, (i, score) in enumerate(ranked)]

    def save(self, folder: str | Path) -> Path:
        """Write the index into `folder`, replacing only the index's own files (each written whole first).

        A folder that holds other files and is not an index is refused: an index never deletes what it did
        not write (`--out docs/` must not eat the documents)."""
        folder = Path(folder)
        check_index_folder(folder)
        tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for name, r in self.retrievers.items():
            r.save(tmp / name)
        with (tmp / DOCUMENTS_FILE).open("w", encoding="utf-8") as f:
            for d in self.documents:
                f.write(json.dumps(asdict(d)) + "\n")
        info = {"config": self.cfg.model_dump(), **self.meta, "chunks": [asdict(c) for c in self.chunks]}
        (tmp / INDEX_FILE).write_text(json.dumps(info, indent=1))
        folder.mkdir(parents=True, exist_ok=True)
        (folder / INDEX_FILE).unlink(missing_ok=True)  # no index.json while the parts are swapped: never half valid
        for name in OWN_ENTRIES:
            old, new = folder / name, tmp / name
            if old.is_dir():
                shutil.rmtree(old)
            elif old.exists():
                old.unlink()
            if new.exists() and name != INDEX_FILE:
                os.replace(new, old)
        os.replace(tmp / INDEX_FILE, folder / INDEX_FILE)
        shutil.rmtree(tmp, ignore_errors=True)
        self.folder = folder
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> Index:
        folder = Path(folder)
        if not (folder / INDEX_FILE).is_file():
            raise UserError(f"{folder} is not a loramem index (no {INDEX_FILE}); build one with `loramem index DOCS --out {folder}`")
        info = json.loads((folder / INDEX_FILE).read_text())
        cfg = RetrievalConfig(**info.pop("config"))
        chunks = [Chunk(**c) for c in info.pop("chunks")]
        docs = [Document(**json.loads(line)) for line in (folder / DOCUMENTS_FILE).read_text().splitlines() if line]
        kinds = {"bm25": BM25Retriever, "dense": DenseRetriever}
        retrievers = {n: kinds[n].load(folder / n) for n in _retriever_names(cfg.method)}
        return cls(cfg, docs, chunks, retrievers, info, folder)

    def storage_bytes(self) -> int:
        """Bytes on disk (0 while in memory only)."""
        if self.folder is None:
            return 0
        return sum(f.stat().st_size for f in Path(self.folder).rglob("*") if f.is_file())


OWN_ENTRIES = ("bm25", "dense", DOCUMENTS_FILE, INDEX_FILE)


def check_index_folder(folder: Path) -> None:
    """An index goes into a new or empty folder, or over an earlier index; anything else is refused."""
    if folder.exists() and not folder.is_dir():
        raise UserError(f"index folder {folder} is a file; pass a folder")
    if not folder.is_dir() or (folder / INDEX_FILE).is_file():
        return
    others = sorted(p.name for p in folder.iterdir())
    if others:
        raise UserError(f"{folder} already holds files ({', '.join(others[:3])}{', ...' if len(others) > 3 else ''}) "
                        "and is not a loramem index; give --out a new or empty folder")


def _fuse(rankings: list[list[tuple[int, float]]], k: int) -> list[tuple[int, float]]:
    score: dict[int, float] = {}
    for ranking in rankings:
        for r, (i, _) in enumerate(ranking):
            score[i] = score.get(i, 0.0) + 1.0 / (RRF_K + r + 1)
    return sorted(score.items(), key=lambda kv: (-kv[1], kv[0]))[:k]


def ensure_index(documents, folder: str | Path, cfg: RetrievalConfig, tokenizer) -> tuple[Index, bool]:
    """The index in `folder`, rebuilt (and saved) when documents, settings or tokenizer changed. -> (index, rebuilt)"""
    docs = as_documents(documents)
    folder = Path(folder)
    if (folder / INDEX_FILE).is_file():
        try:
            old = Index.load(folder)
        except (UserError, OSError, ValueError, KeyError, TypeError):
            old = None
        if (old is not None and old.meta.get("corpus_hash") == corpus_hash(docs) and old.cfg == cfg
                and old.meta.get("tokenizer") == tokenizer_id(tokenizer)):
            return old, False
    index = Index.build(docs, cfg, tokenizer)
    index.save(folder)
    return index, True
