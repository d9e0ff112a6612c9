"""The bank's manifest: one SQLite file that says which module versions exist and which one each name serves.

Rows are written in transactions; the adapter files themselves live beside it (see store.py). A module row
carries everything loramem knows about a module, so the PEFT folder stays a plain PEFT folder.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SCHEMA_VERSION = 1

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS modules (
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    path TEXT NOT NULL,              -- relative to the bank folder
    base_name TEXT NOT NULL,
    base_fingerprint TEXT NOT NULL,  -- hash of the base model's weights
    rank INTEGER NOT NULL,
    targets TEXT NOT NULL,           -- JSON list of target module names
    n_params INTEGER NOT NULL,
    sources TEXT NOT NULL,           -- JSON {file: sha256}
    view_mix TEXT NOT NULL,          -- JSON (e.g. {"qa": 1.0})
    tokens INTEGER NOT NULL,         -- knowledge tokens of the training text
    record TEXT NOT NULL,            -- JSON training record (writer's loramem.json)
    key_text TEXT NOT NULL,          -- what routing knows the module by
    keys TEXT NOT NULL,              -- JSON list of the keys of its facts (e.g. names)
    key_embedding BLOB,              -- float32 vector of key_text, filled by the embedding router
    embed_model TEXT,
    checksum TEXT NOT NULL,          -- sha256 over the adapter folder's files
    created TEXT NOT NULL,
    PRIMARY KEY (name, version)
);
CREATE TABLE IF NOT EXISTS heads (name TEXT PRIMARY KEY, version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS row_keys (  -- fact-level routing keys, one per training row (see rowkeys.py)
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    row INTEGER NOT NULL,
    text TEXT NOT NULL,              -- the row's question / prompt, without the `Question: ... Answer:` frame
    embedding BLOB NOT NULL,         -- float32 unit vector of text (all-MiniLM-L6-v2)
    PRIMARY KEY (name, version, row)
);
"""

COLUMNS = ("name", "version", "path", "base_name", "base_fingerprint", "rank", "targets", "n_params", "sources",
           "view_mix", "tokens", "record", "key_text", "keys", "key_embedding", "embed_model", "checksum", "created")
_JSON = ("targets", "sources", "view_mix", "record", "keys")


@dataclass
class ModuleInfo:
    """One version of one module, as the manifest records it."""

    name: str
    version: int
    path: str
    base_name: str
    base_fingerprint: str
    rank: int
    targets: list[str]
    n_params: int
    sources: dict
    view_mix: dict
    tokens: int
    record: dict = field(repr=False)
    key_text: str = field(repr=False)
    keys: list[str] = field(repr=False)
    key_embedding: np.ndarray | None = field(repr=False, default=None)
    embed_model: str | None = None
    checksum: str = ""
    created: str = ""

    @property
    def id(self) -> str:
        return f"{self.name}@v{self.version}"

    @property
    def format(self) -> str:
        return self.record.get("config", {}).get("format", "plain")

    def summary(self, head: int | None = None) -> dict:
        """JSON-able view for `bank ls/show` (no record body, no embedding)."""
        return {"name": self.name, "version": self.version, "head": head == self.version if head else None,
                "base": self.base_name, "base_fingerprint": self.base_fingerprint, "rank": self.rank,
                "targets": self.targets, "n_params": self.n_params, "tokens": self.tokens,
                "n_facts": len(self.keys), "sources": self.sources, "view_mix": self.view_mix,
                "exact_match": self.record.get("exact_match"), "key_text": self.key_text[:200],
                "checksum": self.checksum, "created": self.created, "path": self.path}


def connect(path: Path) -> sqlite3.Connection:
    con = sqlite3.connect(str(path), timeout=60, isolation_level=None)  # explicit BEGIN/COMMIT below
    con.execute("PRAGMA journal_mode=DELETE")
    con.execute("PRAGMA synchronous=FULL")
    con.executescript(SCHEMA)
    con.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
    return con


def row_to_info(row: sqlite3.Row | tuple) -> ModuleInfo:
    d = dict(zip(COLUMNS, row, strict=True))
    for k in _JSON:
        d[k] = json.loads(d[k])
    blob = d["key_embedding"]
    d["key_embedding"] = np.frombuffer(blob, dtype=np.float32).copy() if blob else None
    return ModuleInfo(**d)


def info_to_row(info: ModuleInfo) -> tuple:
    d = {k: getattr(info, k) for k in COLUMNS}
    for k in _JSON:
        d[k] = json.dumps(d[k], default=str)
    emb = d["key_embedding"]
    d["key_embedding"] = None if emb is None else np.asarray(emb, dtype=np.float32).tobytes()
    return tuple(d[k] for k in COLUMNS)


SELECT = f"SELECT {', '.join('m.' + c for c in COLUMNS)} FROM modules m"
