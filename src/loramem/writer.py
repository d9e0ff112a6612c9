"""The training loop of a memory module: examples in, one PEFT LoRA adapter out.

    record = write_module(examples, base, WriterConfig(rank=8), out="modules/phonebook")

Fast path (on by default): logits only at supervised positions, bf16 autocast where the hardware has it (LoRA
weights and optimizer state stay fp32), length-grouped batches, a batch's shared token prefix run once, frozen
lower layers cached when LoRA sits on upper layers only, and an early stop once teacher-forced exact match on the
training facts reaches a target. Without `eval_every`, exact match is tracked for free from the training
forward passes (the argmax at each answer position of each fact on its last visit); a full teacher-forced check
runs only when that running estimate reaches the target, and only a full check can stop training.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from loramem import __version__
from loramem.adapters import (
    adapter_params,
    attach,
    layers_label,
    load_weights,
    lora_config,
    package_versions,
    parse_layers,
    save_adapter,
)
from loramem.config import WriterConfig, settings
from loramem.errors import UserError
from loramem.formats import Example, Rendered, render
from loramem.forward import (
    IGNORE,
    Batch,
    PrefixCache,
    collate,
    concat_batches,
    length_batches,
    logits_at,
    prefix_cache_ok,
    shared_prefix_ok,
)
from loramem.models import Base, bf16_supported
from loramem.progress import WriteProgress
from loramem.reads import batch_reads

RECHECK_EPOCHS = 10  # with the running estimate, still a full check (and best-state snapshot) this often


@dataclass
class WriteResult:
    """A trained module: where it was saved, its run record, and the live model with the adapter active."""

    path: Path | None
    record: dict
    model: torch.nn.Module
    adapter: str
    rendered: list[Rendered] = field(repr=False, default_factory=list)


PRECISIONS = ("auto", "fp32", "bf16")


def precision_for(cfg_precision: str, device: torch.device) -> str:
    """`fp32` or `bf16` (autocast). `auto` takes $LORAMEM_PRECISION, else bf16 where the hardware has fast bf16
    (CUDA, or a CPU with AVX512-BF16/AMX). LORAMEM_PRECISION=fp32 makes runs on different CPUs comparable."""
    if cfg_precision == "auto":
        cfg_precision = settings().precision or "auto"
        if cfg_precision not in PRECISIONS:
            raise UserError(f"LORAMEM_PRECISION={cfg_precision!r} is not one of {', '.join(PRECISIONS)}; "
                            "unset it or pick one")
    if cfg_precision == "auto":
        return "bf16" if bf16_supported(device) else "fp32"
    return cfg_precision


def autocast_for(cfg: WriterConfig, device: torch.device) -> Callable[[], contextlib.AbstractContextManager]:
    if precision_for(cfg.precision, device) != "bf16":
        return contextlib.nullcontext
    return lambda: torch.autocast(device.type, dtype=torch.bfloat16)


def lowest_layer(cfg: WriterConfig, base: Base) -> int:
    layers = parse_layers(cfg.layers, base.n_layers)
    return 0 if layers is None else layers[0]


def data_hash(examples: Sequence[Example]) -> str:
    h = hashlib.sha256()
    for e in examples:
        h.update(json.dumps([e.prompt, e.answer]).encode())
    return h.hexdigest()[:16]


def lr_scheduler(opt: torch.optim.Optimizer, cfg: WriterConfig, total: int):
    """transformers' schedule of that name (constant, cosine, linear), with `warmup_steps` of linear warmup."""
    from transformers import get_scheduler

    name = "constant_with_warmup" if cfg.schedule == "constant" else cfg.schedule
    return get_scheduler(name, opt, num_warmup_steps=cfg.warmup_steps, num_training_steps=total)


@dataclass
class WriteJob:
    """One module to write: its facts, its settings, where it goes, and its adapter name on the shared host."""

    examples: Sequence[Example]
    cfg: WriterConfig
    out: str | Path | None = None
    adapter: str = "default"
    data_license: str | None = None
    init_from: str | Path | None = None  # a saved module folder of the same shape to start from (a bank update)


