"""The query encoder: ONNX Runtime and PyTorch give the same MiniLM vectors, so routing does not depend on which ran."""

from __future__ import annotations

import numpy as np
import pytest

from loramem import embeddings

TEXTS = ["What is the phone number of Anna Smith?", "Bob Jones; Carla Diaz; Dmitri Ivanov",
         "a much longer text " * 40, "x"]


def test_onnx_query_encoder_gives_the_pytorch_vectors():
    pytest.importorskip("onnxruntime")
    ref = np.asarray(embeddings.encoder().encode(TEXTS, normalize_embeddings=True, convert_to_numpy=True))
    session = embeddings.query_session()
    assert session is not None, "onnxruntime is installed, so the exported encoder must load"
    got = session.embed(TEXTS)  # padded batch: mean pooling must skip the pads
    assert got.shape == ref.shape and np.abs(got - ref).max() < 1e-4
    one = session.embed([TEXTS[0]])
    assert np.abs(one[0] - ref[0]).max() < 1e-4 and abs(float(np.linalg.norm(one[0])) - 1) < 1e-5
    # embed() sends a few texts through ONNX and many through PyTorch: both are the same vectors
    few, many = embeddings.embed(TEXTS[:2]), embeddings.embed(TEXTS * 3)
    assert np.abs(few - many[:2]).max() < 1e-4
    assert embeddings.embed([]).shape == (0, embeddings.DIM)


def test_switching_onnx_off_falls_back_to_pytorch(monkeypatch):
    monkeypatch.setenv("LORAMEM_ONNX", "0")
    embeddings.query_session.cache_clear()
    try:
        assert embeddings.query_session() is None
        v = embeddings.embed([TEXTS[0]])
        assert v.shape == (1, embeddings.DIM) and abs(float(np.linalg.norm(v[0])) - 1) < 1e-5
    finally:
        monkeypatch.delenv("LORAMEM_ONNX")
        embeddings.query_session.cache_clear()
