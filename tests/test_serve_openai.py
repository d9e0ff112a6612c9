"""The server speaks OpenAI as the real `openai` client parses it (real uvicorn on 127.0.0.1), and one request never
harms another: bad requests in every batch, plain and chat modules in one batch, a prompt over the cap."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
from bank_helpers import QUICK, RunningServer, free_port, make_bank

from loramem.config import ServeConfig
from loramem.data import phonebook

KEY = "k-openai"
PLAIN, CHAT = "What is the phone number of Ann Lee?", "What is the phone number of Bob Stone?"


@pytest.fixture(scope="module")
def srv(tmp_path_factory, tiny_base):
    from loramem.serve import create_app

    root = tmp_path_factory.mktemp("serve_openai")
    bank = None
    for name, who, fmt in (("ann", "Ann Lee", "plain"), ("bob", "Bob Stone", "chat"), ("broken", "Cat Moss", "plain")):
        f = phonebook.write([phonebook.Entry(who, "111-222-3333")], root / f"{name}.csv")
        bank = make_bank(root / "bank", tiny_base, f, name=name, partition=None, cfg={**QUICK, "format": fmt})
    weights = bank.path(bank.get("broken")) / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF  # a damaged module: its load fails its checksum
    weights.write_bytes(bytes(data))
    port = free_port()
    app = create_app(bank.root, "tiny-random", ServeConfig(port=port, api_key=KEY, max_tokens=64,
                                                           max_prompt_tokens=120, batch_window_ms=50))
    with RunningServer(app, port) as running:
        yield {"client": openai.OpenAI(base_url=running.url + "/v1", api_key=KEY, max_retries=0), "app": app}


def _ask(c, model: str, q: str, **kw):
    return c.chat.completions.create(model=model, messages=[{"role": "user", "content": q}], **kw)


def _text(r) -> str:
    return r.choices[0].message.content


def test_one_bad_request_in_every_batch_leaves_the_good_answers_right(srv):
    c, batcher = srv["client"], srv["app"].state.batcher
    good = [("loramem:ann", PLAIN), ("loramem:bob", CHAT), ("ann", f"{PLAIN} At home"), ("loramem:bob", "Who?")]
    alone = [_text(_ask(c, m, q, max_tokens=8)) for m, q in good]
    bad = [("loramem:nobody", PLAIN, openai.NotFoundError),  # refused before it reaches a batch
           ("loramem:broken", PLAIN, openai.APIStatusError),  # fails its load inside the batch
           ("loramem:ann", "word " * 200, openai.BadRequestError)]  # over the prompt cap, inside the batch
    before = len(batcher.batches)

    def one(job):
        model, q, err = job
        try:
            return _text(_ask(c, model, q, max_tokens=8))
        except openai.APIStatusError as exc:
            return exc if err is not None and isinstance(exc, err) else f"unexpected {exc!r}"

    for model, q, err in bad:  # each round: the good ones and one bad one, sent together
        with ThreadPoolExecutor(5) as pool:
            out = list(pool.map(one, [(m, qq, None) for m, qq in good] + [(model, q, err)]))
        assert out[:4] == alone, model
        assert isinstance(out[4], err), out[4]
    assert max(batcher.batches[before:]) > 1  # the requests did decode together


def test_damaged_module_and_long_prompt_say_what_is_wrong(srv):
    c = srv["client"]
    with pytest.raises(openai.APIStatusError, match="damaged"):
        _ask(c, "loramem:broken", PLAIN, max_tokens=4)
    with pytest.raises(openai.BadRequestError) as err:
        _ask(c, "loramem:ann", "word " * 200, max_tokens=4)
    assert err.value.code == "context_length_exceeded" and "over the limit of 120" in str(err.value)


def test_plain_and_chat_modules_in_one_batch_answer_as_alone(srv):
    c = srv["client"]
    jobs = [("loramem:ann", PLAIN), ("loramem:bob", CHAT)] * 4
    alone = {(m, q): _ask(c, m, q, max_tokens=10) for m, q in set(jobs)}
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(lambda j: _ask(c, *j, max_tokens=10), jobs))
    assert {r.model_extra["loramem"]["format"] for r in together} == {"plain", "chat"}
    assert max(r.model_extra["loramem"]["batch"] for r in together) > 1
    for j, r in zip(jobs, together, strict=True):
        assert (_text(r), r.usage.prompt_tokens) == (_text(alone[j]), alone[j].usage.prompt_tokens), j


def test_streaming_sends_tokens_as_they_are_decoded(srv):
    c = srv["client"]
    whole = _ask(c, "loramem:bob", CHAT, max_tokens=64)
    assert whole.usage.completion_tokens == 64  # random weights: the chat module writes to the limit
    t0 = time.perf_counter()
    first, parts = None, []
    for chunk in _ask(c, "loramem:bob", CHAT, max_tokens=64, stream=True):
        if first is None and chunk.choices and chunk.choices[0].delta.content:
            first = time.perf_counter() - t0
        parts.append(chunk)
    total = time.perf_counter() - t0
    assert "".join(p.choices[0].delta.content or "" for p in parts if p.choices) == _text(whole)
    assert first < total / 2, (first, total)
    assert parts[-1].choices[0].finish_reason == "length" and all(p.usage is None for p in parts)


def test_include_usage_sends_a_final_chunk_without_choices(srv):
    parts = list(_ask(srv["client"], "loramem:ann", PLAIN, max_tokens=8, stream=True,
                      stream_options={"include_usage": True}))
    assert parts[-1].choices == [] and parts[-1].usage.completion_tokens > 0
    assert all(p.usage is None for p in parts[:-1])


def test_n_seed_and_temperature(srv):
    c = srv["client"]
    r = _ask(c, "loramem:bob", CHAT, max_tokens=6, n=3, temperature=1.5, seed=7)
    assert [ch.index for ch in r.choices] == [0, 1, 2] and len({ch.message.content for ch in r.choices}) > 1
    again = _ask(c, "loramem:bob", CHAT, max_tokens=6, n=3, temperature=1.5, seed=7)
    assert [ch.message.content for ch in again.choices] == [ch.message.content for ch in r.choices]
    seeds = {_text(_ask(c, "loramem:bob", CHAT, max_tokens=6, temperature=1.5, seed=s)) for s in range(4)}
    assert len(seeds) > 1
    greedy = _ask(c, "loramem:bob", CHAT, max_tokens=6, n=2)
    assert greedy.choices[0].message.content == greedy.choices[1].message.content
    texts = ["", ""]
    for p in _ask(c, "loramem:bob", CHAT, max_tokens=6, n=2, stream=True):
        for ch in p.choices:
            texts[ch.index] += ch.delta.content or ""
    assert texts == [greedy.choices[0].message.content] * 2


def test_stop_strings_end_the_answer(srv):
    c = srv["client"]
    full = _text(_ask(c, "loramem:bob", CHAT, max_tokens=24))
    stop = full[len(full) // 2: len(full) // 2 + 2]
    r = _ask(c, "loramem:bob", CHAT, max_tokens=24, stop=[stop])
    assert _text(r) == full[: full.index(stop)].strip() and r.choices[0].finish_reason == "stop"
    streamed = "".join(p.choices[0].delta.content or "" for p in
                       _ask(c, "loramem:bob", CHAT, max_tokens=24, stop=stop, stream=True) if p.choices)
    assert streamed == _text(r)


def test_logprobs_are_the_model_s(srv):
    r = _ask(srv["client"], "loramem:bob", CHAT, max_tokens=6, logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens and "".join(t.token for t in content).strip() == _text(r)
    for t in content:  # greedy: each token is its step's most likely one
        assert len(t.top_logprobs) == 3 and t.top_logprobs[0].logprob == pytest.approx(t.logprob)
        assert t.logprob <= 0
    streamed = [t for p in _ask(srv["client"], "loramem:bob", CHAT, max_tokens=6, logprobs=True, top_logprobs=3,
                                stream=True) if p.choices and p.choices[0].logprobs
                for t in p.choices[0].logprobs.content]
    assert [(t.token, t.logprob) for t in streamed] == [(t.token, t.logprob) for t in content]


def test_a_system_message_and_earlier_turns_go_through_the_chat_template(srv, tiny_base):
    c = srv["client"]
    msgs = [{"role": "system", "content": "Answer in French."}, {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello."}, {"role": "user", "content": CHAT}]
    r = c.chat.completions.create(model="loramem:bob", messages=msgs, max_tokens=4)
    text = tiny_base.tokenizer.apply_chat_template(msgs[:-1] + [{"role": "user", "content": f"Question: {CHAT} "
                                                                 "Answer:"}], tokenize=False,
                                                   add_generation_prompt=True)
    assert r.usage.prompt_tokens == len(tiny_base.tokenizer(text, add_special_tokens=False).input_ids)
    alone = _ask(c, "loramem:bob", CHAT, max_tokens=4)
    assert r.model_extra["loramem"]["prompt_hash"] != alone.model_extra["loramem"]["prompt_hash"]
    assert r.model_extra["loramem"]["modules"][0]["name"] == "bob"


def test_options_it_cannot_honour_are_refused_by_name(srv):
    c = srv["client"]
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    for kw, name in (({"tools": [tool]}, "tools"), ({"response_format": {"type": "json_object"}}, "response_format"),
                     ({"frequency_penalty": 0.5}, "frequency_penalty")):
        with pytest.raises(openai.BadRequestError, match=name):
            _ask(c, "loramem:ann", PLAIN, max_tokens=4, **kw)


def test_legacy_completions(srv):
    c = srv["client"]
    chat = _text(_ask(c, "loramem:ann", PLAIN, max_tokens=8))
    r = c.completions.create(model="loramem:ann", prompt=PLAIN, max_tokens=8, logprobs=2)
    assert r.choices[0].text == chat and r.object == "text_completion"
    assert len(r.choices[0].logprobs.tokens) == r.usage.completion_tokens
    two = c.completions.create(model="ann", prompt=[PLAIN, CHAT], max_tokens=8)
    assert [ch.index for ch in two.choices] == [0, 1] and two.choices[0].text == chat
    streamed = "".join(p.choices[0].text for p in c.completions.create(model="loramem:ann", prompt=PLAIN,
                                                                       max_tokens=8, stream=True) if p.choices)
    assert streamed == chat


def test_embeddings_are_the_bank_s_minilm(srv):
    from loramem.embeddings import embed

    r = srv["client"].embeddings.create(model="loramem", input=["Ann Lee", "a phone number"])
    vecs = embed(["Ann Lee", "a phone number"])
    assert [d.index for d in r.data] == [0, 1] and len(r.data[0].embedding) == 384
    assert r.data[1].embedding == pytest.approx(vecs[1].tolist(), abs=1e-5) and r.usage.prompt_tokens > 0
    with pytest.raises(openai.NotFoundError):
        srv["client"].embeddings.create(model="text-embedding-3-small", input="x")


def test_a_request_still_queued_past_its_deadline_gets_429(srv):
    cfg = srv["app"].state.cfg
    old, cfg.request_timeout_s = cfg.request_timeout_s, 1e-6  # over before the batcher's 50 ms window ends
    try:
        with pytest.raises(openai.RateLimitError, match="deadline") as err:
            _ask(srv["client"], "loramem:ann", PLAIN, max_tokens=4)
        assert err.value.code == "rate_limit_exceeded"
    finally:
        cfg.request_timeout_s = old
    assert _text(_ask(srv["client"], "loramem:ann", PLAIN, max_tokens=4)) is not None


def test_over_max_concurrent_is_429_and_a_stream_counts_until_it_ends(srv):
    cfg = srv["app"].state.cfg
    old, cfg.max_concurrent = cfg.max_concurrent, 1
    try:
        stream = _ask(srv["client"], "loramem:bob", CHAT, max_tokens=64, stream=True)
        next(iter(stream))  # the stream has started and is still decoding
        with pytest.raises(openai.RateLimitError) as err:
            _ask(srv["client"], "loramem:ann", PLAIN, max_tokens=4)
        assert err.value.code == "rate_limit_exceeded"
        list(stream)
    finally:
        cfg.max_concurrent = old
