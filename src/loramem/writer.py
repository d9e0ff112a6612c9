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
import copy
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
from loramem.config import WriterConfig, settings
from loramem.errors import UserError
from loramem.formats import Example, Rendered, render
from loramem.forward import PrefixCache, collate, length_batches, logits_at, prefix_cache_ok, shared_prefix_ok
from loramem.models import Base, bf16_supported
from loramem.progress import WriteProgress

RECORD_FILE = "loramem.json"
RECHECK_EPOCHS = 10  # with the running estimate, still a full check (and best-state snapshot) this often


@dataclass
class WriteResult:
    """A trained module: where it was saved, its run record, and the live model with the adapter active."""

    path: Path | None
    record: dict
    model: torch.nn.Module
    adapter: str
    rendered: list[Rendered] = field(repr=False, default_factory=list)


def parse_layers(spec: str | None, n_layers: int) -> list[int] | None:
    """'20-29' or '0,5,10' -> layer indices (None: all layers)."""
    if spec is None or spec.strip() in ("", "all"):
        return None
    out: set[int] = set()
    try:
        for part in spec.split(","):
            part = part.strip()
            if "-" in part:
                a, b = part.split("-", 1)
                out.update(range(int(a), int(b) + 1))
            else:
                out.add(int(part))
    except ValueError:
        raise UserError(f"bad layer range '{spec}': use e.g. 20-29 or 0,5,10") from None
    bad = [i for i in out if not 0 <= i < n_layers]
    if bad or not out:
        raise UserError(f"layers {sorted(bad) or spec} are outside 0-{n_layers - 1} for this model; pick layers in range")
    return sorted(out)


def lora_config(cfg: WriterConfig, base: Base):
    """The PEFT LoraConfig for a writer config, validated against the base model's module names."""
    from peft import LoraConfig

    layers = parse_layers(cfg.layers, base.n_layers)
    if cfg.targets.strip() == "all-linear":
        targets: str | list[str] = "all-linear"
        if layers is not None:
            # PEFT applies layers_to_transform to explicit module lists, so expand all-linear ourselves.
            targets = linear_module_names(base.model)
    else:
        targets = [t.strip() for t in cfg.targets.split(",") if t.strip()]
        known = linear_module_names(base.model)
        unknown = [t for t in targets if t not in known]
        if unknown:
            raise UserError(f"target modules {unknown} are not in this model; choose from {', '.join(known)} or all-linear")
    return LoraConfig(
        r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, use_rslora=cfg.rslora,
        target_modules=targets, layers_to_transform=layers, bias="none", task_type="CAUSAL_LM",
    )


def linear_module_names(model) -> list[str]:
    """Short names of the Linear layers inside the decoder blocks (what `--targets` may name)."""
    names = set()
    for full, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear) and ".layers." in full and "lora_" not in full:
            parts = full.split(".")
            names.add(parts[-2] if parts[-1] == "base_layer" else parts[-1])  # under PEFT, Linear moves down
    return sorted(names)


def attach(base: Base, config, adapter: str):
    """Add a fresh adapter to the process-wide PEFT wrapper of `base` (created on first use) and activate it."""
    from peft import get_peft_model

    host = base.extra.get("peft")
    if host is None:
        host = get_peft_model(base.model, config, adapter_name=adapter)
        base.extra["peft"] = host
    else:
        if adapter in host.peft_config:
            host.delete_adapter(adapter)
        host.add_adapter(adapter, config)
    host.set_adapter(adapter)
    return host


def adapter_params(host, adapter: str) -> list[torch.nn.Parameter]:
    return [p for n, p in host.named_parameters() if "lora_" in n and f".{adapter}." in n + "."]


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


