"""One question against a bank: route -> merge -> activate (`prepare`), then generate (`ask`).

    host, info = prepare("What is the phone number of Ann Lee?", "my-bank", route="embed", top_k=3, merge="ties")
    ask("What is the phone number of Ann Lee?", "my-bank", route="bm25")["answer"]

Preparation is separate from generation so answer modes (ICL, RAG, LoRA + RAG, ...) can put their own prompt
through the prepared model. A `Session` per (bank, base model) keeps the base, the routers and the loaded and
merged adapters across questions: switching modules never reloads the base.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from loramem.bank.generate import generate_rows
from loramem.bank.merging import merge_weights
from loramem.bank.resident import Resident
from loramem.bank.routing import Router, Scored, build_router, route_many
from loramem.bank.store import MANIFEST, MemoryBank
from loramem.config import AskConfig, MergeConfig
from loramem.errors import UserError
from loramem.models import Base, load_base


@dataclass
class Session:
    """A bank opened on a base model, with routers and resident modules kept warm."""

    bank: MemoryBank
    base: Base
    cfg: AskConfig
    resident: Resident = field(init=False)
    _routers: dict = field(default_factory=dict, init=False)
    _stamp: float = field(default=0.0, init=False)
    _modules: list = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        self.resident = Resident(self.bank, self.base, self.cfg.resident)

    def modules(self):
        """Serving versions of the bank's modules (re-read when the manifest changes)."""
        stamp = (self.bank.root / MANIFEST).stat().st_mtime_ns if self.bank.exists() else 0
        if stamp != self._stamp:
            self._modules, self._stamp, self._routers = self.bank.list(), stamp, {}
        return self._modules

    def router(self, kind: str) -> Router:
        mods = self.modules()
        if kind not in self._routers:
            # only the fact-level routers (and lora's prefilter) read the row keys: oracle stays cheap
            keys, index = self.row_keys() if kind in ("embed", "bm25", "hybrid", "lora") else (None, None)
            self._routers[kind] = build_router(kind, mods, resident=self.resident,
                                               on_new_embeddings=self.bank.set_embeddings, keys=keys, index=index,
                                               **({"candidates": self.cfg.lora_candidates} if kind == "lora" else {}))
            self._stamp = (self.bank.root / MANIFEST).stat().st_mtime_ns  # storing embeddings touched it
        return self._routers[kind]

    def row_keys(self):
        """The serving modules' row keys and their vector index, read once per manifest change (all routers)."""
        from loramem.bank import vindex

        if "_keys" not in self._routers:
            keys = self.bank.row_keys(self.modules())
            self._routers["_keys"] = (keys, vindex.for_keys(self.bank, keys))
        return self._routers["_keys"]


_SESSIONS: dict[tuple, Session] = {}


def open_session(bank: str | Path | MemoryBank, model: str | None = None, cfg: AskConfig | None = None) -> Session:
    """The process-wide session of a bank (default base: the one the bank's modules were trained for)."""
    bank = bank if isinstance(bank, MemoryBank) else MemoryBank(bank, create=False)
    known = bank.base()
    if known is None:
        raise UserError(f"bank {bank.root} has no modules yet; write one with `loramem write FILE --bank "
                        f"{bank.root} --name NAME`")
    base = load_base(model or known[0])
    if base.fingerprint != known[1]:
        raise UserError(f"bank {bank.root} holds modules for base model '{known[0]}' (weights {known[1]}), "
                        f"not '{base.name}' ({base.fingerprint}); pass --model {known[0]}")
    key = (str(bank.root.resolve()), base.name, base.fingerprint)
    if key not in _SESSIONS:
        _SESSIONS[key] = Session(bank, base, cfg or AskConfig())
    elif cfg is not None:
        _SESSIONS[key].cfg = cfg
    return _SESSIONS[key]


def _config(route, top_k, merge, cfg: AskConfig | None) -> AskConfig:
    cfg = (cfg or AskConfig()).model_copy(deep=True)
    if route is not None:
        cfg.route = route
    if top_k is not None:
        cfg.top_k = top_k
    if isinstance(merge, MergeConfig):
        cfg.merge = merge
    elif merge is not None:
        cfg.merge = cfg.merge.model_copy(update={"method": merge})
    try:
        return AskConfig.model_validate(cfg.model_dump())
    except Exception as exc:
        raise UserError(f"bad ask options: {str(exc).splitlines()[-1]}") from None


def activate(session: Session, chosen: list[Scored], merge: MergeConfig) -> tuple[str, bool]:
    """Load (and if asked, merge) the chosen modules and make the result the active adapter."""
    if merge.method == "none" or len(chosen) == 1:
        name, cached = session.resident.ensure(chosen[0].module), False
    else:
        weights = merge_weights(merge, len(chosen), [s.score for s in chosen])
        name, cached = session.resident.merged([s.module for s in chosen], weights, merge)
    session.resident.activate(name)
    return name, cached


