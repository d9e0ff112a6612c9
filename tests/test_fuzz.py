"""Property-based fuzzing of every reader of user files and of the numbers the CLI's flags become: whatever
the input, the outcome is data or a one-line `UserError`, never another exception (which the CLI would show as
a traceback)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from conftest import run_cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loramem.errors import UserError

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _readers():
    from loramem.bank.partition import partition_file
    from loramem.data.counterfact import load_rome, read_edits, read_eval, read_meta
    from loramem.data.documents import load_documents, load_questions
    from loramem.data.examples import read_examples
    from loramem.data.longdocs import read_quality
    from loramem.data.paperqa import read_paperqa
    from loramem.data.phonebook import read
    from loramem.retrieval.corpus import read_documents

    return {"examples": read_examples, "phonebook": read, "documents": load_documents, "paperqa": read_paperqa,
            "questions": load_questions, "cf-edits": read_edits, "cf-meta": read_meta, "cf-eval": read_eval,
            "cf-rome": load_rome, "quality": read_quality, "partition": lambda p: partition_file(p, 2),
            "corpus": lambda p: read_documents([p])}


READERS = _readers()
SUFFIXES = [".csv", ".json", ".jsonl", ".txt"]

# bytes users really produce: text in other encodings, BOMs, CSV quoting, JSON fragments, nothing at all
_pieces = st.sampled_from([
    b"", b"\xef\xbb\xbf", b"Name,Phone\n", b"text\n", b"Ann L\xe9e,123-456-7890\n", b'"a""b",\n', b"\x00",
    b'{"prompt": "q", "answer": "a"}\n', b'{"question": "q?", "answer": 1}\n', b"[" * 50, b"]" * 50,
    b'[{"question": "What is the phone number of A?", "answer": "1"}]', b'{"text": "doc"}\n', b"\r\n", b"\n",
    b"Question: What is the phone number of Ann Lee? Answer: 123-456-7890\n", b"\xff\xfe", b'"unterminated',
])
contents = st.one_of(st.binary(max_size=300), st.lists(_pieces, max_size=8).map(b"".join))


def _read(reader, path: Path):
    try:
        reader(path)
    except UserError as exc:
        assert "\n" not in str(exc).strip(), str(exc)


@pytest.mark.parametrize("reader", list(READERS))
@FUZZ
@given(data=contents, suffix=st.sampled_from(SUFFIXES))
def test_every_reader_returns_data_or_a_one_line_user_error(tmp_path, reader, data, suffix):
    p = tmp_path / f"input{suffix}"
    p.write_bytes(data)
    _read(READERS[reader], p)


@pytest.mark.parametrize("reader", list(READERS))
def test_deep_nesting_and_huge_fields_are_user_errors_or_data(tmp_path, reader):
    for name, data in {"deep.json": b"[" * 100_000 + b"]" * 100_000,
                       "deep.jsonl": b'{"a": ' * 50_000 + b"1" + b"}" * 50_000 + b"\n",
                       "huge.csv": b"Name,Phone\n" + b"A" * 200_000 + b",123-456-7890\n"}.items():
        p = tmp_path / name
        p.write_bytes(data)
        _read(READERS[reader], p)


def test_a_bom_csv_from_a_spreadsheet_is_a_phonebook(tmp_path):
    from loramem.data.phonebook import read

    p = tmp_path / "pb.csv"
    p.write_bytes(b"\xef\xbb\xbfName,Phone\r\nAnn Lee,123-456-7890\r\n")
    assert [(e.name, e.number) for e in read(p)] == [("Ann Lee", "123-456-7890")]


numbers = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-10**12, 10**12))


@FUZZ
@given(lr=numbers, alpha=numbers, epochs=numbers, dropout=numbers, rank=st.integers(-10, 10**10),
       steps=st.integers(-10, 10**10))
def test_writer_numbers_are_finite_and_in_range_or_refused(lr, alpha, epochs, dropout, rank, steps):
    from loramem.commands import writer_options as _writer_config

    try:
        cfg = _writer_config(recipe="fast", lr=lr, alpha=alpha, epochs=epochs, dropout=dropout, rank=rank,
                             steps=steps)
    except UserError as exc:
        assert "\n" not in str(exc)
        return
    for v in (cfg.lr, cfg.alpha, cfg.epochs, cfg.dropout):
        assert math.isfinite(v)
    assert cfg.lr > 0 and cfg.alpha > 0 and 0 <= cfg.dropout < 1 and 1 <= cfg.rank <= 4096 and cfg.steps >= 1


@FUZZ
@given(weights=st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=1, max_size=4))
def test_merge_weights_are_finite_or_refused(weights):
    from pydantic import ValidationError

    from loramem.config import MergeConfig

    try:
        cfg = MergeConfig(method="linear", weights=weights)
    except ValidationError:
        return
    assert all(math.isfinite(w) for w in cfg.weights)


@pytest.mark.parametrize("args", [
    ["write", "pb.csv", "--out", "m", "--bogus"],
    ["write", "pb.csv", "--out", "m", "--lr", "inf"],
    ["write", "pb.csv", "--out", "m", "--alpha", "nan"],
    ["write", "pb.csv", "--out", "m", "--steps", "0"],
    ["write", "pb.csv", "--out", "m", "--epochs", "inf"],
    ["write", "pb.csv", "--out", "m", "--rank", "1000000000"],
    ["write", "pb.csv", "--bank", "B", "--name", "x", "--partition", "1000000000"],
    ["write", "pb.csv"],
    ["ask", "q", "--bank", "B", "--top-k", "x"],
    ["ask"],
    ["bank", "ls"],
    ["phonebook", "make", "--entries", "x", "--out", "y.csv"],
])
def test_usage_and_number_errors_exit_2_without_a_traceback(tmp_path, args):
    from loramem.data import phonebook

    phonebook.write(phonebook.generate(4, 0), tmp_path / "pb.csv")
    args = [str(tmp_path / a) if a in ("pb.csv", "m", "B", "y.csv") else a for a in args]
    p = run_cli(*args)
    assert p.returncode == 2, p.stdout + p.stderr
    assert "Traceback" not in p.stderr + p.stdout
    assert not (tmp_path / "m").exists()  # nothing was written


def test_version_prints_and_exits_0():
    from loramem import __version__

    p = run_cli("--version")
    assert p.returncode == 0 and p.stdout.strip() == f"loramem {__version__}"


def test_a_bench_whose_cells_all_fail_exits_non_zero(tmp_path):
    p = run_cli("bench", "merging", "--methods", "bogus", "--model", "tiny-random", "--out", str(tmp_path / "r"))
    assert p.returncode != 0 and "Traceback" not in p.stderr
    # cells that run and fail (LoRA layers outside this 2-layer model): the rows are written, the exit is not 0
    p = run_cli("bench", "capacity", "--model", "tiny-random", "--ranks", "1", "--entries", "4", "--seeds", "1",
                "--layers", "27-29", "--out", str(tmp_path / "c"))
    assert p.returncode == 2 and "every cell failed" in p.stderr, p.stderr
    rows = [json.loads(line) for line in (tmp_path / "c" / "results.jsonl").read_text().splitlines()]
    assert rows and all(r["status"] == "error" for r in rows)
