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

from loramem.errors import UserError

SCHEMA_VERSION = 1
APPLICATION_ID = 0x4C4D454D  # "LMEM" in the SQLite header: a loramem manifest says what it is

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
CREATE TABLE IF NOT EXISTS facts (     -- the facts each version was trained to know, for updates (see facts.py)
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    row INTEGER NOT NULL,
    prompt TEXT NOT NULL,
    answer TEXT NOT NULL,
    key TEXT NOT NULL,
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


class ManifestError(UserError):
    """The manifest file is empty, damaged, foreign or from a newer loramem: nothing may read or write it."""


def connect(path: Path, write: bool = False) -> sqlite3.Connection:
    """Open a bank's manifest: read-only unless `write` (a read never changes the file; read-only banks work).

    A new manifest is created only for a write and only where no file exists; an existing file that is not a
    loramem manifest (empty, truncated, another program's database) is refused, never initialised over."""
    path = Path(path)
    fresh = write and not path.exists()
    try:
        if write:
            con = sqlite3.connect(str(path), timeout=60, isolation_level=None)  # explicit BEGIN/COMMIT
        else:
            con = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=60, isolation_level=None)
        if fresh:
            con.execute("PRAGMA journal_mode=DELETE")
            con.executescript(SCHEMA)
            con.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            con.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            con.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        else:
            _check_identity(con, path, write)
            if write:
                con.executescript(SCHEMA)  # tables a newer loramem added (e.g. row_keys) appear on the next write
        if write:
            con.execute("PRAGMA synchronous=FULL")
        return con
    except sqlite3.DatabaseError as exc:
        raise ManifestError(_damaged(path, f"{type(exc).__name__}: {exc}")) from None


def has_table(con: sqlite3.Connection, name: str) -> bool:
    """Whether the manifest has a table (a bank written before it existed, opened read-only, has not)."""
    return con.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)).fetchone() is not None


def _damaged(path: Path, why: str) -> str:
    bank = path.parent
    return (f"{path} is not a usable loramem manifest ({why}); nothing was changed. Run `loramem bank verify "
            f"--bank {bank}`, restore the file from a backup, or use another --bank folder")


def _check_identity(con: sqlite3.Connection, path: Path, write: bool) -> None:
    """Accept our application id, or a manifest of the first schema (written before the id was set)."""
    app_id = con.execute("PRAGMA application_id").fetchone()[0]
    tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if app_id != APPLICATION_ID:
        if app_id != 0 or not {"meta", "modules", "heads"} <= tables:
            what = "an empty file" if path.stat().st_size == 0 else "no loramem tables" if app_id == 0 else \
                f"application id {app_id:#x}, another program's database"
            raise ManifestError(_damaged(path, what))
    if not {"meta", "modules", "heads"} <= tables:
        raise ManifestError(_damaged(path, f"tables missing: {sorted({'meta', 'modules', 'heads'} - tables)}"))
    got = con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    version = int(got[0]) if got and str(got[0]).isdigit() else None
    if version is None:
        raise ManifestError(_damaged(path, "no schema version"))
    if version > SCHEMA_VERSION:
        raise ManifestError(f"{path} was written by a newer loramem (schema {version}, this one reads "
                            f"{SCHEMA_VERSION}); upgrade loramem (`pip install -U loramem`)")
    if write and app_id == 0:  # the first schema's manifests get the id on their next write
        con.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        con.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


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
