"""Q8: at one LoRA parameter budget, one large LoRA vs N small LoRAs with oracle routing vs ICL.

A PhoneBook large enough that the single module saturates is split into N parts; each small module (rank r)
stores one part, the single module (rank N*r, same parameter count) stores all of it. With the gold module
known (oracle routing) the small modules answer each question; ICL puts every fact in the prompt of the base
model. Accuracy is teacher-forced exact match over all facts (ICL: over a sample when the book is long).
"""

from __future__ import annotations

import contextlib

import torch

from loramem.experiments.partitioned import Setup, eval_groups, grid, predictions, read, scores, setup
from loramem.intervals import share_interval
from loramem.reads import Read
from loramem.report import bar_plot, markdown_table
from loramem.runs.runner import Recipe, RecipeOptions

SYSTEMS = ("single", "multi-oracle", "icl")


def cells(opts: RecipeOptions) -> list[dict]:
    g = grid(opts)
    return [{"cell": s, "system": s, "modules": g["modules"], "small_rank": g["small_rank"]} for s in SYSTEMS]


def run_cell(cell: dict, opts: RecipeOptions) -> dict:
    s = setup(opts)
    n = len(s.entries)
    if cell["system"] == "single":
        reads = dict(enumerate(read(s, s.resident.ensure(s.single), list(range(n)))))
        params, answered_by = s.single.n_params, lambda i: [s.single.name]
    elif cell["system"] == "multi-oracle":
        groups: dict[tuple, list[int]] = {}
        for i, g in enumerate(s.gold):
            groups.setdefault((g,), []).append(i)
        reads = eval_groups(s, groups, lambda key: s.resident.ensure(s.parts[key[0]]))
        params, answered_by = sum(m.n_params for m in s.parts), lambda i: [s.parts[s.gold[i]].name]
    else:
        idx = list(range(0, n, max(1, n // s.grid["icl_questions"])))[: s.grid["icl_questions"]]
        reads = dict(zip(idx, icl_reads(s, idx), strict=True))
        params, answered_by = 0, lambda i: []
    return {**scores(reads), "n_facts": n, "lora_params": params, "single_rank": s.single.rank,
            "knowledge_tokens": s.single.tokens, **predictions(s, reads, answered_by)}


@torch.no_grad()
def icl_reads(s: Setup, idx: list[int]) -> list[Read]:
    """Every fact in the base model's prompt, then each question read back under teacher forcing: the argmax at
    each answer token (the number, then "\n") and which are right. The context is encoded once; each question
    reuses its key/value cache (cropped back after)."""
    tok = s.base.tokenizer
    host = s.resident.host
    ctx_text = "\n".join(e.row() for e in s.entries) + "\n"
    ctx = tok(ctx_text, add_special_tokens=True, return_tensors="pt").input_ids.to(s.base.device)
    off = host.disable_adapter() if host is not None else contextlib.nullcontext()
    model = host if host is not None else s.base.model
    newline = tok("\n", add_special_tokens=False).input_ids[:1]
    reads = []
    with off:
        model.eval()
        out = model(input_ids=ctx, use_cache=True)
        cache = out.cache
        for i in idx:
            e = s.entries[i]
            q = tok(f"Question: {e.question()}? Answer:", add_special_tokens=False).input_ids
            # rows in the prompt end with a newline, so a right answer is the number, then "\n"
            a = tok(" " + e.number, add_special_tokens=False).input_ids + newline
            ids = torch.tensor([q + a[:-1]], device=s.base.device)
            logits = model(input_ids=ids, cache=cache, use_cache=True).logits
            pred = logits[0, len(q) - 1:].argmax(-1).tolist()
            reads.append(Read(pred, [p == t for p, t in zip(pred, a, strict=True)]))
            cache.crop(-ids.shape[1])  # drop this question again (transformers 5: negative = tokens to remove)
    return reads


def summarize(rows: list[dict], opts: RecipeOptions) -> dict:
    out = opts.out
    order = {s: i for i, s in enumerate(SYSTEMS)}
    rows = sorted(rows, key=lambda r: order.get(r["system"], 99))
    acc = {r["system"]: r["accuracy"] for r in rows}
    n_eval = "/".join(str(r.get("n_eval", "?")) for r in rows)
    bar_plot(out / "multi_lora.png", [r["system"] for r in rows], [r["accuracy"] for r in rows],
             "Q8: one large LoRA vs N small LoRAs (oracle) vs ICL", "exact match",
             n=f"n = {n_eval} facts ({', '.join(r['system'] for r in rows)})",
             intervals=[r.get("accuracy_ci") or share_interval(r["accuracy"], r.get("n_eval")) for r in rows])
    (out / "multi_lora.md").write_text("### Q8: same LoRA parameter budget\n\n" + markdown_table(
        rows, ["system", "accuracy", "accuracy_ci", "n_eval", "n_facts", "modules", "small_rank", "single_rank",
               "lora_params"],
        fmt={"accuracy": ".3f"}))
    return {"accuracy": acc, "oracle_minus_single": acc.get("multi-oracle", 0) - acc.get("single", 0)
            if {"multi-oracle", "single"} <= acc.keys() else None}


def finding_oracle_beats_single(rows: list[dict]) -> tuple[dict | None, dict]:
    """N small LoRAs with oracle routing minus one large LoRA of the same budget, exact match on the same facts."""
    from loramem.findings import item_scores, paired_effect

    by = {r["system"]: r for r in rows if "system" in r}
    if not {"single", "multi-oracle"} <= by.keys():
        return None, {"why": "needs the single and multi-oracle cells"}
    ev = {"accuracy": {k: round(float(r["accuracy"]), 4) for k, r in by.items()}}
    if by["single"]["accuracy"] >= 0.99:  # the finding is about a single LoRA past its capacity
        return None, {**ev, "why": "the single LoRA did not saturate (accuracy >= 0.99); run with more --facts"}
    one = lambda r: 0  # noqa: E731 - the same book of facts in every cell
    return paired_effect(item_scores([by["multi-oracle"]], one), item_scores([by["single"]], one),
                         arms=("multi-oracle", "single")), ev


RECIPE = Recipe("multi-lora", "Q8: one large LoRA vs N small LoRAs (oracle routing) vs ICL", cells, run_cell,
                summarize)
