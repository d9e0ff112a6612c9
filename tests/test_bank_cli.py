"""The bank's command-line contract, run as a user runs it (real processes, real files)."""

from __future__ import annotations

import json

import pytest
from bank_helpers import phonebook_file
from conftest import run_cli

TINY = ["--model", "tiny-random", "--steps", "2", "--rank", "4"]


def _one_line_error(r) -> None:
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


class Ran:
    def __init__(self, code, out, err):
        self.returncode, self.stdout, self.stderr = code, out, err


def run_main(capsys, monkeypatch, *args) -> Ran:
    """`loramem ARGS` through the real entry point, in this process (saves a Python start per call)."""
    import sys

    from loramem.cli import main

    monkeypatch.setattr(sys, "argv", ["loramem", *args])
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code or 0
    out, err = capsys.readouterr()
    return Ran(code, out, err)


def run_ok(capsys, monkeypatch, *args) -> Ran:
    """`run_main` that must succeed (its stderr is the failure message)."""
    r = run_main(capsys, monkeypatch, *args)
    assert r.returncode == 0, r.stderr
    return r


@pytest.fixture(scope="module")
def cli_bank(tmp_path_factory):
    d = tmp_path_factory.mktemp("clibank")
    train = phonebook_file(d, 6)
    r = run_cli("write", str(train), "--bank", str(d / "bank"), "--name", "people", "--partition", "2", *TINY)
    assert r.returncode == 0, r.stderr
    return d


def test_write_ls_verify_rollback_ask(cli_bank, capsys, monkeypatch):
    bank = str(cli_bank / "bank")

    def run(*args):
        return run_main(capsys, monkeypatch, *args)

    ls = json.loads(run_cli("bank", "ls", "--bank", bank, "--json").stdout)
    assert [m["name"] for m in ls] == ["people-00", "people-01"] and ls[0]["n_facts"] == 3
    train = phonebook_file(cli_bank, 2, seed=3)
    assert run("write", str(train), "--bank", bank, "--name", "people-00", *TINY).returncode == 0
    ls = json.loads(run("bank", "ls", "--bank", bank, "--json").stdout)
    assert ls[0]["version"] == 2 and ls[0]["versions"] == 2
    r = run("bank", "rollback", "people-00", "--bank", bank)
    assert r.returncode == 0 and "v1" in r.stderr
    assert json.loads(run("bank", "ls", "--bank", bank, "--json").stdout)[0]["version"] == 1
    assert run("bank", "verify", "--bank", bank).returncode == 0
    r = run("ask", "What is the phone number of nobody?", "--bank", bank, "--route", "bm25", "--top-k", "2",
                "--merge", "ties", "--json", "--max-new-tokens", "4")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert len(out["modules"]) == 2 and {"answer", "route_ms", "merge_ms", "generate_ms"} <= out.keys()
    shown = json.loads(run("bank", "show", "people-00", "--bank", bank, "--json").stdout)
    assert [v["version"] for v in shown] == [1, 2] and shown[0]["head"] and not shown[1]["head"]
    r = run("bank", "export", str(cli_bank / "exported"), "--bank", bank)
    assert r.returncode == 0 and (cli_bank / "exported" / "people-01" / "adapter_model.safetensors").is_file()
    conf = json.loads((cli_bank / "exported" / "people-01" / "adapter_config.json").read_text())
    assert conf["base_model_name_or_path"] == "loramem/tiny-random-llama"
    assert (cli_bank / "exported" / "people-01" / "README.md").is_file()
    vllm, peft = r.stdout.strip().splitlines()
    assert vllm.startswith("vllm serve loramem/tiny-random-llama --enable-lora --max-lora-rank 8 --lora-modules "
                           f"people-00={(cli_bank / 'exported' / 'people-00').resolve()} people-01=")
    assert peft.startswith('PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained("loramem/tiny-random-llama")')


def test_rm_removes_every_version(cli_bank, tmp_path, capsys, monkeypatch):
    import shutil

    bank = tmp_path / "bank"
    shutil.copytree(cli_bank / "bank", bank)
    r = run_main(capsys, monkeypatch, "bank", "rm", "people-01", "--bank", str(bank))
    assert r.returncode == 0 and not (bank / "modules" / "people-01").exists()
    ls = json.loads(run_main(capsys, monkeypatch, "bank", "ls", "--bank", str(bank), "--json").stdout)
    assert [m["name"] for m in ls] == ["people-00"]
    assert run_main(capsys, monkeypatch, "bank", "verify", "--bank", str(bank)).returncode == 0


def test_verify_exits_1_with_a_report_on_a_flipped_byte(cli_bank, tmp_path):
    import shutil

    bank = tmp_path / "bank"
    shutil.copytree(cli_bank / "bank", bank)
    f = next(bank.glob("modules/people-01/v1/adapter_model.safetensors"))
    data = bytearray(f.read_bytes())
    data[-3] ^= 0xFF
    f.write_bytes(bytes(data))
    r = run_cli("bank", "verify", "--bank", str(bank))
    assert r.returncode == 1 and "people-01@v1: checksum mismatch" in r.stdout and "NOT sound" in r.stdout


def test_bad_input_is_one_line_exit_2_and_keeps_the_bank(cli_bank, tmp_path, capsys, monkeypatch):
    bank = str(cli_bank / "bank")
    before = run_cli("bank", "ls", "--bank", bank, "--json").stdout
    r = run_cli("write", str(phonebook_file(tmp_path, 2)), "--bank", bank, "--name", "../evil", *TINY)
    _one_line_error(r)  # once as a real process
    train = str(phonebook_file(tmp_path, 2))
    for args in (["write", train, "--bank", bank, "--name", "a/b", *TINY],
                 ["write", train, "--bank", bank, "--name", "x", "--model", "tiny-random", "--partition", "5"],
                 ["write", train, "--bank", bank, *TINY],
                 ["write", train, "--bank", bank, "--name", "x", "--out", str(tmp_path / "o"), *TINY],
                 ["bank", "rollback", "nosuch", "--bank", bank],
                 ["bank", "rollback", "people-01", "--bank", bank],
                 ["bank", "ls", "--bank", str(tmp_path / "missing")],
                 ["ask", "q?", "--bank", bank, "--route", "telepathy"],
                 ["ask", "q?", "--bank", bank, "--merge", "blend"],
                 ["ask", "q?", "--bank", bank, "--top-k", "0"],
                 ["ask", "  ", "--bank", bank]):
        _one_line_error(run_main(capsys, monkeypatch, *args))
    assert not (cli_bank / "evil").exists() and not (cli_bank / "bank" / "modules" / "a").exists()
    assert run_main(capsys, monkeypatch, "bank", "ls", "--bank", bank, "--json").stdout == before
