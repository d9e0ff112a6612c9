"""Retrieval: chunk boundaries, BM25 and dense search on a small corpus with known answers, the index folder."""

from __future__ import annotations

import json

import pytest

from loramem.config import RetrievalConfig
from loramem.errors import UserError
from loramem.retrieval import Document, Index, chunk_document, ensure_index, read_documents, windows

CORPUS = {
    "cello": "Bob Jones plays the cello in the Berlin Philharmonic orchestra every winter season.",
    "bakery": "Maria Lopez owns a small bakery in Lisbon that sells custard tarts and sourdough bread.",
    "glacier": "The Fendley Glacier flows into the Antarctic ocean near a research station built in 1957.",
    "rocket": "Engineers tested the liquid-fuel rocket engine at the desert launch site on Tuesday morning.",
}


@pytest.fixture(scope="module")
def tok():
    from loramem.models import smollm2_tokenizer

    return smollm2_tokenizer()


def test_windows_cover_every_token_with_the_overlap():
    assert windows(10, 4, 1) == [(0, 4), (3, 7), (6, 10)]
    assert windows(4, 4, 2) == [(0, 4)]  # a document that fits is one chunk, no tail duplicate
    assert windows(5, 4, 2) == [(0, 4), (2, 5)]
    assert windows(0, 4, 1) == []
    with pytest.raises(UserError):
        windows(10, 4, 4)


def test_chunks_are_exact_spans_of_the_text_with_overlap(tok):
    doc = Document("d", " ".join(f"word{i}" for i in range(60)))
    chunks = chunk_document(doc, tok, size=16, overlap=4)
    ids = tok(doc.text, add_special_tokens=False).input_ids
    assert chunks[0].start == 0 and chunks[-1].end == len(ids)
    for a, b in zip(chunks, chunks[1:], strict=False):
        assert b.start == a.end - 4  # consecutive chunks share exactly `overlap` tokens
    for c in chunks:
        assert c.text in doc.text
        assert c.end - c.start <= 16
        assert len(tok(c.text, add_special_tokens=False).input_ids) == c.end - c.start
    assert chunks[0].text.startswith("word0") and chunks[-1].text.endswith("word59")


@pytest.mark.parametrize("method", ["bm25", "dense", "hybrid"])
def test_search_finds_the_document_that_answers(tok, method):
    index = Index.build(CORPUS, RetrievalConfig(method=method, chunk_tokens=64, overlap=8), tok)
    queries = {"Who plays the cello?": "cello", "Where can I buy custard tarts?": "bakery",
               "Which glacier reaches the Antarctic ocean?": "glacier",
               "When was the rocket engine tested?": "rocket"}
    for q, doc in queries.items():
        hits = index.search(q, k=2)
        assert hits[0].chunk.doc == doc, (q, [h.chunk.doc for h in hits])
        assert len(hits) == 2 and hits[0].score >= hits[1].score


def test_dense_ranks_paraphrases_that_bm25_cannot_match(tok):
    # no word in common with the answer document: only embeddings relate "violinist-like musician" to cello
    index = Index.build(CORPUS, RetrievalConfig(method="dense", chunk_tokens=64, overlap=8), tok)
    assert index.search("a string musician performing classical music", k=1)[0].chunk.doc == "cello"


def test_index_folder_is_reused_then_rebuilt_when_a_document_changes(tmp_path, tok):
    cfg = RetrievalConfig(method="bm25", chunk_tokens=32, overlap=4)
    first, rebuilt = ensure_index(CORPUS, tmp_path / "index", cfg, tok)
    assert rebuilt and (tmp_path / "index" / "index.json").is_file()
    again, rebuilt = ensure_index(CORPUS, tmp_path / "index", cfg, tok)
    assert not rebuilt and again.search("cello", k=1)[0].chunk.doc == "cello"
    changed = {**CORPUS, "cello": "Bob Jones now plays the trumpet in a jazz band in Chicago."}
    third, rebuilt = ensure_index(changed, tmp_path / "index", cfg, tok)
    assert rebuilt and third.search("trumpet", k=1)[0].chunk.doc == "cello"
    assert Index.load(tmp_path / "index").search("trumpet jazz", k=1)[0].chunk.text.startswith("Bob Jones now")
    assert third.storage_bytes() > 0
    with pytest.raises(UserError, match="built for 'bm25'"):
        third.search("cello", method="dense")


def test_read_documents_from_files_folders_and_jsonl(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("alpha text")
    (tmp_path / "docs" / "b.md").write_text("beta text")
    (tmp_path / "rows.jsonl").write_text('{"id": "r1", "text": "row one"}\n\n{"text": "row two"}\n')
    docs = read_documents([tmp_path / "docs", tmp_path / "rows.jsonl"])
    assert [d.id for d in docs] == ["a.txt", "b.md", "r1", "rows.jsonl:3"]
    with pytest.raises(UserError, match="does not exist"):
        read_documents([tmp_path / "missing.txt"])
    (tmp_path / "bad.jsonl").write_text('{"no_text": 1}\n')
    with pytest.raises(UserError, match="'text' field"):
        read_documents([tmp_path / "bad.jsonl"])


def test_index_and_retrieve_cli(tmp_path):
    from conftest import run_cli

    docs = tmp_path / "docs"
    docs.mkdir()
    for name, text in CORPUS.items():
        (docs / f"{name}.txt").write_text(text)
    r = run_cli("index", str(docs), "--bank", str(tmp_path / "bank"), "--model", "tiny-random", "--chunk-tokens", "32")
    assert r.returncode == 0 and "index built" in r.stderr, r.stderr[-1500:]
    got = run_cli("retrieve", "Who plays the cello?", "--index", str(tmp_path / "bank" / "index"), "-k", "1", "--json")
    assert got.returncode == 0 and json.loads(got.stdout)[0]["chunk"] == "cello.txt#0"
    bad = run_cli("index", str(docs), "--out", str(tmp_path / "x"), "--overlap", "500")
    assert bad.returncode == 2 and "overlap must be" in bad.stderr


def test_bank_index_is_found_beside_a_bank(tmp_path, tok):
    from loramem.retrieval import bank_index

    assert bank_index(tmp_path) is None
    with pytest.raises(UserError, match="loramem index DOCS --bank"):
        bank_index(tmp_path, required=True)
    ensure_index(CORPUS, tmp_path / "index", RetrievalConfig(chunk_tokens=32), tok)
    assert bank_index(tmp_path).search("cello", k=1)[0].chunk.doc == "cello"
