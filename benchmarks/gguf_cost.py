"""What the GGUF-dequantized base costs a module: train on one copy of the base weights, read with the other.

The embedded smollm2-135m is HuggingFaceTB/SmolLM2-135M-Instruct rounded to Q4_1 and dequantized. With the hub's
weights at hand (--hub-model, a local folder or id), the module trained on the GGUF base is read by the hub base.
Without them (no network here), the stand-in is the GGUF weights jittered by half a Q4_1 step per block
(loramem.gguf_cost.q4_1_jitter): the same distance an original weight lies from its dequantized value.

    python benchmarks/gguf_cost.py --facts 20 [--hub-model HuggingFaceTB/SmolLM2-135M-Instruct] [--json]
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--facts", type=int, default=20, help="PhoneBook entries the module memorizes")
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--hub-model", default=None, help="the hub's weights (folder or id), when you have them")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args()

    from loramem.config import WriterConfig
    from loramem.data import phonebook
    from loramem.gguf_cost import cross_read, perturbed_model
    from loramem.models import load_base
    from loramem.writer import write_module

    t0 = time.time()
    base = load_base("smollm2-135m", cache=False)
    plain = perturbed_model(base.model, "jitter", seed=args.seed) if args.hub_model is None else None
    other_label = "hub_base" if args.hub_model else "q4_1_jittered_base"
    other = load_base(args.hub_model, cache=False).model if args.hub_model else plain
    gguf_plain = copy.deepcopy(base.model).eval()  # before training wraps base.model in PEFT layers
    facts = [e.example() for e in phonebook.generate(args.facts, args.seed)]
    with tempfile.TemporaryDirectory() as d:
        res = write_module(facts, base, WriterConfig(rank=args.rank, progress=False, seed=args.seed),
                           out=Path(d) / "m")
        got = cross_read(Path(d) / "m", facts, base, {"gguf_base": gguf_plain, other_label: other})
    got.update(trained_exact_match=res.record["exact_match"], steps=res.record["steps"], rank=args.rank,
               seconds=round(time.time() - t0, 1))
    if args.json:
        print(json.dumps(got))
    else:
        print(f"{got['n']} facts, rank {args.rank}, {got['steps']} steps: exact match {got['gguf_base']:.3f} read "
              f"on the GGUF base it was trained on, {got[other_label]:.3f} on the {other_label.replace('_', ' ')}")


if __name__ == "__main__":
    main()
