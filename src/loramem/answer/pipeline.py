"""Every question reaches the model by one road: route -> activate/merge -> prompt -> decode.

Over a bank (`loramem ask`, the server, the Python API):

    ask("What is the phone number of Ann Lee?", "my-bank", AskConfig(mode="lora", route="embed"))
    ask_many(session, [Request(q1, cfg), Request(q2, cfg2, module="people-03")])   # one mixed-adapter batch

With a model a caller prepared (recipes, notebooks: `host` is the PEFT model with its memory adapter active):

    answer_many(questions, base, mode="lora+rag", host=host, index=index, cfg=AnswerConfig(), fmt="chat-user")

Both build each prompt with `prompt.build_prompt` in the format of the module that answers and decode with the
one loop of `decode.py`. `ask_many` returns one row per request, or the exception that request raised: one
request's bad input never fails the others in its batch. The server's scheduler uses the same parts one request
at a time (`plan_many` -> `Plan.decode_row` -> its running `decode.Batch` -> `result`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from loramem.answer.decode import BASE, Row, Sampling, decode, decode_rows
from loramem.answer.modes import Mode
from loramem.answer.modes import mode as get_mode
from loramem.answer.prompt import build_prompt, prompt_hash
from loramem.answer.session import Session, activate, open_session
from loramem.bank.routing import route_many
from loramem.config import AnswerConfig, AskConfig
from loramem.errors import UserError
from loramem.models import Base


def context_budget(base: Base, cfg: AnswerConfig) -> int:
    """Prompt tokens allowed: the config's budget, else the model's context length minus the answer's room."""
    if cfg.context_budget is not None:
        return cfg.context_budget
    n_ctx = int(getattr(base.model.config, "max_position_embeddings", 2048) or 2048)
    return n_ctx - cfg.max_new_tokens


def gather_context(question: str, m: Mode, index=None, documents=None, k: int | None = None,
                   method: str | None = None) -> tuple[list[str], list[dict]]:
    """Passages for the mode: retrieved chunks (rag) or whole documents (icl). -> (texts, retrieved hits)"""
    if m.context == "rag":
        if index is None:
            raise UserError(f"mode '{m.name}' needs a RAG index; build one with `loramem index DOCS --out DIR`")
        hits = index.search(question, k=k, method=method)
        return [h.chunk.text for h in hits], [{"chunk": h.chunk.id, "score": round(h.score, 4)} for h in hits]
    if m.context == "icl":
        docs = documents if documents is not None else (index.documents if index is not None else None)
        if not docs:
            raise UserError(f"mode '{m.name}' needs documents (pass documents or an index that holds them)")
        from loramem.retrieval.corpus import as_documents

        return [d.text for d in as_documents(docs)], []
    return [], []


def memory_off(base: Base, host=None):
    """(model, context manager) giving base-model behaviour, whatever adapters are loaded on the shared wrapper."""
    host = host if host is not None else base.extra.get("peft")
    if host is not None and getattr(host, "active_adapter", None) in getattr(host, "peft_config", {}):
        return host, host.disable_adapter()
    # no wrapper, or its active adapter was deleted: the injected LoRA layers hold nothing active
    return base.model, contextlib.nullcontext()


def _memory(m: Mode, base: Base, host):
    if m.memory:
        if host is None:
            raise UserError(f"mode '{m.name}' needs memory modules; pass --bank DIR (or a module) or use --mode base")
        return host, contextlib.nullcontext()
    return memory_off(base, host)


def _prompt(question: str, m: Mode, base: Base, cfg: AnswerConfig, fmt: str, index, documents, k, method,
            history: Sequence[tuple[str, str]] = ()):
    context, retrieved = gather_context(question, m, index, documents, k, method)
    p = build_prompt(question, base.tokenizer, fmt, context, cfg.template, context_budget(base, cfg),
                     cfg.overflow, m.name, history)
    return p, retrieved


