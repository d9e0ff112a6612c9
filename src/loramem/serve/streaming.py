"""Server-sent events that carry tokens as the scheduler decodes them.

Each choice's row calls back from the worker thread after every token; the callback sends what of the answer no
later token can change (`Row.visible`) to the event loop through a thread-safe hand-off, and the response writes
it out as a chunk. The last chunk of a choice carries its finish_reason; with `stream_options.include_usage` a
final chunk with `choices: []` carries the usage (and no chunk carries it otherwise). An error before the first
token is an HTTP error; one after it is an `error` event, as vLLM sends.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time

from fastapi.responses import StreamingResponse

from loramem.serve import openai_io as io


async def stream(batcher, reqs, tok, cid: str, model: str, kind: str, include_usage: bool) -> StreamingResponse:
    loop = asyncio.get_running_loop()
    events: asyncio.Queue = asyncio.Queue()
    rows: dict = {}  # the decoding rows, so a client that leaves stops them

    with_logprobs = kind == "chat" and reqs[0].logprobs is not None

    def on_token(i: int):
        sent, tokens = [""], [0]

        def cb(row) -> None:
            rows[i] = row
            now = row.visible(tok)
            if len(now) > len(sent[0]) and now.startswith(sent[0]):
                delta, sent[0] = now[len(sent[0]):], now
                lps = None
                if with_logprobs and row.finish is None:  # a finished row's last tokens go with its final chunk
                    new = list(zip(row.new, row.logps, row.tops or [[]] * len(row.new), strict=True))[tokens[0]:]
                    lps, tokens[0] = {"content": io.logprob_entries(new, tok), "refusal": None}, len(row.new)
                loop.call_soon_threadsafe(events.put_nowait, ("delta", i, (delta, lps)))

        return cb

    for i, r in enumerate(reqs):
        fut = batcher.submit(dataclasses.replace(r, on_token=on_token(i)))
        fut.add_done_callback(lambda f, i=i: loop.call_soon_threadsafe(events.put_nowait, ("done", i, f)))
    first = await events.get()
    if first[0] == "done" and first[2].exception() is not None:
        _stop(rows)
        raise first[2].exception()
    return StreamingResponse(_events(first, events, len(reqs), rows, tok, cid, model, kind, include_usage),
                             media_type="text/event-stream")


def _choice(kind: str, i: int, text: str | None, finish=None, role: bool = False, logprobs=None) -> dict:
    if kind == "chat":
        delta = {"role": "assistant", "content": ""} if role else ({} if text is None else {"content": text})
        return {"index": i, "delta": delta, "finish_reason": finish, "logprobs": logprobs}
    return {"index": i, "text": text or "", "finish_reason": finish, "logprobs": None}


def _sse(kind: str, cid: str, model: str, choices: list[dict], **more) -> str:
    if kind == "chat":
        return io.chunk(cid, model, choices, **more)
    body = {"id": cid, "object": "text_completion", "created": int(time.time()), "model": model, "choices": choices,
            **more}
    return f"data: {json.dumps(body)}\n\n"  # not checked: openai's Completion has no null finish_reason


async def _events(first, events, n: int, rows: dict, tok, cid, model, kind, include_usage):
    sent = [""] * n
    tokens = [0] * n  # logprob entries sent per choice
    results: list[dict | None] = [None] * n
    try:
        if kind == "chat":
            for i in range(n):
                yield _sse(kind, cid, model, [_choice(kind, i, None, role=True)])
        event = first
        while True:
            what, i, value = event
            if what == "delta":
                text, lps = value
                sent[i] += text
                tokens[i] += len(lps["content"]) if lps else 0
                yield _sse(kind, cid, model, [_choice(kind, i, text, logprobs=lps)])
            else:
                exc = value.exception()
                if exc is not None:
                    yield f"data: {json.dumps({'error': {'message': str(exc), 'type': 'server_error'}})}\n\n"
                    return
                row = results[i] = value.result()
                rest = row["answer"][len(sent[i]):] if row["answer"].startswith(sent[i]) else ""
                lps = io.chat_logprobs(row, tok, tokens[i]) if "token_ids" in row and kind == "chat" else None
                if rest:
                    yield _sse(kind, cid, model, [_choice(kind, i, rest, logprobs=lps)])
                    lps = None
                yield _sse(kind, cid, model, [_choice(kind, i, None, row["finish"], logprobs=lps)],
                           loramem=io.extra([row]))
                if all(r is not None for r in results):
                    break
            event = await events.get()
        if include_usage:
            yield _sse(kind, cid, model, [], usage=io.usage(results))
        yield "data: [DONE]\n\n"
    finally:
        _stop(rows)


def _stop(rows: dict) -> None:
    """A client that left (or a choice that failed): the other rows end at their next step, not at max_tokens."""
    for r in rows.values():
        if r.finish is None:
            r.deadline = 0.0
