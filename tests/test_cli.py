"""The CLI as users run it: bad input exits 2 with one line naming the fix, never a traceback."""

from __future__ import annotations

import json

import pytest
from conftest import run_cli


def _one_line_error(proc, *needles):
    assert proc.returncode == 2, proc.stderr + proc.stdout
    err = proc.stderr.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    for n in needles:
        assert n in err, err


def test_missing_training_file(tmp_path):
    _one_line_error(run_cli("write", str(tmp_path / "none.csv"), "--model", "tiny-random", "--out", str(tmp_path / "m")),
                    "not found")


def test_wrong_columns(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("who,phone_no\nA,1\n")
    _one_line_error(run_cli("write", str(bad), "--model", "tiny-random", "--out", str(tmp_path / "m")),
                    "columns", "Name,Phone")


def test_rank_zero(tmp_path):
    pb = tmp_path / "pb.csv"
    assert run_cli("phonebook", "make", "--entries", "3", "--out", str(pb)).returncode == 0
    _one_line_error(run_cli("write", str(pb), "--model", "tiny-random", "--rank", "0", "--out", str(tmp_path / "m")),
                    "rank")


def test_unknown_model(tmp_path):
    pb = tmp_path / "pb.csv"
    run_cli("phonebook", "make", "--entries", "3", "--out", str(pb))
    _one_line_error(run_cli("write", str(pb), "--model", "no-such-model", "--out", str(tmp_path / "m")),
                    "unknown model", "loramem models")


def test_models_lists_and_prepares(tmp_path):
    listed = run_cli("models")
    assert listed.returncode == 0 and "smollm2-135m" in listed.stdout and "tiny-random" in listed.stdout
    ready = run_cli("models", "--prepare", "tiny-random")
    assert ready.returncode == 0 and "tiny-random: ready (2 layers" in ready.stdout, ready.stderr
    assert "router query encoder: ONNX Runtime" in ready.stdout
    _one_line_error(run_cli("models", "--prepare", "no-such-model"), "unknown model")


def test_bad_bench_arguments(tmp_path):
    _one_line_error(run_cli("bench", "capacity", "--model", "tiny-random", "--ranks", "1,x", "--out", str(tmp_path)),
                    "--ranks")
    _one_line_error(run_cli("bench", "capacity", "--model", "tiny-random", "--sizes", "1K", "--entries", "5",
                            "--out", str(tmp_path)), "not both")


def test_phonebook_make_writes_the_papers_format(tmp_path):
    out = tmp_path / "pb.csv"
    proc = run_cli("phonebook", "make", "--entries", "5", "--seed", "4", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    lines = out.read_text().splitlines()
    assert lines[0] == "text" and len(lines) == 6
    assert lines[1].startswith("Question: What is the phone number of ") and "? Answer: " in lines[1]
    again = tmp_path / "pb2.csv"
    run_cli("phonebook", "make", "--entries", "5", "--seed", "4", "--out", str(again))
    assert again.read_text() == out.read_text()


def test_write_then_eval_json_on_tiny_random(tmp_path):
    pb = tmp_path / "pb.csv"
    run_cli("phonebook", "make", "--entries", "4", "--out", str(pb))
    mod = tmp_path / "mod"
    proc = run_cli("write", str(pb), "--model", "tiny-random", "--rank", "4", "--steps", "3", "--out", str(mod))
    assert proc.returncode == 0, proc.stderr
    assert (mod / "adapter_model.safetensors").is_file()
    proc = run_cli("eval", str(mod), "--data", str(pb), "--json")
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout)
    assert res["n"] == 4 and 0.0 <= res["exact_match"] <= 1.0


@pytest.mark.parametrize("args", [["eval", "/nonexistent/module", "--data", "x.csv"]])
def test_eval_missing_module(args):
    proc = run_cli(*args)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr


def test_write_json_prints_one_object_with_the_run(tmp_path):
    import json as _json

    from loramem.data import phonebook

    train = phonebook.write(phonebook.generate(3, 0), tmp_path / "pb.csv")
    r = run_cli("write", str(train), "--out", str(tmp_path / "m"), "--model", "tiny-random", "--steps", "3",
                "--rank", "2", "--json", "--data-license", "CC0-1.0")
    assert r.returncode == 0, r.stderr
    out = _json.loads(r.stdout)  # the whole of stdout is one JSON object
    assert out["steps"] == 3 and 0 <= out["exact_match"] <= 1 and out["seconds"] > 0
    assert out["base"]["hub_id"] == "loramem/tiny-random-llama" and out["data_license"] == "CC0-1.0"
    r = run_cli("write", str(train), "--bank", str(tmp_path / "b"), "--name", "pb", "--partition", "2",
                "--model", "tiny-random", "--steps", "2", "--rank", "2", "--json")
    out = _json.loads(r.stdout)
    assert out["modules"] == ["pb-00@v1", "pb-01@v1"] and out["steps"] == 4 and "exact_match" in out
    models = _json.loads(run_cli("models", "--json").stdout)
    assert "tiny-random" in models and "smollm2-135m" in models


def test_renamed_options_show_the_new_name_and_still_take_the_old(tmp_path):
    for verb, new in ((["ask"], "--max-tokens"), (["ask"], "--chunks"), (["eval"], "--max-tokens"),
                      (["retrieve"], "--chunks"), (["index"], "--tokenizer"), (["phonebook", "make"], "--tokenizer")):
        r = run_cli(*verb, "--help", env={"COLUMNS": "200"})
        assert r.returncode == 0 and new in r.stdout, (verb, new)
    for flag in ("--tokenizer", "--model"):
        out = tmp_path / f"pb{flag}.csv"
        r = run_cli("phonebook", "make", "--entries", "2", flag, "tiny-random", "--out", str(out))
        assert r.returncode == 0 and out.is_file(), r.stderr
    r = run_cli("write", "--help", env={"COLUMNS": "200"})
    assert "LoRA rank r (default: 8" in r.stdout and "(default: 0.002" in r.stdout and "--json" in r.stdout


OLD_SPELLINGS = {("phonebook", "make"): ["--model"], ("views", "make"): ["--model"], ("index",): ["--model", "--k"],
                 ("retrieve",): ["-k", "--k"], ("eval",): ["--max-new-tokens"], ("ask",): ["--max-new-tokens", "--rag"]}


def test_old_option_spellings_are_hidden_from_help_and_still_work(tmp_path):
    import re

    from typer.testing import CliRunner

    from loramem.cli import app
    from loramem.errors import UserError

    cli = CliRunner()
    for verb, flags in OLD_SPELLINGS.items():
        shown = cli.invoke(app, [*verb, "--help"], env={"COLUMNS": "200"})
        assert shown.exit_code == 0, shown.output
        for flag in flags:  # the flag as a word: not "--max-new-tokens" inside another name, not "top-k"
            assert not re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", shown.output), (verb, flag)
    # the old spellings still reach the code: a model that does not exist is refused by name
    doc = tmp_path / "doc.txt"
    doc.write_text(" ".join(f"Fact {i}: item {i} is kept in box {i}." for i in range(40)))
    for args in (["phonebook", "make", "--tokens", "100", "--out", str(tmp_path / "pb.csv")],
                 ["views", "make", str(doc), "--out", str(tmp_path / "views")],
                 ["index", str(doc), "--out", str(tmp_path / "never")]):
        res = cli.invoke(app, [*args, "--model", "no-such-model"])
        assert isinstance(res.exception, UserError) and "no-such-model" in str(res.exception), (args, res.output)
    # index --k sets the index's chunks per question; retrieve -k / --k how many come back
    res = cli.invoke(app, ["index", str(doc), "--out", str(tmp_path / "idx"), "--chunk-tokens", "16", "--overlap",
                           "0", "--model", "tiny-random", "--k", "2"])
    assert res.exit_code == 0, res.output
    for flags, want in (([], 2), (["-k", "1"], 1), (["--k", "4"], 4), (["--chunks", "3"], 3)):
        res = cli.invoke(app, ["retrieve", "box 7", "--index", str(tmp_path / "idx"), "--json", *flags])
        assert res.exit_code == 0 and len(json.loads(res.stdout)) == want, (flags, res.output)


def test_every_verb_that_reports_takes_json():
    import typer

    from loramem import cli

    def verbs(app, prefix=""):
        for c in app.registered_commands:
            yield prefix + (c.name or c.callback.__name__), c.callback
        for g in app.registered_groups:
            yield from verbs(g.typer_instance, prefix + g.name + " ")

    import inspect

    reporting = {"write", "eval", "ask", "models", "datasheet", "bank ls", "bank show", "bank verify", "bank export",
                 "bench capacity", "bench multi-lora", "bench routing", "bench merging", "bench n-modules"}
    have = {}
    for name, fn in verbs(cli.app):
        opts = [p.default for p in inspect.signature(fn).parameters.values() if isinstance(p.default, typer.models.OptionInfo)]
        have[name] = any("--json" in (o.param_decls or ()) for o in opts)
    missing = sorted(v for v in reporting if not have.get(v))
    assert not missing, missing
