"""The fast forward pass shared by training and teacher-forced evaluation.

Four tricks, all exact:
- logits only where a label is supervised: the LM head (vocab x hidden) is the largest single matmul of a small
  model, and a fact's answer is a few tokens of a longer row;
- a shared prefix: rows of a batch that start with the same tokens ("Question: What is the phone number of", a chat
  template's system turn) have identical states there under causal attention, so that prefix runs once, as one row,
  and the batch continues from its key/value cache (gradients flow back through the cache to the prefix);
- no work after the last wanted position: a row's final token (the answer's terminator) predicts nothing that is
  supervised, and under causal attention no earlier position sees it, so it is not fed;
- a prefix cache: when LoRA sits only on layers >= L, the hidden states entering layer L never change during
  training, so they are computed once and each step runs only layers L..end (forward and backward).
"""

from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

from loramem.formats import Rendered

log = logging.getLogger(__name__)

IGNORE = -100


@dataclass
class Batch:
    index: list[int]  # which rendered items, in order
    input_ids: torch.Tensor  # [B, T], right padded
    attention_mask: torch.Tensor
    labels: torch.Tensor  # [B, T] target at position t (already shifted: predicts token t+1), IGNORE elsewhere
    eval_mask: torch.Tensor  # [B, T] positions whose argmax must match for exact match (answer span)
    tokens: int  # real (non-pad) tokens


def collate(items: Sequence[Rendered], index: list[int], pad_id: int, loss: str = "answer") -> Batch:
    """Right-padded batch; labels and eval mask are aligned with the position that predicts each token."""
    T = max(len(items[i].ids) for i in index)
    B = len(index)
    ids = torch.full((B, T), pad_id, dtype=torch.long)
    att = torch.zeros((B, T), dtype=torch.long)
    labels = torch.full((B, T), IGNORE, dtype=torch.long)
    emask = torch.zeros((B, T), dtype=torch.bool)
    tokens = 0
    for row, i in enumerate(index):
        r = items[i]
        n = len(r.ids)
        t = torch.tensor(r.ids, dtype=torch.long)
        ids[row, :n] = t
        att[row, :n] = 1
        tokens += n
        lo = 1 if loss == "sequence" else max(r.answer_start, 1)
        labels[row, lo - 1 : n - 1] = t[lo:n]
        a0, a1 = max(r.answer_start, 1), r.answer_end
        emask[row, a0 - 1 : a1 - 1] = True
    return Batch(list(index), ids, att, labels, emask, tokens)


def concat_batches(parts: Sequence[Batch], pad_id: int) -> Batch:
    """One right-padded batch of several batches' rows, in order (`index` then counts rows, not items)."""
    if len(parts) == 1:
        return parts[0]
    T = max(p.input_ids.shape[1] for p in parts)

    def pad(t: torch.Tensor, value) -> torch.Tensor:
        return torch.nn.functional.pad(t, (0, T - t.shape[1]), value=value)

    return Batch([i for p in parts for i in p.index],
                 torch.cat([pad(p.input_ids, pad_id) for p in parts]),
                 torch.cat([pad(p.attention_mask, 0) for p in parts]),
                 torch.cat([pad(p.labels, IGNORE) for p in parts]),
                 torch.cat([pad(p.eval_mask, False) for p in parts]),
                 sum(p.tokens for p in parts))


def length_batches(items: Sequence[Rendered], batch_size: int, rng: random.Random | None) -> list[list[int]]:
    """Indices grouped by length (little padding waste); batch order shuffled when an rng is given."""
    order = sorted(range(len(items)), key=lambda i: (len(items[i].ids), i))
    if rng is not None:
        # shuffle within equal-length runs too, so batches differ between epochs
        keyed = sorted(order, key=lambda i: (len(items[i].ids), rng.random()))
        order = keyed
    batches = [order[k : k + batch_size] for k in range(0, len(order), batch_size)]
    if rng is not None:
        rng.shuffle(batches)
    return batches


def _inner(model) -> torch.nn.Module:
    """The causal-LM model under any PEFT wrapping."""
    m = model
    if hasattr(m, "get_base_model"):
        m = m.get_base_model()
    return m


