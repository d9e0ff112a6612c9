"""FastAPI app: `/v1/chat/completions`, `/v1/completions` (plain and SSE streaming), `/v1/embeddings`,
`/v1/models[/{id}]`, `/health`; `/docs` and `/openapi.json` without the key.

`model` is `loramem` (routed memory), `loramem:NAME` or the bare `NAME` of a module (as vLLM names LoRA adapters);
anything else is 404 `model_not_found`. Each request is checked and resolved here, before it reaches the
scheduler (`serve.batcher`), which decodes it beside the others. Errors are OpenAI error objects with a string
code: 400 bad request (context_length_exceeded, unsupported_parameter, invalid_value, invalid_json), 401, 404,
405, 413, 422, 429 (rate_limit_exceeded), 500 (internal_error, JSON too).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import random
import time

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from loramem.answer.decode import Sampling
from loramem.answer.pipeline import Request as AskRequest
from loramem.config import ServeConfig, build, settings
from loramem.errors import ContextTooLong, UserError
from loramem.serve import openai_io as io
from loramem.serve.batcher import Batcher, Overloaded
from loramem.serve.streaming import stream

OPEN = ("/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json")  # a browser sends no key
log = logging.getLogger("loramem.serve")


def _error(exc: io.ApiError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status)


class _BodyLimit:
    """ASGI middleware: 413 for a body over the limit, counted as it arrives (no trust in Content-Length)."""

    def __init__(self, app, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_large = _error(io.ApiError(413, f"body over {self.limit} bytes; send a shorter request",
                                       "request_too_large"))
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await too_large(scope, receive, send)
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
            await too_large(scope, receive, send)


class _TooLarge(Exception):
    pass


class _InFlight:
    """ASGI middleware: 429 past `cfg.max_concurrent` requests in flight, a stream counted until its last byte."""

    def __init__(self, app, cfg: ServeConfig) -> None:
        self.app, self.cfg, self.n = app, cfg, 0

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in OPEN or scope["path"] == "/health":
            return await self.app(scope, receive, send)
        if self.n >= self.cfg.max_concurrent:
            busy = io.ApiError(429, f"more than {self.cfg.max_concurrent} requests in flight; retry shortly",
                               "rate_limit_exceeded", kind="rate_limit_error")
            return await _error(busy)(scope, receive, send)
        self.n += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.n -= 1


def create_app(bank, model: str | None = None, cfg: ServeConfig | None = None) -> FastAPI:
    """The app over a bank folder (or MemoryBank). The base model loads once, here."""
    from loramem.answer.session import open_session

    cfg = cfg or ServeConfig()
    if cfg.api_key is None and settings().api_key:  # $LORAMEM_API_KEY, also when called from Python
        cfg = cfg.model_copy(update={"api_key": settings().api_key})
    session = open_session(bank, model, cfg.ask)
    batcher = Batcher(session, cfg.max_batch, cfg.batch_window_ms, cfg.prefill_chunk)
    app = FastAPI(title="loramem", version="1", description="An OpenAI-compatible API whose memory is a loramem "
                  "bank. Send `Authorization: Bearer KEY` when the server has a key.")
    app.state.batcher, app.state.session, app.state.cfg = batcher, session, cfg
    app.add_middleware(_InFlight, cfg=cfg)
    app.add_middleware(_BodyLimit, limit=cfg.max_body_bytes)
    started = time.time()
    tok = session.base.tokenizer

    def authorized(request: Request) -> bool:
        given = request.headers.get("authorization", "")
        return not cfg.api_key or hmac.compare_digest(given.encode(), f"Bearer {cfg.api_key}".encode())

    @app.middleware("http")
    async def guard(request: Request, call_next):
        path = request.url.path
        if path not in OPEN and path != "/health" and not authorized(request):
            return _error(io.ApiError(401, "missing or wrong API key; send 'Authorization: Bearer KEY'",
                                      "invalid_api_key", kind="authentication_error"))
        return await call_next(request)

    _handlers(app)
    _openapi_with_chunks(app)

    def resolve(name: str) -> str | None:
        """The module a model name asks for (None: routed memory); 404 model_not_found when there is none."""
        if name == io.ROUTED:
            return None
        module = name.removeprefix(f"{io.ROUTED}:")
        if module and any(m.name == module for m in session.modules()):
            return module
        raise io.model_not_found(name)

    def requests(req, question: str, history=(), logprobs: int | None = None) -> list[AskRequest]:
        """The n pipeline requests of one body, checked: each choice is a row with its own seed."""
        io.refuse_unsupported(req)
        module = resolve(req.model)
        limit = getattr(req, "max_completion_tokens", None) or req.max_tokens or cfg.ask.max_new_tokens
        if limit > cfg.max_tokens:
            raise io.ApiError(400, f"max_tokens {limit} is over this server's limit of {cfg.max_tokens}; ask for "
                                   "fewer", "invalid_value", "max_tokens")
        if req.n > cfg.max_n:
            raise io.ApiError(400, f"n {req.n} is over this server's limit of {cfg.max_n}", "invalid_value", "n")
        ask = _ask_config(cfg, req, limit)
        seed = req.seed if req.seed is not None else random.randrange(2**31)
        deadline = time.monotonic() + cfg.request_timeout_s if cfg.request_timeout_s else None
        stops = req.stops()
        return [AskRequest(question, ask, module, tuple(history),
                           Sampling(req.temperature, req.top_p, seed=seed + i) if req.temperature > 0 else None,
                           stops, logprobs, deadline) for i in range(req.n)]

    async def run(reqs: list[AskRequest]) -> list[dict]:
        return list(await asyncio.gather(*[asyncio.wrap_future(batcher.submit(r)) for r in reqs]))

    @app.get("/health")
    async def health(request: Request):
        if not authorized(request):
            return {"status": "ok"}
        mods = await asyncio.to_thread(session.modules)
        return {"status": "ok", "modules": len(mods), "base": session.base.name,
                "uptime_s": round(time.time() - started, 1), "steps": len(batcher.batches)}

    @app.get("/v1/models", responses={200: {"model": io.RESPONSES["model"]}})
    async def models():
        mods = await asyncio.to_thread(session.modules)
        data = [io.model_card(io.ROUTED, int(started))]
        data += [io.model_card(f"{io.ROUTED}:{m.name}", int(started), version=m.version) for m in mods]
        return {"object": "list", "data": data}

    @app.get("/v1/models/{model_id:path}", responses={200: {"model": io.RESPONSES["model"]}})
    async def one_model(model_id: str):
        module = await asyncio.to_thread(resolve, model_id)
        return io.model_card(model_id if module is None else f"{io.ROUTED}:{module}", int(started))

    @app.post("/v1/chat/completions", responses={200: {"model": io.RESPONSES["chat"], "content": {
        "text/event-stream": {"schema": {"$ref": "#/components/schemas/ChatCompletionChunk"}}}}})
    async def chat(req: io.ChatRequest):
        if req.top_logprobs and not req.logprobs:
            raise io.ApiError(400, "top_logprobs needs logprobs=true", "invalid_value", "top_logprobs")
        question, history = io.conversation(req.messages)
        reqs = await asyncio.to_thread(requests, req, question, history,
                                       (req.top_logprobs or 0) if req.logprobs else None)
        cid = io.new_id("chatcmpl")
        if req.stream:
            return await stream(batcher, reqs, tok, cid, req.model, "chat", _include_usage(req))
        return io.chat_completion(cid, req.model, await run(reqs), tok, req.logprobs)

    @app.post("/v1/completions", responses={200: {"model": io.RESPONSES["completion"]}})
    async def completions(req: io.CompletionRequest):
        prompts = [req.prompt] if isinstance(req.prompt, str) else list(req.prompt)
        if not prompts or not all(p.strip() for p in prompts):
            raise io.ApiError(400, "prompt must be a non-empty string or list of strings", "invalid_value", "prompt")
        reqs = []
        for p in prompts:
            reqs += await asyncio.to_thread(requests, req, p, (), req.logprobs)
        cid = io.new_id("cmpl")
        if req.stream:
            return await stream(batcher, reqs, tok, cid, req.model, "completion", _include_usage(req))
        return io.completion(cid, req.model, await run(reqs), tok, req.logprobs is not None)

    @app.post("/v1/embeddings", responses={200: {"model": io.RESPONSES["embeddings"]}})
    async def embeddings(req: io.EmbeddingRequest):
        from loramem.embeddings import DIM, embed, encoder

        if req.model != io.ROUTED:
            raise io.model_not_found(req.model)
        if req.dimensions not in (None, DIM):
            raise io.ApiError(400, f"this encoder gives {DIM} dimensions only", "invalid_value", "dimensions")
        texts = [req.input] if isinstance(req.input, str) else list(req.input)
        if not texts:
            raise io.ApiError(400, "input must be a string or a non-empty list of strings", "invalid_value", "input")

        def work():
            n = sum(len(ids) for ids in encoder().tokenizer(texts).input_ids)
            return embed(texts), n

        vecs, n = await asyncio.to_thread(work)
        return io.embeddings(req.model, vecs, n, req.encoding_format)

    @app.on_event("shutdown")
    def _stop() -> None:
        batcher.close()

    return app


def _openapi_with_chunks(app: FastAPI) -> None:
    """/openapi.json also describes the stream's chunks (FastAPI only collects JSON response models)."""

    def schema() -> dict:
        if app.openapi_schema is None:
            out = FastAPI.openapi(app)
            chunk = io.RESPONSES["chunk"].model_json_schema(ref_template="#/components/schemas/{model}")
            out["components"]["schemas"].update(chunk.pop("$defs", {}) | {"ChatCompletionChunk": chunk})
        return app.openapi_schema

    app.openapi = schema


