"""Writer throughput: loramem's writer against three baselines, side by side in one process.

(a) docs loop, the loop a user writes from the PEFT docs: `get_peft_model` on a fresh copy of the base, batches
    padded to a fixed 64 tokens, full logits from `model(input_ids, labels=...)` (loss on the answer tokens), exact
    match by real `generate` once per epoch;
(b) competent loop, plain PyTorch + PEFT: rows sorted by length and chunked into batches (batch order shuffled each
    epoch), each padded only to its longest row, labels on the answer tokens only, full logits from
    `model(input_ids, attention_mask, labels, use_cache=False)`, exact match once per epoch by teacher-forced
    argmax over the answer span (a batched no-grad forward, no `generate`);
(c) HF `Trainer` + PEFT: `train_sampling_strategy="group_by_length"` (transformers 5's name for
    `group_by_length=True`), `DataCollatorForSeq2Seq` (pads to the batch's longest row, labels padded with -100),
    answer-only labels, constant lr, `adamw_torch`; a callback runs (b)'s exact-match check at each epoch end and
    stops training at 1.0;
loramem: `write_module` with its defaults (logits at supervised positions only, length-grouped batches, a shared
    prefix run once, a teacher-forced check only when its free running estimate reaches the target).

Fair by construction: same model, PhoneBook, LoRA (rank, alpha 2*rank, dropout 0, all-linear on every layer), lr,
batch size and seed; every loop starts from a fresh adapter (the baselines on a fresh copy of the base, seeded just
before `get_peft_model`). AdamW without weight decay everywhere; the Trainer's default gradient clipping
(max_grad_norm 1.0) is switched off, because no other loop clips. Precision: the baselines run fp32, and this
script pins the writer to fp32 as well (`--precision fp32`, the default), so every ratio compares the same
arithmetic. `--precision auto` lets the writer take bf16 autocast where the hardware has it (CUDA,
AVX512-BF16/AMX); the baselines stay fp32 and the output says the comparison is then not like for like.
(`--precision fp32` is passed to `WriterConfig`, so $LORAMEM_PRECISION does not change it. On CUDA, `load_base`
gives every loop bf16 weights.)

Phase 1, tokens/s: `--speed-rounds` alternating rounds of the four loops, `--speed-steps` optimizer steps each;
real (non-pad) tokens over training time, exact-match checks excluded; the median of each loop. For (c) the time
runs from the Trainer's `on_train_begin` to `on_train_end` and the tokens are its own `num_input_tokens_seen`
(`include_num_input_tokens_seen="non_padding"`).
Phase 2, FLOP/s: one more writer run of `--speed-steps + 1` steps inside
`torch.utils.flop_counter.FlopCounterMode`. The FLOPs counted from the end of its first step to the end of its last
(so the one-off checks of its shortcuts before training are left out), over the tokens of those steps, give FLOPs
per training token; achieved FLOP/s = that x the writer's median tokens/s of phase 1. The counter counts every
matmul (LoRA's low-rank ones too) and attention where torch has a formula for the kernel; CPU's fused attention
kernel has none, so on CPU attention (~1.5% of smollm2-135m's FLOPs at ~30 tokens a row) is left out and the
achieved rate is that much understated. The peak is a GEMM probe in the same process, same threads: for each
distinct Linear shape (in, out) of the base, lm_head included, fp32 `torch.mm` of [M, in] x [in, out] (forward, the
weight read transposed as `F.linear` reads it) and [M, out] x [out, in] (backward's input gradient; frozen weights
need no weight gradient), M = batch size x median row length, the median of a few timed repeats after warm-up,
taken round-robin over the shapes. `peak_fraction` = achieved / the best shape's FLOP/s. The output also gives the
rate of the model's own mix of those GEMMs (their total FLOPs over their total time, each shape counted as often as
the model has it).
Phase 3, time to memorize: wall time until exact match 1.0 on the training facts, evaluation included, capped at
`--max-minutes` per loop (a capped baseline makes its ratio a lower bound), for `--memorize-seeds` training seeds
(LoRA init and batch order; the same PhoneBook), each loop's median time over them. The clock starts once the loop's model
is built: for (a) and (b) before the first step, for (c) before `Trainer(...)`, for loramem before `write_module`
(which adds the adapter).

The script ends with the three tokens/s ratios, the three time ratios and the peak fraction, each `name: X`.

    python benchmarks/writer_throughput.py [--model smollm2-135m] [--entries 100] [--rank 8] [--max-minutes 60]
        [--threads N] [--precision fp32] [--json OUT] [--skip-naive-memorize]
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch
from transformers import DataCollatorForSeq2Seq, PrinterCallback, Trainer, TrainerCallback, TrainingArguments

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from loramem.adapters import package_versions  # noqa: E402
from loramem.config import WriterConfig  # noqa: E402
from loramem.data import phonebook  # noqa: E402
from loramem.evaluate import exact_match  # noqa: E402
from loramem.formats import render  # noqa: E402
from loramem.models import load_base  # noqa: E402
from loramem.writer import write_module  # noqa: E402

IGNORE = -100
EVAL_BATCH = 64  # rows per teacher-forced check forward, as in loramem's own check
UNTIL_EM_EPOCHS = 100_000  # "until exact match or the cap": the epoch count never decides


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def fresh_peft(base_name: str, rank: int, seed: int):
    """A fresh copy of the base with a fresh LoRA: rank, alpha 2*rank, dropout 0, all-linear on every layer."""
    from peft import LoraConfig, get_peft_model

    fresh = load_base(base_name, cache=False)
    torch.manual_seed(seed)  # after loading: building tiny-random draws from the global generator
    model = get_peft_model(fresh.model, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules="all-linear",
                                                   lora_dropout=0.0, task_type="CAUSAL_LM"))
    return model, fresh.tokenizer, fresh.device


def _result(steps, per_epoch, tokens, train_s, eval_s, wall_s, em) -> dict:
    return {"steps": steps, "epochs": steps / per_epoch, "tokens": tokens, "train_s": train_s, "eval_s": eval_s,
            "wall_s": wall_s, "tokens_per_s": tokens / max(train_s, 1e-9), "exact_match": em}


def naive_train(base_name: str, examples, rank: int, lr: float, batch_size: int, max_steps: int | None,
                until_em: bool, max_seconds: float, seed: int) -> dict:
    """(a) The PEFT-docs loop: padded batches, full logits, generate-based exact match each epoch."""
    model, tok, dev = fresh_peft(base_name, rank, seed)
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
            labels = torch.full((len(idx), max_len), IGNORE)
            for row, i in enumerate(idx):
                r = items[i]
                n = len(r.ids)
                ids[row, :n] = torch.tensor(r.ids)
                att[row, :n] = 1
                labels[row, r.answer_start:r.answer_end] = torch.tensor(r.ids[r.answer_start:r.answer_end])
                tokens += n
            loss = model(input_ids=ids.to(dev), attention_mask=att.to(dev), labels=labels.to(dev)).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
            steps += 1
            if max_steps and steps >= max_steps:
                break
        _sync(dev)
        train_s += time.time() - t
        if max_steps and steps >= max_steps:
            break
        if not until_em:
            continue
        t = time.time()
        em = _generate_em(model, tok, examples)
        eval_s += time.time() - t
        if em >= 1.0 or time.time() - t0 > max_seconds:
            break
    return _result(steps, per_epoch, tokens, train_s, eval_s, time.time() - t0, em)


@torch.no_grad()
def _generate_em(model, tok, examples) -> float:
    """Exact match by greedy generation, one padded batch of 16 at a time (left padding)."""
    model.eval()
    dev = next(model.parameters()).device
    tok.padding_side = "left"
    right = 0
    for k in range(0, len(examples), 16):
        chunk = examples[k:k + 16]
        enc = tok([e.prompt for e in chunk], return_tensors="pt", padding=True).to(dev)
        gen = model.generate(**enc, max_new_tokens=24, do_sample=False, eos_token_id=tok.eos_token_id,
                             pad_token_id=tok.pad_token_id)
        for row, e in enumerate(chunk):
            text = tok.decode(gen[row, enc.input_ids.shape[1]:], skip_special_tokens=True).split("\n")[0]
            right += exact_match(text, e.answer)
    tok.padding_side = "right"
    return right / len(examples)


def length_grouped(items, batch_size: int, rng: random.Random) -> list[list[int]]:
    """Rows sorted by length, chunked into batches, the batch order shuffled (a new order each call)."""
    order = sorted(range(len(items)), key=lambda i: len(items[i].ids))
    batches = [order[k:k + batch_size] for k in range(0, len(order), batch_size)]
    rng.shuffle(batches)
    return batches


def padded(items, idx: list[int], pad_id: int):
    """Right padded to the batch's longest row; labels (unshifted, the HF convention) on the answer span only.
    Returns ids, attention mask, labels and the batch's real tokens."""
    T = max(len(items[i].ids) for i in idx)
    ids = torch.full((len(idx), T), pad_id, dtype=torch.long)
    att = torch.zeros((len(idx), T), dtype=torch.long)
    labels = torch.full((len(idx), T), IGNORE, dtype=torch.long)
    tokens = 0
    for row, i in enumerate(idx):
        r = items[i]
        n = len(r.ids)
        ids[row, :n] = torch.tensor(r.ids)
        att[row, :n] = 1
        labels[row, r.answer_start:r.answer_end] = ids[row, r.answer_start:r.answer_end]
        tokens += n
    return ids, att, labels, tokens


