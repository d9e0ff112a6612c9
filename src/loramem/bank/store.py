"""The memory bank on disk: a folder of standard PEFT adapter folders (one per module version) and a SQLite
manifest that says which versions exist and which one each name serves.

    bank = MemoryBank("my-bank")
    bank.add_folder("tmp/module", name="people", keys=[...], key_text="...")   # or `loramem write --bank`
    bank.list(); bank.versions("people"); bank.rollback("people"); bank.verify(); bank.export("out")

Safety: a new version is staged in a temporary folder, renamed into place and recorded in one manifest
transaction while holding the bank's file lock, so a killed writer leaves the bank as it was and two writers
never interleave. Names are checked so none can escape the folder; modules of another base model are refused;
only safetensors adapter files are accepted (those folder checks live in folders.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from filelock import FileLock

from loramem.bank import facts as facts_table
from loramem.bank import rowkeys, vindex
from loramem.bank.folders import (
    check_adapter_folder,
    check_name,
    folder_checksum,
    folder_stamp,
    fsync_dir,
    fsync_tree,
    read_optional_json,
)
from loramem.bank.manifest import SELECT, ModuleInfo, connect, has_table, info_to_row, row_to_info
from loramem.config import fault_point
from loramem.errors import UserError

MANIFEST = "manifest.sqlite"
LOCK = ".lock"
STAGING = ".staging"
MODULES = "modules"
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


@dataclass
class VerifyReport:
    """What `bank verify` found: problems make the bank unsound; notes are harmless leftovers."""

    checked: int = 0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class NewModule:
    """A saved module folder to add to a bank, with what routing and the manifest should know of it."""

    folder: Path
    name: str
    record: dict | None = None
    key_text: str = ""
    keys: list[str] = field(default_factory=list)
    sources: dict = field(default_factory=dict)
    view_mix: dict = field(default_factory=dict)
    rows: list[str] | None = None  # fact-level routing keys of its training rows (questions), embedded on add
    facts: list | None = None  # the facts (formats.Example) this version should answer, kept for updates


_VERIFIED: dict[tuple[str, str], tuple] = {}  # (folder, checksum) -> file stamps when it last matched


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _new_info(item: NewModule, record: dict, conf: dict, checksum: str, version: int) -> ModuleInfo:
    base = record["base"]
    targets = conf.get("target_modules") or []
    return ModuleInfo(
        name=item.name, version=version, path=f"{MODULES}/{item.name}/v{version}", base_name=str(base.get("name")),
        base_fingerprint=base["fingerprint"], rank=int(conf.get("r", 0)),
        targets=sorted({t.split(".")[-1] for t in targets}) if isinstance(targets, list) else [str(targets)],
        n_params=int(record.get("n_params", 0)), sources=item.sources, view_mix=item.view_mix,
        tokens=int(record.get("knowledge_tokens", 0)), record=record, key_text=item.key_text, keys=item.keys,
        checksum=checksum, created=time.strftime("%Y-%m-%dT%H:%M:%S%z"))


class MemoryBank:
    """A folder of LoRA memory modules with a SQLite manifest (created on first write)."""

    def __init__(self, root: str | Path, create: bool = True) -> None:
        self.root = Path(root).expanduser()
        if self.root.exists() and not self.root.is_dir():
            raise UserError(f"bank path {self.root} is a file; pass a folder")
        if not create and not (self.root / MANIFEST).is_file():
            raise UserError(f"no bank at {self.root} (no {MANIFEST}); write a module first with "
                            f"`loramem write FILE --bank {self.root} --name NAME`")
        self._lock = FileLock(str(self.root / LOCK))

    @property
    def lock(self) -> FileLock:
        """The bank's writer lock (held while the manifest and module folders change)."""
        self.root.mkdir(parents=True, exist_ok=True)
        return self._lock

    # -- reading -------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _db(self, write: bool = False):
        if write:
            self.root.mkdir(parents=True, exist_ok=True)
        con = connect(self.root / MANIFEST, write=write)
        try:
            yield con
        finally:
            con.close()

    def exists(self) -> bool:
        return (self.root / MANIFEST).is_file()

    def base(self) -> tuple[str, str] | None:
        """(name, fingerprint) of the base model this bank serves, once a module was added."""
        if not self.exists():
            return None
        with self._db() as con:
            got = dict(con.execute("SELECT key, value FROM meta WHERE key IN ('base_name','base_fingerprint')"))
        return (got["base_name"], got["base_fingerprint"]) if "base_fingerprint" in got else None

    def list(self) -> list[ModuleInfo]:
        """The serving (head) version of every module, by name."""
        if not self.exists():
            return []
        with self._db() as con:
            rows = con.execute(f"{SELECT} JOIN heads h ON h.name = m.name AND h.version = m.version "
                               "ORDER BY m.name").fetchall()
        return [row_to_info(r) for r in rows]

    def versions(self, name: str) -> list[ModuleInfo]:
        check_name(name)
        with self._db() as con:
            rows = con.execute(f"{SELECT} WHERE m.name = ? ORDER BY m.version", (name,)).fetchall()
        return [row_to_info(r) for r in rows]

    def head(self, name: str) -> int | None:
        with self._db() as con:
            got = con.execute("SELECT version FROM heads WHERE name = ?", (name,)).fetchone()
        return got[0] if got else None

    def get(self, name: str, version: int | None = None) -> ModuleInfo:
        """One module version (default: the one the name serves)."""
        check_name(name)
        version = version if version is not None else self.head(name)
        if version is None:
            if self.exists() and self.versions(name):
                raise UserError(f"module '{name}' is retired (not served) in bank {self.root}; serve it again with "
                                f"`loramem bank rollback {name} --bank {self.root}`")
            raise UserError(f"no module '{name}' in bank {self.root}; see `loramem bank ls --bank {self.root}`")
        with self._db() as con:
            row = con.execute(f"{SELECT} WHERE m.name = ? AND m.version = ?", (name, version)).fetchone()
        if row is None:
            have = [v.version for v in self.versions(name)]
            raise UserError(f"module '{name}' has no version {version}; versions: {have}")
        return row_to_info(row)

    def path(self, info: ModuleInfo) -> Path:
        """The version's folder. Names and paths read from the manifest are checked like user input: a row may
        only point at modules/NAME/vN inside this bank."""
        check_name(info.name)
        rel = f"{MODULES}/{info.name}/v{int(info.version)}"
        if info.path != rel:
            raise UserError(f"manifest row {info.name}@v{info.version} points at {info.path!r}, not {rel!r}; the "
                            f"manifest was edited or damaged: run `loramem bank verify --bank {self.root}`")
        return self.root / rel

    def verified_path(self, info: ModuleInfo) -> Path:
        """The version's folder after checking its files against the manifest's checksum (a damaged or swapped
        module is refused). The verdict is cached by each file's size, mtime and inode, so a hot path pays once."""
        folder = self.path(info)
        try:
            check_adapter_folder(folder)
            stamp = folder_stamp(folder)
        except (UserError, OSError) as exc:
            raise UserError(self._damaged_msg(info, f"files missing or unreadable: {exc}")) from None
        key = (str(folder.resolve()), info.checksum)
        if _VERIFIED.get(key) == stamp:
            return folder
        if folder_checksum(folder) != info.checksum:
            raise UserError(self._damaged_msg(info, "its files do not match the manifest's checksum"))
        _VERIFIED[key] = stamp
        return folder

    def _damaged_msg(self, info: ModuleInfo, why: str) -> str:
        return (f"module {info.id} in bank {self.root} is damaged ({why}); it is not served. Run `loramem bank "
                f"verify --bank {self.root}`, then `loramem bank rollback {info.name} --bank {self.root}` or write "
                "it again")

    # -- writing -------------------------------------------------------------------------------------------
    def new_staging(self) -> Path:
        """A fresh private folder inside the bank to save a module into before `add_folder(..., move=True)`."""
        staging = self.root / STAGING / f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        staging.mkdir(parents=True)
        return staging

    def add_folder(self, folder: str | Path, name: str, record: dict | None = None, key_text: str = "",
                   keys: list[str] | None = None, sources: dict | None = None, view_mix: dict | None = None,
                   move: bool = False, rows: list[str] | None = None) -> ModuleInfo:
        """Add a saved PEFT module folder as the next version of `name` (atomic; serialized by the bank lock).
        `rows`: the fact-level routing keys of its training rows (questions), embedded here and stored with it."""
        return self.add_folders([NewModule(Path(folder), name, record, key_text, keys or [], sources or {},
                                           view_mix or {}, rows)], move=move)[0]

    def add_folders(self, items: list[NewModule], move: bool = False, retire: list[str] = ()) -> list[ModuleInfo]:
        """Add several module folders in ONE manifest transaction: after a crash either all are new or none.
        `retire`: names that stop being served in that same transaction (their versions stay, see `rollback`)."""
        if len({i.name for i in items}) != len(items):
            raise UserError("one write cannot add two versions of the same module name")
        staged = []
        try:
            for item in items:
                staged.append(self._stage(item, move))
            fault_point("bank-staged")
            with self.lock:  # the saved row index changes under the lock too: two writers never interleave it
                self._clean_stale_staging()
                infos = self._commit(staged, list(retire))
                vindex.after_change(self)
            return infos
        finally:
            for st in staged:
                shutil.rmtree(st[0], ignore_errors=True)

    def _stage(self, item: NewModule, move: bool) -> tuple:
        check_name(item.name)
        folder = item.folder
        check_adapter_folder(folder)
        record = item.record if item.record is not None else read_optional_json(folder / "loramem.json")
        base = record.get("base") or {}
        if not base.get("fingerprint"):
            raise UserError(f"{folder} does not record its base model (no loramem.json); write it with `loramem write`")
        conf = read_optional_json(folder / "adapter_config.json")
        if move and folder.resolve().parent == (self.root / STAGING).resolve():
            staging = folder
        else:
            staging = self.new_staging()
            shutil.copytree(folder, staging, dirs_exist_ok=True)
            if move:
                shutil.rmtree(folder)
        fsync_tree(staging)
        row_keys = (item.rows, rowkeys.embed_rows(item.rows)) if item.rows else None  # before the lock
        return staging, item, record, conf, folder_checksum(staging), row_keys

    def _clean_stale_staging(self) -> None:
        """Remove the staging folders of writers that died (their pid is gone); called under the lock."""
        stage = self.root / STAGING
        for d in stage.iterdir() if stage.is_dir() else []:
            pid = d.name.split("-", 1)[0]
            if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
                shutil.rmtree(d, ignore_errors=True)

    def _commit(self, staged: list[tuple], retire: list[str] = ()) -> list[ModuleInfo]:
        with self._db(write=True) as con:
            known = dict(con.execute("SELECT key, value FROM meta"))
            infos, moves = [], []
            for staging, item, record, conf, checksum, _ in staged:
                base = record["base"]
                fp = known.get("base_fingerprint") or staged[0][2]["base"]["fingerprint"]
                if fp != base["fingerprint"]:
                    raise UserError(
                        f"bank {self.root} holds modules for base model '{known.get('base_name')}' "
                        f"(weights {fp}); this module was trained for '{base.get('name')}' "
                        f"(weights {base['fingerprint']}): write it with --model {known.get('base_name')} or use "
                        "another bank")
                last = con.execute("SELECT MAX(version) FROM modules WHERE name = ?", (item.name,)).fetchone()[0]
                info = _new_info(item, record, conf, checksum, (last or 0) + 1)
                target = self.root / info.path
                if target.exists():  # left by a writer killed after the rename, before its commit: not recorded
                    shutil.rmtree(target)
                target.parent.mkdir(parents=True, exist_ok=True)
                infos.append(info)
                moves.append((staging, target))
            con.execute("BEGIN IMMEDIATE")
            try:
                for info, st in zip(infos, staged, strict=True):
                    con.execute(f"INSERT INTO modules VALUES ({', '.join('?' * 18)})", info_to_row(info))
                    if st[5] is not None:
                        rowkeys.insert(con, info.name, info.version, *st[5])
                    if st[1].facts is not None:
                        facts_table.insert(con, info.name, info.version, st[1].facts)
                    con.execute("INSERT OR REPLACE INTO heads VALUES (?, ?)", (info.name, info.version))
                    con.execute("INSERT OR IGNORE INTO meta VALUES ('base_name', ?)", (info.base_name,))
                    con.execute("INSERT OR IGNORE INTO meta VALUES ('base_fingerprint', ?)", (info.base_fingerprint,))
                for name in retire:
                    con.execute("DELETE FROM heads WHERE name = ?", (name,))
                for i, (staging, target) in enumerate(moves):
                    os.replace(staging, target)
                    fsync_dir(target.parent)
                    if i == 0:
                        fault_point("bank-mid-commit")
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                for staging, target in moves:
                    if target.exists() and not staging.exists():
                        shutil.rmtree(target, ignore_errors=True)
                raise
        return infos

    def rollback(self, name: str, to: int | None = None) -> ModuleInfo:
        """Serve an earlier version of `name` (default: the one before the current head; for a module retired by
        `bank consolidate`, its last version again)."""
        check_name(name)
        with self.lock:
            have = [v.version for v in self.versions(name)]
            head = self.head(name)
            if not have:
                raise UserError(f"no module '{name}' in bank {self.root}; see `loramem bank ls --bank {self.root}`")
            if head is None and to is None:
                to = have[-1]
            if to is None:
                older = [v for v in have if v < head]
                if not older:
                    raise UserError(f"module '{name}' serves v{head}, its oldest version; nothing to roll back to")
                to = older[-1]
            if to not in have:
                raise UserError(f"module '{name}' has no version {to}; versions: {have}")
            with self._db(write=True) as con:
                con.execute("BEGIN IMMEDIATE")
                con.execute("INSERT OR REPLACE INTO heads VALUES (?, ?)", (name, to))
                con.execute("COMMIT")
            vindex.after_change(self)
        return self.get(name, to)

    def remove(self, name: str) -> list[int]:
        """Remove a module and all its versions (manifest first, then files)."""
        check_name(name)
        with self.lock:
            versions = [v.version for v in self.versions(name)]
            if not versions:
                raise UserError(f"no module '{name}' in bank {self.root}; see `loramem bank ls --bank {self.root}`")
            with self._db(write=True) as con:
                con.execute("BEGIN IMMEDIATE")
                con.execute("DELETE FROM modules WHERE name = ?", (name,))
                con.execute("DELETE FROM heads WHERE name = ?", (name,))
                rowkeys.delete(con, name)
                facts_table.delete(con, name)
                con.execute("COMMIT")
            shutil.rmtree(self.root / MODULES / name, ignore_errors=True)
            vindex.after_change(self)
        return versions

    def facts(self, info: ModuleInfo) -> list:
        """The facts (formats.Example) a module version was trained to know: as the bank recorded them, or read
        back from its unchanged source files for versions written before the bank kept facts."""
        with self._db() as con:
            got = facts_table.stored(con, info)
        return got if got is not None else facts_table.from_sources(info)

    def row_keys(self, modules: list[ModuleInfo]) -> rowkeys.RowKeys:
        """The fact-level routing keys of these module versions (key text for modules without training rows)."""
        from loramem.bank.routing import module_vectors

        with self._db() as con:
            return rowkeys.RowKeys.of(con, modules, lambda mods: module_vectors(mods, self.set_embeddings))

    def row_count(self) -> int:
        """Training-row keys recorded for all versions (a cheap size check)."""
        if not self.exists():
            return 0
        with self._db() as con:
            if not has_table(con, "row_keys"):
                return 0
            return con.execute("SELECT COUNT(*) FROM row_keys").fetchone()[0]

    def set_embeddings(self, items: list[tuple[ModuleInfo, list[float]]], model: str) -> None:
        """Store key embeddings (computed by the embedding router) in the manifest; a read-only bank keeps them
        in memory only (reading a bank never needs write access)."""
        import sqlite3

        import numpy as np

        if not os.access(self.root, os.W_OK) or not os.access(self.root / MANIFEST, os.W_OK):
            return
        try:
            with self.lock, self._db(write=True) as con:
                con.execute("BEGIN IMMEDIATE")
                con.executemany("UPDATE modules SET key_embedding = ?, embed_model = ? WHERE name = ? AND version = ?",
                                [(np.asarray(e, dtype=np.float32).tobytes(), model, i.name, i.version)
                                 for i, e in items])
                con.execute("COMMIT")
        except (OSError, sqlite3.OperationalError):  # read-only file system, or a lock we may not create
            return

    # -- checking and exporting ----------------------------------------------------------------------------
    def verify(self) -> VerifyReport:
        """Check that every recorded version's files exist and match their checksums, and heads point at rows."""
        rep = VerifyReport()
        if not self.exists():
            rep.problems.append(f"no manifest at {self.root / MANIFEST}")
            return rep
        try:
            with self._db() as con:
                ok = con.execute("PRAGMA integrity_check").fetchone()[0]
                rows = [row_to_info(r) for r in con.execute(SELECT).fetchall()]
                heads = dict(con.execute("SELECT name, version FROM heads").fetchall())
        except Exception as exc:  # a damaged manifest is a finding, not a crash
            rep.problems.append(f"manifest unreadable: {type(exc).__name__}: {exc}")
            return rep
        if ok != "ok":
            rep.problems.append(f"manifest integrity check: {ok}")
        recorded = set()
        for info in rows:
            rep.checked += 1
            try:
                folder = self.path(info)
            except UserError:
                rep.problems.append(f"{info.name!r}@v{info.version}: unsafe name or path {info.path!r} in the "
                                    "manifest (not followed)")
                continue
            recorded.add(folder.resolve())
            missing = [f for f in ADAPTER_FILES if not (folder / f).is_file()]
            if missing:
                rep.problems.append(f"{info.id}: missing {', '.join(missing)} in {folder}")
                continue
            got = folder_checksum(folder)
            if got != info.checksum:
                rep.problems.append(f"{info.id}: checksum mismatch in {folder} (recorded {info.checksum[:12]}, "
                                    f"found {got[:12]}): files changed or corrupted")
        versions = {(i.name, i.version) for i in rows}
        for name, v in heads.items():
            if (name, v) not in versions:
                rep.problems.append(f"{name}: head points at v{v}, which the manifest does not hold")
        mod_dir = self.root / MODULES
        for vdir in sorted(mod_dir.glob("*/v*")) if mod_dir.is_dir() else []:
            if vdir.resolve() not in recorded:
                rep.notes.append(f"{vdir.relative_to(self.root)} is not in the manifest (left by an interrupted "
                                 "write or remove); it is ignored")
        if not rep.problems and (off := vindex.check(self)) is not None:
            rep.problems.append(f"row index: {off}; rebuild it with `loramem bank verify --bank {self.root} --repair`")
        stage = self.root / STAGING
        if stage.is_dir() and any(stage.iterdir()):
            rep.notes.append(f"{STAGING}/ holds unfinished writes; they are ignored")
        return rep

    def export(self, out: str | Path, names: list[str] | None = None) -> list[Path]:
        """Write the serving version of each module to OUT/NAME as a portable PEFT folder with a model card
        (for PEFT, vLLM, LoRAX); see loramem.bank.export."""
        out = Path(out).expanduser()
        if out.resolve() == self.root.resolve() or self.root.resolve() in out.resolve().parents:
            raise UserError(f"export folder {out} is inside the bank; pick a folder outside it")
        mods = self.list()
        if names:
            known = {m.name for m in mods}
            missing = [n for n in names if n not in known]
            if missing:
                raise UserError(f"no modules {missing} in bank {self.root}")
            mods = [m for m in mods if m.name in names]
        from loramem.bank.export import base_hub_id, export_module

        sources = [self.verified_path(m) for m in mods]  # every module checked before anything is written
        written = [export_module(m, src, out / m.name) for m, src in zip(mods, sources, strict=True)]
        index = [{"name": m.name, "version": m.version, "path": m.name, "base": base_hub_id(m),
                  "base_fingerprint": m.base_fingerprint, "rank": m.rank, "key_text": m.key_text} for m in mods]
        out.mkdir(parents=True, exist_ok=True)
        (out / "modules.json").write_text(json.dumps(index, indent=2))
        return written