def prepare(question: str, bank, base: str | None = None, route: str | None = None, top_k: int | None = None,
            merge: str | MergeConfig | None = None, cfg: AskConfig | None = None):
    """Route the question, merge the chosen modules and activate them. Returns (host model, info dict)."""
    cfg = _config(route, top_k, merge, cfg)
    s = open_session(bank, base, cfg)
    t0 = time.perf_counter()
    chosen = s.router(cfg.route).route(question, cfg.top_k)
    if cfg.merge.method == "none":
        chosen = chosen[:1]
    t1 = time.perf_counter()
    adapter, cached = activate(s, chosen, cfg.merge)
    t2 = time.perf_counter()
    info = {"modules": [c.to_json() for c in chosen], "route": cfg.route, "top_k": cfg.top_k,
            "merge": cfg.merge.method, "adapter": adapter, "merge_cached": cached,
            "route_ms": round((t1 - t0) * 1000, 3), "merge_ms": round((t2 - t1) * 1000, 3),
            "format": chosen[0].module.format, "base": s.base.name, "session": s}
    return s.resident.host, info


def ask(question: str, bank, base: str | None = None, route: str | None = None, top_k: int | None = None,
        merge: str | MergeConfig | None = None, cfg: AskConfig | None = None,
        max_new_tokens: int | None = None) -> dict:
    """Answer one question from the bank: the answer, the modules chosen with scores, and timings in ms."""
    if not question or not question.strip():
        raise UserError("empty question; pass the question as the first argument, e.g. loramem ask \"Who ...?\"")
    host, info = prepare(question, bank, base, route, top_k, merge, cfg)
    s: Session = info.pop("session")
    t0 = time.perf_counter()
    g = generate_rows(host, s.base, [question], None, info["format"], max_new_tokens or s.cfg.max_new_tokens)[0]
    info["generate_ms"] = round((time.perf_counter() - t0) * 1000, 3)
    return {"question": question, "answer": g.text, **info, "prompt_tokens": g.prompt_tokens,
            "completion_tokens": g.new_tokens, "total_ms": round(info["route_ms"] + info["merge_ms"]
                                                                 + info["generate_ms"], 3)}


def ask_mode(question: str, bank, mode: str = "lora", base: str | None = None, cfg: AskConfig | None = None,
             rag_k: int | None = None, answer_cfg=None) -> dict:
    """Answer in any mode of `loramem.modes` (base, icl, rag, lora, lora+rag, lora+icl) over a bank: memory
    modes route and merge as `ask` does; context modes read the RAG index kept beside the bank (BANK/index,
    built by `loramem index DOCS --bank BANK`), whose documents are also what `icl` puts in the prompt."""
    from loramem.modes import MODES, answer, context_kind, uses_lora
    from loramem.retrieval.index import bank_index

    if mode not in MODES:
        raise UserError(f"unknown mode '{mode}'; choose one of {', '.join(MODES)}")
    if not question or not question.strip():
        raise UserError("empty question; pass the question as the first argument, e.g. loramem ask \"Who ...?\"")
    if mode == "lora" and answer_cfg is None:
        res = ask(question, bank, base, cfg=cfg)
        return {**res, "mode": mode, "latency_ms": res["total_ms"]}
    kind = context_kind(mode)
    index = bank_index(bank.root if isinstance(bank, MemoryBank) else bank, required=kind is not None)
    host, info = None, {}
    if uses_lora(mode):
        host, info = prepare(question, bank, base, cfg=cfg)
        s: Session = info.pop("session")
    else:
        s = open_session(bank, base, cfg)
    res = answer(question, s.base, mode, host=host, index=index,
                 documents=index.documents if (index is not None and kind == "icl") else None,
                 cfg=answer_cfg, k=rag_k)
    if uses_lora(mode):
        res["latency_ms"] = round(res["latency_ms"] + info["route_ms"] + info["merge_ms"], 2)
    return {**res, **{k: v for k, v in info.items() if k not in res}}


def ask_batch(questions: list[str], bank, base: str | None = None, route: str = "embed",
              max_new_tokens: int = 32) -> list[dict]:
    """Top-1 routing with no merge for many questions at once: each row runs through its own module in one
    mixed-adapter batch."""
    s = open_session(bank, base)
    router = s.router(route)
    t0 = time.perf_counter()
    chosen = [scored[0] for scored in route_many(router, questions, 1)]  # one encoder pass for `embed`
    names: list[str] = []
    for c in chosen:
        names.append(s.resident.ensure(c.module, pinned=set(names)))
    t1 = time.perf_counter()
    fmt = chosen[0].module.format
    rows = generate_rows(s.resident.host, s.base, questions, names, fmt, max_new_tokens)
    t2 = time.perf_counter()
    return [{"question": q, "answer": g.text, "modules": [c.to_json()], "route": route,
             "route_ms": round((t1 - t0) * 1000 / len(questions), 3),
             "generate_ms": round((t2 - t1) * 1000 / len(questions), 3)}
            for q, c, g in zip(questions, chosen, rows, strict=True)]