def _include_usage(req) -> bool:
    return bool(req.stream_options and req.stream_options.include_usage)


def _handlers(app: FastAPI) -> None:
    """Every error as an OpenAI error object in JSON, whatever raised it."""

    @app.exception_handler(io.ApiError)
    async def api_error(_: Request, exc: io.ApiError):
        return _error(exc)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError):
        errs = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errs):
            return _error(io.ApiError(400, "the body is not valid JSON", "invalid_json"))
        first = errs[0] if errs else {}
        where = ".".join(str(x) for x in first.get("loc", []) if x != "body")
        return _error(io.ApiError(422, f"{where}: {first.get('msg', 'invalid body')}", "invalid_value",
                                  where or None))

    @app.exception_handler(UserError)
    async def user_error(_: Request, exc: UserError):
        code = "context_length_exceeded" if isinstance(exc, ContextTooLong) else "invalid_value"
        return _error(io.ApiError(400, str(exc), code, "messages" if code == "context_length_exceeded" else None))

    @app.exception_handler(Overloaded)
    async def overloaded(_: Request, exc: Overloaded):
        return _error(io.ApiError(429, str(exc), "rate_limit_exceeded", kind="rate_limit_error"))

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException):
        codes = {404: "not_found", 405: "method_not_allowed"}
        return _error(io.ApiError(exc.status_code, str(exc.detail), codes.get(exc.status_code, "http_error")))

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception):
        log.exception("unexpected error", exc_info=exc)
        return _error(io.ApiError(500, f"internal error ({type(exc).__name__}: {exc}); the server goes on",
                                  "internal_error", kind="server_error"))


def _ask_config(cfg: ServeConfig, req, limit: int):
    """The server's default AskConfig with the request's memory options over it (a bad one: 400, one line)."""
    from loramem.config import AskConfig

    given = {k: v for k, v in {"route": req.route, "top_k": req.top_k, "mode": req.mode}.items() if v is not None}
    merge = cfg.ask.merge.model_dump() | ({"method": req.merge} if req.merge is not None else {})
    budget = {"context_budget": cfg.max_prompt_tokens} if cfg.max_prompt_tokens else {}
    return build(AskConfig, **(cfg.ask.model_dump() | given | budget | {"merge": merge, "max_new_tokens": limit}))

