"""Reading a module back under teacher forcing: per item, the argmax at every answer position and whether it is
the target (exact match when all are: greedy decoding answers and stops)."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from loramem.formats import Rendered
from loramem.forward import Batch, PrefixCache, collate, length_batches, logits_at


@dataclass(frozen=True)
class Read:
    """One item read back under teacher forcing: the argmax token at each answer position, and which of them
    equal the target. All equal is exact match (greedy decoding answers and stops)."""

    pred_ids: list[int]
    hits: list[bool]

    @property
    def exact(self) -> bool:
        return bool(self.hits) and all(self.hits)

    @property
    def token_accuracy(self) -> float:
        return sum(self.hits) / len(self.hits) if self.hits else 0.0


@torch.no_grad()
def read_items(model, items: Sequence[Rendered], pad_id: int, autocast=contextlib.nullcontext,
               cache: PrefixCache | None = None, batch_size: int = 64, share_prefix: bool = False) -> list[Read]:
    """Per item: the argmax at every answer position and whether it is the target (one forward pass a batch)."""
    model.eval()
    out: list[Read] = [Read([], [])] * len(items)
    for idx in length_batches(items, batch_size, None):
        b = collate(items, idx, pad_id)
        with autocast():
            if cache is not None:
                logits = logits_at(model, b, b.eval_mask, cache.batch_hidden(b), cache.layer)
            else:
                logits = logits_at(model, b, b.eval_mask, share_prefix=share_prefix)
        for i, r in zip(idx, batch_reads(b, logits), strict=True):
            out[i] = r
    return out


def batch_reads(b: Batch, logits: torch.Tensor) -> list[Read]:
    """Per row of `b`: the `Read` of its answer span, from the logits at its `eval_mask` positions (row-major)."""
    pred = logits.argmax(-1).cpu()
    target = b.input_ids[:, 1:][b.eval_mask[:, :-1]]
    preds, hits = pred.tolist(), (pred == target).tolist()
    out, pos = [], 0
    for n in b.eval_mask.sum(1).tolist():
        out.append(Read(preds[pos:pos + n], hits[pos:pos + n]))
        pos += n
    return out


def exact_match_items(model, items: Sequence[Rendered], pad_id: int, autocast=contextlib.nullcontext,
                      cache: PrefixCache | None = None, batch_size: int = 64, share_prefix: bool = False) -> list[bool]:
    """Per item: does argmax equal the target at every answer position (= greedy decoding answers and stops)?"""
    return [r.exact for r in read_items(model, items, pad_id, autocast, cache, batch_size, share_prefix)]
