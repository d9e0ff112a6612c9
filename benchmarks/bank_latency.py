"""Bank latency on a bank of many tiny modules (tiny-random base): routing per query, module switch, merge per
method, and `ask` with and without a cached merge.

    PYTHONPATH=src python benchmarks/bank_latency.py [--modules 1000] [--queries 200]

The modules share one trained adapter's weights (written once, added N times under different names and key
texts): routing and switching costs do not depend on the weights. Ends with `route_ms_per_query: X` (embed, with
the default query encoder, int8). The query encoders are also compared side by side: time per question (PyTorch,
ONNX fp32, ONNX int8) and routing accuracy against the gold module (these PhoneBook questions over this bank, and
PaperQA questions over the papers' keys when the paper's release is at --paperqa).
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


def accuracy(router, questions: list[str], gold: list[int], what: str) -> None:
    """Top-1 / top-3 routing accuracy against the gold module for each query encoder, and top-1 agreement."""
    import os

    import numpy as np

    from loramem.embeddings import embed_queries

    tops = {}
    for precision in ("fp32", "int8"):
        os.environ["LORAMEM_QUERY_ENCODER"] = precision
        scores = embed_queries(questions) @ router.matrix.T
        tops[precision] = np.argsort(-scores, axis=1, kind="stable")[:, :3]
    os.environ.pop("LORAMEM_QUERY_ENCODER")
    g = np.asarray(gold)[:, None]
    print(f"routing accuracy ({what}): " + ", ".join(
        f"{p} top-1 {np.mean(t[:, 0] == g[:, 0]):.3f} top-3 {np.mean((t == g).any(1)):.3f}" for p, t in tops.items())
        + f"; int8 picks fp32's top-1 for {np.mean(tops['int8'][:, 0] == tops['fp32'][:, 0]):.3f}")


def paperqa_accuracy(path: Path) -> None:
    """The same comparison on the paper's PaperQA: each paper is a module keyed by its title and introduction."""
    from loramem.bank.partition import KEY_TEXT_CHARS
    from loramem.data.paperqa import read_paperqa
    from loramem.embeddings import embed

    docs = read_paperqa(path)
    questions = [q.question for d in docs for q in d.questions]
    gold = [i for i, d in enumerate(docs) for _ in d.questions]

    class Keys:
        matrix = embed([f"{d.title}: {d.text[:KEY_TEXT_CHARS]}" for d in docs])

    accuracy(Keys, questions, gold, f"PaperQA, {len(questions)} questions over {len(docs)} papers")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--modules", type=int, default=1000)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--paperqa", type=Path,
                    default=Path(__file__).resolve().parents[2] / "shared/data/paper-release/paperqa/paperQA_public.json")
    args = ap.parse_args()

    from loramem.answer.pipeline import ask
    from loramem.answer.session import open_session
    from loramem.bank.merging import merge_weights
    from loramem.config import AskConfig, MergeConfig
    from loramem.registry import MERGES

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
            for q in questions[-20:]:  # warm: the first calls of a session grow its buffers
                router.route(q, 3)
            times = [ms(lambda q=q, r=router: r.route(q, 3)) for q in questions]
            route[kind] = statistics.median(times)
            print(f"route {kind:6s}: {route[kind]:.3f} ms/query median (p90 {sorted(times)[int(.9 * len(times))]:.3f}),"
                  f" router build {build:.0f} ms")
        from loramem.bank.routing import Embedder, route_many
        from loramem.embeddings import encoder, query_encoder, query_session

        encode = statistics.median([ms(lambda q=q: Embedder.encode_queries([q])) for q in questions])
        print(f"route embed split: query encoder (MiniLM {query_encoder()}, one question) {encode:.3f} ms + cosine "
              f"top-k over {args.modules} keys {max(0.0, route['embed'] - encode):.3f} ms")
        engines = {"PyTorch fp32": lambda q: encoder().encode([q], normalize_embeddings=True)}
        for precision in ("fp32", "int8"):
            if (sess := query_session(precision)) is not None:
                engines[f"ONNX {precision}"] = lambda q, s_=sess: s_.embed([q])
        for _ in range(2):  # two alternating rounds, the second reported: the VM's speed drifts
            enc_ms = {name: statistics.median([ms(lambda q=q, f=f: f(q)) for q in questions])
                      for name, f in engines.items()}
        print("query encoder side by side (one question, median): " + ", ".join(
            f"{name} {t:.3f} ms" for name, t in enc_ms.items()) + ", ratios vs PyTorch: " + ", ".join(
            f"{name} {enc_ms['PyTorch fp32'] / t:.2f}x" for name, t in enc_ms.items() if name != "PyTorch fp32"))
        accuracy(s.router("embed-module"), questions, [i // 3 for i in range(0, len(entries), max(1, len(entries) //
                                                                                      args.queries))][: args.queries],
                 f"PhoneBook, {len(questions)} questions over {args.modules} modules")
        if args.paperqa.is_file():
            paperqa_accuracy(args.paperqa)
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
        for method in [m for m in MERGES.names() if m != "none"]:
            cfg = MergeConfig(method=method)
            t = ms(lambda c=cfg: s.resident.merged(top3, merge_weights(c, 3), c))
            t_cached = ms(lambda c=cfg: s.resident.merged(top3, merge_weights(c, 3), c), 20)
            print(f"merge {method:16s}: {t:8.2f} ms (3 modules, cached {t_cached:.4f} ms)")

        q = questions[5]
        cfg = AskConfig(route="embed", top_k=3, merge=MergeConfig(method="ties"), max_new_tokens=8)
        first = ask(q, bank, cfg, "tiny-random")
        again = [ask(q, bank, cfg, "tiny-random") for _ in range(5)]
        cached_total = statistics.median(a["total_ms"] for a in again)
        print(f"ask (embed top-3, ties, 8 tokens): uncached merge {first['total_ms']:.1f} ms "
              f"(route {first['route_ms']:.1f}, merge {first['merge_ms']:.1f}, generate {first['generate_ms']:.1f}); "
              f"cached merge {cached_total:.1f} ms (ratio {first['total_ms'] / cached_total:.2f}x)")
        top1 = [ask(q, bank, AskConfig(route="embed", max_new_tokens=8), "tiny-random")["total_ms"]
                for _ in range(5)]
        print(f"ask (embed top-1, no merge): {statistics.median(top1):.1f} ms")
        print(f"route_ms_per_query: {route['embed']:.3f}")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
