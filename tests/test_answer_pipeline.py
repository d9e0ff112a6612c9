"""Answer modes end to end on tiny-random: every mode answers and records its cost; memory and context work."""

from __future__ import annotations

import pytest

from loramem.answer.pipeline import answer, answer_many
from loramem.config import AnswerConfig, RetrievalConfig, WriterConfig
from loramem.errors import UserError
from loramem.formats import Example, question_prompt
from loramem.registry import MODES
from loramem.retrieval import Index

DOCS = {"anna": "Anna Smith can be reached at 603-555-1234 on weekdays.",
        "bob": "Bob Jones has the phone number 212-555-9876 at his office.",
        "cat": "The cat sat on the mat and looked at the garden for hours."}
QUESTION = "What is Anna Smith's number"
ANSWER = "Paris"


@pytest.fixture(scope="module")
def setup(tiny_base):
    from loramem.writer import write_module

    index = Index.build(DOCS, RetrievalConfig(chunk_tokens=32, overlap=4, k=1), tiny_base.tokenizer)
    # a random 2-layer model cannot learn to stop (its logits are too small for EOS to win), but greedy decoding
    # starts with a short trained answer: "Paris Paris ..." is the module answering
    fact = Example(question_prompt(QUESTION), ANSWER)
    res = write_module([fact], tiny_base, WriterConfig(rank=8, steps=100, lr=3e-2, target_em=None, progress=False),
                       adapter="modes_mem")
    yield tiny_base, res.model, index
    res.model.delete_adapter("modes_mem")


def test_every_mode_answers_and_records_cost(setup):
    base, host, index = setup
    cfg = AnswerConfig(max_new_tokens=10)
    rows = {m: answer(QUESTION, base, m, host=host, index=index, cfg=cfg) for m in MODES.names()}
    for m, r in rows.items():
        assert r["mode"] == m and isinstance(r["answer"], str)
        assert r["prompt_tokens"] > 0 and 0 < r["generated_tokens"] <= 10 and r["latency_ms"] > 0
    assert rows["lora"]["answer"].startswith(ANSWER)  # the module answers closed-book
    assert not rows["base"]["answer"].startswith(ANSWER)  # memory off: the random base model does not know
    assert rows["base"]["prompt_tokens"] == rows["lora"]["prompt_tokens"]
    assert rows["rag"]["retrieved"][0]["chunk"] == "anna#0"
    assert rows["base"]["prompt_tokens"] < rows["rag"]["prompt_tokens"] < rows["icl"]["prompt_tokens"]
    assert rows["rag"]["prompt_tokens"] == rows["lora+rag"]["prompt_tokens"]
    assert rows["icl"]["context_tokens"] == rows["lora+icl"]["context_tokens"] > 0
    # switching memory off for `base` must not leave the module off for the next question
    assert answer(QUESTION, base, "lora", host=host, cfg=cfg)["answer"].startswith(ANSWER)


def test_icl_uses_given_documents_and_completion_template(setup):
    base, host, _ = setup
    r = answer("Anna Smith can be reached at", base, "icl", documents=list(DOCS.values()),
               cfg=AnswerConfig(template="completion", max_new_tokens=4))
    assert r["context_tokens"] > 20 and r["generated_tokens"] <= 4
    assert len(answer_many(["a", "b"], base, "base", cfg=AnswerConfig(max_new_tokens=2))) == 2


def test_icl_over_budget_is_an_error_unless_truncation_is_asked(setup):
    base, _, index = setup
    with pytest.raises(UserError, match="over the budget of 40.*--overflow truncate"):
        answer(QUESTION, base, "icl", index=index, cfg=AnswerConfig(context_budget=40))
    r = answer(QUESTION, base, "icl", index=index,
               cfg=AnswerConfig(context_budget=40, overflow="truncate", max_new_tokens=2))
    assert r["prompt_tokens"] <= 40 and r["truncated_tokens"] > 0
    # the model's own context length is the default budget
    long_doc = {"long": "word " * 3000}
    with pytest.raises(UserError, match="over the budget"):
        answer(QUESTION, base, "icl", documents=long_doc)


def test_modes_say_what_they_need(setup):
    base, _, index = setup
    with pytest.raises(UserError, match="needs memory modules"):
        answer(QUESTION, base, "lora+rag", index=index)
    with pytest.raises(UserError, match="needs a RAG index"):
        answer(QUESTION, base, "rag")
    with pytest.raises(UserError, match="needs documents"):
        answer(QUESTION, base, "icl")
    with pytest.raises(UserError, match="unknown mode"):
        answer(QUESTION, base, "lora+everything")


