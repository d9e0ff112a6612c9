"""`loramem ask --mode`: every answer mode over a real bank with its RAG index beside it, on tiny-random."""

from __future__ import annotations

import json

import pytest
from bank_helpers import QUICK, make_bank
from conftest import run_cli

from loramem.answer.pipeline import ask
from loramem.config import AskConfig
from loramem.errors import UserError
from loramem.registry import MODES


@pytest.fixture(scope="module")
def bank_with_index(tmp_path_factory, tiny_base):
    from loramem.config import RetrievalConfig
    from loramem.data import phonebook
    from loramem.retrieval import ensure_index, index_dir_for_bank, read_documents

    root = tmp_path_factory.mktemp("askmodes")
    pb = phonebook.write(phonebook.generate(4, seed=2), root / "pb.csv")
    bank = make_bank(root / "bank", tiny_base, pb, name="people", partition=2, cfg=QUICK)
    docs = root / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("Ann Lee lives in Oslo. Her phone number is 111-222-3333.")
    (docs / "b.txt").write_text("Bob Stone lives in Lima. His phone number is 444-555-6666.")
    ensure_index(read_documents([docs]), index_dir_for_bank(bank.root), RetrievalConfig(chunk_tokens=16, k=1),
                 tiny_base.tokenizer)
    return bank


@pytest.mark.parametrize("mode", MODES.names())
def test_every_mode_answers_and_reports_cost(bank_with_index, mode):
    res = ask("What is the phone number of Bob Stone?", bank_with_index, AskConfig(mode=mode), "tiny-random")
    assert res["mode"] == mode and isinstance(res["answer"], str)
    assert res["prompt_tokens"] > 0 and res["latency_ms"] > 0
    if mode.endswith("rag"):
        assert res["retrieved"][0]["chunk"].startswith("b.txt")  # BM25 found the chunk about Bob
    if mode.startswith("lora"):
        assert res["modules"]  # routed to a module
    if mode in ("rag", "icl", "lora+rag", "lora+icl"):
        closed = ask("What is the phone number of Bob Stone?", bank_with_index, AskConfig(mode="base"), "tiny-random")
        assert res["prompt_tokens"] > closed["prompt_tokens"]  # the context is in the prompt


def test_context_modes_need_an_index(tmp_path, tiny_base):
    from loramem.data import phonebook

    pb = phonebook.write(phonebook.generate(2, seed=5), tmp_path / "pb.csv")
    bank = make_bank(tmp_path / "bank", tiny_base, pb, name="p", partition=None, cfg=QUICK)
    with pytest.raises(UserError, match="loramem index"):
        ask("Who?", bank, AskConfig(mode="rag"), "tiny-random")


def test_cli_ask_json_contract(bank_with_index):
    proc = run_cli("ask", "What is the phone number of Ann Lee?", "--bank", str(bank_with_index.root),
                   "--mode", "lora+rag", "--model", "tiny-random", "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(proc.stdout)
    assert res["mode"] == "lora+rag" and {"answer", "prompt_tokens", "latency_ms"} <= set(res)
    bad = run_cli("ask", "Who?", "--bank", str(bank_with_index.root), "--mode", "telepathy", "--model", "tiny-random")
    assert bad.returncode == 2 and "unknown mode" in bad.stderr and "Traceback" not in bad.stderr