def write_module(examples: Sequence[Example], base: Base, cfg: WriterConfig, out: str | Path | None = None,
                 adapter: str = "default", on_step: Callable[[dict], None] | None = None,
                 data_license: str | None = None, init_from: str | Path | None = None) -> WriteResult:
    """Train one LoRA module on `examples` and save it as a standard PEFT adapter folder with a run record
    (`data_license`: the licence of the facts, shown on the exported model card; `init_from`: a saved module
    folder of the same shape whose weights training starts from instead of a fresh init, e.g. a bank update)."""
    return write_modules([WriteJob(examples, cfg, out, adapter, data_license, init_from)], base, on_step=on_step)[0]


# how many modules train in one pass at most (their rows share every base matmul)
MAX_TOGETHER = 16


@contextlib.contextmanager
def compiled_layers(host, on: bool):
    """With `on`, the host's decoder layers run through torch.compile (inductor, dynamic shapes: batches differ in
    length) while training, and eager again after, so later reads and generation are untouched. The LoRA hooks of
    the lanes run inside the compiled layers."""
    if not on:
        yield
        return
    n = getattr(host.get_base_model().config, "num_hidden_layers", None)
    stacks = [m for m in host.modules() if isinstance(m, torch.nn.ModuleList) and len(m) == n]
    layers = list(stacks[0]) if stacks else []
    for layer in layers:
        layer.compile(dynamic=True)
    try:
        yield
    finally:
        for layer in layers:
            layer._compiled_call_impl = None  # what nn.Module.compile set: back to the eager forward


def together_key(cfg: WriterConfig, base: Base) -> tuple:
    """Modules whose settings give the same key can train in one pass: one autocast, one forward path, one frozen
    prefix below the same lowest LoRA layer, and dropout on for all or none (a pass decides the shared prefix and
    the running exact-match estimate once, and both are exact only without dropout)."""
    return (precision_for(cfg.precision, base.device), cfg.fast, lowest_layer(cfg, base) if cfg.prefix_cache else 0,
            cfg.dropout > 0, cfg.compile)


def together_default(key: tuple, base: Base) -> int:
    """How many modules share a pass by default. On a CPU the FLOPs are the same either way and a pass over every
    layer with 8x the rows was slower than 8 writes one after another (0.82x, 128-entry PhoneBook in 8 parts,
    `benchmarks/multi_module_write.py --steps 3`), while with LoRA on the top layers only (the prefix cache) it was
    1.44x faster (`--layers 24-29 --steps 4`): on a CPU modules share a pass only when the prefix cache applies."""
    if base.device.type == "cpu" and key[2] == 0:
        return 1
    return MAX_TOGETHER


def write_modules(jobs: Sequence[WriteJob], base: Base, on_step: Callable[[dict], None] | None = None,
                  together: int | None = None) -> list[WriteResult]:
    """Train several modules over one frozen base, up to `together` at once: every step's batch holds a batch of
    each module's facts, the base matmuls run once over all of them and each module's LoRA only on its own rows.
    Each module keeps its own data order, initialization (its seed), optimizer, schedule, early stop and run
    record, so it ends where `write_module` alone would (to floating-point tolerance). Modules whose settings
    cannot share a pass (`together_key`) train in separate passes; `together` None: `together_default`. Results
    come back in the jobs' order."""
    if not jobs:
        return []
    names = [j.adapter for j in jobs]
    if len(set(names)) != len(names):
        raise UserError(f"two modules share the adapter name {sorted(n for n in names if names.count(n) > 1)[0]}; "
                        "give each its own")
    for j in jobs:
        if not j.examples:
            raise UserError("no training examples; pass a file with at least one row")
    groups: dict[tuple, list[int]] = {}
    for i, j in enumerate(jobs):
        groups.setdefault(together_key(j.cfg, base), []).append(i)
    results: list[WriteResult | None] = [None] * len(jobs)
    for key, idx in groups.items():
        most = max(1, together or together_default(key, base))
        for k in range(0, len(idx), most):
            chunk = idx[k : k + most]
            for i, r in zip(chunk, _write_together([jobs[i] for i in chunk], base, on_step), strict=True):
                results[i] = r
    return results  # type: ignore[return-value]