@torch.no_grad()
def teacher_forced_em(model, items, pad_id: int, batch_size: int = EVAL_BATCH) -> list[bool]:
    """Per item: is the argmax of the full logits the target at every answer position? (What a competent user
    checks instead of `generate`: one no-grad forward per batch of length-sorted rows.)"""
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    order = sorted(range(len(items)), key=lambda i: len(items[i].ids))
    ok = [False] * len(items)
    for k in range(0, len(order), batch_size):
        idx = order[k:k + batch_size]
        ids, att, labels, _ = padded(items, idx, pad_id)
        logits = model(input_ids=ids.to(dev), attention_mask=att.to(dev), use_cache=False).logits
        pred = logits[:, :-1].argmax(-1).cpu()
        target = labels[:, 1:]
        hit = (pred == target) | (target == IGNORE)
        for row, i in enumerate(idx):
            ok[i] = bool(hit[row].all() and (target[row] != IGNORE).any())
    model.train(was_training)
    return ok


def competent_train(base_name: str, examples, rank: int, lr: float, batch_size: int, max_steps: int | None,
                    until_em: bool, max_seconds: float, seed: int) -> dict:
    """(b) The loop a competent user writes: length-grouped batches, answer-only labels, teacher-forced check."""
    model, tok, dev = fresh_peft(base_name, rank, seed)
    items = [render(e, tok, "plain") for e in examples]
    pad_id = tok.pad_token_id
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    rng = random.Random(seed)
    steps, tokens, train_s, eval_s, em = 0, 0, 0.0, 0.0, 0.0
    t0 = time.time()
    per_epoch = math.ceil(len(items) / batch_size)
    while True:
        t = time.time()
        model.train()
        for idx in length_grouped(items, batch_size, rng):
            ids, att, labels, n = padded(items, idx, pad_id)
            # no key/value cache in training, as the Trainer sets (config.use_cache = args.use_cache, False)
            loss = model(input_ids=ids.to(dev), attention_mask=att.to(dev), labels=labels.to(dev),
                         use_cache=False).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            steps += 1
            tokens += n
            if max_steps and steps >= max_steps:
                break
        _sync(dev)
        train_s += time.time() - t
        if max_steps and steps >= max_steps:
            break
        if not until_em:
            continue
        t = time.time()
        em = float(statistics.mean(teacher_forced_em(model, items, pad_id)))
        eval_s += time.time() - t
        if em >= 1.0 or time.time() - t0 > max_seconds:
            break
    return _result(steps, per_epoch, tokens, train_s, eval_s, time.time() - t0, em)


