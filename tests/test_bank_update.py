"""Memory that changes (bank/update.py): append, correct, new-module and retire through the CLI, on real bank files.

tiny-random learns no PhoneBook fact, so these tests check the mechanics a user relies on (versions, the facts
each version holds, rollback giving the same logits, refusals that leave the bank as it was); test_bank_update_real
checks on smollm2-135m that corrected and retired facts really stop being answered.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from bank_helpers import QUICK, copy_bank, make_bank, phonebook_file
from conftest import run_cli
from test_bank_cli import _one_line_error, run_main, run_ok

from loramem.bank.partition import fact_key
from loramem.data import phonebook

TINY = ["--model", "tiny-random", "--steps", "3", "--lr", "1e-2"]


@pytest.fixture(scope="module")
def people(tmp_path_factory, tiny_base):
    d = tmp_path_factory.mktemp("upd")
    return make_bank(d / "bank", tiny_base, phonebook_file(d, 6), partition=None, cfg=QUICK)


@pytest.fixture
def bank(people, tmp_path):
    return copy_bank(people, tmp_path / "bank")


@torch.no_grad()
def served(bank, base, name="people"):
    """Logits at every position of every fact's text, and greedy answers, of the version `name` serves."""
    from loramem.adapters import load_adapter
    from loramem.evaluate import generate_answers
    from loramem.formats import render

    info = bank.get(name)
    facts = phonebook.generate(8, 0)[:6] + phonebook.generate(2, 3)
    examples = [e.example() for e in facts]
    host = load_adapter(base, bank.verified_path(info), "probe")
    logits = [host(input_ids=torch.tensor([render(e, base.tokenizer).ids])).logits for e in examples]
    answers = generate_answers(host, base, examples, "plain", max_new_tokens=6)
    host.delete_adapter("probe")
    return torch.cat(logits, 1), answers


def test_append_is_a_new_version_and_rollback_gives_the_same_logits(bank, tiny_base, tmp_path, capsys, monkeypatch):
    root = str(bank.root)
    before, answers_before = served(bank, tiny_base)
    new = phonebook_file(tmp_path, 2, seed=3)
    r = run_ok(capsys, monkeypatch, "write", str(new), "--bank", root, "--name", "people", "--update", "append",
             "--replay", "2", "--json", *TINY)
    out = json.loads(r.stdout)
    assert out["module"] == "people@v2" and out["from"] == "people@v1"
    assert (out["new"], out["replay"], out["replay_of"], out["n_facts"]) == (2, 2, 6, 8)
    v1, v2 = bank.versions("people")
    assert bank.head("people") == 2 and [fact_key(e) for e in bank.facts(v2)] == v1.keys + v2.keys[6:]
    assert v2.keys[6:] == [e.name for e in phonebook.read(new)] and v2.record["update"]["replay"] == 2
    after, _ = served(bank, tiny_base)
    assert not torch.equal(before, after)  # the update changed what the module computes
    r = run_ok(capsys, monkeypatch, "bank", "rollback", "people", "--bank", root)
    assert "v1" in r.stderr
    restored, answers_restored = served(bank, tiny_base)
    assert torch.equal(before, restored) and answers_restored == answers_before


def test_append_continues_the_module_weights(bank, tiny_base, tmp_path, capsys, monkeypatch):
    from safetensors.torch import load_file

    new = phonebook_file(tmp_path, 2, seed=3)
    run_ok(capsys, monkeypatch, "write", str(new), "--bank", str(bank.root), "--name", "people", "--update", "append",
         "--replay", "0", "--model", "tiny-random", "--steps", "1", "--lr", "1e-9")
    v1, v2 = (load_file(str(bank.path(v) / "adapter_model.safetensors")) for v in bank.versions("people"))
    assert v1.keys() == v2.keys()
    # one step at lr 1e-9 from v1's weights stays at v1; a fresh init (B = 0, A random) would not
    assert all(torch.allclose(v1[k], v2[k], atol=1e-6) for k in v1)
    assert any(v1[k].abs().sum() > 0 for k in v1 if "lora_B" in k)


def test_correct_replaces_values_by_key_and_keeps_the_rest(bank, tiny_base, tmp_path, capsys, monkeypatch):
    old = phonebook.generate(6, 0)
    fixes = [dataclasses.replace(e, number=f"999-000-{i:04d}") for i, e in enumerate(old[1:3])]
    new = phonebook.write(fixes, tmp_path / "fixes.csv")
    r = run_ok(capsys, monkeypatch, "write", str(new), "--bank", str(bank.root), "--name", "people", "--update",
             "correct", "--replay", "all", "--json", *TINY)
    out = json.loads(r.stdout)
    assert (out["corrected"], out["new"], out["replay"], out["n_facts"]) == (2, 2, 4, 6)
    assert out["old_value_given"] == 0.0
    facts = bank.facts(bank.get("people"))
    assert [fact_key(e) for e in facts] == [e.name for e in old]  # same keys, same order
    want = [e.number for e in old]
    want[1:3] = ["999-000-0000", "999-000-0001"]
    assert [e.answer for e in facts] == want
    assert [e.answer for e in bank.facts(bank.get("people", 1))] == [e.number for e in old]  # v1 untouched


