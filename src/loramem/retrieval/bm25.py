"""Lexical retrieval over chunk texts with BM25 (the maintained `bm25s` library)."""

from __future__ import annotations

from pathlib import Path

STOPWORDS = "en"


def _tokens(texts: list[str]) -> list[list[str]]:
    import bm25s

    return bm25s.tokenize(texts, stopwords=STOPWORDS, return_ids=False, show_progress=False)


class BM25Retriever:
    """BM25 scores of every chunk for a query; `search` returns (chunk position, score), best first."""

    name = "bm25"

    def __init__(self, model) -> None:
        self.model = model

    @classmethod
    def build(cls, texts: list[str]) -> BM25Retriever:
        import bm25s

        model = bm25s.BM25()
        model.index(_tokens(texts), show_progress=False)
        return cls(model)

    def search(self, query: str, k: int) -> list[tuple[int, float]]:
        k = min(k, int(self.model.scores["num_docs"]))
        if k <= 0:
            return []
        toks = _tokens([query])
        if not toks[0]:  # only stopwords: BM25 cannot rank, every chunk scores 0
            return [(i, 0.0) for i in range(k)]
        ids, scores = self.model.retrieve(toks, k=k, show_progress=False, n_threads=1)
        return [(int(i), float(s)) for i, s in zip(ids[0], scores[0], strict=True)]

    def save(self, folder: Path) -> None:
        self.model.save(str(folder), show_progress=False)

    @classmethod
    def load(cls, folder: Path) -> BM25Retriever:
        import bm25s

        return cls(bm25s.BM25.load(str(folder), show_progress=False))
