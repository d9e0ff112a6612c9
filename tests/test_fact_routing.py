"""Fact-level routing: row keys written and removed with their module, the row routers, the vector index and its
repair, and `loramem ask --route` over a real bank (tiny-random modules, real MiniLM, real SQLite)."""

from __future__ import annotations

import numpy as np
import pytest
from bank_helpers import ROUTING_FACTS, copy_bank, gold_pairs, phonebook_file, routing_bank
from conftest import run_cli

from loramem.bank import vindex
from loramem.bank.fact_routing import FactBM25Router, aggregate, rrf, top_modules
from loramem.bank.routing import build_router
from loramem.bank.rowkeys import RowKeys, row_text
from loramem.data import phonebook
from loramem.errors import UserError
from loramem.formats import Example

N_FACTS = ROUTING_FACTS


@pytest.fixture(scope="module")
def bank(tiny_base, tmp_path_factory):
    return routing_bank(tmp_path_factory.mktemp("fbank"), tiny_base)




def test_row_text_is_the_question_without_the_frame():
    assert row_text(Example("Question: What is the phone number of Ann Lee? Answer:", "1")) == \
        "What is the phone number of Ann Lee?"
    assert row_text(Example("Capital of France:", "Paris")) == "Capital of France:"
    assert row_text(Example("", "raw text")) == ""


def test_every_training_row_is_a_key_of_its_module(bank):
    mods = bank.list()
    keys = bank.row_keys(mods)
    assert len(keys) == N_FACTS and keys.fact_level.all()
    assert keys.matrix.shape == (N_FACTS, 384)
    assert np.allclose(np.linalg.norm(keys.matrix, axis=1), 1, atol=1e-4)
    by_module = {mods[i].name: [t for t, o in zip(keys.texts, keys.module_of, strict=True) if o == i]
                 for i in range(3)}
    for q, gold in gold_pairs():
        assert q in by_module[gold]


@pytest.mark.parametrize("kind", ["embed", "bm25", "hybrid"])
def test_fact_level_routers_find_the_module_of_every_fact(bank, kind):
    mods = bank.list()
    router = build_router(kind, mods, keys=bank.row_keys(mods))
    for q, gold in gold_pairs():
        top = router.route(q, 3)
        assert top[0].module.name == gold
        assert len({s.module.name for s in top}) == 3 and top[0].score >= top[1].score >= top[2].score


def test_rows_go_with_remove_and_follow_rollback(bank, tiny_base, tmp_path):
    from loramem.bank.write import write_to_bank
    from loramem.config import WriterConfig

    b = copy_bank(bank, tmp_path / "b")
    other = phonebook_file(tmp_path, 4, seed=9)
    write_to_bank(other, b, "people-00", tiny_base, WriterConfig(rank=4, steps=2, progress=False, target_em=None))
    new_q = phonebook.generate(4, 9)[0].question() + "?"
    assert new_q in b.row_keys(b.list()).texts  # v2 serves the new rows, not v1's
    assert gold_pairs()[0][0] not in b.row_keys(b.list()).texts
    b.rollback("people-00")
    texts = b.row_keys(b.list()).texts
    assert gold_pairs()[0][0] in texts and new_q not in texts
    b.remove("people-01")
    assert len(b.row_keys(b.list())) == 8 and b.row_count() == 8 + 4  # people-00 v1 + v2, people-02


def test_aggregation_max_takes_the_best_row_and_sum_adds_them():
    owner = np.array([0, 0, 0, 1])
    scores = np.array([0.5, 0.5, 0.5, 0.9])
    assert aggregate(owner, scores, 3, "max")[:2].tolist() == [0.5, 0.9]
    assert aggregate(owner, scores, 3, "sum")[:2].tolist() == [1.5, 0.9]
    assert np.isnan(aggregate(owner, scores, 3)[2])


def test_rrf_prefers_rows_both_rankings_agree_on_and_ties_share_a_rank():
    rows, scores = rrf([(np.array([1, 2, 3]), np.array([.9, .8, .7])), (np.array([3, 1, 4]), np.array([5., 4., 3.]))])
    assert rows.tolist()[:2] == [1, 3] and scores[0] > scores[1]
    # BM25 ties rows 7 and 8; dense prefers 8: the tie must not hand row 7 the win
    rows, _ = rrf([(np.array([8, 7]), np.array([.9, .8])), (np.array([7, 8]), np.array([2., 2.]))])
    assert rows[0] == 8


def test_top_modules_fills_up_to_k_distinct_modules():
    from loramem.experiments.route_cases import stub

    mods = [stub(f"m{i}", "", []) for i in range(4)]
    keys = RowKeys.build(mods, ["a", "b"], np.eye(2, 384, dtype=np.float32), np.array([2, 2], dtype=np.int32))
    got = top_modules(mods, keys, np.array([0, 1]), np.array([0.9, 0.8]), 3)
    assert [s.module.name for s in got] == ["m2", "m0", "m1"] and got[0].score > got[1].score


