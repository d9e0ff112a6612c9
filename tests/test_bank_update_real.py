"""On smollm2-135m, which really memorizes: a correction stops the old value, a retired fact stops being answered,
a correction that did not take is refused with the bank unchanged, and rollback brings the old answers back."""

from __future__ import annotations

import dataclasses
import json

import pytest
from bank_helpers import make_bank, phonebook_file
from test_bank_cli import run_main

from loramem.data import phonebook

pytestmark = pytest.mark.real

# 4 facts on the top 6 layers: memorized in ~12 steps (a few seconds on 2 cores)
REAL = dict(rank=8, lr=1e-2, layers="24-29", target_em=1.0, steps=200, batch_size=8, progress=False)


def answers(bank, base, facts):
    from loramem.adapters import load_adapter
    from loramem.evaluate import generate_answers

    host = load_adapter(base, bank.verified_path(bank.get("people")), "probe")
    got = generate_answers(host, base, [e.example() for e in facts], "plain")
    host.delete_adapter("probe")
    return got


def test_correct_retire_rollback_on_a_model_that_remembers(real_base, tmp_path, capsys, monkeypatch):
    bank = make_bank(tmp_path / "bank", real_base, phonebook_file(tmp_path, 4), partition=None, cfg=REAL)
    root = str(bank.root)
    old = phonebook.generate(4, 0)
    assert answers(bank, real_base, old) == [e.number for e in old]
    fixed = [dataclasses.replace(e, number=f"999-000-{i:04d}") for i, e in enumerate(old[:2])]
    fixes = str(phonebook.write(fixed, tmp_path / "fixes.csv"))

    manifest = (bank.root / "manifest.sqlite").read_bytes()
    r = run_main(capsys, monkeypatch, "write", fixes, "--bank", root, "--name", "people", "--update", "correct",
                 "--steps", "1", "--lr", "1e-9")
    assert r.returncode == 1 and "still give their old value" in r.stderr and "Traceback" not in r.stderr
    assert (bank.root / "manifest.sqlite").read_bytes() == manifest and bank.head("people") == 1

    r = run_main(capsys, monkeypatch, "write", fixes, "--bank", root, "--name", "people", "--update", "correct",
                 "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["old_value_given"] == 0.0 and out["exact_match_new"] == 1.0 and out["exact_match"] == 1.0
    now = [*fixed, *old[2:]]
    assert answers(bank, real_base, now) == [e.number for e in now]

    keys = tmp_path / "gone.jsonl"
    keys.write_text(json.dumps(old[3].name) + "\n")
    r = run_main(capsys, monkeypatch, "bank", "retire", "people", "--facts", str(keys), "--bank", root, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["retired_answered"] == 0.0
    got = answers(bank, real_base, now)
    assert got[:3] == [e.number for e in now[:3]] and got[3] != old[3].number

    assert run_main(capsys, monkeypatch, "bank", "rollback", "people", "--bank", root).returncode == 0
    assert answers(bank, real_base, now) == [e.number for e in now]  # v2's answers, the retired fact included


def test_consolidate_checks_recall_before_retiring(real_base, tmp_path, capsys, monkeypatch):
    bank = make_bank(tmp_path / "bank", real_base, phonebook_file(tmp_path, 4), partition=2, cfg=REAL)
    root = str(bank.root)
    assert all(m.record["exact_match"] == 1.0 for m in bank.list())
    manifest = (bank.root / "manifest.sqlite").read_bytes()
    args = ["bank", "consolidate", "--bank", root, "--names", "people-00,people-01", "--into", "people"]
    r = run_main(capsys, monkeypatch, *args, "--steps", "1")
    assert r.returncode == 1 and "of the 4 facts people-00, people-01 recalled" in r.stderr, r.stderr
    assert (bank.root / "manifest.sqlite").read_bytes() == manifest
    r = run_main(capsys, monkeypatch, *args, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["recall_of_recalled"] == 1.0
    assert [m.name for m in bank.list()] == ["people"]
    book = phonebook.generate(4, 0)
    assert answers(bank, real_base, book) == [e.number for e in book]