class EpochEndCheck(TrainerCallback):
    """Times the Trainer's training (train begin to end, minus the checks) and, with `check`, runs (b)'s
    teacher-forced exact match at each epoch end, stopping training at 1.0 or past the time cap."""

    def __init__(self, items, pad_id: int, check: bool, max_seconds: float) -> None:
        self.items, self.pad_id, self.check, self.max_seconds = items, pad_id, check, max_seconds
        self.t0 = self.begin = self.end = time.time()
        self.eval_s, self.em = 0.0, 0.0

    def on_train_begin(self, args, state, control, **kwargs):
        self.begin = time.time()

    def on_train_end(self, args, state, control, **kwargs):
        self.end = time.time()

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        if not self.check:
            return
        t = time.time()
        self.em = float(statistics.mean(teacher_forced_em(model, self.items, self.pad_id)))
        self.eval_s += time.time() - t
        if self.em >= 1.0 or time.time() - self.t0 > self.max_seconds:
            control.should_training_stop = True


def trainer_train(base_name: str, examples, rank: int, lr: float, batch_size: int, max_steps: int | None,
                  until_em: bool, max_seconds: float, seed: int) -> dict:
    """(c) HF Trainer + PEFT, the library path: group_by_length, a padding collator, answer-only labels."""
    model, tok, dev = fresh_peft(base_name, rank, seed)
    tok.padding_side = "right"
    items = [render(e, tok, "plain") for e in examples]
    rows = [{"input_ids": list(r.ids), "attention_mask": [1] * len(r.ids),
             "labels": [IGNORE] * r.answer_start + list(r.target_ids) + [IGNORE] * (len(r.ids) - r.answer_end)}
            for r in items]
    clock = EpochEndCheck(items, tok.pad_token_id, check=until_em, max_seconds=max_seconds)
    threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out, per_device_train_batch_size=batch_size, learning_rate=lr, lr_scheduler_type="constant",
            weight_decay=0.0, optim="adamw_torch", max_grad_norm=0.0, seed=seed,
            num_train_epochs=UNTIL_EM_EPOCHS, max_steps=max_steps or -1, train_sampling_strategy="group_by_length",
            include_num_input_tokens_seen="non_padding", report_to=[], logging_strategy="no", save_strategy="no",
            eval_strategy="no", use_cpu=dev.type == "cpu", dataloader_num_workers=0, disable_tqdm=True,
            label_names=["labels"],
        )
        clock.t0 = time.time()
        trainer = Trainer(model=model, args=args, train_dataset=rows, processing_class=tok, callbacks=[clock],
                          data_collator=DataCollatorForSeq2Seq(tok, label_pad_token_id=IGNORE))
        trainer.remove_callback(PrinterCallback)  # with logging off it would only print the run's summary dict
        trainer.train()
        _sync(dev)
        wall = time.time() - clock.t0
    if torch.get_num_threads() != threads:
        print(f"note: the Trainer changed torch's threads from {threads} to {torch.get_num_threads()}; restored",
              flush=True)
        torch.set_num_threads(threads)
    per_epoch = math.ceil(len(items) / batch_size)
    train_s = clock.end - clock.begin - clock.eval_s
    return _result(trainer.state.global_step, per_epoch, int(trainer.state.num_input_tokens_seen), train_s,
                   clock.eval_s, wall, clock.em)