class _Lane:
    """The training state of one module in a pass."""

    def __init__(self, job: WriteJob, base: Base) -> None:
        cfg = self.cfg = job.cfg
        self.job, self.adapter = job, job.adapter
        torch.manual_seed(cfg.seed)  # the adapter's initialization, as when it trains alone
        self.rng = random.Random(cfg.seed)
        self.items = [render(e, base.tokenizer, cfg.format) for e in job.examples]
        self.host = attach(base, lora_config(cfg, base), job.adapter)
        if job.init_from is not None:
            load_weights(self.host, job.adapter, job.init_from)
        self.params = adapter_params(self.host, job.adapter)
        self.per_epoch = math.ceil(len(self.items) / cfg.batch_size)
        self.total = cfg.steps if cfg.steps is not None else max(cfg.min_steps or 1,
                                                                 math.ceil(cfg.epochs * self.per_epoch))
        # exact match tracked from the training passes, confirmed by a full check; with dropout the training passes
        # are noisy, so dropout falls back to a full check every epoch
        self.online = cfg.eval_every is None and cfg.dropout == 0
        self.eval_every = cfg.eval_every or self.per_epoch
        self.last_ok = [False] * len(self.items)  # per fact: all answer tokens right on its last training pass
        self.confirm_after = 0  # after a failed confirmation, wait a full epoch of visits before the next
        self.opt = torch.optim.AdamW(self.params, lr=cfg.lr, weight_decay=0.0)
        self.sched = lr_scheduler(self.opt, cfg, self.total)
        self.history: list[list[float]] = []  # full teacher-forced checks: [step, exact match]
        self.running_history: list[list[float]] = []  # the free running estimate, once per epoch
        self.fresh_check: float | None = None  # exact match of a check made since the last optimizer step
        self.best: dict = {"em": -1.0, "state": None, "step": 0}
        self.tokens_seen, self.step, self.stopped, self.loss, self.first_loss = 0, 0, "steps", float("nan"), float("nan")
        self.queue: list[list[int]] = []
        self.cache: PrefixCache | None = None
        self.done = False

    def next_batch(self, pad_id: int) -> Batch:
        if not self.queue:
            self.queue = length_batches(self.items, self.cfg.batch_size, self.rng)
        return collate(self.items, self.queue.pop(), pad_id, self.cfg.loss)

    def running(self) -> float:
        return sum(self.last_ok) / len(self.items)

    def checked(self, em: float) -> None:
        """Record a full check made at the current step."""
        self.history.append([self.step, em])
        self.fresh_check = em
        if em > self.best["em"]:
            self.best.update(em=em, step=self.step, state={id(p): p.detach().clone() for p in self.params})

    def wants_check(self) -> bool:
        """After this step: is a full check due (the running estimate reached the target, the last step, or the
        periodic recheck)?"""
        if self.cfg.target_em is None:
            return False
        if not self.online:
            return self.step % self.eval_every == 0 or self.step == self.total
        due = self.step - (self.history[-1][0] if self.history else 0) >= RECHECK_EPOCHS * self.per_epoch
        return (self.running() >= self.cfg.target_em and self.step >= self.confirm_after) or self.step == self.total or due


