"""The one batched decoding loop: every answer loramem generates comes out of `Batch.step`.

    rows = decode(model, tok, prompts, max_new_tokens=32)                     # the active adapter (or none)
    rows = decode(host, tok, prompts, 16, adapters=["bk_1", "bk_2", BASE])    # each row through its own module
    rows[0].text, rows[0].new_tokens, rows[0].mean_logprob, rows[0].finish

A `Batch` is the set of rows decoding together and their key/value cache. `join` prefills new rows (left-padded,
one forward; a prompt over `prefill_chunk` tokens in chunks, one chunk per step, so the rows already decoding keep
moving) and appends their cache to the batch's; `step` picks one token for every row and lets the finished rows
leave. `decode` fills a batch with prompts of similar length and steps it until it is empty; the server's
scheduler joins requests between steps instead (continuous batching). A start every prompt of a first join shares
(the same documents in context) runs once and each row continues from its cache.

Each row stops at its own rule (`Prompt.stop_ids`, `Prompt.stop_texts`, the one-line rule of the plain format,
its own token limit, its deadline). Greedy by default, the argmax of the logits as `generate(do_sample=False)`
picks; a row's `Sampling` adds temperature/top-p, a repetition penalty and its own seeded generator.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from loramem.answer.prompt import Prompt

log = logging.getLogger("loramem.decode")
BASE = "__base__"  # PEFT's name for "no adapter" in a mixed-adapter batch
MIN_SHARED_PREFIX = 64  # tokens; below this a shared start is not worth a separate pass


@dataclass(frozen=True)
class Sampling:
    """Sampled decoding (generators, the server's temperature): temperature 0 is greedy."""

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
    finish: str  # "stop" (a stop rule) or "length" (the token limit, or the deadline)
    batch: int = 1
    ms: float = 0.0  # this row's share of its batch's wall time
    logprobs: list[float] = field(default_factory=list)  # one per new token
    top_logprobs: list[list[tuple[int, float]]] = field(default_factory=list)  # per token, when asked
    timed_out: bool = False  # the row's deadline ended it


@dataclass(eq=False)
class Row:
    """One answer being decoded: its prompt, limit, adapter and sampling, and the tokens so far.
    `on_token(row)` runs after each new token (streaming); `deadline` is a time.monotonic() past which the row ends
    with finish "length" and `timed_out`."""

    prompt: Prompt
    limit: int
    adapter: str = BASE
    sampling: Sampling | None = None
    min_new: int = 0
    top_logprobs: int = 0
    deadline: float | None = None
    on_token: Callable[[Row], None] | None = None
    new: list[int] = field(default_factory=list)
    logps: list[float] = field(default_factory=list)
    tops: list[list[tuple[int, float]]] = field(default_factory=list)
    finish: str | None = None
    timed_out: bool = False
    batch: int = 1  # the most rows it decoded beside
    ms: float = 0.0
    seen_text: bool = False
    gen: torch.Generator | None = None
    t0: float = 0.0

    def _raw(self, tok) -> str:
        stopped = self.finish == "stop" and self.new and self.new[-1] in self.prompt.stop_ids
        text = tok.decode(self.new[:-1] if stopped else self.new, skip_special_tokens=True)
        cut = first_stop(text, self.prompt.stop_texts)
        return text if cut is None else text[:cut]

    def text(self, tok) -> str:
        """The answer: stop token and stop text left out, stripped (one line in the plain format)."""
        return _tidy(self._raw(tok), self.prompt.one_line)

    def visible(self, tok) -> str:
        """The part of the answer no later token can change (what a stream may send now)."""
        if self.finish is not None:
            return self.text(tok)
        raw = self._raw(tok).rstrip("\ufffd")  # an unfinished multi-byte character
        for s in self.prompt.stop_texts:  # a stop text may be starting: hold its first characters back
            for k in range(min(len(s) - 1, len(raw)), 0, -1):
                if raw.endswith(s[:k]):
                    raw = raw[:-k]
                    break
        return _tidy(raw, self.prompt.one_line)

    def decoded(self, tok) -> Decoded:
        mean = sum(self.logps) / len(self.logps) if self.logps else float("-inf")
        return Decoded(self.text(tok), list(self.new), len(self.prompt.ids), len(self.new), mean,
                       self.finish or "length", self.batch, self.ms, list(self.logps), list(self.tops), self.timed_out)


def _tidy(text: str, one_line: bool) -> str:
    text = text.strip()
    return text.split("\n")[0].strip() if one_line else text


def first_stop(text: str, stops: Sequence[str]) -> int | None:
    """Where the first of the stop texts starts in text (None: none occurs)."""
    found = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return min(found) if found else None


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
           sampling: Sampling | Sequence[Sampling | None] | None = None) -> list[Decoded]:
    """Answers to `prompts` (one per prompt, in order). `adapters[i]`: the PEFT adapter row i runs through
    (BASE for none); None: whatever `model` has active. `max_new_tokens`: one limit, or one per prompt.
    `sampling`: one for all (row i seeded with seed + i, so equal prompts still differ), or one per prompt."""
    n = len(prompts)
    limits = [max_new_tokens] * n if isinstance(max_new_tokens, int) else list(max_new_tokens)
    if isinstance(sampling, Sampling):
        sampling = [Sampling(sampling.temperature, sampling.top_p, sampling.repetition_penalty, sampling.seed + i)
                    for i in range(n)]
    samplings = list(sampling) if sampling is not None else [None] * n
    if len(limits) != n or len(samplings) != n or (adapters is not None and len(adapters) != n):
        raise ValueError("one token limit, sampling and adapter per prompt")
    rows = [Row(p, limits[i], adapters[i] if adapters is not None else BASE, samplings[i], min_new_tokens)
            for i, p in enumerate(prompts)]
    return decode_rows(model, tok, rows, mixed=adapters is not None, batch_size=batch_size)