def loramem_train(base_name: str, examples, rank: int, lr: float, batch_size: int, max_steps: int | None,
                  until_em: bool, max_seconds: float, seed: int, precision: str = "fp32", on_step=None) -> dict:
    """loramem's writer, a fresh adapter on the process's shared base each call."""
    base = load_base(base_name)
    cfg = WriterConfig(rank=rank, lr=lr, batch_size=batch_size, seed=seed, progress=False, precision=precision,
                       steps=max_steps if not until_em else None, epochs=UNTIL_EM_EPOCHS,
                       target_em=1.0 if until_em else None, max_seconds=max_seconds)
    t0 = time.time()
    res = write_module(examples, base, cfg, adapter="bench_writer", on_step=on_step)
    rec = res.record
    res.model.delete_adapter("bench_writer")
    return {"steps": rec["steps"], "epochs": rec["epochs"], "tokens": rec["tokens_seen"], "train_s": rec["train_s"],
            "eval_s": rec["eval_s"], "wall_s": time.time() - t0, "tokens_per_s": rec["tokens_per_s"],
            "exact_match": rec["exact_match"], "precision": rec["precision"], "shared_prefix": rec["shared_prefix"]}


def writer_flops(base_name: str, examples, common: dict, steps: int, precision: str) -> dict:
    """FLOPs per training token of the writer: steps 2..steps+1 of a run inside FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    marks: list[tuple[int, int]] = []  # (FLOPs so far, tokens so far) at the end of each step
    with counter:
        loramem_train(base_name, examples, max_steps=steps + 1, until_em=False, max_seconds=1e9, precision=precision,
                      on_step=lambda s: marks.append((counter.get_total_flops(), s["tokens"])), **common)
    (f1, t1), (f2, t2) = marks[0], marks[-1]
    return {"flops_per_token": (f2 - f1) / (t2 - t1), "flops_per_step": (f2 - f1) / (len(marks) - 1),
            "counted_steps": len(marks) - 1, "counted_tokens": t2 - t1}


def linear_shapes(model) -> dict[tuple[int, int], int]:
    """(in, out) of every nn.Linear of the base (LoRA's own left out), with how many modules have it."""
    shapes: Counter = Counter()
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear) and "lora_" not in name:
            shapes[(mod.in_features, mod.out_features)] += 1
    return dict(shapes)


