"""Writer throughput: the loop a user writes from the PEFT docs vs loramem's writer, side by side in one process.

(a) naive: `get_peft_model` on a fresh copy of the base, fp32, batches padded to a fixed max length, full logits
    from `model(input_ids, labels=...)` (loss on the answer tokens), exact match checked by real `generate` once per
    epoch;
(b) loramem: `write_module` with its defaults (logits at supervised positions only, length-grouped batches without
    padding waste, bf16 autocast where the hardware has it, teacher-forced exact-match checks).

Same model, same PhoneBook, same LoRA (rank 8, all-linear, every layer), same lr, batch size and seed.
Phase 1 measures training tokens/s (real tokens, pads not counted) over a fixed number of steps; phase 2 the wall
time for each to bring the PhoneBook to exact match 1.0, evaluation included. The last two lines are the ratios.

    python benchmarks/writer_throughput.py [--model smollm2-135m] [--entries 100] [--rank 8] [--max-minutes 60]
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from loramem.config import WriterConfig  # noqa: E402
from loramem.data import phonebook  # noqa: E402
from loramem.evaluate import exact_match  # noqa: E402
from loramem.formats import render  # noqa: E402
from loramem.models import load_base  # noqa: E402
from loramem.writer import write_module  # noqa: E402


def naive_train(base_name: str, examples, rank: int, lr: float, batch_size: int, max_steps: int | None,
                until_em: bool, max_seconds: float, seed: int) -> dict:
    """The PEFT-docs loop: padded batches, full logits, generate-based exact match each epoch."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    fresh = load_base(base_name, cache=False)
    tok = fresh.tokenizer
    model = get_peft_model(fresh.model, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules="all-linear",
                                                   lora_dropout=0.0, task_type="CAUSAL_LM"))
    items = [render(e, tok, "plain") for e in examples]
    max_len = 64  # a typical `max_length` from the docs; every row is padded to it
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    rng = random.Random(seed)
    order = list(range(len(items)))
    steps, tokens, train_s, eval_s, em = 0, 0, 0.0, 0.0, 0.0
    t0 = time.time()
    per_epoch = math.ceil(len(items) / batch_size)
    while True:
        rng.shuffle(order)
        t = time.time()
        model.train()
        for k in range(0, len(order), batch_size):
            idx = order[k:k + batch_size]
            ids = torch.full((len(idx), max_len), tok.pad_token_id)
            att = torch.zeros((len(idx), max_len), dtype=torch.long)
            labels = torch.full((len(idx), max_len), -100)
            for row, i in enumerate(idx):
                r = items[i]
                n = len(r.ids)
                ids[row, :n] = torch.tensor(r.ids)
                att[row, :n] = 1
                labels[row, r.answer_start:r.answer_end] = torch.tensor(r.ids[r.answer_start:r.answer_end])
                tokens += n
            loss = model(input_ids=ids, attention_mask=att, labels=labels).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
            steps += 1
            if max_steps and steps >= max_steps:
                break
        train_s += time.time() - t
        if not until_em or (max_steps and steps >= max_steps):
            break
        t = time.time()
        em = _generate_em(model, tok, examples)
        eval_s += time.time() - t
        if em >= 1.0 or time.time() - t0 > max_seconds:
            break
    return {"steps": steps, "epochs": steps / per_epoch, "tokens": tokens, "train_s": train_s, "eval_s": eval_s,
            "wall_s": time.time() - t0, "tokens_per_s": tokens / train_s, "exact_match": em}


@torch.no_grad()
def _generate_em(model, tok, examples) -> float:
    """Exact match by greedy generation, one padded batch of 16 at a time (left padding)."""
    model.eval()
    tok.padding_side = "left"
    right = 0
    for k in range(0, len(examples), 16):
        chunk = examples[k:k + 16]
        enc = tok([e.prompt for e in chunk], return_tensors="pt", padding=True)
        gen = model.generate(**enc, max_new_tokens=24, do_sample=False, eos_token_id=tok.eos_token_id,
                             pad_token_id=tok.pad_token_id)
        for row, e in enumerate(chunk):
            text = tok.decode(gen[row, enc.input_ids.shape[1]:], skip_special_tokens=True).split("\n")[0]
            right += exact_match(text, e.answer)
    tok.padding_side = "right"
    return right / len(examples)


