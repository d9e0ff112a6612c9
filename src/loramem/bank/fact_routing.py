"""Fact-level routers: a question goes to the modules of its nearest training rows.

    keys = bank.row_keys(mods)                      # one row per training question (rowkeys.py)
    FactEmbedRouter(mods, keys).route(q, k=3)       # dense: MiniLM over rows, through the vector index
    FactBM25Router(mods, keys).route(q, k=3)        # lexical: BM25 over rows
    HybridRouter(mods, keys).route(q, k=3)          # both, fused by reciprocal rank over rows

Every router retrieves the top `ROWS` rows and scores each module by its best row (`aggregate`, max). Why max,
not a sum or a vote count: a question asks for one fact, which one row of one module holds; summing rewards a
module for holding many facts that merely look alike (every PhoneBook row reads "What is the phone number of
..."), so big modules would win questions about small ones. The routing benchmark measures both
(benchmarks/routing_quality.py, `embed-sum`), and max routes better. `embed` is the default router.
"""

from __future__ import annotations

import re

import numpy as np
from bm25s.stopwords import STOPWORDS_EN

from loramem.bank.rowkeys import RowKeys

_WORD = re.compile(r"(?u)\b\w\w+\b")  # bm25s.tokenize's default token pattern
_STOP = frozenset(STOPWORDS_EN)
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


def rrf(rankings: list[tuple[np.ndarray, np.ndarray]], k: int = RRF_K) -> tuple[np.ndarray, np.ndarray]:
    """Reciprocal-rank fusion of scored row rankings (rows, scores; best first): (rows, fused scores), best first.
    Rows with equal scores share a rank (competition ranking): BM25 often ties rows that share the question's
    words ("In which city was X born?" and "In what year was X born?" for "Where was X born?"), and an arbitrary
    order among them would decide the fusion instead of the other ranking."""
    all_rows, weights = [], []
    for rows, scores in rankings:
        neg = -np.asarray(scores, dtype=np.float64)
        ranks = np.searchsorted(neg, neg, side="left")  # descending scores: the first equal score's position
        all_rows.append(np.asarray(rows, dtype=np.int64))
        weights.append(1.0 / (k + ranks + 1))
    rows, inv = np.unique(np.concatenate(all_rows), return_inverse=True)
    fused = np.bincount(inv, weights=np.concatenate(weights))
    order = np.argsort(-fused, kind="stable")
    return rows[order], fused[order]


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
    """BM25 between the question and every training row, best row per module.

    Scored from bm25s's term -> rows weight lists directly: rows sharing a rare term with the question (df at most
    RARE_DF of the rows: a name, a title word) are the candidates, and only they are scored, with all the
    question's terms. bm25s's own `retrieve` scores every row (~6 ms a question over 100,000 rows); this costs
    the postings of the question's rare terms. A row that shares only common words ("phone", "born") with a
    question that names something rare is not the fact asked about; a question with no rare term scores all rows."""

    name = "bm25"
    RARE_DF = 0.01

    def __init__(self, modules, keys: RowKeys) -> None:
        from loramem.retrieval.bm25 import BM25Retriever

        self.modules, self.keys = modules, keys
        model = BM25Retriever.build(keys.texts).model
        self.vocab = model.vocab_dict
        sc = model.scores
        self.data, self.rows, self.ptr = sc["data"], sc["indices"].astype(np.int64), sc["indptr"]
        self.n = int(sc["num_docs"])
        for t in range(len(self.ptr) - 1):  # rows ascending within a term (searchsorted below relies on it)
            a, b = self.ptr[t], self.ptr[t + 1]
            if b - a > 1 and np.any(np.diff(self.rows[a:b]) < 0):
                order = np.argsort(self.rows[a:b], kind="stable") + a
                self.rows[a:b], self.data[a:b] = self.rows[order], self.data[order]

    def _terms(self, question: str) -> list[int]:
        """Vocabulary ids of the question's words, tokenized as bm25s.tokenize does (lowercase, its token
        pattern, English stopwords) without its per-call progress-bar set-up (~0.2 ms a question)."""
        words = _WORD.findall(question.lower())
        return list(dict.fromkeys(t for t in (self.vocab.get(w) for w in words if w not in _STOP) if t is not None))

    def search(self, question: str, n: int = ROWS) -> tuple[np.ndarray, np.ndarray]:
        """(rows, BM25 scores) best first, up to n; rows sharing no term with the question are left out."""
        terms = self._terms(question)
        if not terms:
            return np.zeros(0, np.int64), np.zeros(0)
        df = {t: self.ptr[t + 1] - self.ptr[t] for t in terms}
        rare = [t for t in terms if df[t] <= max(64, self.RARE_DF * self.n)]
        if not rare:
            rows = np.concatenate([self.rows[self.ptr[t]:self.ptr[t + 1]] for t in terms])
            w = np.concatenate([self.data[self.ptr[t]:self.ptr[t + 1]] for t in terms])
            cand, inv = np.unique(rows, return_inverse=True)
            scores = np.bincount(inv, weights=w)
        else:
            cand = np.unique(np.concatenate([self.rows[self.ptr[t]:self.ptr[t + 1]] for t in rare]))
            scores = np.zeros(len(cand))
            for t in terms:
                post, w = self.rows[self.ptr[t]:self.ptr[t + 1]], self.data[self.ptr[t]:self.ptr[t + 1]]
                at = np.minimum(np.searchsorted(post, cand), len(post) - 1)
                hit = post[at] == cand
                scores[hit] += w[at[hit]]
        top = np.argpartition(-scores, n - 1)[:n] if n < len(scores) else np.arange(len(scores))
        top = top[np.argsort(-scores[top], kind="stable")]
        return cand[top], scores[top]

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
        for q, d in zip(questions, dense, strict=True):
            rows, scores = rrf([d, self.lexical.search(q, n)])
            out.append(top_modules(self.modules, self.keys, rows, scores, k))
        return out
