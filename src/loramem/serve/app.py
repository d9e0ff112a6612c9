"""FastAPI app: `/v1/models`, `/v1/chat/completions` (plain and SSE streaming), `/health`.

Memory options ride in the request body beside the OpenAI fields (`route`, `top_k`, `merge`, `mode`; with the
openai client pass them as `extra_body`). `model` is `loramem` (routed memory) or `loramem:NAME` (one module).
Errors are JSON in OpenAI's shape: 400 bad request or malformed JSON, 401 missing/wrong key, 413 body too large,
422 body that does not match the schema, 429 too many requests in flight.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
import uuid
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from loramem.answer.pipeline import Request as AskRequest
from loramem.config import ServeConfig, build, settings
from loramem.errors import UserError
from loramem.serve.batcher import Batcher

ROUTED = "loramem"


class Message(BaseModel):
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[dict[str, Any]] | None = None


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="allow")  # OpenAI fields we accept and ignore (temperature, ...)

    model: str = ROUTED
    messages: list[Message] = Field(min_length=1)
    stream: bool = False
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    # memory options (extra_body): AskConfig fields, checked against the registries as `loramem ask` checks them
    route: str | None = None
    top_k: int | None = None
    merge: str | None = None
    mode: str | None = None


def _error(status: int, message: str, kind: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "code": status}}, status_code=status)


def _question(req: ChatRequest) -> str:
    for m in reversed(req.messages):
        if m.role == "user":
            if isinstance(m.content, str):
                text = m.content
            else:
                text = " ".join(str(p.get("text", "")) for p in (m.content or []) if p.get("type") == "text")
            if text.strip():
                return text.strip()
    raise UserError("no user message with text; send messages=[{'role': 'user', 'content': '...'}]")


class _BodyLimit:
    """ASGI middleware: 413 for a body over the limit, counted as it arrives (no trust in Content-Length)."""

    def __init__(self, app, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await _error(413, f"body over {self.limit} bytes; send a shorter request")(scope, receive, send)
        seen = 0

        async def limited():
            nonlocal seen
            msg = await receive()
            seen += len(msg.get("body", b""))
            if seen > self.limit:
                raise _TooLarge
            return msg

        try:
            await self.app(scope, limited, send)
        except _TooLarge:
            await _error(413, f"body over {self.limit} bytes; send a shorter request")(scope, receive, send)


class _TooLarge(Exception):
    pass


def create_app(bank, model: str | None = None, cfg: ServeConfig | None = None) -> FastAPI:
    """The app over a bank folder (or MemoryBank). The base model loads once, here."""
    from loramem.answer.session import open_session

    cfg = cfg or ServeConfig()
    if cfg.api_key is None and settings().api_key:  # $LORAMEM_API_KEY, also when called from Python
        cfg = cfg.model_copy(update={"api_key": settings().api_key})
    session = open_session(bank, model, cfg.ask)
    batcher = Batcher(session, cfg.max_batch, cfg.batch_window_ms)
    app = FastAPI(title="loramem", version="1")
    app.state.batcher, app.state.session, app.state.cfg = batcher, session, cfg
    app.add_middleware(_BodyLimit, limit=cfg.max_body_bytes)
    in_flight = {"n": 0}
    started = time.time()

    @app.middleware("http")
    async def guard(request: Request, call_next):
        if request.url.path != "/health" and cfg.api_key:
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {cfg.api_key}".encode()):
                return _error(401, "missing or wrong API key; send 'Authorization: Bearer KEY'",
                              "authentication_error")
        if in_flight["n"] >= cfg.max_concurrent:
            return _error(429, f"more than {cfg.max_concurrent} requests in flight; retry shortly", "rate_limit")
        in_flight["n"] += 1
        try:
            return await call_next(request)
        finally:
            in_flight["n"] -= 1

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError):
        errs = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errs):
            return _error(400, "the body is not valid JSON")
        first = errs[0] if errs else {}
        where = ".".join(str(x) for x in first.get("loc", []) if x != "body")
        return _error(422, f"{where}: {first.get('msg', 'invalid body')}")

    @app.exception_handler(UserError)
    async def user_error(_: Request, exc: UserError):
        return _error(400, str(exc))

    @app.get("/health")
    async def health():
        mods = await asyncio.to_thread(session.modules)
        return {"status": "ok", "modules": len(mods), "base": session.base.name,
                "uptime_s": round(time.time() - started, 1), "batches": len(batcher.batches)}

    @app.get("/v1/models")
    async def models():
        mods = await asyncio.to_thread(session.modules)
        data = [{"id": ROUTED, "object": "model", "created": int(started), "owned_by": "loramem"}]
        data += [{"id": f"{ROUTED}:{m.name}", "object": "model", "created": int(started), "owned_by": "loramem",
                  "version": m.version} for m in mods]
        return {"object": "list", "data": data}

    @app.post("/v1/chat/completions")
    async def chat(req: ChatRequest):
        if req.model != ROUTED and not req.model.startswith(f"{ROUTED}:"):
            raise UserError(f"unknown model '{req.model}'; use '{ROUTED}' or '{ROUTED}:NAME' (GET /v1/models)")
        limit = req.max_completion_tokens or req.max_tokens or cfg.ask.max_new_tokens
        if limit > cfg.max_tokens:
            raise UserError(f"max_tokens {limit} is over this server's limit of {cfg.max_tokens}; ask for fewer")
        ask = _ask_config(cfg, req, limit)
        module = req.model.partition(":")[2] or None
        result = await asyncio.wrap_future(batcher.submit(AskRequest(_question(req), ask, module)))
        cid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        extra = {"modules": result["modules"], "batch": result["batch"],
                 "route_merge_ms": round(result["route_ms"] + result["merge_ms"], 2),
                 "generate_ms": result["generate_ms"], "mode": result["mode"], "prompt_hash": result["prompt_hash"],
                 "format": result["format"]}
        usage = {"prompt_tokens": result["prompt_tokens"], "completion_tokens": result["completion_tokens"],
                 "total_tokens": result["prompt_tokens"] + result["completion_tokens"]}
        finish = result["finish"]
        if not req.stream:
            return {"id": cid, "object": "chat.completion", "created": created, "model": req.model,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": result["answer"]},
                                 "finish_reason": finish}], "usage": usage, "loramem": extra}
        return StreamingResponse(_sse(cid, created, req.model, result["answer"], finish, usage, extra,
                                      session.base.tokenizer), media_type="text/event-stream")

    @app.on_event("shutdown")
    def _stop() -> None:
        batcher.close()

    return app


def _ask_config(cfg: ServeConfig, req: ChatRequest, limit: int):
    """The server's default AskConfig with the request's memory options over it (a bad one: 400, one line)."""
    from loramem.config import AskConfig

    given = {k: v for k, v in {"route": req.route, "top_k": req.top_k, "mode": req.mode}.items() if v is not None}
    merge = cfg.ask.merge.model_dump() | ({"method": req.merge} if req.merge is not None else {})
    return build(AskConfig, **(cfg.ask.model_dump() | given | {"merge": merge, "max_new_tokens": limit}))


def _sse(cid, created, model, text, finish, usage, extra, tok):
    """The answer as OpenAI chat.completion.chunk events, one token a chunk, then [DONE]."""

    def chunk(delta: dict, reason=None, **more) -> str:
        body = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": reason}], **more}
        return f"data: {json.dumps(body)}\n\n"

    yield chunk({"role": "assistant", "content": ""})
    ids = tok(text, add_special_tokens=False).input_ids
    sent = ""
    for i in range(1, len(ids) + 1):
        now = tok.decode(ids[:i])
        if len(now) > len(sent) and not now.endswith("\ufffd"):
            yield chunk({"content": now[len(sent):]})
            sent = now
    yield chunk({}, finish, usage=usage, loramem=extra)
    yield "data: [DONE]\n\n"
