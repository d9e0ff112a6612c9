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


def test_exported_encoder_is_fused_and_pytorch_keeps_its_attention():
    """The export traces eager attention so ORT fuses each layer's attention (and Q/K/V) into one op; the
    PyTorch model used for big batches gets its own attention implementation back."""
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    net = embeddings.encoder()[0].auto_model
    before = net.config._attn_implementation
    path = embeddings._exported(embeddings.encoder())
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert ops.count("Attention") == net.config.num_hidden_layers, sorted(set(ops))
    assert "Softmax" not in ops and "Transpose" not in ops
    assert net.config._attn_implementation == before


def test_int8_query_encoder_is_close_quantized_and_batch_independent(monkeypatch):
    """Routed questions go through MiniLM with int8 weights by default: near the exact vectors, really quantized,
    and a question's vector does not depend on the other questions routed with it."""
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    monkeypatch.delenv("LORAMEM_QUERY_ENCODER", raising=False)
    assert embeddings.query_encoder() == "int8"
    exact = embeddings.embed(TEXTS[:2])
    batch = embeddings.embed_queries(TEXTS[:2] + TEXTS[2:])
    assert float((batch[:2] * exact).sum(1).min()) > 0.97
    assert not np.allclose(batch[:2], exact, atol=1e-5), "the int8 encoder must not be the fp32 one"
    alone = np.concatenate([embeddings.embed_queries([t]) for t in TEXTS])
    assert np.array_equal(alone, batch)
    ops = {n.op_type for n in onnx.load(str(embeddings._quantized(embeddings._exported(embeddings.encoder())))).graph.node}
    assert {"QAttention", "DynamicQuantizeMatMul"} & ops or "MatMulInteger" in ops, sorted(ops)
    monkeypatch.setenv("LORAMEM_QUERY_ENCODER", "fp32")
    assert np.abs(embeddings.embed_queries(TEXTS[:2]) - exact).max() < 1e-6
    monkeypatch.setenv("LORAMEM_QUERY_ENCODER", "fp16")
    with pytest.raises(embeddings.UserError, match="LORAMEM_QUERY_ENCODER"):
        embeddings.embed_queries(TEXTS[:1])