def _row(question: str, m: Mode, p, d, retrieved: list[dict], fmt: str) -> dict:
    return {"answer": d.text, "mode": m.name, "question": question, "format": fmt, "prompt_tokens": len(p.ids),
            "prompt_hash": prompt_hash(p.ids),
            "context_tokens": p.context_tokens, "truncated_tokens": p.truncated_tokens,
            "generated_tokens": d.new_tokens, "finish": d.finish, "retrieved": retrieved, "batch": d.batch,
            "generate_ms": round(d.ms, 3)}


def answer_many(questions: Sequence[str], base: Base, mode: str = "base", host=None, index=None, documents=None,
                cfg: AnswerConfig | None = None, k: int | None = None, method: str | None = None,
                batch_size: int = 8, documents_each: Sequence | None = None, fmt: str = "plain") -> list[dict]:
    """Answer many questions in one mode with a prepared model (`host`: its memory adapter active). Rows hold the
    answer, token counts and latency_ms (the batch's wall time shared among its questions, preparation included).
    `documents_each[i]` replaces `documents` for question i (icl over each question's own paper)."""
    m = get_mode(mode)
    if batch_size < 1:
        raise UserError("batch_size must be 1 or more")
    cfg = cfg or AnswerConfig()
    t0 = time.perf_counter()
    built = [_prompt(q, m, base, cfg, fmt, index, documents_each[i] if documents_each is not None else documents,
                     k, method) for i, q in enumerate(questions)]
    prep_ms = (time.perf_counter() - t0) * 1000 / max(1, len(built))
    model, memory = _memory(m, base, host)
    with memory:
        decoded = decode(model, base.tokenizer, [p for p, _ in built], cfg.max_new_tokens, batch_size=batch_size)
    rows = []
    for q, (p, hits), d in zip(questions, built, decoded, strict=True):
        row = _row(q, m, p, d, hits, fmt)
        row["latency_ms"] = round(d.ms + prep_ms, 2)
        rows.append(row)
    return rows


def answer(question: str, base: Base, mode: str = "base", host=None, index=None, documents=None,
           cfg: AnswerConfig | None = None, k: int | None = None, method: str | None = None,
           fmt: str = "plain") -> dict:
    """`answer_many` for one question."""
    return answer_many([question], base, mode, host, index, documents, cfg, k, method, 1, None, fmt)[0]


def answer_choice(question: str, options: Sequence[str], base: Base, mode: str = "base", host=None, index=None,
                  documents=None, cfg: AnswerConfig | None = None, k: int | None = None,
                  method: str | None = None, fmt: str = "plain") -> dict:
    """Multiple choice (QuALITY): the option the model finds most likely after the mode's prompt."""
    from loramem.likelihood import option_logprobs

    m = get_mode(mode)
    if not options:
        raise UserError("a multiple-choice question needs at least one option")
    cfg = cfg or AnswerConfig()
    t0 = time.perf_counter()
    p, retrieved = _prompt(question, m, base, cfg, fmt, index, documents, k, method)
    model, memory = _memory(m, base, host)
    with memory:
        scores = option_logprobs(model, base, list(p.ids), options)
    best = max(range(len(options)), key=lambda i: scores[i])
    return {"choice": best, "answer": options[best], "mode": m.name, "question": question,
            "prompt_tokens": len(p.ids), "generated_tokens": 0, "scores": [round(s, 4) for s in scores],
            "latency_ms": round((time.perf_counter() - t0) * 1000, 2), "truncated_tokens": p.truncated_tokens,
            "retrieved": retrieved}


# ---- over a bank ----


@dataclass
class Request:
    """One question over a bank: its options, and a module the caller forces (the server's `loramem:NAME`).
    The server adds the turns before the question (`history`, read through the chat template; routing reads the
    question alone), sampling, stop texts, logprobs, a deadline (time.monotonic()) and a per-token callback."""

    question: str
    cfg: AskConfig
    module: str | None = None
    history: tuple[tuple[str, str], ...] = ()
    sampling: Sampling | None = None
    stop: tuple[str, ...] = ()
    logprobs: int | None = None  # None: not asked; k: each token's log-probability and its k best alternatives
    deadline: float | None = None
    on_token: Callable[[Row], None] | None = None


