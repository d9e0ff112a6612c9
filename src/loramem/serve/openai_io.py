"""What the server reads and writes in OpenAI's words: request bodies, error objects, response shapes.

Request bodies are pydantic models of the OpenAI fields the server honours, plus the memory options (`route`,
`top_k`, `merge`, `mode`; `extra_body` in the openai client). Fields it cannot honour (tools, JSON mode, penalties,
...) are refused with a 400 naming them. Responses are plain dicts checked against the `openai` package's own
types (`typed`), so what the real client parses is what the server sends; /openapi.json carries those schemas.
"""

from __future__ import annotations

import base64
import time
import uuid
from typing import Any, Literal

from openai.types import Completion, CreateEmbeddingResponse, Model
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from pydantic import BaseModel, ConfigDict, Field

from loramem.errors import UserError

ROUTED = "loramem"


class ApiError(Exception):
    """An error answered as OpenAI does: HTTP status, message, string code and the parameter at fault."""

    def __init__(self, status: int, message: str, code: str, param: str | None = None,
                 kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.param, self.kind = status, message, code, param, kind

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


def model_not_found(name: str) -> ApiError:
    return ApiError(404, f"the model '{name}' does not exist; use '{ROUTED}' (routed memory), '{ROUTED}:NAME' or "
                         f"NAME of a module (GET /v1/models lists them)", "model_not_found", "model")


class StreamOptions(BaseModel):
    include_usage: bool = False


class _Common(BaseModel):
    """Fields chat and legacy completions share."""

    model_config = ConfigDict(extra="allow")  # OpenAI fields that change nothing here (user, metadata, ...)

    model: str = ROUTED
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(0.0, ge=0.0, le=2.0)  # greedy unless asked: memory answers are exact strings
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int = Field(1, ge=1, le=16)
    # memory options (extra_body): AskConfig fields, checked against the registries as `loramem ask` checks them
    route: str | None = None
    top_k: int | None = None
    merge: str | None = None
    mode: str | None = None

    def stops(self) -> tuple[str, ...]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > 4 or any(not s for s in stops):
            raise ApiError(400, "stop takes up to 4 non-empty strings", "invalid_value", "stop")
        return tuple(stops)


# fields we cannot honour, and the value that means "not used" (a client may send the default explicitly)
_REFUSED = {"tools": (None, []), "tool_choice": (None, "none"), "functions": (None, []), "function_call": (None,),
            "presence_penalty": (None, 0, 0.0), "frequency_penalty": (None, 0, 0.0), "logit_bias": (None, {}),
            "audio": (None,), "modalities": (None, ["text"]), "prediction": (None,), "suffix": (None, ""),
            "echo": (None, False), "parallel_tool_calls": (None, True, False)}


def refuse_unsupported(body: BaseModel) -> None:
    """400 naming every sent option this server cannot honour (never a silent 200 that ignores it)."""
    extra = body.model_extra or {}
    bad = sorted(k for k, ok in _REFUSED.items() if k in extra and extra[k] not in ok)
    fmt = extra.get("response_format")
    if fmt not in (None, {"type": "text"}):
        bad.append("response_format (only {'type': 'text'})")
    best_of = extra.get("best_of")
    if best_of not in (None, 1, getattr(body, "n", 1)):
        bad.append("best_of")
    if bad:
        raise ApiError(400, f"this server cannot honour {', '.join(bad)}; leave them out (loramem answers from "
                            "memory modules; no tools, JSON mode or penalties)", "unsupported_parameter", bad[0])


class Message(BaseModel):
    role: Literal["system", "user", "assistant", "tool", "developer", "function"]
    content: str | list[dict[str, Any]] | None = None


class ChatRequest(_Common):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)


class CompletionRequest(_Common):
    prompt: str | list[str]
    logprobs: int | None = Field(None, ge=0, le=5)


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str = ROUTED
    input: str | list[str]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None


def _text(content) -> str:
    if content is None or isinstance(content, str):
        return (content or "").strip()
    kinds = {p.get("type") for p in content} - {"text"}
    if kinds:
        raise ApiError(400, f"message parts of type {sorted(map(str, kinds))} are not supported; send text",
                       "invalid_value", "messages")
    return " ".join(str(p.get("text", "")) for p in content).strip()


def conversation(messages: list[Message]) -> tuple[str, tuple[tuple[str, str], ...]]:
    """(the last user turn: the question modules and routers read, the turns before it for the chat template)."""
    if messages[-1].role != "user":
        raise ApiError(400, "the last message must be the user's (the question to answer)", "invalid_value",
                       "messages")
    turns = []
    for m in messages:
        if m.role in ("tool", "function"):
            raise ApiError(400, "tool messages are not supported (this server has no tools)", "invalid_value",
                           "messages")
        turns.append(("system" if m.role == "developer" else m.role, _text(m.content)))
    question = turns[-1][1]
    if not question:
        raise UserError("the last user message has no text; send messages=[{'role': 'user', 'content': '...'}]")
    return question, tuple(turns[:-1])


