"""The one batched decoding loop: every answer loramem generates comes out of `decode`.

    rows = decode(model, tok, prompts, max_new_tokens=32)                     # the active adapter (or none)
    rows = decode(host, tok, prompts, 16, adapters=["bk_1", "bk_2", BASE])    # each row through its own module
    rows[0].text, rows[0].new_tokens, rows[0].mean_logprob, rows[0].finish

Prompts of similar length go together in left-padded batches. A start every prompt of a batch shares (the same
documents in context) runs once and each row continues from its key/value cache. Each row stops at its own rule
(`Prompt.stop_ids`, the one-line rule of the plain format, its own token limit); the batch ends when every row has.
Greedy by default; `Sampling` adds temperature/top-p and a repetition penalty for the chat models that write
synthetic data. The greedy loop picks the argmax of the model's logits, as `generate(do_sample=False)` does.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from loramem.answer.prompt import Prompt

BASE = "__base__"  # PEFT's name for "no adapter" in a mixed-adapter batch
MIN_SHARED_PREFIX = 64  # tokens; below this a shared start is not worth a separate pass


@dataclass(frozen=True)
class Sampling:
    """Sampled decoding (generators): temperature 0 is greedy."""

    temperature: float = 0.0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    seed: int = 0


@dataclass
class Decoded:
    text: str
    ids: list[int]  # the new tokens, the one that stopped the row included
    prompt_tokens: int
    new_tokens: int
    mean_logprob: float  # mean log-probability of the new tokens under the model (the answer's confidence)
    finish: str  # "stop" (a stop rule) or "length" (the token limit)
    batch: int = 1
    ms: float = 0.0  # this row's share of its batch's wall time


_NEWLINES: dict[int, frozenset[int]] = {}


def newline_ids(tok) -> frozenset[int]:
    """Every token whose text holds a newline (plain answers are one line); cached per tokenizer."""
    key = id(tok)
    if key not in _NEWLINES:
        pieces = tok.convert_ids_to_tokens(list(range(len(tok))))
        # newline as byte-level BPE ("Ċ"), SentencePiece byte ("<0x0A>") or itself; confirmed by decoding
        maybe = [i for i, p in enumerate(pieces) if p and ("Ċ" in p or "<0x0A>" in p or "\n" in p)]
        _NEWLINES[key] = frozenset(i for i in maybe if "\n" in tok.decode([i]))
    return _NEWLINES[key]


def shared_prefix(prompts: Sequence[Sequence[int]]) -> int:
    """Tokens every prompt starts with (each keeps at least its last token to feed); 0 below MIN_SHARED_PREFIX."""
    if len(prompts) < 2:
        return 0
    n = min(len(p) for p in prompts) - 1
    first = prompts[0]
    P = 0
    while P < n and all(p[P] == first[P] for p in prompts):
        P += 1
    return P if P >= MIN_SHARED_PREFIX else 0


@torch.no_grad()
def decode(model, tok, prompts: Sequence[Prompt], max_new_tokens: int | Sequence[int] = 32,
           adapters: Sequence[str] | None = None, batch_size: int = 16, min_new_tokens: int = 0,
           sampling: Sampling | None = None) -> list[Decoded]:
    """Answers to `prompts` (one per prompt, in order). `adapters[i]`: the PEFT adapter row i runs through
    (BASE for none); None: whatever `model` has active. `max_new_tokens`: one limit, or one per prompt."""
    limits = [max_new_tokens] * len(prompts) if isinstance(max_new_tokens, int) else list(max_new_tokens)
    if len(limits) != len(prompts) or (adapters is not None and len(adapters) != len(prompts)):
        raise ValueError("one token limit and one adapter per prompt")
    out: list[Decoded | None] = [None] * len(prompts)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i].ids))
    model.eval()
    if adapters is not None:
        _keep_active_adapter_loaded(model, adapters)
    for s in range(0, len(order), max(1, batch_size)):
        idx = order[s : s + batch_size]
        t0 = time.perf_counter()
        rows = _decode_batch(model, tok, [prompts[i] for i in idx], [limits[i] for i in idx],
                             None if adapters is None else [adapters[i] for i in idx], min_new_tokens, sampling)
        ms = (time.perf_counter() - t0) * 1000 / len(idx)
        for i, r in zip(idx, rows, strict=True):
            r.ms, r.batch = ms, len(idx)
            out[i] = r
    return out  # type: ignore[return-value]


def _keep_active_adapter_loaded(model, adapters: Sequence[str]) -> None:
    """PEFT reads the active adapter's config even in mixed batches; it may have been deleted since."""
    real = [a for a in adapters if a != BASE]
    cfgs = getattr(model, "peft_config", {})
    if real and getattr(model, "active_adapter", None) not in cfgs:
        model.set_adapter(real[0])