def _time_mm(a: torch.Tensor, b: torch.Tensor) -> float:
    t = time.perf_counter()
    torch.mm(a, b)
    _sync(a.device)
    return time.perf_counter() - t


def gemm_probe(shapes: dict[tuple[int, int], int], m: int, device=None, repeats: int = 5) -> list[dict]:
    """fp32 GEMMs of each Linear shape at M rows, forward x @ W^T and backward's input gradient g @ W: FLOP/s, the
    median of `repeats` timed runs after two warm-up runs. The runs go round-robin over the shapes, so a burst of
    load on a shared machine slows every shape alike instead of deciding which one looks fastest."""
    cases = []
    for (k, n), count in sorted(shapes.items()):
        w = torch.randn(n, k, device=device)  # a Linear's weight, [out, in]
        cases.append(({"in": k, "out": n, "modules": count, "kind": "x@W^T"}, torch.randn(m, k, device=device), w.t()))
        cases.append(({"in": k, "out": n, "modules": count, "kind": "g@W"}, torch.randn(m, n, device=device), w))
    for _, a, b in cases:
        _time_mm(a, b)
        _time_mm(a, b)
    times: list[list[float]] = [[] for _ in cases]
    for _ in range(repeats):
        for j, (_, a, b) in enumerate(cases):
            times[j].append(_time_mm(a, b))
    rows = []
    for (row, a, b), ts in zip(cases, times, strict=True):
        flops = 2 * a.shape[0] * a.shape[1] * b.shape[1]
        rows.append({**row, "a": list(a.shape), "b": list(b.shape), "flops": flops,
                     "flop_per_s": flops / statistics.median(ts)})
    return rows


