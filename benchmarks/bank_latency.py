"""Bank latency on a bank of many tiny modules (tiny-random base): routing per query, module switch, merge per
method, and `ask` with and without a cached merge.

    PYTHONPATH=src python benchmarks/bank_latency.py [--modules 1000] [--queries 200]

The modules share one trained adapter's weights (written once, added N times under different names and key
texts): routing and switching costs do not depend on the weights. Ends with `route_ms_per_query: X` (embed).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path


def ms(f, n: int = 1) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        f()
    return (time.perf_counter() - t0) * 1000 / n


def build_bank(root: Path, n_modules: int, facts_per_module: int = 3):
    from loramem.bank.partition import key_text
    from loramem.bank.store import MemoryBank
    from loramem.config import WriterConfig
    from loramem.data import phonebook
    from loramem.models import load_base
    from loramem.writer import write_module

    base = load_base("tiny-random")
    entries = phonebook.generate(n_modules * facts_per_module, 0)
    res = write_module([e.example() for e in entries[:facts_per_module]], base,
                       WriterConfig(rank=4, steps=2, progress=False, target_em=None), out=root / "seed-module",
                       adapter="seed")
    res.model.delete_adapter("seed")
    bank = MemoryBank(root / "bank")
    t0 = time.perf_counter()
    for i in range(n_modules):
        part = [e.example() for e in entries[i * facts_per_module:(i + 1) * facts_per_module]]
        bank.add_folder(root / "seed-module", f"m{i:04d}", key_text=key_text(part), keys=[e.key for e in part])
    add_ms = (time.perf_counter() - t0) * 1000 / n_modules
    return bank, base, entries, add_ms


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--modules", type=int, default=1000)
    ap.add_argument("--queries", type=int, default=200)
    args = ap.parse_args()

    from loramem.bank.ask import ask, open_session
    from loramem.bank.merging import METHODS, merge_weights
    from loramem.config import AskConfig, MergeConfig

    with tempfile.TemporaryDirectory() as tmp:
        bank, base, entries, add_ms = build_bank(Path(tmp), args.modules)
        print(f"bank: {args.modules} modules, add_folder {add_ms:.2f} ms/module (copy + fsync + manifest commit)")
        questions = [e.question() + "?" for e in entries[:: max(1, len(entries) // args.queries)]][: args.queries]
        s = open_session(bank, "tiny-random", AskConfig(resident=64))

        route = {}
        for kind in ("oracle", "bm25", "embed"):
            t0 = time.perf_counter()
            router = s.router(kind)
            build = (time.perf_counter() - t0) * 1000
            router.route(questions[0], 3)  # warm
            times = [ms(lambda q=q, r=router: r.route(q, 3)) for q in questions]
            route[kind] = statistics.median(times)
            print(f"route {kind:6s}: {route[kind]:.3f} ms/query median (p90 {sorted(times)[int(.9 * len(times))]:.3f}),"
                  f" router build {build:.0f} ms")
        from loramem.bank.routing import Embedder, route_many
        from loramem.embeddings import encoder, query_session

        encode = statistics.median([ms(lambda q=q: Embedder.encode([q])) for q in questions])
        engine = "ONNX Runtime" if query_session() is not None else "PyTorch"
        print(f"route embed split: query encoder (MiniLM via {engine}, one question) {encode:.3f} ms + cosine top-k "
              f"over {args.modules} keys {max(0.0, route['embed'] - encode):.3f} ms")
        torch_ms = statistics.median([ms(lambda q=q: encoder().encode([q], normalize_embeddings=True))
                                      for q in questions])
        print(f"query encoder side by side: PyTorch (sentence-transformers) {torch_ms:.3f} ms, {engine} "
              f"{encode:.3f} ms (ratio {torch_ms / encode:.2f}x)")
        batched = ms(lambda: route_many(s.router("embed"), questions, 3)) / len(questions)
        print(f"route embed batched ({len(questions)} questions per call): {batched:.3f} ms/query "
              f"(ratio {route['embed'] / batched:.1f}x vs one at a time)")

        mods = s.modules()
        cold = [ms(lambda m=m: s.resident.ensure(m)) for m in mods[:32]]
        names = [s.resident.ensure(m) for m in mods[:32]]
        warm = [ms(lambda n=n: s.resident.activate(n)) for n in names * 4]
        print(f"switch: load from disk {statistics.median(cold):.2f} ms/module, switch between resident modules "
              f"{statistics.median(warm):.3f} ms (ratio {statistics.median(cold) / statistics.median(warm):.0f}x)")

        top3 = mods[32:35]
        for m in top3:
            s.resident.ensure(m)
        for method in [m for m in METHODS if m != "none"]:
            cfg = MergeConfig(method=method)
            t = ms(lambda c=cfg: s.resident.merged(top3, merge_weights(c, 3), c))
            t_cached = ms(lambda c=cfg: s.resident.merged(top3, merge_weights(c, 3), c), 20)
            print(f"merge {method:16s}: {t:8.2f} ms (3 modules, cached {t_cached:.4f} ms)")

        q = questions[5]
        cfg = AskConfig(route="embed", top_k=3, merge=MergeConfig(method="ties"), max_new_tokens=8)
        first = ask(q, bank, "tiny-random", cfg=cfg)
        again = [ask(q, bank, "tiny-random", cfg=cfg) for _ in range(5)]
        cached_total = statistics.median(a["total_ms"] for a in again)
        print(f"ask (embed top-3, ties, 8 tokens): uncached merge {first['total_ms']:.1f} ms "
              f"(route {first['route_ms']:.1f}, merge {first['merge_ms']:.1f}, generate {first['generate_ms']:.1f}); "
              f"cached merge {cached_total:.1f} ms (ratio {first['total_ms'] / cached_total:.2f}x)")
        top1 = [ask(q, bank, "tiny-random", route="embed", merge="none", max_new_tokens=8)["total_ms"]
                for _ in range(5)]
        print(f"ask (embed top-1, no merge): {statistics.median(top1):.1f} ms")
        print(f"route_ms_per_query: {route['embed']:.3f}")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
