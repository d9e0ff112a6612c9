"""Writer levers, measured side by side in one process: tokens/s of `write_module` over a fixed number of steps
under each setting, alternating rounds, medians.

    default     the writer as shipped (torch's default thread count)
    threads-1   torch.set_num_threads(1)
    batch-32    batch size 32 instead of 16 (larger GEMMs; a different optimization trajectory)
    compile     WriterConfig(compile=True): torch.compile of every decoder layer while training (inductor,
                dynamic shapes; the first round includes compilation, so the median is over the rounds after it)

    python benchmarks/writer_levers.py [--model smollm2-135m] [--entries 64] [--steps 6] [--rounds 2]
        [--levers default,threads-1,batch-32,compile]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from loramem.config import WriterConfig  # noqa: E402
from loramem.data import phonebook  # noqa: E402
from loramem.models import load_base  # noqa: E402
from loramem.writer import write_module  # noqa: E402


def run(base, examples, lever: str, steps: int, seed: int = 0) -> tuple[float, list[torch.Tensor]]:
    """tokens/s of one write under `lever`, and its trained LoRA weights."""
    threads = torch.get_num_threads()
    if lever == "threads-1":
        torch.set_num_threads(1)
    cfg = WriterConfig(rank=8, lr=3e-3, batch_size=32 if lever == "batch-32" else 16, steps=steps, target_em=None,
                       progress=False, precision="fp32", seed=seed, compile=lever == "compile")
    try:
        t = time.time()
        res = write_module(examples, base, cfg, adapter="lever")
        tps = res.record["tokens_per_s"]
        weights = [p.detach().clone() for n, p in res.model.named_parameters() if ".lever." in n]
        res.model.delete_adapter("lever")
        print(f"  {lever:10s} {tps:7.1f} tokens/s ({time.time() - t:.0f} s)", flush=True)
        return tps, weights
    finally:
        torch.set_num_threads(threads)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--entries", type=int, default=64)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--levers", default="default,threads-1,batch-32,compile")
    a = ap.parse_args()
    base = load_base(a.model)
    examples = [e.example() for e in phonebook.generate(a.entries, 0)]
    levers = a.levers.split(",")
    got: dict[str, list[float]] = {k: [] for k in levers}
    weights: dict[str, list[torch.Tensor]] = {}
    for r in range(a.rounds):
        print(f"round {r + 1}", flush=True)
        for k in levers:
            try:
                tps, weights[k] = run(base, examples, k, a.steps)
                got[k].append(tps)
            except Exception as exc:  # noqa: BLE001 - a lever that does not run here is a result too
                print(f"  {k:10s} failed: {type(exc).__name__}: {str(exc)[:200]}", flush=True)
    for k in ("threads-1", "compile"):  # levers that must not change what is learned
        if k in weights and "default" in weights:
            diff = max((x - y).abs().max().item() for x, y in zip(weights[k], weights["default"], strict=True))
            print(f"{k}: largest difference from default in the trained LoRA weights {diff:.2e}")
    ref = statistics.median(got["default"]) if got.get("default") else float("nan")
    for k, xs in got.items():
        if xs:
            med = statistics.median(xs[1:] if k == "compile" and len(xs) > 1 else xs)
            print(f"lever {k}: {med:.1f} tokens/s, {med / ref:.2f}x default ({', '.join(f'{x:.1f}' for x in xs)})")


if __name__ == "__main__":
    main()
