"""The facts each module version was trained to know, kept in the manifest so the bank can update a module.

An update (append, correct, retire, consolidate) needs the module's own facts: to replay a sample of them, to
replace a corrected value, to rewrite the module without retired ones. Source files move, change and get deleted
the day after they were written, so the bank keeps the facts themselves: one row per fact of every version (the
full set that version should answer), written in the same transaction as the module and deleted with it.

Versions written before this table existed fall back to their recorded source files, read again only when each
file's sha256 still matches the manifest (filtered to the module's keys, so a partitioned write gets its part).
"""

from __future__ import annotations

from pathlib import Path

from loramem.bank.manifest import ModuleInfo, has_table
from loramem.errors import UserError
from loramem.formats import Example

# the table (manifest.SCHEMA): facts(name, version, row, prompt, answer, key)


def insert(con, name: str, version: int, facts: list[Example]) -> None:
    """The facts of one module version, inside the caller's transaction."""
    con.executemany("INSERT INTO facts VALUES (?, ?, ?, ?, ?, ?)",
                    [(name, version, i, e.prompt, e.answer, e.key) for i, e in enumerate(facts)])


def delete(con, name: str) -> None:
    """The facts of every version of a module, inside the caller's transaction."""
    if has_table(con, "facts"):
        con.execute("DELETE FROM facts WHERE name = ?", (name,))


def stored(con, info: ModuleInfo) -> list[Example] | None:
    """The facts recorded for this version, in training order; None when the bank holds none for it."""
    if not has_table(con, "facts"):
        return None
    rows = con.execute("SELECT prompt, answer, key FROM facts WHERE name = ? AND version = ? ORDER BY row",
                       (info.name, info.version)).fetchall()
    return [Example(p, a, k) for p, a, k in rows] or None


def from_sources(info: ModuleInfo) -> list[Example]:
    """A version's facts read back from its source files (for versions written before the facts table): every
    file must still hold the bytes the manifest recorded, and only rows with the module's keys count."""
    from loramem.bank.folders import file_sha256
    from loramem.bank.partition import fact_key
    from loramem.data.examples import read_examples

    if not info.sources:
        raise UserError(f"{info.id} records neither its facts nor a source file; rewrite it with `loramem write "
                        f"FILE --bank BANK --name {info.name}`, or pass --replay 0")
    keys = set(info.keys)
    out: list[Example] = []
    for src, sha in info.sources.items():
        p = Path(src)
        if not p.is_file() or file_sha256(p) != sha:
            why = "is gone" if not p.is_file() else "has changed since"
            raise UserError(f"{info.id} was written before the bank kept facts, and its source {p} {why}; "
                            f"restore that file, or pass --replay 0 (the update then trains on the new facts only)")
        out += [e for e in read_examples(p) if fact_key(e) in keys]
    seen: dict[str, Example] = {}
    for e in out:  # a later source's row replaces an earlier one with the same key
        seen[fact_key(e)] = e
    return list(seen.values())