def test_answer_many_batches_give_the_answers_of_one_at_a_time(setup, monkeypatch):
    base, host, index = setup
    cfg = AnswerConfig(max_new_tokens=6)
    qs = [QUESTION, "Who sat on the mat", "What is Bob Jones's phone number at the office", "Anna", QUESTION]
    for mode in ("lora", "base", "rag", "lora+icl"):
        one = [answer(q, base, mode, host=host, index=index, cfg=cfg) for q in qs]
        many = answer_many(qs, base, mode, host=host, index=index, cfg=cfg, batch_size=3)
        keys = ("answer", "prompt_tokens", "context_tokens", "generated_tokens", "truncated_tokens", "retrieved")
        assert [{k: r[k] for k in keys} for r in many] == [{k: r[k] for k in keys} for r in one], mode
        assert sorted(r["batch"] for r in many) == [2, 2, 3, 3, 3] and all(r["latency_ms"] > 0 for r in many)
    # long shared documents: their tokens run once and every row continues from their cache, same answers
    from loramem import forward
    from loramem.answer import decode as modes

    calls = []
    real = forward.prefix_kv_cache
    monkeypatch.setattr(forward, "prefix_kv_cache", lambda *a: calls.append(a[3]) or real(*a))
    long_docs = {"all": " ".join(DOCS.values()) * 3}
    for mode in ("icl", "lora+icl"):
        one = [answer(q, base, mode, host=host, documents=long_docs, cfg=cfg) for q in qs]
        many = answer_many(qs, base, mode, host=host, documents=long_docs, cfg=cfg, batch_size=3)
        assert one[0]["context_tokens"] > modes.MIN_SHARED_PREFIX
        assert [(r["answer"], r["generated_tokens"]) for r in many] == [(r["answer"], r["generated_tokens"])
                                                                        for r in one], mode
    assert sorted(calls) == [2, 2, 3, 3]  # each batch (3 and 2 questions) shared its prefix, in both modes
    # each question may bring its own documents (icl over its own paper)
    own = answer_many(["Anna", "Bob"], base, "icl", documents_each=[{"a": DOCS["anna"]}, {"b": DOCS["bob"]}],
                      cfg=cfg)
    for r, q, d in zip(own, ["Anna", "Bob"], [{"a": DOCS["anna"]}, {"b": DOCS["bob"]}], strict=True):
        solo = answer(q, base, "icl", documents=d, cfg=cfg)
        assert (r["prompt_tokens"], r["answer"]) == (solo["prompt_tokens"], solo["answer"])
    with pytest.raises(UserError, match="unknown mode"):
        answer_many(qs, base, "lora+everything")


def test_cached_prefix_paths_use_no_deprecated_transformers_argument(setup):
    # transformers 5 renamed past_key_values to cache and warns on every call that still uses the old name
    import warnings

    base, host, _ = setup
    long_docs = {"all": " ".join(DOCS.values()) * 3}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        answer_many([QUESTION, "Anna"], base, "icl", host=host, documents=long_docs, cfg=AnswerConfig(max_new_tokens=3))
        from loramem.writer import write_module

        facts = [Example(question_prompt(f"{DOCS['cat']} Who is number {i}"), str(i)) for i in range(4)]
        res = write_module(facts, base, WriterConfig(steps=2, target_em=None, progress=False), adapter="modes_warn")
        res.model.delete_adapter("modes_warn")
        assert res.record["shared_prefix"]  # the writer's prefix-cache path ran
    assert [str(w.message) for w in caught if "past_key_values" in str(w.message)] == []


@pytest.mark.parametrize("fmt", ["plain", "chat", "chat-user"])
def test_the_one_decoding_loop_gives_the_tokens_of_transformers_generate(setup, fmt):
    """decode's greedy loop (left padding, mixed lengths in one batch) picks the tokens generate(do_sample=False)
    picks for each prompt alone, stop rule included."""
    import torch

    from loramem.answer.decode import decode, newline_ids
    from loramem.answer.prompt import build_prompt

    base, host, _ = setup
    tok = base.tokenizer
    qs = [QUESTION, "Who sat on the mat", "What is Bob Jones's phone number at the office and why"]
    prompts = [build_prompt(q, tok, fmt) for q in qs]
    with host.disable_adapter():
        rows = decode(host, tok, prompts, 12)
        for p, r in zip(prompts, rows, strict=True):
            ids = torch.tensor([list(p.ids)])
            ref = host.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=12,
                                do_sample=False, eos_token_id=sorted(p.stop_ids), pad_token_id=tok.pad_token_id)
            assert r.ids == ref[0, len(p.ids):].tolist()[: len(r.ids)]
            assert len(r.ids) == 12 if r.finish == "length" else r.ids[-1] in p.stop_ids or r.ids[-1] in newline_ids(tok)


def test_rows_that_join_a_running_batch_or_prefill_in_chunks_get_their_solo_tokens(setup):
    """Continuous batching: a row joining between steps, and a long prompt prefilled a chunk per step while the
    others decode, pick the tokens each prompt gets alone; a row past its deadline ends with finish "length"."""
    import time

    from loramem.answer.decode import Batch, Row, decode
    from loramem.answer.prompt import build_prompt

    base, host, _ = setup
    tok = base.tokenizer
    prompts = [build_prompt(QUESTION, tok, "chat"), build_prompt("Who sat on the mat", tok, "plain"),
               build_prompt(QUESTION, tok, "chat-user", [" ".join(DOCS.values()) * 2])]
    chunk = max(len(p.ids) for p in prompts[:2])
    assert len(prompts[2].ids) > 3 * chunk
    with host.disable_adapter():
        solo = [decode(host, tok, [p], 10)[0].ids for p in prompts]
        batch = Batch(host, tok, prefill_chunk=chunk)
        rows = [Row(p, 10) for p in prompts]
        batch.join(rows[:1])
        batch.step()
        batch.join(rows[1:])  # the short one decodes at once, the long one a chunk a step
        assert len(batch.pending) == 1 and len(batch.rows) == 2
        while batch.busy:
            batch.step()
        assert [r.new for r in rows] == solo
        late = Row(prompts[0], 100_000, deadline=time.monotonic() + 0.05)
        batch.join([late])
        while batch.busy:
            batch.step()
    assert late.timed_out and late.finish == "length" and 0 < len(late.new) < 100_000
