"""The server, over a real bank, on a real uvicorn on 127.0.0.1, talked to with the official openai client."""

from __future__ import annotations

import httpx
import openai
import pytest
from bank_helpers import QUICK, RunningServer, free_port, make_bank

from loramem.config import ServeConfig
from loramem.data import phonebook

KEY = "test-key-123"


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_base):
    from loramem.serve import create_app

    root = tmp_path_factory.mktemp("serve")
    ann = phonebook.write([phonebook.Entry("Ann Lee", "111-222-3333")], root / "ann.csv")
    bob = phonebook.write([phonebook.Entry("Bob Stone", "444-555-6666")], root / "bob.csv")
    bank = make_bank(root / "bank", tiny_base, ann, name="ann", partition=None, cfg=QUICK)
    make_bank(root / "bank", tiny_base, bob, name="bob", partition=None, cfg=QUICK)
    port = free_port()
    app = create_app(bank.root, "tiny-random", ServeConfig(port=port, api_key=KEY, max_body_bytes=4096,
                                                           max_tokens=64))
    with RunningServer(app, port) as srv:
        yield {"url": srv.url, "bank": bank, "root": root, "app": app}


def _client(server, key=KEY):
    return openai.OpenAI(base_url=server["url"] + "/v1", api_key=key, max_retries=0)


def test_lists_routed_memory_and_each_module(server):
    ids = [m.id for m in _client(server).models.list().data]
    assert ids[0] == "loramem" and {"loramem:ann", "loramem:bob"} <= set(ids)


def test_answer_matches_loramem_ask_and_routes_to_the_right_module(server):
    from loramem.api import ask

    c = _client(server)
    for name, who in (("ann", "Ann Lee"), ("bob", "Bob Stone")):
        q = f"What is the phone number of {who}?"
        r = c.chat.completions.create(model="loramem", messages=[{"role": "user", "content": q}],
                                      max_tokens=16, extra_body={"route": "bm25"})
        extra = r.model_extra["loramem"]
        assert extra["modules"][0]["name"] == name
        same = ask(q, server["bank"], "tiny-random", route="bm25", max_tokens=16)
        assert r.choices[0].message.content == same["answer"]
        assert r.usage.prompt_tokens == same["prompt_tokens"]


def test_streaming_gives_the_same_text(server):
    c = _client(server)
    msgs = [{"role": "user", "content": "What is the phone number of Ann Lee?"}]
    whole = c.chat.completions.create(model="loramem:ann", messages=msgs, max_tokens=16).choices[0].message.content
    parts = list(c.chat.completions.create(model="loramem:ann", messages=msgs, max_tokens=16, stream=True))
    text = "".join(p.choices[0].delta.content or "" for p in parts if p.choices)
    assert text == whole and len(parts) >= 3
    assert parts[-1].choices[0].finish_reason in ("stop", "length")


def test_requests_for_different_modules_share_a_batch(server):
    from concurrent.futures import ThreadPoolExecutor

    c = _client(server)
    batcher = server["app"].state.batcher
    before = len(batcher.batches)

    def one(i):
        name = ("ann", "bob")[i % 2]
        return c.chat.completions.create(model=f"loramem:{name}", max_tokens=8,
                                         messages=[{"role": "user", "content": f"question {i}"}])

    with ThreadPoolExecutor(8) as pool:
        out = list(pool.map(one, range(8)))
    assert len(out) == 8
    assert max(batcher.batches[before:]) > 1  # at least one decode served several requests together


def test_new_module_is_served_without_restart(server, tiny_base):
    cara = phonebook.write([phonebook.Entry("Cara Moss", "777-888-9999")], server["root"] / "cara.csv")
    make_bank(server["bank"].root, tiny_base, cara, name="cara", partition=None, cfg=QUICK)
    assert "loramem:cara" in [m.id for m in _client(server).models.list().data]
    r = _client(server).chat.completions.create(model="loramem:cara", max_tokens=4,
                                                messages=[{"role": "user", "content": "hi"}])
    assert r.model_extra["loramem"]["modules"][0]["name"] == "cara"


def test_rag_mode_needs_the_banks_index_then_answers(server, tiny_base):
    from loramem.config import RetrievalConfig
    from loramem.retrieval import ensure_index, index_dir_for_bank, read_documents

    c = _client(server)
    msgs = [{"role": "user", "content": "What is the phone number of Ann Lee?"}]
    with pytest.raises(openai.BadRequestError, match="loramem index"):
        c.chat.completions.create(model="loramem", messages=msgs, extra_body={"mode": "lora+rag"})
    doc = server["root"] / "ann.txt"
    doc.write_text("Ann Lee can be reached at 111-222-3333.")
    ensure_index(read_documents([doc]), index_dir_for_bank(server["bank"].root), RetrievalConfig(k=1),
                 tiny_base.tokenizer)
    r = c.chat.completions.create(model="loramem", messages=msgs, max_tokens=8, extra_body={"mode": "lora+rag"})
    base = c.chat.completions.create(model="loramem", messages=msgs, max_tokens=8, extra_body={"mode": "base"})
    assert r.model_extra["loramem"]["mode"] == "lora+rag"
    assert r.usage.prompt_tokens > base.usage.prompt_tokens  # the retrieved chunk is in the prompt


