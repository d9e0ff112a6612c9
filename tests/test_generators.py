"""Generators: the OpenAI-compatible HTTP generator against a real local server (incl. retries and an unreachable
endpoint), QA parsing, the template generator on facts, and the local HF chat model."""

from __future__ import annotations

import socket
import time

import pytest
from openai_server import ChatServer

from loramem.chat import LocalChat, OpenAIChat
from loramem.config import EndpointConfig, GeneratorConfig
from loramem.data.documents import Document, Fact
from loramem.errors import UserError
from loramem.generators import PromptedGenerator, TemplateGenerator, make_generator, parse_qa, sentences

DOC = Document(id="d", title="Tiny paper", text="Alpha is a planner. It uses trees.\n\nBeta is a baseline. It is slow.")


def endpoint(url: str, **kw) -> EndpointConfig:
    return EndpointConfig(base_url=url, model="test-model", api_key="k", **kw)


def test_http_generator_writes_views_from_a_real_server():
    with ChatServer() as srv:
        gen = make_generator(GeneratorConfig(kind="openai", endpoint=endpoint(srv.url), chunk_tokens=10))
        assert gen.name == "openai:test-model"
        pairs = gen.qa_pairs(DOC, 4)
        summaries = gen.summaries(DOC, 2)
        rewrites = gen.rewrites(DOC, 1)
        assert srv.requests[0]["model"] == "test-model"
        assert srv.requests[0]["response_format"] == {"type": "json_object"}
    assert {p["answer"] for p in pairs} == {"Alpha is a planner.", "It uses trees.", "Beta is a baseline.",
                                            "It is slow."}
    assert len(summaries) == 2 and summaries[0].startswith("Summary: Alpha is a planner")
    assert rewrites[0].startswith("Rewritten: Alpha") and "Beta is a baseline" in rewrites[0]


def test_http_generator_retries_after_500_and_429_then_answers():
    with ChatServer(fail_first=2) as srv:
        llm = OpenAIChat(endpoint(srv.url, max_retries=3))
        out = llm.chat([[{"role": "user", "content": "hello"}]])
        assert out == ["ok"]
        assert srv.retry_counts == ["0", "1", "2"]  # the openai client's own retries


def test_http_generator_gives_up_with_a_clear_error():
    with ChatServer(fail_first=10) as srv:
        llm = OpenAIChat(endpoint(srv.url, max_retries=1))
        with pytest.raises(UserError, match="kept failing after 2 tries"):
            llm.chat([[{"role": "user", "content": "hello"}]])


def test_unreachable_endpoint_is_a_one_line_error():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    llm = OpenAIChat(endpoint(f"http://127.0.0.1:{port}/v1", max_retries=1))
    t = time.time()
    with pytest.raises(UserError, match=r"cannot reach the OpenAI-compatible endpoint at http://127.0.0.1"):
        llm.chat([[{"role": "user", "content": "hello"}]])
    assert time.time() - t < 10


def test_missing_endpoint_configuration_names_the_fix():
    with pytest.raises(UserError, match="LORAMEM_OPENAI_BASE_URL"):
        OpenAIChat(EndpointConfig())


def test_server_without_json_mode_falls_back_to_plain_requests():
    with ChatServer(no_json=True) as srv:
        gen = PromptedGenerator(OpenAIChat(endpoint(srv.url)), GeneratorConfig(chunk_tokens=1000))
        pairs = gen.qa_pairs(DOC, 2)
    assert len(pairs) == 2
    assert "response_format" in srv.requests[0] and "response_format" not in srv.requests[1]


def test_concurrency_limit_is_respected():
    with ChatServer() as srv:
        llm = OpenAIChat(endpoint(srv.url, concurrency=2))
        out = llm.chat([[{"role": "user", "content": f"q{i}"}] for i in range(8)])
    assert out == ["ok"] * 8
    assert 1 <= srv.max_in_flight <= 2


def test_parse_qa_reads_json_nested_lists_and_plain_text():
    assert parse_qa('Sure! {"pairs": [{"question": "Q1?", "answer": "A1."}]} done') == [
        {"question": "Q1?", "answer": "A1."}]
    assert parse_qa('[{"q": "Who?", "a": "Me."}, {"q": "", "a": "x"}]') == [{"question": "Who?", "answer": "Me."}]
    text = "1. Question: What is X?\nAnswer: X is a planner.\n2. Question: Why?\nAnswer: Because it works."
    assert parse_qa(text) == [{"question": "What is X?", "answer": "X is a planner."},
                              {"question": "Why?", "answer": "Because it works."}]
    assert parse_qa("no pairs here") == []


def test_sentences_keep_citations_together():
    s = sentences("Diffuser (Janner et al., 2022) works. See e.g. Fig. 2 for more. Done.")
    assert s == ["Diffuser (Janner et al., 2022) works.", "See e.g. Fig. 2 for more.", "Done."]


def test_template_generator_gives_exact_fact_pairs_and_paraphrases():
    facts = [Fact("Ann Lee", "What is the phone number of Ann Lee", "603-556-7631"),
             Fact("Lenta.ru", "Lenta.ru is written in", "Italian", question_like=False)]
    doc = Document(id="f", title="facts", text="", facts=facts)
    gen = TemplateGenerator()
    pairs = gen.qa_pairs(doc, 4)
    assert pairs[0] == {"question": "What is the phone number of Ann Lee", "answer": "603-556-7631"}
    assert pairs[1] == {"question": "Lenta.ru is written in what", "answer": "Italian"}
    assert len(pairs) == 4 and pairs[2]["answer"] == "603-556-7631" and pairs[2]["question"] != pairs[0]["question"]
    assert gen.summaries(doc, 1)[0].splitlines() == ["The phone number of Ann Lee is 603-556-7631.",
                                                     "Lenta.ru is written in Italian."]
    rewrites = gen.rewrites(doc, 2)
    assert rewrites[0] != rewrites[1] and all("603-556-7631" in r for r in rewrites)


def test_local_chat_model_answers_a_batch(tiny_base):
    llm = LocalChat("tiny-random", batch_size=2)
    convs = [[{"role": "user", "content": f"Say {w}."}] for w in ("a", "bb", "ccc")]
    out = llm.chat(convs, max_tokens=4)
    assert len(out) == 3 and all(isinstance(o, str) for o in out)
    assert llm.chat(convs, max_tokens=4) == out  # greedy: deterministic
    assert llm.name == "local:tiny-random"