@dataclass
class Plan:
    """A request resolved for decoding: its mode, modules, adapter and prompt (or the error it raised)."""

    req: Request
    mode: Mode
    chosen: list | None = None  # [Scored] (memory modes)
    adapter: str = BASE
    cached: bool = False
    fmt: str = "plain"
    prompt: object = None
    retrieved: list | None = None
    route_ms: float = 0.0
    merge_ms: float = 0.0
    error: Exception | None = None
    row: dict | None = None

    def decode_row(self) -> Row:
        """The row the decoding loop runs for this request."""
        r = self.req
        return Row(self.prompt, r.cfg.max_new_tokens, self.adapter, r.sampling, 0, r.logprobs or 0, r.deadline,
                   r.on_token)


def ask_many(session: Session, requests: Sequence[Request]) -> list[dict | Exception]:
    """Answer requests over one bank in one mixed-adapter batch: each row through its routed (or merged, or
    forced) module, or none; one row per request, or the exception that request raised."""
    plans = plan_many(session, requests)
    live = [p for p in plans if p.error is None]
    if live:
        _guard_all(live, lambda: _decode(session, live))
    return [p.error if p.error is not None else p.row for p in plans]


def plan_many(session: Session, requests: Sequence[Request], pinned: frozenset[str] = frozenset()) -> list[Plan]:
    """Route, load or merge, and build the prompt of each request; a request that fails carries its own error.
    `pinned`: adapters that must stay loaded (rows already decoding)."""
    plans = [_plan(r) for r in requests]
    _route(session, [p for p in plans if p.error is None and p.mode.memory])
    keep: set[str] = set(pinned)
    for p in plans:
        if p.error is None:
            _guard(p, lambda p=p: _prepare(session, p, keep))
    return plans


def _plan(r: Request) -> Plan:
    if not r.question or not r.question.strip():
        return Plan(r, None, error=UserError("empty question; pass the question as the first argument, e.g. "
                                              "loramem ask \"Who ...?\""))
    try:
        return Plan(r, get_mode(r.cfg.mode))
    except UserError as exc:
        return Plan(r, None, error=exc)


def _guard(p: Plan, fn) -> None:
    try:
        fn()
    except Exception as exc:  # this request fails alone
        p.error = exc


def _guard_all(plans: list[Plan], fn) -> None:
    try:
        fn()
    except Exception as exc:
        for p in plans:
            p.error = exc


def _route(session: Session, plans: list[Plan]) -> None:
    """Route the memory requests, one call per (router, k): one encoder pass for `embed`."""
    groups: dict[tuple[str, int], list[Plan]] = {}
    for p in plans:
        if p.req.module is not None:
            _guard(p, lambda p=p: _force(session, p))
        else:
            groups.setdefault((p.req.cfg.route, p.req.cfg.top_k), []).append(p)
    for (kind, k), group in groups.items():
        t0 = time.perf_counter()
        try:
            got = route_many(session.router(kind), [p.req.question for p in group], k)
        except Exception:  # route one by one, so only the request that fails gets the error
            got = []
            for p in group:
                try:
                    got.append(session.router(kind).route(p.req.question, k))
                except Exception as exc:
                    p.error = exc
                    got.append(None)
        ms = (time.perf_counter() - t0) * 1000 / len(group)
        for p, scored in zip(group, got, strict=True):
            if scored is not None:
                p.chosen = scored if p.req.cfg.merge.method != "none" else scored[:1]
                p.route_ms = ms


def _force(session: Session, p: Plan) -> None:
    from loramem.bank.routing import Scored

    match = [m for m in session.modules() if m.name == p.req.module]
    if not match:
        raise UserError(f"no module '{p.req.module}' in the bank; GET /v1/models or `loramem bank ls` lists them")
    p.chosen = [Scored(match[0], 1.0)]