def _decode_batch(model, tok, prompts: list[Prompt], limits: list[int], adapters: list[str] | None,
                  min_new: int, sampling: Sampling | None) -> list[Decoded]:
    from transformers import DynamicCache

    from loramem.forward import prefix_kv_cache

    dev = next(model.parameters()).device
    B = len(prompts)
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    seqs = [list(p.ids) for p in prompts]
    P = shared_prefix(seqs) if adapters is None else 0  # a prefix's cache is per adapter: one adapter only
    T = P + max(len(q) - P for q in seqs)
    ids = torch.full((B, T), pad, dtype=torch.long)
    att = torch.zeros((B, T), dtype=torch.long)
    for r, q in enumerate(seqs):  # [shared prefix][padding][rest]: every prompt ends at column T
        ids[r, :P], att[r, :P] = torch.tensor(q[:P], dtype=torch.long), 1
        ids[r, T - (len(q) - P):] = torch.tensor(q[P:], dtype=torch.long)
        att[r, T - (len(q) - P):] = 1
    ids, att = ids.to(dev), att.to(dev)
    pos = (att.cumsum(-1) - 1).clamp(min=0)
    extra = {} if adapters is None else {"adapter_names": list(adapters)}
    if P:
        cache = prefix_kv_cache(model, ids[:1, :P], att[:1, :P], B)
    else:
        cache = DynamicCache(config=_config(model))
    stops = [p.stop_ids for p in prompts]
    newlines = newline_ids(tok) if any(p.one_line for p in prompts) else frozenset()
    gen = torch.Generator(device="cpu").manual_seed(sampling.seed) if sampling else None
    new: list[list[int]] = [[] for _ in range(B)]
    logps: list[list[float]] = [[] for _ in range(B)]
    finish: list[str | None] = [None] * B
    seen_text = [False] * B
    feed, feed_pos = ids[:, P:], pos[:, P:]
    for step in range(max(limits)):
        logits = model(input_ids=feed, attention_mask=att, position_ids=feed_pos, cache=cache, use_cache=True,
                       logits_to_keep=1, **extra).logits[:, -1, :].float()
        if step < min_new:  # a free-text answer must say something: no stop token yet
            for r in range(B):
                logits[r, list(stops[r])] = float("-inf")
        if sampling is not None and sampling.repetition_penalty != 1.0:
            _penalize(logits, seqs, new, sampling.repetition_penalty)
        nxt = _pick(logits, sampling, gen)
        lp = torch.log_softmax(logits, -1).gather(1, nxt[:, None]).squeeze(1).tolist()
        for r, t in enumerate(nxt.tolist()):
            if finish[r] is not None:
                continue
            new[r].append(t)
            logps[r].append(lp[r])
            if t in stops[r]:
                finish[r] = "stop"
            elif prompts[r].one_line and t in newlines:
                if seen_text[r]:
                    finish[r] = "stop"
            else:
                seen_text[r] = True
            if finish[r] is None and len(new[r]) >= limits[r]:
                finish[r] = "length"
        if all(f is not None for f in finish):
            break
        done = torch.tensor([f is not None for f in finish], device=dev)
        nxt = torch.where(done, torch.full_like(nxt, pad), nxt)  # finished rows idle on padding
        feed = nxt[:, None]
        feed_pos = feed_pos[:, -1:] + 1
        att = torch.cat([att, torch.ones((B, 1), dtype=att.dtype, device=dev)], 1)
    return [_row(tok, p, n, lp, f or "length") for p, n, lp, f in zip(prompts, new, logps, finish, strict=True)]


def _config(model):
    m = model.get_base_model() if hasattr(model, "get_base_model") else model
    return m.config


def _pick(logits: torch.Tensor, sampling: Sampling | None, gen) -> torch.Tensor:
    if sampling is None or sampling.temperature <= 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits / sampling.temperature, -1)
    if sampling.top_p < 1.0:
        sorted_p, order = probs.sort(-1, descending=True)
        keep = sorted_p.cumsum(-1) - sorted_p < sampling.top_p  # the smallest set whose mass reaches top_p
        sorted_p = sorted_p * keep
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    return torch.multinomial(probs.cpu(), 1, generator=gen).squeeze(1).to(logits.device)


def _penalize(logits: torch.Tensor, prompts: list[list[int]], new: list[list[int]], penalty: float) -> None:
    """CTRL's repetition penalty, as transformers applies it, over each row's real tokens so far."""
    for r in range(logits.shape[0]):
        seen = torch.tensor(sorted(set(prompts[r]) | set(new[r])), device=logits.device)
        score = logits[r, seen]
        logits[r, seen] = torch.where(score < 0, score * penalty, score / penalty)


def _row(tok, prompt: Prompt, new: list[int], logps: list[float], finish: str) -> Decoded:
    body = new[:-1] if (finish == "stop" and new and new[-1] in prompt.stop_ids) else new
    text = tok.decode(body, skip_special_tokens=True).strip()
    if prompt.one_line:
        text = text.split("\n")[0].strip()
    mean = sum(logps) / len(logps) if logps else float("-inf")
    return Decoded(text, new, len(prompt.ids), len(new), mean, finish)
