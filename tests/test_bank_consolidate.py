"""`loramem bank consolidate` (bank/consolidate.py) on real bank files: Y replaces a, b in one transaction, `cat`
is the exact sum of their updates, rollback serves a retired module again, bad input changes nothing. The recall
check refusing a Y that forgot is tested on smollm2 in test_bank_update_real (tiny-random recalls nothing)."""

from __future__ import annotations

import json

import pytest
import torch
from bank_helpers import QUICK, copy_bank, make_bank, phonebook_file
from conftest import run_cli
from test_bank_cli import _one_line_error, run_main, run_ok

from loramem.bank.partition import fact_key
from loramem.data import phonebook


@pytest.fixture(scope="module")
def two(tmp_path_factory, tiny_base):
    d = tmp_path_factory.mktemp("cons")
    return make_bank(d / "bank", tiny_base, phonebook_file(d, 6), partition=2, cfg=QUICK)


@pytest.fixture
def bank(two, tmp_path):
    return copy_bank(two, tmp_path / "bank")


def _deltas(bank, base, info) -> dict:
    from loramem.adapters import load_adapter
    from loramem.bank.merging import lora_layers

    host = load_adapter(base, bank.verified_path(info), "probe")
    out = {k: f.delta() for k, f in lora_layers(host, "probe").items()}
    host.delete_adapter("probe")
    return out


def test_cat_is_the_exact_sum_and_replaces_them_in_one_version(bank, tiny_base, capsys, monkeypatch):
    root = str(bank.root)
    a, b = bank.get("people-00"), bank.get("people-01")
    r = run_ok(capsys, monkeypatch, "bank", "consolidate", "--bank", root, "--names", "people-00,people-01", "--into",
             "people", "--method", "cat", "--json")
    out = json.loads(r.stdout)
    assert out["module"] == "people@v1" and out["rank"] == a.rank + b.rank and out["recall_of_recalled"] == 1.0
    assert [m.name for m in bank.list()] == ["people"]  # a and b are no longer served
    y = bank.get("people")
    assert [fact_key(e) for e in bank.facts(y)] == [e.name for e in phonebook.generate(6, 0)]
    da, db, dy = (_deltas(bank, tiny_base, i) for i in (a, b, y))
    assert dy.keys() == da.keys() and all(torch.allclose(dy[k], da[k] + db[k], atol=1e-6) for k in dy)
    run_ok(capsys, monkeypatch, "bank", "rollback", "people-00", "--bank", root)
    assert [m.name for m in bank.list()] == ["people", "people-00"] and bank.head("people-00") == 1
    assert run_main(capsys, monkeypatch, "bank", "verify", "--bank", root).returncode == 0


def test_retrain_into_one_of_them_is_its_next_version(bank, tiny_base, capsys, monkeypatch):
    r = run_ok(capsys, monkeypatch, "bank", "consolidate", "--bank", str(bank.root), "--names", "people-00,people-01",
             "--into", "people-00", "--steps", "2", "--json")
    out = json.loads(r.stdout)
    assert out["module"] == "people-00@v2" and out["method"] == "retrain" and out["n_facts"] == 6
    assert [m.name for m in bank.list()] == ["people-00"] and bank.get("people-00").rank == 8  # 4 + 4
    assert bank.get("people-00").record["steps"] == 2


def test_bad_consolidations_are_one_line_exit_2_and_keep_the_bank(bank, tiny_base, tmp_path, capsys, monkeypatch):
    import dataclasses

    from loramem.bank.update import update_module

    root = str(bank.root)
    other = copy_bank(bank, tmp_path / "other")  # people-01 also holds people-00's first key, with another value
    first = phonebook.generate(6, 0)[0]
    clash = phonebook.write([dataclasses.replace(first, number="000-000-0000")], tmp_path / "clash.csv")
    update_module(clash, other, "people-01", tiny_base, "correct", {"steps": 1})
    assert first.name in other.get("people-01").keys
    before = (bank.root / "manifest.sqlite").read_bytes()
    _one_line_error(run_cli("bank", "consolidate", "--bank", root, "--names", "people-00", "--into", "y"))
    for args in (["--names", "people-00,people-00", "--into", "y"],
                 ["--names", "people-00,nosuch", "--into", "y"],
                 ["--names", "people-00,people-01", "--into", "../y"],
                 ["--names", "people-00,people-01", "--into", "y", "--method", "blend"],
                 ["--names", "people-00,people-01", "--into", "y", "--method", "cat", "--rank", "4"],
                 ["--names", "people-00,people-01", "--into", "y", "--min-recall", "2"]):
        _one_line_error(run_main(capsys, monkeypatch, "bank", "consolidate", "--bank", root, *args))
    assert (bank.root / "manifest.sqlite").read_bytes() == before
    _one_line_error(run_main(capsys, monkeypatch, "bank", "consolidate", "--bank", str(other.root), "--names",
                             "people-00,people-01", "--into", "y"))
    run_ok(capsys, monkeypatch, "bank", "consolidate", "--bank", root, "--names", "people-00,people-01", "--into", "y",
         "--method", "cat")
    r = run_main(capsys, monkeypatch, "bank", "consolidate", "--bank", root, "--names", "people-00,people-01",
                 "--into", "z")  # a and b are retired now: not served
    _one_line_error(r)
    assert "people-00' is retired" in r.stderr and "bank rollback people-00" in r.stderr