def _write_together(jobs: Sequence[WriteJob], base: Base, on_step: Callable[[dict], None] | None) -> list[WriteResult]:
    """Train `jobs` (settings with one `together_key`) in one pass over the base."""
    from loramem.lanes import Lanes

    t_start = time.time()
    pad_id = base.tokenizer.pad_token_id
    lanes_all = [_Lane(j, base) for j in jobs]
    host = lanes_all[0].host
    for p in host.parameters():
        p.requires_grad = False
    cfg0 = lanes_all[0].cfg
    autocast = autocast_for(cfg0, base.device)
    items0 = lanes_all[0].items
    start_layer = lowest_layer(cfg0, base) if (cfg0.fast and cfg0.prefix_cache) else 0
    if start_layer > 0 and prefix_cache_ok(host, items0, start_layer, pad_id, autocast):
        for lane in lanes_all:
            lane.cache = PrefixCache(host, lane.items, start_layer, pad_id, autocast)
    cached = lanes_all[0].cache is not None
    # with LoRA dropout the rows of a batch would share one dropout mask over the prefix: exact only without it
    share = bool(cfg0.fast and not cached and cfg0.dropout == 0
                 and all(shared_prefix_ok(host, lane.items, pad_id, autocast, lane.cfg.loss) for lane in lanes_all))
    lanes = Lanes(host, [lane.adapter for lane in lanes_all])
    eval_s = 0.0
    total = max(lane.total for lane in lanes_all)
    progress = WriteProgress(total, enabled=cfg0.progress, max_seconds=cfg0.max_seconds, target_em=cfg0.target_em)
    train_t0 = time.time()
    group_step, group_tokens = 0, 0

    def forward(group: list[_Lane], parts: list[Batch], masks: list[torch.Tensor]) -> list[torch.Tensor]:
        """Logits at each lane's masked positions, one pass for all lanes."""
        b = concat_batches(parts, pad_id)
        mask = torch.cat([torch.nn.functional.pad(m, (0, b.input_ids.shape[1] - m.shape[1]), value=False)
                          for m in masks])
        rows = {id(lane): len(p.index) for lane, p in zip(group, parts, strict=True)}
        lanes.rows = [rows.get(id(lane), 0) for lane in lanes_all]
        with autocast():
            if cached:
                hidden = torch.cat([torch.nn.functional.pad(
                    lane.cache.batch_hidden(p), (0, 0, 0, b.input_ids.shape[1] - p.input_ids.shape[1]))
                    for lane, p in zip(group, parts, strict=True)])
                logits = logits_at(host, b, mask, hidden, start_layer, lanes=lanes)
            elif cfg0.fast:
                logits = logits_at(host, b, mask, share_prefix=share, lanes=lanes)
            else:
                logits = _full_logits(host, b)[mask.to(base.device)]
        return list(torch.split(logits, [int(m.sum()) for m in masks]))

    @torch.no_grad()
    def check(group: list[_Lane]) -> None:
        """A full teacher-forced exact-match check of each lane in `group`, all in one pass per eval batch."""
        nonlocal eval_s
        if not group:
            return
        t = time.time()
        host.eval()
        plans = [length_batches(lane.items, 64, None) for lane in group]
        ok = [[False] * len(lane.items) for lane in group]
        for j in range(max(len(p) for p in plans)):
            sub = [(g, lane) for g, lane in enumerate(group) if j < len(plans[g])]
            parts = [collate(lane.items, plans[g][j], pad_id) for g, lane in sub]
            outs = forward([lane for _, lane in sub], parts, [p.eval_mask for p in parts])
            for (g, _lane), p, logits in zip(sub, parts, outs, strict=True):
                for i, r in zip(p.index, batch_reads(p, logits), strict=True):
                    ok[g][i] = r.exact
        for g, lane in enumerate(group):
            lane.checked(sum(ok[g]) / len(lane.items))
        eval_s += time.time() - t
        host.train()

    try:
        with lanes.on(), progress, compiled_layers(host, cfg0.compile):
            host.train()
            while True:
                group = [lane for lane in lanes_all if not lane.done]
                if not group:
                    break
                parts = [lane.next_batch(pad_id) for lane in group]
                masks = [p.labels != IGNORE for p in parts]
                outs = forward(group, parts, masks)
                losses = []
                for lane, p, m, logits in zip(group, parts, masks, outs, strict=True):
                    targets = p.labels[m].to(logits.device)
                    loss = torch.nn.functional.cross_entropy(logits, targets)
                    if lane.online and lane.cfg.target_em is not None:
                        _track(lane.last_ok, p, m, logits.detach().argmax(-1) == targets)
                    losses.append(loss)
                    lane.opt.zero_grad(set_to_none=True)
                (losses[0] if len(losses) == 1 else torch.stack(losses).sum()).backward()
                for lane, p, loss in zip(group, parts, losses, strict=True):
                    lane.fresh_check = None
                    lane.opt.step()
                    lane.sched.step()
                    lane.step += 1
                    lane.tokens_seen += p.tokens
                    lane.loss = loss.item()
                    if lane.step == 1:
                        lane.first_loss = lane.loss
                    if lane.online and lane.cfg.target_em is not None and lane.step % lane.per_epoch == 0:
                        lane.running_history.append([lane.step, round(lane.running(), 4)])
                group_step += 1
                group_tokens += sum(p.tokens for p in parts)
                due = [lane for lane in group if lane.wants_check()]
                check(due)
                for lane in due:
                    if lane.online and lane.fresh_check < lane.cfg.target_em:
                        lane.confirm_after = lane.step + lane.per_epoch
                elapsed = time.time() - train_t0
                for lane in group:
                    if lane.fresh_check is not None and lane.cfg.target_em is not None \
                            and lane.fresh_check >= lane.cfg.target_em:
                        lane.stopped, lane.done = "target_em", True
                    elif lane.cfg.max_seconds and time.time() - t_start > lane.cfg.max_seconds:
                        lane.stopped, lane.done = "max_seconds", True
                    elif lane.step >= lane.total:
                        lane.done = True
                shown = [lane.fresh_check if lane.fresh_check is not None else
                         (lane.running() if lane.online and lane.cfg.target_em is not None else None) for lane in group]
                shown_em = None if any(s is None for s in shown) else min(shown)
                progress.update(group_step, sum(lane.loss for lane in group) / len(group),
                                group_tokens / max(elapsed - eval_s, 1e-9), shown_em)
                if on_step and len(lanes_all) == 1:
                    lane = lanes_all[0]
                    on_step({"step": lane.step, "loss": lane.loss, "tokens": lane.tokens_seen,
                             "em": lane.fresh_check})
    except KeyboardInterrupt:
        for lane in lanes_all:
            if not lane.done:
                lane.stopped, lane.done = "interrupted", True
    # the final exact match: the check made after the last step, or one more (all lanes in one pass; its time counts
    # as evaluation, so tokens/s counts training time only)
    with lanes.on():
        check([lane for lane in lanes_all if lane.fresh_check is None])
    host.eval()
    train_s = time.time() - train_t0
    results = []
    for lane in lanes_all:
        final_em = lane.fresh_check
        if lane.best["state"] is not None and lane.best["em"] > final_em:
            with torch.no_grad():
                for p in lane.params:
                    p.copy_(lane.best["state"][id(p)])
            final_em = lane.best["em"]
        record = _record(lane, base, final_em, autocast, start_layer if cached else 0, share, len(lanes_all),
                         t_start, train_s, eval_s, group_tokens)
        path = save_adapter(host, lane.adapter, lane.job.out, record) if lane.job.out is not None else None
        results.append(WriteResult(path=path, record=record, model=host, adapter=lane.adapter, rendered=lane.items))
    host.set_adapter(lanes_all[-1].adapter)
    return results


