"""Faults a bank must survive, as a user would see them: kill -9 at named moments of a write, damaged files of
every kind, hostile manifest rows, read-only and full disks. Each test asserts the exit code, a one-line message
and that the bank is still sound with its old answers."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from bank_helpers import QUICK, copy_bank, make_bank, phonebook_file
from conftest import ROOT, run_cli

from loramem.bank.store import MANIFEST, MemoryBank
from loramem.errors import UserError

Q = "What is the phone number of nobody?"


@pytest.fixture(scope="module")
def bank(tiny_base, tmp_path_factory):
    folder = tmp_path_factory.mktemp("faults")
    return make_bank(folder / "bank", tiny_base, phonebook_file(folder, 9), partition=3)


@pytest.fixture()
def fresh(bank, tmp_path):
    return copy_bank(bank, tmp_path / "b")


def _q(info) -> str:
    return f"What is the phone number of {info.keys[0]}?"


def _heads(b: MemoryBank) -> dict[str, tuple[int, str]]:
    return {m.name: (m.version, m.checksum) for m in b.list()}


def _one_line_error(proc: subprocess.CompletedProcess, code: int = 2) -> str:
    assert proc.returncode == code, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    return lines[0]


# -- kill -9 at named points of a write -----------------------------------------------------------------------
@pytest.mark.parametrize("point", ["bank-part-trained", "bank-staged", "bank-mid-commit"])
def test_a_partitioned_write_killed_at_any_point_leaves_every_module_at_its_old_version(fresh, tmp_path, point):
    before = _heads(fresh)
    new = phonebook_file(tmp_path, 9, seed=5)
    p = subprocess.run([sys.executable, "-m", "loramem.cli", "write", str(new), "--bank", str(fresh.root),
                        "--name", "people", "--partition", "3", "--model", "tiny-random", "--steps", "2"],
                       env={**os.environ, "LORAMEM_FAULT": point}, cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == -9, p.stderr  # killed where the hook said
    assert _heads(fresh) == before  # all old: never people-00 new and people-01 old
    assert fresh.verify().ok
    # the next writer removes the dead one's staging folders
    assert any((fresh.root / ".staging").iterdir())
    from loramem.bank.write import write_to_bank
    from loramem.config import WriterConfig
    from loramem.models import load_base

    write_to_bank(new, fresh, "people", load_base("tiny-random"), WriterConfig(**QUICK), partition=3)
    assert not any((fresh.root / ".staging").iterdir())
    assert {v for v, _ in _heads(fresh).values()} == {2}


# -- damaged modules are refused, never served -----------------------------------------------------------------
def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _swap(b: MemoryBank) -> None:
    a, c = b.list()[0], b.list()[1]
    shutil.copy(b.path(c) / "adapter_model.safetensors", b.path(a) / "adapter_model.safetensors")


def _rename_keys(b: MemoryBank) -> None:
    from safetensors.torch import load_file, save_file

    f = b.path(b.list()[0]) / "adapter_model.safetensors"
    save_file({k.replace("lora_A", "lora_X"): v for k, v in load_file(str(f)).items()}, str(f))


DAMAGE = {
    "flipped byte": lambda b: _flip(b.path(b.list()[0]) / "adapter_model.safetensors"),
    "another module's file": _swap,
    "renamed tensor keys": _rename_keys,
    "deleted loramem.json": lambda b: (b.path(b.list()[0]) / "loramem.json").unlink(),
    "truncated safetensors": lambda b: (b.path(b.list()[0]) / "adapter_model.safetensors").write_bytes(b"\x08\0"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_module_is_refused_with_one_line_naming_it(fresh, tiny_base, damage):
    from loramem.api import ask

    first, other = fresh.list()[0], fresh.list()[2]
    DAMAGE[damage](fresh)
    with pytest.raises(UserError, match=f"module {first.name}@v1 .*damaged.*bank verify.*rollback"):
        ask(_q(first), fresh, "tiny-random", route="oracle")
    with pytest.raises(UserError, match="damaged"):
        fresh.export(fresh.root.parent / "export")
    assert not fresh.verify().ok
    # the other modules still answer
    assert ask(_q(other), fresh, "tiny-random", route="oracle")["modules"][0]["name"] == other.name


def test_ask_on_a_flipped_byte_exits_2_with_one_line(fresh):
    m = fresh.list()[0]
    _flip(fresh.path(m) / "adapter_model.safetensors")
    line = _one_line_error(run_cli("ask", Q, "--bank", str(fresh.root), "--route", "bm25", "--top-k", "3"))
    assert "damaged" in line and "people-0" in line


def test_a_plain_module_with_foreign_tensor_keys_is_an_error_not_a_silent_no_op(tiny_base, tmp_path):
    from safetensors.torch import load_file, save_file

    from loramem.adapters import load_adapter
    from loramem.config import WriterConfig
    from loramem.data.examples import read_examples
    from loramem.writer import write_module

    pb = phonebook_file(tmp_path, 4)
    write_module(read_examples(pb), tiny_base, WriterConfig(**QUICK), out=tmp_path / "m", adapter="fault_keys")
    f = tmp_path / "m" / "adapter_model.safetensors"
    save_file({k.replace("q_proj", "zz_proj"): v for k, v in load_file(str(f)).items()}, str(f))
    with pytest.raises(UserError, match="do not match this model"):
        load_adapter(tiny_base, tmp_path / "m", "fault_keys2")


# -- the manifest --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["empty", "truncated", "foreign sqlite"])
def test_a_broken_manifest_is_not_sound_and_no_write_replaces_old_modules(fresh, tmp_path, kind):
    m = fresh.root / MANIFEST
    old_files = {p: p.read_bytes() for p in (fresh.root / "modules").rglob("*") if p.is_file()}
    if kind == "empty":
        m.write_bytes(b"")
    elif kind == "truncated":
        m.write_bytes(m.read_bytes()[:1500])
    else:
        m.unlink()
        con = sqlite3.connect(m)
        con.execute("CREATE TABLE notes (x)")
        con.commit()
        con.close()
    rep = fresh.verify()
    assert not rep.ok and "manifest" in rep.problems[0]
    with pytest.raises(UserError, match="not a usable loramem manifest"):
        fresh.list()
    from loramem.bank.write import write_to_bank
    from loramem.config import WriterConfig
    from loramem.models import load_base

    with pytest.raises(UserError, match="not a usable loramem manifest"):
        write_to_bank(phonebook_file(tmp_path, 3, seed=3), fresh, "people", load_base("tiny-random"),
                      WriterConfig(**QUICK), partition=3)
    assert {p: p.read_bytes() for p in (fresh.root / "modules").rglob("*") if p.is_file()} == old_files


def test_verify_exits_1_on_a_zero_byte_manifest(fresh):
    (fresh.root / MANIFEST).write_bytes(b"")
    p = run_cli("bank", "verify", "--bank", str(fresh.root))
    assert p.returncode == 1 and "NOT sound" in p.stdout and "Traceback" not in p.stderr


@pytest.mark.parametrize("column,value", [("name", "../../evil"), ("path", "../.."), ("path", "/etc")])
def test_hostile_manifest_rows_are_not_followed(fresh, tmp_path, column, value):
    from loramem.api import ask

    con = sqlite3.connect(fresh.root / MANIFEST)
    info = fresh.list()[0]
    first = info.name
    con.execute(f"UPDATE modules SET {column} = ? WHERE name = ?", (value, first))
    if column == "name":
        con.execute("UPDATE heads SET name = ? WHERE name = ?", (value, first))
    con.commit()
    con.close()
    assert not fresh.verify().ok
    out = tmp_path / "deep" / "export"
    with pytest.raises(UserError):
        fresh.export(out)
    assert not (tmp_path / "evil").exists() and not (out.parent.parent / "evil").exists()
    with pytest.raises(UserError):
        ask(_q(info), fresh, "tiny-random", route="oracle")


# -- read-only and full disks ---------------------------------------------------------------------------------
def _mount_tmpfs(where: Path, size: str) -> bool:
    where.mkdir(parents=True, exist_ok=True)
    try:
        return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                              capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _umount(where: Path) -> None:
    subprocess.run(["umount", "-l", str(where)], capture_output=True, timeout=10)


def test_a_read_only_bank_can_be_listed_verified_and_asked(bank, tmp_path):
    mnt = tmp_path / "ro"
    if not _mount_tmpfs(mnt, "64m"):
        pytest.skip("cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN); the read-only case is untested")
    try:
        shutil.copytree(bank.root, mnt / "bank")
        assert subprocess.run(["mount", "-o", "remount,ro", str(mnt)], capture_output=True).returncode == 0
        b = str(mnt / "bank")
        assert run_cli("bank", "ls", "--bank", b).returncode == 0
        assert run_cli("bank", "verify", "--bank", b).returncode == 0
        p = run_cli("ask", Q, "--bank", b, "--route", "embed", "--json")
        assert p.returncode == 0, p.stderr
    finally:
        _umount(mnt)


def test_a_full_disk_fails_the_write_and_keeps_the_bank(bank, tmp_path):
    mnt = tmp_path / "full"
    size = sum(f.stat().st_size for f in bank.root.rglob("*") if f.is_file()) + 2 * 1024 * 1024
    if not _mount_tmpfs(mnt, str(size)):
        pytest.skip("cannot mount a small tmpfs here (needs root or CAP_SYS_ADMIN); the disk-full case is untested")
    try:
        shutil.copytree(bank.root, mnt / "bank")
        b = MemoryBank(mnt / "bank")
        before = _heads(b)
        filler = mnt / "filler"
        try:  # fill it: no room to stage a module
            with filler.open("wb") as f:
                while True:
                    f.write(b"\0" * 65536)
        except OSError:
            pass
        p = run_cli("write", str(phonebook_file(tmp_path, 9, seed=7)), "--bank", str(b.root), "--name", "people",
                    "--partition", "3", "--model", "tiny-random", "--steps", "2")
        assert p.returncode != 0
        filler.unlink()
        assert _heads(b) == before and b.verify().ok
    finally:
        _umount(mnt)


# -- commands that must not destroy data ------------------------------------------------------------------
def test_index_out_leaves_other_files_and_write_out_refuses_a_full_folder_or_a_bank(fresh, tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("Ann Lee lives in Oslo and plays the cello.")
    line = _one_line_error(run_cli("index", str(docs), "--out", str(docs)))
    assert "not a loramem index" in line and (docs / "a.txt").is_file()
    out = tmp_path / "idx"
    assert run_cli("index", str(docs), "--out", str(out)).returncode == 0
    (out / "mine.txt").write_text("keep")
    (docs / "b.txt").write_text("Bob Ray lives in Rome.")
    assert run_cli("index", str(docs), "--out", str(out)).returncode == 0  # rebuilt over its own files
    assert (out / "mine.txt").read_text() == "keep"

    pb = phonebook_file(tmp_path, 3)
    line = _one_line_error(run_cli("write", str(pb), "--out", str(fresh.root / "modules" / "people-00" / "v1"),
                                   "--model", "tiny-random", "--steps", "1"))
    assert "inside the bank" in line
    line = _one_line_error(run_cli("write", str(pb), "--out", str(docs), "--model", "tiny-random", "--steps", "1"))
    assert "--force" in line and (docs / "a.txt").is_file()
    assert fresh.verify().ok