def test_new_module_is_its_own_module_and_routing_finds_it(bank, tiny_base, tmp_path, capsys, monkeypatch):
    root = str(bank.root)
    new = phonebook_file(tmp_path, 2, seed=3)
    r = run_ok(capsys, monkeypatch, "write", str(new), "--bank", root, "--name", "people", "--update", "new-module",
             "--json", *TINY)
    out = json.loads(r.stdout)
    assert out["module"] == "people.u1@v1" and out["undo"].startswith("loramem bank rm people.u1")
    assert [m.name for m in bank.list()] == ["people", "people.u1"] and bank.head("people") == 1
    q = phonebook.read(new)[0].question() + "?"
    r = run_ok(capsys, monkeypatch, "ask", q, "--bank", root, "--route", "embed", "--json", "--max-tokens", "2")
    assert json.loads(r.stdout)["modules"][0]["name"] == "people.u1"
    run_ok(capsys, monkeypatch, "write", str(phonebook_file(tmp_path, 1, seed=5)), "--bank", root, "--name",
         "people", "--update", "new-module", *TINY)
    assert bank.head("people.u2") == 1


def test_retire_rewrites_the_module_without_those_facts(bank, tiny_base, tmp_path, capsys, monkeypatch):
    root = str(bank.root)
    old = phonebook.generate(6, 0)
    keys = tmp_path / "gone.jsonl"
    keys.write_text(json.dumps({"key": old[0].name}) + "\n" + json.dumps(old[4].name) + "\n")
    r = run_ok(capsys, monkeypatch, "bank", "retire", "people", "--facts", str(keys), "--bank", root, "--json",
             "--steps", "2")
    out = json.loads(r.stdout)
    assert out["module"] == "people@v2" and out["retired"] == 2 and out["n_facts"] == 4
    assert out["method"].startswith("rewrite") and out["retired_answered"] == 0.0
    v2 = bank.get("people")
    kept = [e.name for i, e in enumerate(old) if i not in (0, 4)]
    assert v2.keys == kept and [fact_key(e) for e in bank.facts(v2)] == kept
    assert old[0].name not in v2.key_text and old[1].name in v2.key_text
    run_ok(capsys, monkeypatch, "bank", "rollback", "people", "--bank", root)
    assert bank.get("people").keys == [e.name for e in old]


def test_bad_updates_are_one_line_exit_2_and_keep_the_bank(bank, tmp_path, capsys, monkeypatch):
    root = str(bank.root)
    before = (bank.root / "manifest.sqlite").read_bytes()
    old = phonebook.generate(6, 0)
    clash = phonebook.write(old[:1], tmp_path / "clash.csv")
    new = str(phonebook_file(tmp_path, 2, seed=3))
    (tmp_path / "nobody.jsonl").write_text('{"key": "Nobody Atall"}\n')
    (tmp_path / "all.jsonl").write_text("".join(json.dumps(e.name) + "\n" for e in old))
    _one_line_error(run_cli("write", new, "--bank", root, "--name", "people", "--update", "merge", *TINY))
    for args in (["write", new, "--bank", root, "--name", "people", "--update", "append", "--replay", "-1", *TINY],
                 ["write", new, "--bank", root, "--name", "people", "--update", "append", "--replay", "x", *TINY],
                 ["write", new, "--bank", root, "--name", "nosuch", "--update", "append", *TINY],
                 ["write", str(clash), "--bank", root, "--name", "people", "--update", "append", *TINY],
                 ["write", new, "--bank", root, "--name", "people", "--update", "correct", "--rank", "8", *TINY],
                 ["write", new, "--bank", root, "--name", "people", "--update", "append", "--partition", "2", *TINY],
                 ["write", new, "--bank", str(tmp_path / "nobank"), "--name", "people", "--update", "append", *TINY],
                 ["write", new, "--out", str(tmp_path / "o"), "--update", "append", *TINY],
                 ["bank", "retire", "people", "--facts", str(tmp_path / "nobody.jsonl"), "--bank", root],
                 ["bank", "retire", "people", "--facts", str(tmp_path / "all.jsonl"), "--bank", root],
                 ["bank", "retire", "people", "--facts", str(tmp_path / "missing.jsonl"), "--bank", root]):
        _one_line_error(run_main(capsys, monkeypatch, *args))
    assert (bank.root / "manifest.sqlite").read_bytes() == before
    assert not (tmp_path / "nobank").exists()


def test_python_api_updates_retires_consolidates_and_rolls_back(bank, tiny_base, tmp_path):
    import loramem

    b = loramem.Bank(bank.root)
    new = phonebook_file(tmp_path, 2, seed=3)
    assert b.update(new, "people", replay=0, steps=1)["module"] == "people@v2"
    assert b.update(new, "people", mode="new-module", steps=1)["module"] == "people.u1@v1"
    keys = tmp_path / "k.jsonl"
    keys.write_text(json.dumps(phonebook.generate(6, 0)[0].name) + "\n")
    assert b.retire("people", keys, steps=1)["n_facts"] == 7
    assert b.consolidate(["people", "people.u1"], "all", method="cat")["n_facts"] == 7  # u1 repeats 2 of its facts
    assert [m["name"] for m in b.ls()] == ["all"] and b.rollback("people") == 3
