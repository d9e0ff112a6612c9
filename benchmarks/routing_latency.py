"""Route latency of the fact-level routers over many rows, encoder included:

    PYTHONPATH=src python benchmarks/routing_latency.py [--rows 100000 --modules 1000] [--rows 1000000 --modules 10000]

Rows are synthetic: random unit vectors (the worst case for an IVF index: no clusters) with PhoneBook-like
question texts for BM25, so a bank of a million rows builds in minutes without encoding a million texts.
Questions are real text through the real query encoder (int8 ONNX MiniLM). Reports median ms per question of
embed (through the FAISS IVF row index, and exact numpy for comparison), bm25 and hybrid, and the index build time.
Ends with `route_ms_per_query_<rows>: X` (the default router, embed).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np


def synthetic(n_rows: int, n_modules: int, seed: int = 0):
    """Stub modules and RowKeys: `n_rows` random unit vectors and question texts, rows spread evenly."""
    from loramem.bank.rowkeys import RowKeys
    from loramem.data.phonebook import _names
    from loramem.experiments.route_cases import RELATIONS, stub

    rng = np.random.default_rng(seed)
    first, last = _names()
    fi, la, rel = rng.integers(len(first), size=n_rows), rng.integers(len(last), size=n_rows), rng.integers(
        len(RELATIONS), size=n_rows)
    texts = [RELATIONS[r][2].format(n=f"{first[a]} {last[b]} {i}") for i, (a, b, r) in enumerate(zip(fi, la, rel, strict=True))]
    matrix = np.empty((n_rows, 384), dtype=np.float32)
    for lo in range(0, n_rows, 100_000):  # in blocks: one float64 temp of 1M x 384 would be 3 GB
        block = rng.standard_normal((min(100_000, n_rows - lo), 384), dtype=np.float32)
        matrix[lo:lo + len(block)] = block / np.linalg.norm(block, axis=1, keepdims=True)
    owner = (np.arange(n_rows) * n_modules // n_rows).astype(np.int32)
    modules = [stub(f"m{i:05d}", "", []) for i in range(n_modules)]
    return modules, RowKeys.build(modules, texts, matrix, owner), texts


def median_ms(f, items) -> float:
    times = []
    for x in items:
        t0 = time.perf_counter()
        f(x)
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def measure(n_rows: int, n_modules: int, n_queries: int = 200, bm25: bool = True) -> dict:
    """Median ms per question (encoder included) of each fact-level router over a synthetic bank."""
    import torch

    from loramem.bank.fact_routing import FactBM25Router, FactEmbedRouter, HybridRouter
    from loramem.bank.routing import Embedder
    from loramem.bank.vindex import VectorIndex

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    modules, keys, texts = synthetic(n_rows, n_modules)
    out = {"rows": n_rows, "modules": n_modules, "make_s": time.perf_counter() - t0}
    t0 = time.perf_counter()
    index = VectorIndex(keys.matrix, keys.labels)
    out["index"], out["index_build_s"] = index.kind, time.perf_counter() - t0
    questions = [t.replace(t.split()[-1], "") + "?" for t in texts[:: max(1, n_rows // n_queries)]][:n_queries]
    embed = FactEmbedRouter(modules, keys, index)
    for q in questions[:20]:  # warm the encoder session and the index
        embed.route(q, 3)
    out["encoder_ms"] = median_ms(lambda q: Embedder.encode_queries([q]), questions)
    out["embed_ms"] = median_ms(lambda q: embed.route(q, 3), questions)
    if n_rows <= 200_000:  # exact search over a million rows is ~100 ms: not worth timing
        exact = FactEmbedRouter(modules, keys, VectorIndex(keys.matrix, keys.labels, exact=True))
        out["embed_exact_ms"] = median_ms(lambda q: exact.route(q, 3), questions)
    if bm25:
        t0 = time.perf_counter()
        lexical = FactBM25Router(modules, keys)
        out["bm25_build_s"] = time.perf_counter() - t0
        hybrid = HybridRouter(modules, keys, index)
        hybrid.lexical = lexical
        out["bm25_ms"] = median_ms(lambda q: lexical.route(q, 3), questions)
        out["hybrid_ms"] = median_ms(lambda q: hybrid.route(q, 3), questions)
    return out


def report(m: dict) -> None:
    print(f"{m['rows']:,} rows / {m['modules']:,} modules: index {m['index']} built in {m['index_build_s']:.1f} s; "
          f"query encoder {m['encoder_ms']:.3f} ms; embed {m['embed_ms']:.3f} ms"
          + (f" (exact numpy {m['embed_exact_ms']:.3f} ms)" if "embed_exact_ms" in m else "")
          + (f"; bm25 {m['bm25_ms']:.3f} ms (index {m['bm25_build_s']:.1f} s); hybrid {m['hybrid_ms']:.3f} ms"
             if "bm25_ms" in m else "") + " per question, median, top-3, encoder included")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--modules", type=int, default=1_000)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--no-bm25", action="store_true", help="time embed only (bm25 indexing 1M texts takes minutes)")
    args = ap.parse_args()
    m = measure(args.rows, args.modules, args.queries, bm25=not args.no_bm25)
    report(m)
    tag = f"{args.rows // 1000}k" if args.rows < 1_000_000 else f"{args.rows // 1_000_000}m"
    print(f"route_ms_per_query_{tag}: {m['embed_ms']:.3f}")  # the default router


if __name__ == "__main__":
    main()