@torch.no_grad()
def decode_rows(model, tok, rows: Sequence[Row], mixed: bool = False, batch_size: int = 16) -> list[Decoded]:
    """`decode` over rows a caller built (its own limits, sampling, stop texts, callbacks), in order."""
    model.eval()
    order = sorted(range(len(rows)), key=lambda i: len(rows[i].prompt.ids))
    for s in range(0, len(rows), max(1, batch_size)):
        t0 = time.perf_counter()
        batch = Batch(model, tok, mixed=mixed)
        part = [rows[i] for i in order[s : s + batch_size]]
        batch.join(part, share_prefix=not mixed)
        while batch.busy:
            batch.step()
        ms = (time.perf_counter() - t0) * 1000 / len(part)
        for r in part:  # the batch's wall time, shared among its rows
            r.ms, r.batch = ms, len(part)
    return [r.decoded(tok) for r in rows]


class Batch:
    """Rows decoding together: their cache, attention mask and next input token, one row each."""

    def __init__(self, model, tok, mixed: bool = False, prefill_chunk: int = 0) -> None:
        self.model, self.tok, self.mixed, self.chunk = model, tok, mixed, prefill_chunk
        self.pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
        self.rows: list[Row] = []
        self.cache = self.att = self.feed = None
        self.pending: list[_Prefill] = []  # long prompts being prefilled a chunk per step

    @property
    def busy(self) -> bool:
        return bool(self.rows or self.pending)

    @property
    def adapters(self) -> set[str]:
        return {r.adapter for r in self.rows} | {p.row.adapter for p in self.pending}

    def join(self, rows: Sequence[Row], share_prefix: bool = False) -> list[Row]:
        """Prefill rows and add them to the batch (long ones start their chunked prefill) -> rows that finished."""
        now = time.perf_counter()
        for r in rows:
            r.t0 = now
            if r.sampling is not None and r.sampling.temperature > 0:
                r.gen = torch.Generator(device="cpu").manual_seed(r.sampling.seed)
        long = [r for r in rows if self.chunk and len(r.prompt.ids) > self.chunk]
        self.pending += [_Prefill(r) for r in long]
        short = [r for r in rows if r not in long]
        return self._prefill(short, share_prefix and not self.mixed) if short else []

    def step(self) -> list[Row]:
        """One chunk of a pending long prefill, then one token for every decoding row -> rows that finished."""
        done = self._advance_prefill() if self.pending else []
        if not self.rows:
            return done
        dev = self.att.device
        att = torch.cat([self.att, torch.ones((len(self.rows), 1), dtype=self.att.dtype, device=dev)], 1)
        pos = self.att.sum(-1, keepdim=True)
        logits = self._forward(self.feed, att, pos, self.cache, self.rows)
        self.att = att
        return done + self._pick(logits)

    # ---- inside ----

    def _forward(self, ids, att, pos, cache, rows: Sequence[Row]) -> torch.Tensor:
        extra = {}
        if self.mixed:
            _keep_active_adapter_loaded(self.model, [r.adapter for r in rows])
            extra["adapter_names"] = [r.adapter for r in rows]
        return self.model(input_ids=ids, attention_mask=att, position_ids=pos, cache=cache, use_cache=True,
                          logits_to_keep=1, **extra).logits[:, -1, :].float()

    def _prefill(self, rows: list[Row], share_prefix: bool) -> list[Row]:
        from transformers import DynamicCache

        from loramem.forward import prefix_kv_cache

        dev = next(self.model.parameters()).device
        B = len(rows)
        seqs = [list(r.prompt.ids) for r in rows]
        P = shared_prefix(seqs) if share_prefix else 0  # a prefix's cache is per adapter: one adapter only
        T = P + max(len(q) - P for q in seqs)
        ids = torch.full((B, T), self.pad, dtype=torch.long)
        att = torch.zeros((B, T), dtype=torch.long)
        for r, q in enumerate(seqs):  # [shared prefix][padding][rest]: every prompt ends at column T
            ids[r, :P], att[r, :P] = torch.tensor(q[:P], dtype=torch.long), 1
            ids[r, T - (len(q) - P):] = torch.tensor(q[P:], dtype=torch.long)
            att[r, T - (len(q) - P):] = 1
        ids, att = ids.to(dev), att.to(dev)
        pos = (att.cumsum(-1) - 1).clamp(min=0)
        if P:
            cache = prefix_kv_cache(self.model, ids[:1, :P], att[:1, :P], B)
        else:
            cache = DynamicCache(config=_config(self.model))
        logits = self._forward(ids[:, P:], att, pos[:, P:], cache, rows)
        self._append(rows, cache, att)
        return self._pick(logits, rows)

    def _advance_prefill(self) -> list[Row]:
        from transformers import DynamicCache

        p = self.pending[0]
        dev = next(self.model.parameters()).device
        ids = p.row.prompt.ids
        if p.cache is None:
            p.cache = DynamicCache(config=_config(self.model))
        end = min(len(ids), p.done + self.chunk)
        feed = torch.tensor([ids[p.done:end]], dtype=torch.long, device=dev)
        att = torch.ones((1, end), dtype=torch.long, device=dev)
        pos = torch.arange(p.done, end, device=dev)[None]
        logits = self._forward(feed, att, pos, p.cache, [p.row])
        p.done = end
        if end < len(ids):
            return []
        self.pending.pop(0)
        self._append([p.row], p.cache, att)
        return self._pick(logits, [p.row])

    def _append(self, rows: list[Row], cache, att) -> None:
        """Add prefilled rows (cache and mask of their own length) below the batch's, left-padded to one length."""
        feed = torch.full((len(rows), 1), self.pad, dtype=torch.long, device=att.device)
        if not self.rows:
            self.rows, self.cache, self.att, self.feed = list(rows), cache, att, feed
            return
        T = max(self.att.shape[1], att.shape[1])
        for mine, theirs in zip(self.cache.layers, cache.layers, strict=True):
            mine.keys = torch.cat([_lpad(mine.keys, T, 2), _lpad(theirs.keys, T, 2)])
            mine.values = torch.cat([_lpad(mine.values, T, 2), _lpad(theirs.values, T, 2)])
        self.att = torch.cat([_lpad(self.att, T, 1), _lpad(att, T, 1)])
        self.feed = torch.cat([self.feed, feed])
        self.rows += rows

    def _pick(self, logits: torch.Tensor, rows: list[Row] | None = None) -> list[Row]:
        """Choose each row's next token from its logits (the last `len(rows)` rows of the batch) -> finished."""
        rows = self.rows if rows is None else rows
        at = len(self.rows) - len(rows)
        for i, r in enumerate(rows):
            if len(r.new) < r.min_new:  # a free-text answer must say something: no stop token yet
                logits[i, list(r.prompt.stop_ids)] = float("-inf")
            if r.sampling is not None and r.sampling.repetition_penalty != 1.0:
                _penalize(logits[i], r.prompt.ids, r.new, r.sampling.repetition_penalty)
        nxt = torch.stack([_choose(logits[i], r) for i, r in enumerate(rows)])
        logp = torch.log_softmax(logits, -1)
        lp = logp.gather(1, nxt[:, None]).squeeze(1).tolist()
        k = max(r.top_logprobs for r in rows)
        top = logp.topk(k, -1) if k else None
        now = time.monotonic()
        for i, (r, t) in enumerate(zip(rows, nxt.tolist(), strict=True)):
            alts = None
            if k:
                alts = list(zip(top.indices[i, : r.top_logprobs].tolist(), top.values[i, : r.top_logprobs].tolist(),
                                strict=True))
            self._accept(r, t, lp[i], alts, now)
        self.feed[at:, 0] = nxt.to(self.feed.device)
        for r in rows:
            r.batch = max(r.batch, len(self.rows))
            if r.on_token is not None:
                try:
                    r.on_token(r)
                except Exception:  # a listener that broke (a closed event loop) must not stop the batch
                    log.exception("on_token failed; the row decodes on without it")
                    r.on_token = None
        return self._leave()

    def _accept(self, r: Row, t: int, lp: float, alts, now: float) -> None:
        r.new.append(t)
        r.logps.append(lp)
        if alts is not None and r.top_logprobs:
            r.tops.append(alts)
        p = r.prompt
        if t in p.stop_ids:
            r.finish = "stop"
        elif p.one_line and t in newline_ids(self.tok):
            if r.seen_text:
                r.finish = "stop"
        else:
            r.seen_text = True
        if r.finish is None and p.stop_texts and first_stop(self.tok.decode(r.new, skip_special_tokens=True),
                                                            p.stop_texts) is not None:
            r.finish = "stop"
        if r.finish is None and len(r.new) >= r.limit:
            r.finish = "length"
        if r.finish is None and r.deadline is not None and now > r.deadline:
            r.finish, r.timed_out = "length", True

    def _leave(self) -> list[Row]:
        """Drop the finished rows from the batch (and the cache columns no remaining row uses)."""
        gone = [r for r in self.rows if r.finish is not None]
        if not gone:
            return []
        end = time.perf_counter()
        for r in gone:
            r.ms = (end - r.t0) * 1000
        keep = [i for i, r in enumerate(self.rows) if r.finish is None]
        if not keep:
            self.rows, self.cache, self.att, self.feed = [], None, None, None
            return gone
        idx = torch.tensor(keep, device=self.att.device)
        self.cache.batch_select_indices(idx)
        self.att, self.feed = self.att[idx], self.feed[idx]
        self.rows = [self.rows[i] for i in keep]
        first = int((self.att.sum(0) > 0).nonzero()[0])  # columns only the finished rows used
        if first:
            self.att = self.att[:, first:]
            for layer in self.cache.layers:
                layer.keys, layer.values = layer.keys[:, :, first:], layer.values[:, :, first:]
        return gone