def typed(kind, body: dict) -> dict:
    """`body` after checking it parses as the openai package's type `kind` (a bug here is a 500, not a bad body)."""
    kind.model_validate(body)
    return body


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(rows: list[dict]) -> dict:
    prompt = _prompt_tokens(rows)
    done = sum(r["completion_tokens"] for r in rows)
    return {"prompt_tokens": prompt, "completion_tokens": done, "total_tokens": prompt + done}


def _prompt_tokens(rows: list[dict]) -> int:
    # n choices of one prompt read it once (as OpenAI counts); distinct prompts each count
    seen: dict[str, int] = {}
    for r in rows:
        seen[r["prompt_hash"]] = r["prompt_tokens"]
    return sum(seen.values())


def extra(rows: list[dict]) -> dict:
    """loramem's own fields beside OpenAI's: which modules answered, batch size, timings (first choice)."""
    r = rows[0]
    return {"modules": r["modules"], "batch": r["batch"], "route_merge_ms": round(r["route_ms"] + r["merge_ms"], 2),
            "generate_ms": r["generate_ms"], "mode": r["mode"], "prompt_hash": r["prompt_hash"],
            "format": r["format"], **({"deadline_exceeded": True} if r.get("deadline_exceeded") else {})}


def _answer_tokens(row: dict) -> list[tuple[int, float, list]]:
    ids, lps, tops = row["token_ids"], row["logprobs"], row["top_logprobs"] or [[] for _ in row["token_ids"]]
    return list(zip(ids, lps, tops, strict=True))


def logprob_entries(tokens, tok) -> list[dict]:
    """Chat logprobs content for (token id, logprob, [(alternative id, logprob)]) triples."""
    def entry(i: int, lp: float) -> dict:
        t = tok.decode([i])
        return {"token": t, "logprob": lp, "bytes": list(t.encode())}

    return [entry(i, lp) | {"top_logprobs": [entry(a, b) for a, b in top]} for i, lp, top in tokens]


def chat_logprobs(row: dict, tok, start: int = 0) -> dict:
    return {"content": logprob_entries(_answer_tokens(row)[start:], tok), "refusal": None}


def completion_logprobs(row: dict, tok) -> dict:
    toks, lps, tops, offs, at = [], [], [], [], 0
    for i, lp, top in _answer_tokens(row):
        t = tok.decode([i])
        toks.append(t)
        lps.append(lp)
        tops.append({tok.decode([a]): b for a, b in top})
        offs.append(at)
        at += len(t)
    return {"tokens": toks, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offs}


def chat_completion(cid: str, model: str, rows: list[dict], tok, logprobs: bool) -> dict:
    choices = [{"index": i, "message": {"role": "assistant", "content": r["answer"]}, "finish_reason": r["finish"],
                "logprobs": chat_logprobs(r, tok) if logprobs else None} for i, r in enumerate(rows)]
    return typed(ChatCompletion, {"id": cid, "object": "chat.completion", "created": int(time.time()), "model": model,
                                  "choices": choices, "usage": usage(rows), "loramem": extra(rows)})


def chunk(cid: str, model: str, choices: list[dict], **more) -> str:
    """One server-sent event of a chat.completion.chunk."""
    import json

    body = {"id": cid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
            "choices": choices, **more}
    return f"data: {json.dumps(typed(ChatCompletionChunk, body))}\n\n"


def completion(cid: str, model: str, rows: list[dict], tok, logprobs: bool) -> dict:
    choices = [{"index": i, "text": r["answer"], "finish_reason": r["finish"],
                "logprobs": completion_logprobs(r, tok) if logprobs else None} for i, r in enumerate(rows)]
    return typed(Completion, {"id": cid, "object": "text_completion", "created": int(time.time()), "model": model,
                              "choices": choices, "usage": usage(rows), "loramem": extra(rows)})


def embeddings(model: str, vecs, tokens: int, encoding: str) -> dict:
    data = [{"object": "embedding", "index": i,
             "embedding": base64.b64encode(v.astype("<f4").tobytes()).decode() if encoding == "base64"
             else [float(x) for x in v]} for i, v in enumerate(vecs)]
    body = {"object": "list", "data": data, "model": model, "usage": {"prompt_tokens": tokens,
                                                                      "total_tokens": tokens}}
    if encoding == "float":
        typed(CreateEmbeddingResponse, body)
    return body


def model_card(mid: str, created: int, **more) -> dict:
    return typed(Model, {"id": mid, "object": "model", "created": created, "owned_by": "loramem", **more})


RESPONSES = {"chat": ChatCompletion, "chunk": ChatCompletionChunk, "completion": Completion,
             "embeddings": CreateEmbeddingResponse, "model": Model}