def loramem_train(base_name: str, examples, rank: int, lr: float, batch_size: int, max_steps: int | None,
                  until_em: bool, max_seconds: float, seed: int) -> dict:
    base = load_base(base_name)
    cfg = WriterConfig(rank=rank, lr=lr, batch_size=batch_size, seed=seed, progress=False,
                       steps=max_steps if not until_em else None, epochs=1000,
                       target_em=1.0 if until_em else None, max_seconds=max_seconds)
    t0 = time.time()
    res = write_module(examples, base, cfg, adapter="bench_writer")
    rec = res.record
    res.model.delete_adapter("bench_writer")
    return {"steps": rec["steps"], "epochs": rec["epochs"], "tokens": rec["tokens_seen"], "train_s": rec["train_s"],
            "eval_s": rec["eval_s"], "wall_s": time.time() - t0, "tokens_per_s": rec["tokens_per_s"],
            "exact_match": rec["exact_match"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--entries", type=int, default=100)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--speed-steps", type=int, default=10, help="steps per round of the tokens/s phase")
    ap.add_argument("--speed-rounds", type=int, default=3, help="alternating rounds of the tokens/s phase")
    ap.add_argument("--max-minutes", type=float, default=60.0, help="cap per writer for time-to-memorize")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    examples = [e.example() for e in phonebook.generate(a.entries, a.seed)]
    common = dict(rank=a.rank, lr=a.lr, batch_size=a.batch_size, seed=a.seed)
    print(f"model {a.model}, {a.entries} entries, rank {a.rank}, lr {a.lr}, batch {a.batch_size}, "
          f"{torch.get_num_threads()} threads")

    # alternate the two loops a few times and take each one's median, so a burst of load on a shared machine
    # does not decide the ratio
    naive_tps, fast_tps = [], []
    for _ in range(a.speed_rounds):
        naive_tps.append(naive_train(a.model, examples, max_steps=a.speed_steps, until_em=False, max_seconds=1e9,
                                     **common)["tokens_per_s"])
        fast_tps.append(loramem_train(a.model, examples, max_steps=a.speed_steps, until_em=False, max_seconds=1e9,
                                      **common)["tokens_per_s"])
    naive = {"tokens_per_s": statistics.median(naive_tps)}
    fast = {"tokens_per_s": statistics.median(fast_tps)}
    print(f"tokens/s   naive {naive['tokens_per_s']:8.1f}   loramem {fast['tokens_per_s']:8.1f}   "
          f"(median of {a.speed_rounds} alternating rounds of {a.speed_steps} steps; naive "
          f"{', '.join(f'{x:.1f}' for x in naive_tps)}; loramem {', '.join(f'{x:.1f}' for x in fast_tps)})")

    cap = a.max_minutes * 60
    naive_m = naive_train(a.model, examples, max_steps=None, until_em=True, max_seconds=cap, **common)
    fast_m = loramem_train(a.model, examples, max_steps=None, until_em=True, max_seconds=cap, **common)
    for name, r in (("naive", naive_m), ("loramem", fast_m)):
        print(f"memorize   {name:8s} exact match {r['exact_match']:.3f} in {r['wall_s']:7.1f} s "
              f"({r['steps']} steps, {r['epochs']:.1f} epochs, train {r['train_s']:.0f} s, eval {r['eval_s']:.0f} s)")
    capped = naive_m["exact_match"] < 1.0
    if capped:
        print(f"note: the naive loop did not reach exact match 1.0 within {a.max_minutes:g} min; "
              "the time-to-memorize ratio below is a lower bound")
    print(f"tokens_per_s_ratio: {fast['tokens_per_s'] / naive['tokens_per_s']:.2f}")
    print(f"time_to_memorize_ratio: {naive_m['wall_s'] / fast_m['wall_s']:.2f}")


if __name__ == "__main__":
    main()