def _record(lane: _Lane, base: Base, final_em: float, autocast, cache_layer: int, share: bool, together: int,
            t_start: float, train_s: float, eval_s: float, group_tokens: int) -> dict:
    items, cfg = lane.items, lane.cfg
    return {
        "loramem_version": __version__,
        # hub_id is what the adapter names as its base; the fingerprint says which exact weights it was trained on
        "base": {"name": base.name, "hub_id": base.hub_id, "fingerprint": base.fingerprint, "source": base.source,
                 "weights": base.weights},
        "config": cfg.model_dump(),
        "layers_resolved": layers_label(cfg.layers, base.n_layers),
        "n_examples": len(items),
        "data_hash": data_hash(lane.job.examples),
        "data_license": lane.job.data_license,
        "knowledge_tokens": sum(len(r.ids) for r in items),
        "tokens_seen": lane.tokens_seen,
        "steps": lane.step,
        "epochs": round(lane.step / lane.per_epoch, 2),
        "stopped": lane.stopped,
        "exact_match": final_em,
        "em_history": lane.history,
        "em_running": lane.running_history,
        "first_loss": lane.first_loss,
        "final_loss": lane.loss,
        "n_params": sum(p.numel() for p in lane.params),
        "precision": "bf16-autocast" if autocast is not contextlib.nullcontext else "fp32",
        "prefix_cache_layer": cache_layer,
        "shared_prefix": share,
        # modules trained in the same pass: times and tokens/s below are the pass's, shared by all of them
        "modules_together": together,
        "train_s": round(train_s, 2),
        "eval_s": round(eval_s, 2),
        "wall_s": round(time.time() - t_start, 2),
        "tokens_per_s": round(group_tokens / max(train_s - eval_s, 1e-9), 1),
        "packages": package_versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _track(last_ok: list[bool], b, mask: torch.Tensor, hit: torch.Tensor) -> None:
    """Record, per fact of the batch, whether every answer position was right in this training pass."""
    at_eval = b.eval_mask[mask]  # which supervised positions belong to the answer span
    per_row = mask.sum(1).tolist()
    hit = hit.cpu()
    pos = 0
    for row, i in enumerate(b.index):
        n = per_row[row]
        sel = at_eval[pos : pos + n]
        last_ok[i] = bool(sel.any() and hit[pos : pos + n][sel].all())
        pos += n


def _full_logits(model, b) -> torch.Tensor:
    dev = next(model.parameters()).device
    return model(input_ids=b.input_ids.to(dev), attention_mask=b.attention_mask.to(dev)).logits.float()