def test_401_without_the_key(server):
    with pytest.raises(openai.AuthenticationError):
        _client(server, key="wrong").models.list()
    assert httpx.get(server["url"] + "/v1/models").status_code == 401
    assert httpx.get(server["url"] + "/health").json() == {"status": "ok"}  # nothing about the bank without the key
    full = httpx.get(server["url"] + "/health", headers={"Authorization": f"Bearer {KEY}"}).json()
    assert full["modules"] >= 2 and full["base"] == "tiny-random"
    # a browser sends no key: the docs and the schema they read are open, with the openai package's types in it
    assert httpx.get(server["url"] + "/docs").status_code == 200
    schemas = httpx.get(server["url"] + "/openapi.json").json()["components"]["schemas"]
    assert {"ChatCompletion", "ChatCompletionChunk", "Completion", "CreateEmbeddingResponse"} <= set(schemas)


@pytest.mark.parametrize("body,status", [
    (b"{not json", 400),
    (b'{"model": "loramem", "messages": []}', 422),
    (b'{"model": "loramem", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}', 422),
    (b'{"model": "loramem", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1000}', 400),
    (b'{"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]}', 404),
    (b'{"model": "loramem:nobody", "messages": [{"role": "user", "content": "hi"}]}', 404),
    (b'{"model": "loramem", "messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function"}]}', 400),
    (b'{"model": "loramem", "messages": [{"role": "user", "content": "' + b"x" * 8000 + b'"}]}', 413),
])
def test_bad_bodies_get_json_errors(server, body, status):
    r = httpx.post(server["url"] + "/v1/chat/completions", content=body,
                   headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["message"] and isinstance(err["code"], str)


def test_wrong_paths_and_methods_get_json_errors(server):
    auth = {"Authorization": f"Bearer {KEY}"}
    for r, status in ((httpx.get(server["url"] + "/v1/nothing", headers=auth), 404),
                      (httpx.get(server["url"] + "/v1/chat/completions", headers=auth), 405)):
        assert r.status_code == status and r.headers["content-type"] == "application/json"
        assert isinstance(r.json()["error"]["code"], str)


def test_openai_client_sees_model_not_found(server):
    c = _client(server)
    with pytest.raises(openai.NotFoundError) as err:
        c.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "hi"}])
    assert err.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        c.models.retrieve("loramem:nobody")
    assert c.models.retrieve("loramem:ann").id == "loramem:ann" and c.models.retrieve("ann").id == "loramem:ann"


def test_a_damaged_module_gets_its_request_an_error_and_the_others_answers(server, tiny_base):
    """Runs last: it adds (and removes) a module, so the other tests see the bank as the fixture built it."""
    cat = phonebook.write([phonebook.Entry("Cat Moss", "777-888-9999")], server["root"] / "cat.csv")
    bank = make_bank(server["bank"].root, tiny_base, cat, name="cat", partition=None, cfg=QUICK)
    f = bank.path(bank.get("cat")) / "adapter_model.safetensors"
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF
    f.write_bytes(bytes(data))
    c = _client(server)
    try:
        msg = [{"role": "user", "content": "What is the phone number of Cat Moss?"}]
        with pytest.raises(openai.APIStatusError) as err:
            c.chat.completions.create(model="loramem:cat", messages=msg, max_tokens=8)
        assert "damaged" in str(err.value) and "cat@v1" in str(err.value)
        ok = c.chat.completions.create(model="loramem:ann", max_tokens=8,
                                       messages=[{"role": "user", "content": "What is the phone number of Ann Lee?"}])
        assert ok.choices[0].message.content is not None
    finally:
        bank.remove("cat")


def test_an_unexpected_exception_is_a_json_500():
    """The server's error handlers on a route that fails as a bug would: 500 in OpenAI's shape, never text/plain."""
    from fastapi import FastAPI

    from loramem.serve.app import _handlers

    app = FastAPI()
    _handlers(app)

    @app.get("/boom")
    async def boom():
        raise RuntimeError("kaput")

    with RunningServer(app, free_port()) as srv:
        r = httpx.get(srv.url + "/boom")
    assert r.status_code == 500 and r.headers["content-type"] == "application/json"
    assert r.json()["error"]["code"] == "internal_error" and "kaput" in r.json()["error"]["message"]


def test_the_serve_command_serves_a_bank_with_its_limits(server):
    """`loramem serve` as a user starts it (a real process): the key, and --max-prompt-tokens as a 400."""
    import subprocess
    import sys
    import time

    from conftest import ROOT

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "loramem.cli", "serve", "--bank", str(server["bank"].root),
                             "--model", "tiny-random", "--port", str(port), "--api-key", KEY,
                             "--max-prompt-tokens", "24", "--request-timeout", "60"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        c = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY, max_retries=0)
        for _ in range(120):
            try:
                ids = [m.id for m in c.models.list().data]
                break
            except openai.APIConnectionError:
                time.sleep(0.5)
        assert "loramem:ann" in ids
        r = c.chat.completions.create(model="ann", messages=[{"role": "user", "content": "Ann Lee?"}], max_tokens=4)
        assert r.choices[0].finish_reason in ("stop", "length")
        with pytest.raises(openai.BadRequestError) as err:
            c.chat.completions.create(model="ann", max_tokens=4,
                                      messages=[{"role": "user", "content": "What is the number of Ann Lee? " * 8}])
        assert err.value.code == "context_length_exceeded"
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="wrong", max_retries=0).models.list()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