def gemm_mix_rate(rows: list[dict]) -> float:
    """The rate of the model's own GEMM mix: total FLOPs over total time, each shape as often as the model has it."""
    flops = sum(r["modules"] * r["flops"] for r in rows)
    return flops / sum(r["modules"] * r["flops"] / r["flop_per_s"] for r in rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--entries", type=int, default=100)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--speed-steps", type=int, default=10, help="steps per round of the tokens/s phase")
    ap.add_argument("--speed-rounds", type=int, default=3, help="alternating rounds of the tokens/s phase")
    ap.add_argument("--max-minutes", type=float, default=60.0, help="cap per loop for time-to-memorize")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--memorize-seeds", type=int, default=3,
                    help="time-to-memorize runs per loop, each with its own LoRA init and batch order (seed, seed+1, "
                         "...; the same PhoneBook): one draw can shift the epoch where exact match jumps by several "
                         "epochs, so ratios use each loop's median time")
    ap.add_argument("--threads", type=int, default=None, help="torch threads for every loop (default: torch's)")
    ap.add_argument("--precision", choices=("fp32", "bf16", "auto"), default="fp32",
                    help="the writer's precision (the baselines always run fp32)")
    ap.add_argument("--skip-naive-memorize", action="store_true",
                    help="leave the docs loop out of the time-to-memorize phase (its ratio prints nan)")
    ap.add_argument("--json", type=Path, default=None, help="write every number here")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    examples = [e.example() for e in phonebook.generate(a.entries, a.seed)]
    common = dict(rank=a.rank, lr=a.lr, batch_size=a.batch_size, seed=a.seed)
    base = load_base(a.model)
    items = [render(e, base.tokenizer, "plain") for e in examples]
    median_len = statistics.median(len(r.ids) for r in items)
    print(f"model {a.model} on {base.device}, {a.entries} entries (median {median_len:g} tokens a row), rank "
          f"{a.rank}, lr {a.lr}, batch {a.batch_size}, seed {a.seed}, {torch.get_num_threads()} threads, "
          f"writer precision {a.precision}, baselines fp32", flush=True)
    loops = {"naive": naive_train, "competent": competent_train, "trainer": trainer_train,
             "loramem": lambda *args, **kw: loramem_train(*args, precision=a.precision, **kw)}
    out: dict = {"settings": {**vars(a), "json": str(a.json) if a.json else None, "threads": torch.get_num_threads(),
                              "device": str(base.device), "median_row_tokens": median_len},
                 "packages": package_versions()}

    # alternate the loops and take each one's median, so a burst of load on a shared machine does not decide a ratio
    tps: dict[str, list[float]] = {name: [] for name in loops}
    for rnd in range(a.speed_rounds):
        for name, fn in loops.items():
            r = fn(a.model, examples, max_steps=a.speed_steps, until_em=False, max_seconds=1e9, **common)
            tps[name].append(r["tokens_per_s"])
            extra = f", {r['precision']}" if "precision" in r else ""
            print(f"speed round {rnd + 1}: {name:9s} {r['tokens_per_s']:8.1f} tokens/s ({r['steps']} steps, "
                  f"{r['tokens']} tokens in {r['train_s']:.1f} s{extra})", flush=True)
    speed = {name: statistics.median(v) for name, v in tps.items()}
    print(f"tokens/s (median of {a.speed_rounds} alternating rounds of {a.speed_steps} steps): "
          + ", ".join(f"{name} {v:.1f}" for name, v in speed.items()), flush=True)
    out["tokens_per_s"] = {"median": speed, "rounds": tps}

    fl = writer_flops(a.model, examples, common, a.speed_steps, a.precision)
    achieved = fl["flops_per_token"] * speed["loramem"]
    print(f"writer FLOPs: {fl['flops_per_step'] / 1e9:.2f} GFLOP a step, {fl['flops_per_token'] / 1e6:.1f} MFLOP a "
          f"token (counted over {fl['counted_steps']} steps); achieved {achieved / 1e9:.2f} GFLOP/s", flush=True)
    m = int(a.batch_size * median_len)
    shapes = linear_shapes(base.model)
    rows = gemm_probe(shapes, m, device=base.device)
    for r in rows:
        print(f"gemm {r['kind']:6s} {str(r['a']):14s} x {str(r['b']):14s} ({r['modules']:3d} modules) "
              f"{r['flop_per_s'] / 1e9:8.2f} GFLOP/s", flush=True)
    peak = max(r["flop_per_s"] for r in rows)
    mix = gemm_mix_rate(rows)
    print(f"gemm peak (best shape) {peak / 1e9:.2f} GFLOP/s, the model's GEMM mix {mix / 1e9:.2f} GFLOP/s; "
          f"the writer reaches {achieved / peak:.1%} of the peak, {achieved / mix:.1%} of the mix", flush=True)
    out["flops"] = {**fl, "achieved_flop_per_s": achieved, "peak_flop_per_s": peak, "mix_flop_per_s": mix,
                    "gemm_m": m, "gemm": rows}

    cap = a.max_minutes * 60
    runs: dict[str, list[dict]] = {name: [] for name in loops if not (name == "naive" and a.skip_naive_memorize)}
    for s in range(a.memorize_seeds):  # alternating loops within each seed, like the speed rounds
        for name in runs:
            r = loops[name](a.model, examples, max_steps=None, until_em=True, max_seconds=cap,
                            **{**common, "seed": a.seed + s})
            runs[name].append(r)
            print(f"memorize seed {a.seed + s}: {name:9s} exact match {r['exact_match']:.3f} in {r['wall_s']:7.1f} s "
                  f"({r['steps']} steps, {r['epochs']:.1f} epochs, train {r['train_s']:.0f} s, eval "
                  f"{r['eval_s']:.0f} s)", flush=True)
    mem = {name: {**min(rs, key=lambda r: abs(r["wall_s"] - statistics.median(x["wall_s"] for x in rs))),
                  "wall_s": statistics.median(r["wall_s"] for r in rs),
                  "exact_match": min(r["exact_match"] for r in rs), "by_seed": rs} for name, rs in runs.items()}
    print("time to exact match 1.0 (median over " + f"{a.memorize_seeds} seeds): "
          + ", ".join(f"{name} {r['wall_s']:.1f} s" for name, r in mem.items()), flush=True)
    out["memorize"] = mem
    for name, r in mem.items():
        if r["exact_match"] < 1.0:
            bound = ("its ratios below are not meaningful" if name == "loramem"
                     else "the time-to-memorize ratio against it is a lower bound")
            print(f"note: {name} did not reach exact match 1.0 within {a.max_minutes:g} min in every seed; {bound}")
    if a.precision != "fp32":
        print(f"note: the writer ran {mem['loramem'].get('precision')} while the baselines ran fp32: not like for like")

    nan = float("nan")
    fast_wall = mem["loramem"]["wall_s"]
    final = {
        "tokens_per_s_ratio": speed["loramem"] / speed["naive"],
        "tokens_per_s_ratio_competent": speed["loramem"] / speed["competent"],
        "tokens_per_s_ratio_trainer": speed["loramem"] / speed["trainer"],
        "time_to_memorize_ratio": mem["naive"]["wall_s"] / fast_wall if "naive" in mem else nan,
        "time_to_memorize_ratio_competent": mem["competent"]["wall_s"] / fast_wall,
        "time_to_memorize_ratio_trainer": mem["trainer"]["wall_s"] / fast_wall,
        "peak_fraction": achieved / peak,
    }
    out["final"] = final
    if a.json:
        a.json.write_text(json.dumps(out, indent=2, default=str))
        print(f"wrote {a.json}", flush=True)
    for key, value in final.items():
        print(f"{key}: {value:.2f}", flush=True)


if __name__ == "__main__":
    main()