def _softcap(model, logits: torch.Tensor) -> torch.Tensor:
    cap = getattr(_inner(model).config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


# a shared prefix pays when it saves at least this many token positions (the one-row prefix pass reads every weight)
MIN_SHARED_SAVING = 32


def shared_prefix_len(batch: Batch, mask: torch.Tensor, rows: Sequence[int] | None = None) -> int:
    """Tokens every row of the batch starts with, up to the first position whose logits are wanted (0: none).
    With `rows` (the row groups of several adapters, in batch order) the prefix is shared within each group: the
    rows of one group start alike, and every group's prefix has the same length."""
    ids, att = batch.input_ids, batch.attention_mask
    rows = [ids.shape[0]] if rows is None else [n for n in rows if n]
    if sum(rows) - len(rows) < 1:
        return 0
    P, start = ids.shape[1], 0
    for n in rows:
        g, a = ids[start : start + n], att[start : start + n]
        same = ((g == g[:1]).all(0) & (a == 1).all(0)).long()
        P = min(P, int(same.cumprod(0).sum()))
        start += n
    wanted = mask.any(0)
    if not wanted.any():
        return 0
    P = min(P, int(wanted.long().argmax()))
    return P if (sum(rows) - len(rows)) * P >= MIN_SHARED_SAVING else 0


def prefix_kv_cache(model, ids: torch.Tensor, att: torch.Tensor, rows: int | torch.Tensor):
    """Key/value cache of token prefixes [G, P] through the decoder (no logits), spread over the batch: `rows`
    copies of a single prefix, or, as a tensor, the prefix row each batch row continues. Gradients flow through it
    when grad mode is on (the writer's shared prefix)."""
    from transformers import DynamicCache

    lm = _inner(model)
    cache = DynamicCache(config=lm.config)
    lm.get_decoder()(input_ids=ids, attention_mask=att, cache=cache, use_cache=True)
    if isinstance(rows, int):
        cache.batch_repeat_interleave(rows)
    else:
        cache.batch_select_indices(rows.to(ids.device))
    return cache


def logits_at(model, batch: Batch, mask: torch.Tensor, hidden_in: torch.Tensor | None = None,
              start_layer: int = 0, share_prefix: bool = False, lanes=None) -> torch.Tensor:
    """Logits [N, V] (float32) at the positions of `mask`, optionally starting from cached hidden states or
    running the batch's shared token prefix once. With `lanes` (a `loramem.lanes.Lanes` that is on), each row group
    reads its own adapter, and a shared prefix runs once per group."""
    lm = _inner(model)
    dev = next(lm.parameters()).device
    wanted = mask.any(0).nonzero()
    end = int(wanted.max()) + 1 if len(wanted) else mask.shape[1]
    if end < mask.shape[1]:
        # positions after the last wanted one feed nothing wanted (causal attention): drop them, e.g. the terminator
        batch = Batch(batch.index, batch.input_ids[:, :end], batch.attention_mask[:, :end], batch.labels[:, :end],
                      batch.eval_mask[:, :end], batch.tokens)
        mask = mask[:, :end]
        hidden_in = None if hidden_in is None else hidden_in[:, :end]
    att = batch.attention_mask.to(dev)
    decoder = lm.get_decoder()
    groups = None if lanes is None else [n for n in lanes.rows if n]
    P = shared_prefix_len(batch, mask, groups) if (share_prefix and hidden_in is None) else 0
    if P:
        ids = batch.input_ids.to(dev)
        if groups is None:
            cache = prefix_kv_cache(model, ids[:1, :P], att[:1, :P], ids.shape[0])
        else:  # one prefix row per lane, each through its own adapter
            firsts = [sum(groups[:g]) for g in range(len(groups))]
            which = torch.repeat_interleave(torch.arange(len(groups)), torch.tensor(groups))
            with lanes.split([1 if n else 0 for n in lanes.rows]):
                cache = prefix_kv_cache(model, ids[firsts, :P], att[firsts, :P],
                                        ids.shape[0] if len(groups) == 1 else which)
        out = decoder(input_ids=ids[:, P:], attention_mask=att, cache=cache, use_cache=True)
        h = out.last_hidden_state[mask[:, P:].to(dev)]
        return _softcap(model, lm.get_output_embeddings()(h).float())
    if hidden_in is None:
        out = decoder(input_ids=batch.input_ids.to(dev), attention_mask=att, use_cache=False)
    else:
        with _layers_from(decoder, start_layer):
            out = decoder(inputs_embeds=hidden_in.to(dev), attention_mask=att, use_cache=False)
    h = out.last_hidden_state[mask.to(dev)]
    return _softcap(model, lm.get_output_embeddings()(h).float())


@contextlib.contextmanager
def _layers_from(decoder, start: int) -> Iterator[None]:
    layers = decoder.layers
    decoder.layers = torch.nn.ModuleList(list(layers)[start:])
    try:
        yield
    finally:
        decoder.layers = layers


class _Reached(Exception):
    """Raised by a pre-hook once the wanted layer's input is captured: the layers above it never run."""


@torch.no_grad()
def hidden_before(model, batch: Batch, layer: int) -> torch.Tensor:
    """Hidden states entering decoder layer `layer` (the input of that layer), [B, T, H]. Only the layers below
    it run: a pre-hook on that layer takes its input and stops the forward pass there."""
    lm = _inner(model)
    dev = next(lm.parameters()).device
    decoder = lm.get_decoder()
    ids, att = batch.input_ids.to(dev), batch.attention_mask.to(dev)
    if not 0 < layer < len(decoder.layers):
        out = decoder(input_ids=ids, attention_mask=att, output_hidden_states=True, use_cache=False)
        return out.hidden_states[layer].detach()
    got: dict[str, torch.Tensor] = {}

    def take(module, args, kwargs):
        got["h"] = (args[0] if args else kwargs["hidden_states"]).detach()
        raise _Reached

    handle = decoder.layers[layer].register_forward_pre_hook(take, with_kwargs=True)
    try:
        decoder(input_ids=ids, attention_mask=att, use_cache=False)
    except _Reached:
        pass
    finally:
        handle.remove()
    return got["h"]


class PrefixCache:
    """Hidden states entering `layer` for every item, computed once with the frozen lower layers."""

    def __init__(self, model, items: Sequence[Rendered], layer: int, pad_id: int, autocast) -> None:
        self.layer = layer
        self.rows: list[torch.Tensor] = [None] * len(items)  # type: ignore[list-item]
        for idx in length_batches(items, 64, None):
            b = collate(items, idx, pad_id)
            with autocast():
                h = hidden_before(model, b, layer)
            for row, i in enumerate(idx):
                self.rows[i] = h[row, : len(items[i].ids)].to(torch.bfloat16 if h.dtype == torch.bfloat16 else h.dtype).cpu()

    def batch_hidden(self, batch: Batch) -> torch.Tensor:
        T = batch.input_ids.shape[1]
        first = self.rows[batch.index[0]]
        out = torch.zeros((len(batch.index), T, first.shape[-1]), dtype=first.dtype)
        for row, i in enumerate(batch.index):
            out[row, : self.rows[i].shape[0]] = self.rows[i]
        return out


def _low_precision(model, autocast) -> bool:
    """bf16/fp16 weights or autocast: compare with a tolerance of a few low-precision rounding steps."""
    return next(_inner(model).parameters()).dtype in (torch.bfloat16, torch.float16) or (
        autocast is not contextlib.nullcontext)


def _same_logits(model, autocast, full: torch.Tensor, part: torch.Tensor,
                 exact: Callable[[], torch.Tensor] | None = None) -> bool:
    """Do a shortcut's logits match the full pass, within a few rounding steps of the compute precision?

    Under bf16 autocast on fp32 weights, `exact` (the full pass, run here with autocast off) gives the fp32 logits;
    the shortcut passes when it is no further from them than the bf16 full pass itself is (x1.5): through 30 layers
    of bf16 the two bf16 paths differ by ~2% of the logit scale, and each of them differs from fp32 by as much."""
    if full.shape != part.shape:
        return False
    scale = max(1.0, full.abs().max().item())
    if not _low_precision(model, autocast):
        return bool(torch.allclose(full, part, atol=2e-3 * scale / 10, rtol=0))
    if torch.allclose(full, part, atol=5e-2 * scale / 10, rtol=0):
        return True
    weight = next(_inner(model).parameters())
    if exact is None or weight.dtype != torch.float32:
        return False  # bf16/fp16 weights: no exact reference at hand
    with torch.no_grad(), torch.autocast(weight.device.type, enabled=False):
        ref = exact().float()
    return (part.float() - ref).abs().max().item() <= 1.5 * (full.float() - ref).abs().max().item() + 1e-3 * scale


def shared_prefix_ok(model, items: Sequence[Rendered], pad_id: int, autocast, loss: str = "answer") -> bool:
    """Check on a real batch that running the shared prefix once reproduces the full forward pass."""
    idx = list(range(min(8, len(items))))
    b = collate(items, idx, pad_id, loss)
    mask = b.labels != IGNORE
    if not shared_prefix_len(b, mask):
        return False
    try:
        with torch.no_grad(), autocast():
            full = logits_at(model, b, mask)
            part = logits_at(model, b, mask, share_prefix=True)
    except Exception as exc:  # an architecture whose decoder takes no key/value cache this way
        log.info("shared prefix disabled: %s", exc)
        return False
    same = _same_logits(model, autocast, full, part, exact=lambda: logits_at(model, b, mask))
    if not same:
        log.info("shared prefix disabled: it differs from the full forward pass")
    return same


def prefix_cache_ok(model, items: Sequence[Rendered], layer: int, pad_id: int, autocast) -> bool:
    """Check on a real batch that starting at `layer` from cached states reproduces the full forward pass."""
    if layer <= 0 or not hasattr(_inner(model).get_decoder(), "layers"):
        return False
    # the three shortest rows (padding included when their lengths differ): cheap, and the check is per position
    idx = sorted(range(len(items)), key=lambda i: len(items[i].ids))[:3]
    b = collate(items, idx, pad_id)
    try:
        with torch.no_grad(), autocast():
            full = logits_at(model, b, b.eval_mask)
            h = hidden_before(model, b, layer)
            part = logits_at(model, b, b.eval_mask, hidden_in=h, start_layer=layer)
    except Exception as exc:  # an architecture whose decoder cannot start mid-stack
        log.info("prefix cache disabled: %s", exc)
        return False
    same = _same_logits(model, autocast, full, part, exact=lambda: logits_at(model, b, b.eval_mask))
    if not same:
        log.info("prefix cache disabled: partial forward differs from the full one")
    return same