def _prepare(session: Session, p: Plan, pinned: set[str]) -> None:
    cfg = p.req.cfg
    if p.mode.memory:
        t0 = time.perf_counter()
        p.adapter, p.cached = activate(session, p.chosen, cfg.merge, pinned=frozenset(pinned))
        pinned.add(p.adapter)
        p.merge_ms = (time.perf_counter() - t0) * 1000
        p.fmt = p.chosen[0].module.format
    index = session.index(required=True) if p.mode.context is not None else None
    p.prompt, p.retrieved = _prompt(p.req.question, p.mode, session.base, cfg, p.fmt, index,
                                    index.documents if (index is not None and p.mode.context == "icl") else None,
                                    cfg.chunks, None, p.req.history)
    if p.req.stop:
        p.prompt = dataclasses.replace(p.prompt, stop_texts=tuple(p.req.stop))


def _decode(session: Session, plans: list[Plan]) -> None:
    base, resident = session.base, session.resident
    names = [p.adapter for p in plans]
    host = resident.host
    if host is None:  # nothing loaded: every row is a base row
        model, adapters, memory = base.model, None, contextlib.nullcontext()
    elif len(set(names)) == 1:  # one adapter for all: activate it (a shared context prefix can run once)
        if names[0] == BASE:
            model, memory = memory_off(base, host)
        else:
            model, memory = resident.activate(names[0]), contextlib.nullcontext()
        adapters = None
    else:
        model, adapters, memory = host, names, contextlib.nullcontext()
    with memory:
        decoded = decode_rows(model, base.tokenizer, [p.decode_row() for p in plans], mixed=adapters is not None,
                              batch_size=max(1, len(plans)))
    for p, d in zip(plans, decoded, strict=True):
        p.row = result(session, p, d)


def result(session: Session, p: Plan, d) -> dict:
    """The answer row of a decoded plan: the answer, modules with scores, token counts, timings in ms."""
    row = _row(p.req.question, p.mode, p.prompt, d, p.retrieved or [], p.fmt)
    total = p.route_ms + p.merge_ms + d.ms
    cfg = p.req.cfg
    row.update({"modules": [c.to_json() for c in p.chosen or []], "route": cfg.route, "top_k": cfg.top_k,
                "merge": cfg.merge.method, "adapter": None if p.adapter == BASE else p.adapter,
                "merge_cached": p.cached, "base": session.base.name, "completion_tokens": d.new_tokens,
                "route_ms": round(p.route_ms, 3), "merge_ms": round(p.merge_ms, 3),
                "total_ms": round(total, 3), "latency_ms": round(total, 2)})
    if p.req.logprobs is not None:
        n = len(d.ids) - (1 if d.finish == "stop" and d.ids and d.ids[-1] in p.prompt.stop_ids else 0)
        row["token_ids"], row["logprobs"], row["top_logprobs"] = d.ids[:n], d.logprobs[:n], d.top_logprobs[:n]
    if d.timed_out:
        row["deadline_exceeded"] = True
    return row


def ask(question: str, bank: str | Path | Session, cfg: AskConfig | None = None, model: str | None = None,
        module: str | None = None) -> dict:
    """Answer one question from a bank (any mode): the answer, the modules chosen with scores, timings in ms."""
    session = bank if isinstance(bank, Session) else open_session(bank, model, cfg)
    res = ask_many(session, [Request(question, cfg or AskConfig(), module)])[0]
    if isinstance(res, Exception):
        raise res
    return res


def prepare(question: str, bank, cfg: AskConfig | None = None, model: str | None = None):
    """Route the question, merge the chosen modules and activate them -> (host model, info): for callers that
    put their own prompts through the prepared model."""
    cfg = cfg or AskConfig()
    s = open_session(bank, model, cfg)
    t0 = time.perf_counter()
    chosen = s.router(cfg.route).route(question, cfg.top_k)
    if cfg.merge.method == "none":
        chosen = chosen[:1]
    t1 = time.perf_counter()
    adapter, cached = activate(s, chosen, cfg.merge)
    s.resident.activate(adapter)
    t2 = time.perf_counter()
    info = {"modules": [c.to_json() for c in chosen], "route": cfg.route, "top_k": cfg.top_k,
            "merge": cfg.merge.method, "adapter": adapter, "merge_cached": cached,
            "route_ms": round((t1 - t0) * 1000, 3), "merge_ms": round((t2 - t1) * 1000, 3),
            "format": chosen[0].module.format, "base": s.base.name, "session": s}
    return s.resident.host, info
