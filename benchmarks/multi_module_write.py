"""Many modules in one pass vs one after another: K partitions of a PhoneBook, each its own LoRA module.

sequential: `write_module` K times in one process, the base loaded once (what `loramem write --partition K` did
            before, and the strongest way to write K modules with one writer call each);
together:   `write_modules` with the same K jobs: every step's batch holds one batch of each module's facts, the
            base matmuls run once over all of them, each module's LoRA on its own rows, and each module keeps its own
            seed, data order, optimizer, early stop and record.

Both write every module to the same exact match (default 1.0 on its training facts, evaluation included), with the
same settings. With `--steps N` both train a fixed N steps instead (a speed probe, no early stop). The last lines are
`multi_module_ratio` (sequential wall time / together wall time) and `exact_match_min` (the lowest module's exact
match in the together run).

    python benchmarks/multi_module_write.py [--model smollm2-135m] [--entries 400] [--partitions 8] [--rank 8]
        [--layers all] [--max-minutes 120] [--steps N] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from loramem.config import WriterConfig  # noqa: E402
from loramem.data import phonebook  # noqa: E402
from loramem.models import load_base  # noqa: E402
from loramem.writer import WriteJob, write_module, write_modules  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--entries", type=int, default=400)
    ap.add_argument("--partitions", type=int, default=8)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--layers", default=None, help="LoRA layer range, e.g. 24-29; default every layer")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--target-em", type=float, default=1.0)
    ap.add_argument("--steps", type=int, default=None, help="fixed steps per module instead of training to the target")
    ap.add_argument("--max-minutes", type=float, default=120.0, help="cap per module (sequential) and per pass")
    ap.add_argument("--order", choices=["sequential-first", "together-first"], default="sequential-first")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    entries = phonebook.generate(a.entries, a.seed)
    K = a.partitions
    parts = [[e.example() for e in entries[k::K]] for k in range(K)]
    cap = a.max_minutes * 60
    cfgs = [WriterConfig(rank=a.rank, layers=a.layers, lr=a.lr, batch_size=a.batch_size, seed=a.seed + k,
                         progress=False, steps=a.steps, epochs=1000,
                         target_em=None if a.steps else a.target_em, max_seconds=cap) for k in range(K)]
    base = load_base(a.model)
    print(f"model {a.model}, {a.entries} entries in {K} partitions of ~{len(parts[0])}, rank {a.rank}, layers "
          f"{a.layers or 'all'}, lr {a.lr}, batch {a.batch_size} per module, {torch.get_num_threads()} threads, "
          + (f"{a.steps} steps each" if a.steps else f"to exact match {a.target_em}"), flush=True)

    def sequential() -> dict:
        t0 = time.time()
        recs = []
        for k in range(K):
            res = write_module(parts[k], base, cfgs[k], adapter=f"seq{k}")
            recs.append(res.record)
            res.model.delete_adapter(f"seq{k}")
            print(f"  sequential module {k}: exact match {res.record['exact_match']:.3f}, {res.record['steps']} steps, "
                  f"{res.record['wall_s']:.0f} s", flush=True)
        return {"wall_s": time.time() - t0, "records": recs}

    def together() -> dict:
        t0 = time.time()
        res = write_modules([WriteJob(parts[k], cfgs[k], adapter=f"tog{k}") for k in range(K)], base)
        for k, r in enumerate(res):
            print(f"  together module {k}: exact match {r.record['exact_match']:.3f}, {r.record['steps']} steps",
                  flush=True)
            r.model.delete_adapter(r.adapter)
        return {"wall_s": time.time() - t0, "records": [r.record for r in res]}

    runs = {}
    for name in (("sequential", "together") if a.order == "sequential-first" else ("together", "sequential")):
        print(f"{name}:", flush=True)
        runs[name] = sequential() if name == "sequential" else together()
        print(f"{name}: {runs[name]['wall_s']:.1f} s", flush=True)
    seq, tog = runs["sequential"], runs["together"]
    seq_tokens = sum(r["tokens_seen"] for r in seq["records"])
    tog_tokens = sum(r["tokens_seen"] for r in tog["records"])
    print(f"tokens/s   sequential {seq_tokens / seq['wall_s']:.1f}   together {tog_tokens / tog['wall_s']:.1f}   "
          "(wall time, evaluation included)")
    em_seq = min(r["exact_match"] for r in seq["records"])
    em_tog = min(r["exact_match"] for r in tog["records"])
    print(f"exact match (lowest module)   sequential {em_seq:.3f}   together {em_tog:.3f}")
    if a.json:
        a.json.write_text(json.dumps({"args": vars(a) | {"json": str(a.json)}, "sequential_s": seq["wall_s"],
                                      "together_s": tog["wall_s"], "exact_match_min_sequential": em_seq,
                                      "exact_match_min": em_tog,
                                      "steps_sequential": [r["steps"] for r in seq["records"]],
                                      "steps_together": [r["steps"] for r in tog["records"]]}, indent=2))
    print(f"multi_module_ratio: {seq['wall_s'] / tog['wall_s']:.2f}")
    print(f"exact_match_min: {em_tog:.3f}")


if __name__ == "__main__":
    main()