def test_bm25_candidates_score_as_bm25s_does():
    from loramem.experiments.route_cases import qa_facts, stub
    from loramem.retrieval.bm25 import BM25Retriever

    rows = qa_facts(600)
    texts = [r["question"] for r in rows]
    mods = [stub(f"m{i}", "", []) for i in range(6)]
    keys = RowKeys.build(mods, texts, np.zeros((600, 384), np.float32), (np.arange(600) // 100).astype(np.int32))
    ours, ref = FactBM25Router(mods, keys), BM25Retriever.build(texts)
    for r in rows[:40]:
        for q in [r["question"], *r["paraphrases"]]:
            got = ours.search(q, 5)[1]  # only rows sharing a rare term are candidates: maybe fewer than 5
            assert len(got) >= 1
            assert got == pytest.approx([s for _, s in ref.search(q, 5)][: len(got)], abs=1e-4)


def test_ivf_index_finds_the_planted_row_like_exact_search():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4000, 384)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    labels = np.arange(4000, dtype=np.int64) * 7 + 3  # labels need not be positions
    ivf = vindex.VectorIndex(x, labels, exact=False)
    exact = vindex.VectorIndex(x, labels, exact=True)
    assert ivf.kind.startswith("faiss-ivf") and exact.kind == "exact"
    planted = rng.choice(4000, 50, replace=False)
    q = x[planted] + 0.02 * rng.standard_normal((50, 384)).astype(np.float32)
    hits_ivf = [r[0][0] for r in ivf.search(q, 10)]
    hits_exact = [r[0][0] for r in exact.search(q, 10)]
    assert hits_exact == planted.tolist()
    assert np.mean(np.array(hits_ivf) == planted) >= 0.95


def test_saved_index_follows_writes_and_verify_repairs_drift(bank, tiny_base, tmp_path, monkeypatch):
    monkeypatch.setattr(vindex, "EXACT_MAX", 4)  # force the saved IVF index on a tiny bank
    b = copy_bank(bank, tmp_path / "b")
    keys = b.row_keys(b.list())
    vindex.for_keys(b, keys)
    assert (vindex.folder(b) / vindex.INDEX_FILE).is_file() and vindex.drift(b, keys) is None
    b.remove("people-02")  # incremental: the store updates the saved index
    keys = b.row_keys(b.list())
    assert len(keys) == 8 and vindex.drift(b, keys) is None
    assert set(vindex.load(b).labels.tolist()) == set(keys.labels.tolist())
    np.save(vindex.folder(b) / vindex.LABELS_FILE, keys.labels[:3])  # drift: the index lost rows
    rep = b.verify()
    assert not rep.ok and any("row index" in p for p in rep.problems)
    assert "rebuilt" in vindex.rebuild(b, keys)
    assert b.verify().ok


def test_a_write_past_exact_search_writes_a_small_delta_not_the_index(bank, tiny_base, tmp_path, monkeypatch):
    from bank_helpers import QUICK

    from loramem.bank.write import write_to_bank
    from loramem.config import WriterConfig

    monkeypatch.setattr(vindex, "EXACT_MAX", 4)  # force the saved IVF index on a tiny bank
    monkeypatch.setattr(vindex, "COMPACT", 0.9)  # 8 changed rows of 12 stay a delta
    b = copy_bank(bank, tmp_path / "b")
    vindex.for_keys(b, b.row_keys(b.list()))
    snap = vindex.folder(b) / vindex.INDEX_FILE
    before = snap.read_bytes()
    write_to_bank(phonebook_file(tmp_path, 4, seed=9), b, "people-00", tiny_base, WriterConfig(**QUICK))
    assert snap.read_bytes() == before and (vindex.folder(b) / vindex.DELTA_FILE).is_file()
    keys = b.row_keys(b.list())
    assert vindex.drift(b, keys) is None
    vi = vindex.for_keys(b, keys)  # the snapshot plus the delta: every serving row, each finds itself
    assert vi.ivf.ntotal == len(keys) == 12
    assert [int(r[0][0]) for r in vi.search(keys.matrix, 1)] == list(range(len(keys)))
    b.rollback("people-00")
    assert snap.read_bytes() == before and vindex.drift(b, b.row_keys(b.list())) is None
    monkeypatch.setattr(vindex, "COMPACT", 0.0)  # any change folds the delta into a new snapshot
    b.remove("people-01")
    keys = b.row_keys(b.list())
    assert not (vindex.folder(b) / vindex.DELTA_FILE).exists() and snap.read_bytes() != before
    assert vindex.drift(b, keys) is None and set(vindex.load(b).labels.tolist()) == set(keys.labels.tolist())


def test_ask_cli_routes_with_every_router_and_refuses_bad_input(bank, capsys, monkeypatch):
    import json

    from test_bank_cli import run_main  # the real entry point in this process: a Python start saved per call

    q, gold = gold_pairs()[6]
    for route, k in (("hybrid", 1), ("embed", 1), ("bm25", 1), ("oracle", 2), ("lora", 2)):
        args = ["ask", q, "--bank", str(bank.root), "--route", route, "--top-k", str(k), "--max-new-tokens", "2",
                "--json", *(["--merge", "ties"] if k > 1 else [])]
        out = run_cli(*args) if route == "hybrid" else run_main(capsys, monkeypatch, *args)  # one real process
        assert out.returncode == 0, out.stderr
        picked = [m["name"] for m in json.loads(out.stdout)["modules"]]
        assert len(picked) == k and (route == "lora" or picked[0] == gold)  # tiny-random's confidence is noise
    bad = run_main(capsys, monkeypatch, "ask", q, "--bank", str(bank.root), "--route", "nearest")
    assert bad.returncode == 2 and "--route embed" in (bad.stdout + bad.stderr)
    unknown = run_cli("ask", "Who wrote Hamlet?", "--bank", str(bank.root), "--route", "oracle")
    said = (unknown.stdout + unknown.stderr).strip()
    assert unknown.returncode == 2 and "oracle" in said and len(said.splitlines()) == 1 and "Traceback" not in said
    with pytest.raises(UserError, match="unknown router"):
        build_router("nearest", bank.list())


def test_q9_finding_judges_the_papers_module_level_embedding_router():
    from finding_rows import kept

    from loramem.findings import verdict_of

    rows = [{"router": r, "answer_accuracy": a, **kept(a)} for r, a in
            (("single", 0.7), ("embed", 1.0), ("embed-module", 0.4))]
    v = verdict_of("embed-routing-can-fall-below", rows)
    assert v["verdict"] == "agrees" and v["evidence"]["router"] == "embed-module" and v["effect"] == 0.3


def test_verify_repair_cli_rebuilds_the_row_index(bank, tmp_path):
    b = copy_bank(bank, tmp_path / "b")
    vindex.folder(b).mkdir()
    (vindex.folder(b) / vindex.INDEX_FILE).write_bytes(b"not an index")  # a damaged index file
    assert run_cli("bank", "verify", "--bank", str(b.root)).returncode == 1
    fixed = run_cli("bank", "verify", "--bank", str(b.root), "--repair")
    assert fixed.returncode == 0 and "exact search" in fixed.stderr + fixed.stdout
    assert not vindex.folder(b).exists()


def test_llm_paraphrases_come_from_the_endpoint_and_keep_the_gold_module(tmp_path):
    """routing_quality's third question kind: each trained question rewritten by an OpenAI-compatible endpoint
    (a real HTTP server on 127.0.0.1, the real openai client)."""
    from openai_server import ChatServer

    from loramem.chat import OpenAIChat
    from loramem.config import EndpointConfig
    from loramem.experiments.route_cases import llm_paraphrases, qa

    case = qa(24, 4, tmp_path)
    with ChatServer() as server:
        out = llm_paraphrases(case, OpenAIChat(EndpointConfig(base_url=server.url, model="test", max_retries=0)))
        asked = [r["messages"][-1]["content"] for r in server.requests]
    got = out.questions["llm-paraphrase"]
    assert len(got) == len(case.questions["trained"]) == len(asked) == 24
    assert all(g.startswith("Could you tell me") and g != t for g, t in zip(got, case.questions["trained"], strict=True))
    assert sorted(a.split("Question: ", 1)[1] for a in asked) == sorted(case.questions["trained"])  # in any order
    assert out.gold == case.gold and out.questions["trained"] == case.questions["trained"]


def test_a_reader_that_finds_the_index_out_of_step_saves_it_only_under_the_writer_lock(bank, tmp_path, monkeypatch):
    """A router that finds the saved index missing rebuilds it in memory and routes; it writes the index folder only
    when it can take the bank's writer lock, never beside a writer that is changing the bank (another process
    holds the lock here)."""
    import subprocess
    import sys

    monkeypatch.setattr(vindex, "EXACT_MAX", 4)  # force the saved IVF index on a tiny bank
    b = copy_bank(bank, tmp_path / "b")
    keys = b.row_keys(b.list())
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from filelock import FileLock; lock = FileLock(sys.argv[1]); lock.acquire(); "
        "print('held', flush=True); time.sleep(60)"), str(b._lock.lock_file)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        vi = vindex.for_keys(b, keys)
        assert vi.ivf.ntotal == len(keys) and not vindex.folder(b).exists()  # routed, wrote nothing
    finally:
        holder.kill()
        holder.wait()
    vindex.for_keys(b, keys)  # the writer is gone: now it saves
    assert vindex.drift(b, keys) is None
