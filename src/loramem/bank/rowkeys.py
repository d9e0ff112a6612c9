"""Fact-level keys: one routing key per training row of a module (its question or prompt), stored in the manifest.

A module that holds 30 unrelated facts is badly described by one embedding of all of them; a question about one
fact is close to that fact's own question. So the bank keeps, per module version, the text and MiniLM embedding of
every training row that has a prompt, written in the same transaction as the module and deleted with it. Rows of
every version are kept, so a rollback serves the old version's rows at once.

Modules without such rows (documents trained on raw text, banks written before row keys) are represented by one
row: their module key text (title + summary), which is a fair key for a document.

    keys = RowKeys.of(bank, bank.list())     # head rows of those modules, module index per row
    keys.matrix @ q -> score per row; keys.module_of[row] -> index into the modules list
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from loramem.formats import Example

EMBED_MODEL = "all-MiniLM-L6-v2"
ROW_TEXT_CHARS = 500  # MiniLM reads ~256 tokens; a longer prompt adds nothing to its vector

# the table (manifest.SCHEMA): row_keys(name, version, row, text, embedding float32 blob)

_FRAME = re.compile(r"^\s*Question:\s*(?P<q>.*?)\s*Answer:\s*$", re.S)


def row_text(example: Example) -> str:
    """What a training row is found by: its question (the paper's frame stripped), else its prompt; '' for raw
    text rows (they have no question to match)."""
    prompt = example.prompt.strip()
    m = _FRAME.match(prompt)
    return (m.group("q") if m else prompt)[:ROW_TEXT_CHARS]


def row_texts(examples: list[Example]) -> list[str]:
    """The non-empty row keys of a module's training examples, in order, without duplicates."""
    return list(dict.fromkeys(t for t in (row_text(e) for e in examples) if t))


def embed_rows(texts: list[str]) -> np.ndarray:
    """Unit float32 embeddings of row keys by the exact network (as module keys are)."""
    from loramem.embeddings import embed

    return embed(texts).astype(np.float32)


def insert(con, name: str, version: int, texts: list[str], matrix: np.ndarray) -> None:
    """Rows of one module version, inside the caller's transaction."""
    con.executemany("INSERT INTO row_keys VALUES (?, ?, ?, ?, ?)",
                    [(name, version, i, t, np.asarray(v, dtype=np.float32).tobytes())
                     for i, (t, v) in enumerate(zip(texts, matrix, strict=True))])


def delete(con, name: str) -> None:
    """Rows of every version of a module, inside the caller's transaction."""
    con.execute("DELETE FROM row_keys WHERE name = ?", (name,))


def count(con) -> dict[tuple[str, int], int]:
    """Rows per (name, version) in the manifest."""
    from loramem.bank.manifest import has_table

    if not has_table(con, "row_keys"):
        return {}
    return {(n, v): c for n, v, c in con.execute("SELECT name, version, COUNT(*) FROM row_keys GROUP BY name, version")}


@dataclass
class RowKeys:
    """The routing keys of a list of modules: one row per fact (or per module without rows)."""

    texts: list[str]
    matrix: np.ndarray  # (rows, 384) float32, unit rows
    module_of: np.ndarray  # (rows,) int32: index into the modules list
    fact_level: np.ndarray  # (rows,) bool: a training row (True) or a module's key text standing in (False)
    labels: np.ndarray  # (rows,) int64: stable ids for the vector index (vindex.py)

    def __len__(self) -> int:
        return len(self.texts)

    @classmethod
    def of(cls, con, modules, module_vectors=None) -> RowKeys:
        """Row keys of these module versions from a manifest connection; module key text for modules without
        rows (their vectors from `module_vectors(modules_without_rows)`, default: embed the key texts)."""
        from loramem.bank.manifest import has_table
        from loramem.bank.vindex import MODULE_LABEL

        where = {(m.name, m.version): i for i, m in enumerate(modules)}
        texts, blobs, owner, labels = [], [], [], []
        query = "SELECT rowid, name, version, text, embedding FROM row_keys ORDER BY rowid"
        for rowid, name, version, text, blob in con.execute(query) if has_table(con, "row_keys") else []:
            i = where.get((name, version))
            if i is not None:
                texts.append(text)
                blobs.append(blob)
                owner.append(i)
                labels.append(rowid)
        matrix = (np.frombuffer(b"".join(blobs), dtype=np.float32).reshape(len(blobs), -1) if blobs
                  else np.zeros((0, 384), dtype=np.float32))
        mod_ids = {(n, v): r for r, n, v in con.execute("SELECT rowid, name, version FROM modules")}
        module_labels = [MODULE_LABEL + mod_ids.get((m.name, m.version), i) for i, m in enumerate(modules)]
        return cls.build(modules, texts, matrix, np.asarray(owner, dtype=np.int32), module_vectors,
                         np.asarray(labels, dtype=np.int64), module_labels)

    @classmethod
    def build(cls, modules, texts: list[str], matrix: np.ndarray, owner: np.ndarray, module_vectors=None,
              labels: np.ndarray | None = None, module_labels: list[int] | None = None) -> RowKeys:
        """Rows from given texts/vectors/owners (and index labels), plus one key-text row for each module that has
        none (labelled by `module_labels[i]`)."""
        from loramem.bank.vindex import MODULE_LABEL

        have = set(owner.tolist())
        bare = [i for i in range(len(modules)) if i not in have]
        fact = np.ones(len(texts), dtype=bool)
        labels = np.arange(len(texts), dtype=np.int64) if labels is None else labels
        module_labels = module_labels or [MODULE_LABEL + i for i in range(len(modules))]
        if bare:
            mods = [modules[i] for i in bare]
            vecs = module_vectors(mods) if module_vectors is not None else embed_rows(
                [m.key_text or m.name for m in mods])
            texts = list(texts) + [m.key_text or m.name for m in mods]
            matrix = np.concatenate([matrix, np.asarray(vecs, dtype=np.float32)])
            owner = np.concatenate([owner, np.asarray(bare, dtype=np.int32)])
            fact = np.concatenate([fact, np.zeros(len(bare), dtype=bool)])
            labels = np.concatenate([labels, np.asarray([module_labels[i] for i in bare], dtype=np.int64)])
        return cls(texts, np.ascontiguousarray(matrix, dtype=np.float32), owner.astype(np.int32), fact, labels)

    @classmethod
    def modules_only(cls, modules, module_vectors=None) -> RowKeys:
        """One key-text row per module (module-level routing)."""
        return cls.build(modules, [], np.zeros((0, 384), dtype=np.float32), np.zeros(0, dtype=np.int32),
                         module_vectors)