@dataclass(eq=False)
class _Prefill:
    row: Row
    cache: object = None
    done: int = 0  # prompt tokens already in the cache


def _lpad(x: torch.Tensor, T: int, dim: int) -> torch.Tensor:
    """x with zeros before its entries along dim, to length T (padding the attention mask leaves out)."""
    short = T - x.shape[dim]
    if short == 0:
        return x
    shape = list(x.shape)
    shape[dim] = short
    return torch.cat([torch.zeros(shape, dtype=x.dtype, device=x.device), x], dim)


def _keep_active_adapter_loaded(model, adapters: Sequence[str]) -> None:
    """PEFT reads the active adapter's config even in mixed batches; it may have been deleted since."""
    real = [a for a in adapters if a != BASE]
    cfgs = getattr(model, "peft_config", {})
    if real and getattr(model, "active_adapter", None) not in cfgs:
        model.set_adapter(real[0])


def _config(model):
    return model.config  # a PEFT wrapper passes it through (its get_base_model needs a loaded active adapter)


def _choose(logits: torch.Tensor, r: Row) -> torch.Tensor:
    s = r.sampling
    if s is None or s.temperature <= 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits / s.temperature, -1)
    if s.top_p < 1.0:
        sorted_p, order = probs.sort(-1, descending=True)
        keep = sorted_p.cumsum(-1) - sorted_p < s.top_p  # the smallest set whose mass reaches top_p
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p * keep)
    return torch.multinomial(probs.cpu(), 1, generator=r.gen).squeeze(0).to(logits.device)


def _penalize(logits: torch.Tensor, prompt: Sequence[int], new: list[int], penalty: float) -> None:
    """CTRL's repetition penalty, as transformers applies it, over the row's real tokens so far."""
    seen = torch.tensor(sorted(set(prompt) | set(new)), device=logits.device)
    score = logits[seen]
    logits[seen] = torch.where(score < 0, score * penalty, score / penalty)