@torch.no_grad()
def exact_match_items(model, items: Sequence[Rendered], pad_id: int, autocast=contextlib.nullcontext,
                      cache: PrefixCache | None = None, batch_size: int = 64, share_prefix: bool = False) -> list[bool]:
    """Per item: does argmax equal the target at every answer position (= greedy decoding answers and stops)?"""
    model.eval()
    ok = [False] * len(items)
    for idx in length_batches(items, batch_size, None):
        b = collate(items, idx, pad_id)
        with autocast():
            if cache is not None:
                logits = logits_at(model, b, b.eval_mask, cache.batch_hidden(b), cache.layer)
            else:
                logits = logits_at(model, b, b.eval_mask, share_prefix=share_prefix)
        pred = logits.argmax(-1).cpu()
        target = b.input_ids[:, 1:][b.eval_mask[:, :-1]]
        hit = (pred == target).long()
        counts = b.eval_mask.sum(1).tolist()
        pos = 0
        for row, i in enumerate(idx):
            n = counts[row]
            ok[i] = bool(hit[pos : pos + n].all()) if n else False
            pos += n
    return ok


def lr_scheduler(opt: torch.optim.Optimizer, cfg: WriterConfig, total: int):
    """transformers' schedule of that name (constant, cosine, linear), with `warmup_steps` of linear warmup."""
    from transformers import get_scheduler

    name = "constant_with_warmup" if cfg.schedule == "constant" else cfg.schedule
    return get_scheduler(name, opt, num_warmup_steps=cfg.warmup_steps, num_training_steps=total)


