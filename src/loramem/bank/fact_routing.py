"""Fact-level routers: a question goes to the modules of its nearest training rows.

    keys = bank.row_keys(mods)                      # one row per training question (rowkeys.py)
    FactEmbedRouter(mods, keys).route(q, k=3)       # dense: MiniLM over rows, through the vector index
    FactBM25Router(mods, keys).route(q, k=3)        # lexical: BM25 over rows
    HybridRouter(mods, keys).route(q, k=3)          # both, fused by reciprocal rank over rows

Every router retrieves the top `ROWS` rows and scores each module by its best row (`aggregate`, max). Why max,
not a sum or a vote count: a question asks for one fact, which one row of one module holds; summing rewards a
module for holding many facts that merely look alike (every PhoneBook row reads "What is the phone number of
..."), so big modules would win questions about small ones. The routing benchmark measures both
(benchmarks/routing_quality.py, `embed-sum`), and max routes better.
"""

from __future__ import annotations

import numpy as np

from loramem.bank.rowkeys import RowKeys

ROWS = 64  # rows retrieved per question: enough for top-k modules when k is small, and cheap for the index
RRF_K = 60  # the reciprocal-rank-fusion constant of Cormack et al. (2009); damps the head of each ranking
AGGREGATIONS = ("max", "sum")


def aggregate(owner: np.ndarray, scores: np.ndarray, n_modules: int, how: str = "max") -> np.ndarray:
    """Per-module score from scored rows (`owner[i]` the module of row i): its best row (`max`) or the sum of its
    rows (`sum`); modules without a retrieved row get NaN."""
    out = np.full(n_modules, np.nan)
    if how == "max":
        order = np.argsort(scores, kind="stable")  # ascending: the last write per module is its best row
        out[owner[order]] = scores[order]
    elif how == "sum":
        sums = np.bincount(owner, weights=scores, minlength=n_modules)
        hit = np.bincount(owner, minlength=n_modules) > 0
        out[hit] = sums[hit]
    else:
        raise ValueError(f"unknown aggregation {how!r}; one of {AGGREGATIONS}")
    return out


def rrf(rankings: list[np.ndarray], k: int = RRF_K) -> tuple[np.ndarray, np.ndarray]:
    """Reciprocal-rank fusion of row rankings (each best first): (rows, fused scores), best first."""
    fused: dict[int, float] = {}
    for ranking in rankings:
        for rank, row in enumerate(ranking.tolist()):
            fused[row] = fused.get(row, 0.0) + 1.0 / (k + rank + 1)
    rows = np.fromiter(fused, dtype=np.int64, count=len(fused))
    scores = np.fromiter(fused.values(), dtype=np.float64, count=len(fused))
    order = np.argsort(-scores, kind="stable")
    return rows[order], scores[order]


def top_modules(modules, keys: RowKeys, rows: np.ndarray, scores: np.ndarray, k: int, how: str = "max",
                floor: float = 0.0):
    """The k best modules from scored rows; when the rows name fewer than k modules, the others follow in bank
    order with a score below every hit (so top-k always returns k distinct modules)."""
    from loramem.bank.routing import Scored

    k = max(1, min(k, len(modules)))
    per = aggregate(keys.module_of[rows], np.asarray(scores, dtype=np.float64), len(modules), how)
    hit = np.flatnonzero(~np.isnan(per))
    order = hit[np.argsort(-per[hit], kind="stable")][:k].tolist()
    if len(order) < k:
        low = min(floor, float(np.nanmin(per))) - 1.0 if len(hit) else floor
        order += [i for i in range(len(modules)) if np.isnan(per[i])][: k - len(order)]
        per = np.where(np.isnan(per), low, per)
    return [Scored(modules[i], float(per[i])) for i in order]


class FactEmbedRouter:
    """Cosine between the question and every training row (the vector index), best row per module."""

    name = "embed"

    def __init__(self, modules, keys: RowKeys, index=None, how: str = "max") -> None:
        from loramem.bank.vindex import VectorIndex

        self.modules, self.keys, self.how = modules, keys, how
        self.index = index if index is not None else VectorIndex(keys.matrix)

    def search(self, vectors: np.ndarray, n: int = ROWS) -> list[tuple[np.ndarray, np.ndarray]]:
        """(rows, cosines) best first, per query vector."""
        return self.index.search(vectors, n)

    def route(self, question: str, k: int = 1):
        return self.route_many([question], k)[0]

    def route_many(self, questions: list[str], k: int = 1):
        from loramem.bank.routing import Embedder

        hits = self.search(Embedder.encode_queries(questions), max(ROWS, 4 * k))
        return [top_modules(self.modules, self.keys, r, s, k, self.how, floor=-1.0) for r, s in hits]


class FactBM25Router:
    """BM25 between the question and every training row, best row per module."""

    name = "bm25"

    def __init__(self, modules, keys: RowKeys) -> None:
        from loramem.retrieval.bm25 import BM25Retriever

        self.modules, self.keys = modules, keys
        self.retriever = BM25Retriever.build(keys.texts)

    def search(self, question: str, n: int = ROWS) -> tuple[np.ndarray, np.ndarray]:
        got = [(r, s) for r, s in self.retriever.search(question, n) if s > 0]  # 0: no query term in the row
        return (np.asarray([r for r, _ in got], dtype=np.int64), np.asarray([s for _, s in got], dtype=np.float64))

    def route(self, question: str, k: int = 1):
        rows, scores = self.search(question, max(ROWS, 4 * k))
        return top_modules(self.modules, self.keys, rows, scores, k)


class HybridRouter:
    """Dense and BM25 row rankings fused by reciprocal rank (RRF), best fused row per module.

    RRF needs no score calibration between cosine and BM25: a row both rank high wins, and a row one of them
    misses (a paraphrase BM25 cannot match, a name MiniLM blurs) still ranks through the other."""

    name = "hybrid"

    def __init__(self, modules, keys: RowKeys, index=None) -> None:
        self.modules, self.keys = modules, keys
        self.dense = FactEmbedRouter(modules, keys, index)
        self.lexical = FactBM25Router(modules, keys)

    def route(self, question: str, k: int = 1):
        return self.route_many([question], k)[0]

    def route_many(self, questions: list[str], k: int = 1):
        from loramem.bank.routing import Embedder

        n = max(ROWS, 4 * k)
        dense = self.dense.search(Embedder.encode_queries(questions), n)
        out = []
        for q, (d_rows, _) in zip(questions, dense, strict=True):
            rows, scores = rrf([d_rows, self.lexical.search(q, n)[0]])
            out.append(top_modules(self.modules, self.keys, rows, scores, k))
        return out