def write_module(examples: Sequence[Example], base: Base, cfg: WriterConfig, out: str | Path | None = None,
                 adapter: str = "default", on_step: Callable[[dict], None] | None = None,
                 data_license: str | None = None, init_from: str | Path | None = None) -> WriteResult:
    """Train one LoRA module on `examples` and save it as a standard PEFT adapter folder with a run record
    (`data_license`: the licence of the facts, shown on the exported model card; `init_from`: a saved module
    folder of the same shape whose weights training starts from instead of a fresh init, e.g. a bank update)."""
    if not examples:
        raise UserError("no training examples; pass a file with at least one row")
    t_start = time.time()
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    tok = base.tokenizer
    pad_id = tok.pad_token_id
    items = [render(e, tok, cfg.format) for e in examples]
    host = attach(base, lora_config(cfg, base), adapter)
    if init_from is not None:
        load_weights(host, adapter, init_from)
    params = adapter_params(host, adapter)
    for p in host.parameters():
        p.requires_grad = False
    for p in params:
        p.requires_grad = True
    autocast = autocast_for(cfg, base.device)

    cache = None
    start_layer = lowest_layer(cfg, base) if (cfg.fast and cfg.prefix_cache) else 0
    if start_layer > 0 and prefix_cache_ok(host, items, start_layer, pad_id, autocast):
        cache = PrefixCache(host, items, start_layer, pad_id, autocast)
    # with LoRA dropout the rows of a batch would share one dropout mask over the prefix: exact only without it
    share = bool(cfg.fast and cache is None and cfg.dropout == 0
                 and shared_prefix_ok(host, items, pad_id, autocast, cfg.loss))

    batches_per_epoch = math.ceil(len(items) / cfg.batch_size)
    total = cfg.steps if cfg.steps is not None else max(1, math.ceil(cfg.epochs * batches_per_epoch))
    # exact match tracked from the training passes, confirmed by a full check; with dropout the training passes are
    # noisy, so dropout falls back to a full check every epoch
    online = cfg.eval_every is None and cfg.dropout == 0
    eval_every = cfg.eval_every or batches_per_epoch
    last_ok = [False] * len(items)  # per fact: all answer tokens right on its last training pass
    confirm_after = 0  # after a failed confirmation, wait a full epoch of visits before the next
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    sched = lr_scheduler(opt, cfg, total)

    history: list[list[float]] = []  # full teacher-forced checks: [step, exact match]
    running_history: list[list[float]] = []  # the free running estimate, once per epoch
    fresh_check: float | None = None  # exact match of a check made since the last optimizer step
    best = {"em": -1.0, "state": None, "step": 0}
    tokens_seen, step, stopped, loss_val, eval_s = 0, 0, "steps", float("nan"), 0.0
    first_loss = float("nan")
    queue: list[list[int]] = []
    progress = WriteProgress(total, enabled=cfg.progress, max_seconds=cfg.max_seconds, target_em=cfg.target_em)
    train_t0 = time.time()

    def check(step: int) -> float:
        nonlocal eval_s, fresh_check
        t = time.time()
        em = sum(exact_match_items(host, items, pad_id, autocast, cache, share_prefix=share)) / len(items)
        eval_s += time.time() - t
        history.append([step, em])
        fresh_check = em
        if em > best["em"]:
            best.update(em=em, step=step, state={id(p): p.detach().clone() for p in params})
        host.train()
        return em

    try:
        with progress:
            host.train()
            while step < total:
                if not queue:
                    queue = length_batches(items, cfg.batch_size, rng)
                b = collate(items, queue.pop(), pad_id, cfg.loss)
                mask = b.labels != -100
                with autocast():
                    if cache is not None:
                        logits = logits_at(host, b, mask, cache.batch_hidden(b), cache.layer)
                    elif cfg.fast:
                        logits = logits_at(host, b, mask, share_prefix=share)
                    else:
                        logits = _full_logits(host, b)[mask.to(base.device)]
                targets = b.labels[mask].to(logits.device)
                loss = torch.nn.functional.cross_entropy(logits, targets)
                if online and cfg.target_em is not None:
                    _track(last_ok, b, mask, logits.detach().argmax(-1) == targets)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                fresh_check = None
                opt.step()
                sched.step()
                step += 1
                tokens_seen += b.tokens
                loss_val = loss.item()
                if step == 1:
                    first_loss = loss_val
                em = None
                if cfg.target_em is not None:
                    if online:
                        running = sum(last_ok) / len(items)
                        if step % batches_per_epoch == 0:
                            running_history.append([step, round(running, 4)])
                        due = step - (history[-1][0] if history else 0) >= RECHECK_EPOCHS * batches_per_epoch
                        if (running >= cfg.target_em and step >= confirm_after) or step == total or due:
                            em = check(step)
                            if em < cfg.target_em:
                                confirm_after = step + batches_per_epoch
                    elif step % eval_every == 0 or step == total:
                        em = check(step)
                elapsed = time.time() - train_t0
                shown = em if em is not None else (sum(last_ok) / len(items) if online and cfg.target_em is not None
                                                   else None)
                progress.update(step, loss_val, tokens_seen / max(elapsed - eval_s, 1e-9), shown)
                if on_step:
                    on_step({"step": step, "loss": loss_val, "tokens": tokens_seen, "em": em})
                if em is not None and em >= cfg.target_em:
                    stopped = "target_em"
                    break
                if cfg.max_seconds and time.time() - t_start > cfg.max_seconds:
                    stopped = "max_seconds"
                    break
    except KeyboardInterrupt:
        stopped = "interrupted"

    t_final = time.time()
    final_em = fresh_check if fresh_check is not None else (
        sum(exact_match_items(host, items, pad_id, autocast, cache, share_prefix=share)) / len(items))
    eval_s += time.time() - t_final  # tokens/s below counts training time only
    if best["state"] is not None and best["em"] > final_em:
        with torch.no_grad():
            for p in params:
                p.copy_(best["state"][id(p)])
        final_em = best["em"]
    host.eval()
    train_s = time.time() - train_t0
    record = {
        "loramem_version": __version__,
        # hub_id is what the adapter names as its base; the fingerprint says which exact weights it was trained on
        "base": {"name": base.name, "hub_id": base.hub_id, "fingerprint": base.fingerprint, "source": base.source,
                 "weights": base.weights},
        "config": cfg.model_dump(),
        "n_examples": len(items),
        "data_hash": data_hash(examples),
        "data_license": data_license,
        "knowledge_tokens": sum(len(r.ids) for r in items),
        "tokens_seen": tokens_seen,
        "steps": step,
        "epochs": round(step / batches_per_epoch, 2),
        "stopped": stopped,
        "exact_match": final_em,
        "em_history": history,
        "em_running": running_history,
        "first_loss": first_loss,
        "final_loss": loss_val,
        "n_params": sum(p.numel() for p in params),
        "precision": "bf16-autocast" if autocast is not contextlib.nullcontext else "fp32",
        "prefix_cache_layer": cache.layer if cache else 0,
        "shared_prefix": share,
        "train_s": round(train_s, 2),
        "eval_s": round(eval_s, 2),
        "wall_s": round(time.time() - t_start, 2),
        "tokens_per_s": round(tokens_seen / max(train_s - eval_s, 1e-9), 1),
        "packages": package_versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    path = save_adapter(host, adapter, out, record) if out is not None else None
    return WriteResult(path=path, record=record, model=host, adapter=adapter, rendered=items)


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


def save_adapter(host, adapter: str, out: str | Path, record: dict) -> Path:
    """Save one adapter as a flat standard PEFT folder (adapter_config.json + adapter_model.safetensors)."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state = get_peft_model_state_dict(host, adapter_name=adapter, save_embedding_layers=False)
    bad = [k for k, v in state.items() if not torch.isfinite(v).all()]
    if bad:  # a diverged run (too high --lr) would save a module that answers nothing
        raise UserError(f"training diverged: {len(bad)} LoRA tensors hold NaN or inf (e.g. {bad[0]}); nothing was "
                        "saved. Lower --lr (e.g. --lr 1e-3) or --alpha")
    save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(out / "adapter_model.safetensors"),
              metadata={"format": "pt"})
    conf = copy.deepcopy(host.peft_config[adapter])
    conf.base_model_name_or_path = record["base"].get("hub_id") or record["base"]["source"]
    conf.save_pretrained(str(out))
    (out / RECORD_FILE).write_text(json.dumps(record, indent=2, default=str))
    return out


def package_versions() -> dict:
    import peft
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
            "loramem": __version__}


def load_adapter(base: Base, path: str | Path, adapter: str):
    """Load a saved module (a PEFT adapter folder) onto the shared PEFT wrapper of `base` and activate it."""
    from peft import PeftModel

    p = Path(path)
    if not (p / "adapter_config.json").is_file():
        raise UserError(f"{p} is not a LoRA module folder (no adapter_config.json); pass the folder `loramem write` made")
    rec = read_record(p)
    if rec and rec.get("base", {}).get("fingerprint") not in (None, base.fingerprint):
        raise UserError(
            f"module {p} was trained for base model '{rec['base'].get('name')}', not '{base.name}'; "
            f"pass --model {rec['base'].get('name')}"
        )
    host = base.extra.get("peft")
    if host is None:
        host = PeftModel.from_pretrained(base.model, str(p), adapter_name=adapter)
        base.extra["peft"] = host
    else:
        if adapter in host.peft_config:
            host.delete_adapter(adapter)
        host.load_adapter(str(p), adapter_name=adapter)
    check_loaded_keys(host, adapter, p)
    host.set_adapter(adapter)
    host.eval()
    return host


def load_weights(host, adapter: str, folder: str | Path) -> None:
    """Copy a saved module's LoRA tensors into the resident adapter `adapter` (same rank, targets and layers)."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    check_loaded_keys(host, adapter, folder)  # refuses another shape before anything is copied
    set_peft_model_state_dict(host, load_file(str(Path(folder) / "adapter_model.safetensors")), adapter_name=adapter)


def check_loaded_keys(host, adapter: str, folder: str | Path) -> None:
    """Refuse an adapter whose saved tensors do not all land on the model (renamed or foreign keys would make
    PEFT skip them silently and answer from the base)."""
    from peft.utils import get_peft_model_state_dict
    from safetensors import safe_open

    f = Path(folder) / "adapter_model.safetensors"
    try:
        with safe_open(str(f), framework="pt") as fh:
            saved = {k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()}
    except Exception as exc:  # a truncated or garbled file
        raise UserError(f"{f} is not a readable safetensors file ({exc}); write the module again") from None
    # save_embedding_layers=False: modules are on linear layers only, and "auto" asks the hub about the base
    state = get_peft_model_state_dict(host, adapter_name=adapter, save_embedding_layers=False)
    want = {k: tuple(v.shape) for k, v in state.items()}
    if saved != want:
        extra, missing = sorted(set(saved) - set(want)), sorted(set(want) - set(saved))
        bad = [k for k in set(saved) & set(want) if saved[k] != want[k]]
        raise UserError(f"{folder}: the adapter's tensors do not match this model ({len(extra)} unknown, "
                        f"{len(missing)} missing, {len(bad)} of another shape, e.g. {(extra or missing or bad)[:1]}); "
                        "it was written for another model or its file was changed: write it again")


def read_record(path: str | Path) -> dict:
    f = Path(path) / RECORD_FILE
    return json.loads(f.read_text()) if f.is_file() else {}
