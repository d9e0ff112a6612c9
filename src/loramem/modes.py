"""One question, answered from parametric memory, retrieved chunks, whole documents in context, or a mix.

    from loramem.modes import answer
    out = answer("What is Anna Smith's number?", base, mode="lora+rag", host=host, index=index)
    out["answer"], out["prompt_tokens"], out["latency_ms"]

Modes:
    base      closed-book, memory modules off (the base model alone)
    lora      closed-book with the memory module(s) active on `host`
    rag       top-k chunks of `index` in the prompt, modules off
    icl       whole documents in the prompt (within the context budget), modules off
    lora+rag  rag with the modules active
    lora+icl  icl with the modules active

`host` is the PEFT-wrapped base model with the memory adapter(s) already active: whoever routes and merges
(`loramem ask` over a bank, a recipe, a notebook with `loramem.writer.load_adapter`) prepares it; this module
only switches it off for the modes without memory (`host.disable_adapter()`). A context over the budget is a
UserError unless `AnswerConfig(overflow="truncate")` asks to keep its first tokens; the row then says how many
tokens were cut. Every answer records prompt tokens, generated tokens and latency.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence

import torch

from loramem.config import AnswerConfig
from loramem.errors import UserError
from loramem.formats import question_prompt
from loramem.models import Base

MODES = ("base", "icl", "rag", "lora", "lora+rag", "lora+icl")
CONTEXT_SEPARATOR = "\n\n"


def uses_lora(mode: str) -> bool:
    return mode.startswith("lora")


def context_kind(mode: str) -> str | None:
    """'rag', 'icl' or None (closed-book)."""
    return mode.split("+")[-1] if mode.endswith(("rag", "icl")) else None


def context_budget(base: Base, cfg: AnswerConfig) -> int:
    """Prompt tokens allowed: the config's budget, else the model's context length minus the answer's room."""
    if cfg.context_budget is not None:
        return cfg.context_budget
    n_ctx = int(getattr(base.model.config, "max_position_embeddings", 2048) or 2048)
    return n_ctx - cfg.max_new_tokens


def question_text(question: str, cfg: AnswerConfig) -> str:
    return question_prompt(question) if cfg.template == "qa" else question.strip()


def build_prompt(question: str, context: Sequence[str], base: Base, cfg: AnswerConfig,
                 mode: str = "icl") -> tuple[list[int], int]:
    """Prompt token ids: context passages, a blank line, then the question. -> (ids, context tokens cut)."""
    tok = base.tokenizer
    text = question_text(question, cfg)
    q_ids = tok(text, add_special_tokens=False).input_ids
    full = tok(text, add_special_tokens=True).input_ids
    # whatever special prefix the tokenizer adds (BOS or nothing), as the writer's plain format has it
    bos = full[: len(full) - len(q_ids)] if full[len(full) - len(q_ids):] == q_ids else []
    if not context:
        return bos + q_ids, 0
    ctx_ids = tok(CONTEXT_SEPARATOR.join(context) + CONTEXT_SEPARATOR, add_special_tokens=False).input_ids
    budget = context_budget(base, cfg)
    room = budget - len(bos) - len(q_ids)
    if len(ctx_ids) <= room:
        return bos + ctx_ids + q_ids, 0
    if cfg.overflow == "error":
        fix = "fewer or shorter chunks (k)" if context_kind(mode) == "rag" else "--mode rag or fewer documents"
        raise UserError(
            f"the {mode} context is {len(ctx_ids) + len(bos) + len(q_ids)} prompt tokens, over the budget of "
            f"{budget}; use {fix}, a larger --context-budget, or --overflow truncate")
    if room <= 0:
        raise UserError(f"the question alone is over the context budget of {budget} tokens; shorten it")
    return bos + ctx_ids[:room] + q_ids, len(ctx_ids) - room


def gather_context(question: str, mode: str, index=None, documents=None, k: int | None = None,
                   method: str | None = None) -> tuple[list[str], list[dict]]:
    """Passages for the mode: retrieved chunks (rag) or whole documents (icl). -> (texts, retrieved hits)"""
    kind = context_kind(mode)
    if kind == "rag":
        if index is None:
            raise UserError(f"mode '{mode}' needs a RAG index; build one with `loramem index DOCS --out DIR`")
        hits = index.search(question, k=k, method=method)
        return [h.chunk.text for h in hits], [{"chunk": h.chunk.id, "score": round(h.score, 4)} for h in hits]
    if kind == "icl":
        docs = documents if documents is not None else (index.documents if index is not None else None)
        if not docs:
            raise UserError(f"mode '{mode}' needs documents (pass documents or an index that holds them)")
        from loramem.retrieval.corpus import as_documents

        return [d.text for d in as_documents(docs)], []
    return [], []


def memory_off(base: Base, host=None):
    """(model, context manager) giving base-model behaviour, whatever adapters are loaded on the shared wrapper."""
    host = host if host is not None else base.extra.get("peft")
    if host is not None and getattr(host, "active_adapter", None) in getattr(host, "peft_config", {}):
        return host, host.disable_adapter()
    # no wrapper, or its active adapter was deleted: the injected LoRA layers hold nothing active
    return base.model, contextlib.nullcontext()


def _memory(mode: str, base: Base, host):
    """The model to generate with and a context manager that switches memory off when the mode has none."""
    if uses_lora(mode):
        if host is None:
            raise UserError(f"mode '{mode}' needs memory modules; pass --bank DIR (or a module) or use --mode base")
        return host, contextlib.nullcontext()
    return memory_off(base, host)


_NEWLINE_IDS: dict[int, list[int]] = {}


def newline_ids(tok) -> list[int]:
    """Every token whose text holds a newline (answers are one line); cached per tokenizer.
    (generate's stop_strings rebuilds a vocabulary table on every call: ~0.5 s per answer.)"""
    key = id(tok)
    if key not in _NEWLINE_IDS:
        pieces = tok.convert_ids_to_tokens(list(range(len(tok))))
        # newline as byte-level BPE ("Ċ"), SentencePiece byte ("<0x0A>") or itself; confirmed by decoding
        maybe = [i for i, p in enumerate(pieces) if p and ("Ċ" in p or "<0x0A>" in p or "\n" in p)]
        _NEWLINE_IDS[key] = sorted(i for i in maybe if "\n" in tok.decode([i]))
    return _NEWLINE_IDS[key]


class _EndOfLine:
    """Stop once a newline follows some answer text (leading newlines are skipped, not taken as the answer)."""

    def __init__(self, start: int, ids: list[int], device) -> None:
        self.start = start
        self.ids = torch.tensor(ids, dtype=torch.long, device=device)

    def __call__(self, input_ids: torch.Tensor, scores, **kw) -> torch.Tensor:
        gen = input_ids[:, self.start:]
        is_nl = torch.isin(gen, self.ids)
        return is_nl[:, -1] & (~is_nl[:, :-1]).any(dim=1)


@torch.no_grad()
def generate_ids(model, base: Base, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
    """Greedy continuation of one prompt, stopped at end-of-sequence or at the end of the first text line."""
    from transformers import StoppingCriteriaList

    tok = base.tokenizer
    ids = torch.tensor([prompt_ids], device=base.device)
    stop = StoppingCriteriaList([_EndOfLine(len(prompt_ids), newline_ids(tok), base.device)])
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                         do_sample=False, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                         stopping_criteria=stop)
    return out[0, len(prompt_ids):].tolist()


def answer(question: str, base: Base, mode: str = "base", host=None, index=None, documents=None,
           cfg: AnswerConfig | None = None, k: int | None = None, method: str | None = None) -> dict:
    """Answer one question in `mode`; returns {answer, mode, prompt_tokens, generated_tokens, latency_ms, ...}."""
    if mode not in MODES:
        raise UserError(f"unknown mode '{mode}'; choose one of {', '.join(MODES)}")
    cfg = cfg or AnswerConfig()
    t0 = time.perf_counter()
    context, retrieved = gather_context(question, mode, index, documents, k, method)
    prompt_ids, cut = build_prompt(question, context, base, cfg, mode)
    model, memory = _memory(mode, base, host)
    model.eval()
    with memory:
        new = generate_ids(model, base, prompt_ids, cfg.max_new_tokens)
    latency_ms = (time.perf_counter() - t0) * 1000
    text = base.tokenizer.decode(new, skip_special_tokens=True).strip().split("\n")[0].strip()
    return {"answer": text, "mode": mode, "question": question, "prompt_tokens": len(prompt_ids),
            "context_tokens": len(prompt_ids) - len(build_prompt(question, [], base, cfg)[0]),
            "generated_tokens": len(new), "latency_ms": round(latency_ms, 2), "truncated_tokens": cut,
            "retrieved": retrieved}


def _cut_line(new: list[int], newlines: set[int], eos: int | None) -> list[int]:
    """A batch row's new tokens up to where `generate_ids` would have stopped (end of the first text line or
    end-of-sequence, that token included); what follows is padding after the row finished."""
    seen_text = False
    for j, t in enumerate(new):
        if t == eos:
            return new[: j + 1]
        if t in newlines:
            if seen_text:
                return new[: j + 1]
        else:
            seen_text = True
    return new


MIN_SHARED_PREFIX = 64  # tokens; below this a shared start is not worth a separate pass


def _shared_prefix(prompts: list[list[int]]) -> int:
    """Tokens every prompt of a batch starts with (each keeps at least its last token to feed), or 0 when fewer
    than MIN_SHARED_PREFIX or the batch has one prompt."""
    if len(prompts) < 2:
        return 0
    n = min(len(p) for p in prompts) - 1
    first = prompts[0]
    P = 0
    while P < n and all(p[P] == first[P] for p in prompts):
        P += 1
    return P if P >= MIN_SHARED_PREFIX else 0


@torch.no_grad()
def answer_many(questions: Sequence[str], base: Base, mode: str = "base", host=None, index=None, documents=None,
                cfg: AnswerConfig | None = None, k: int | None = None, method: str | None = None,
                batch_size: int = 8, documents_each: Sequence | None = None) -> list[dict]:
    """`answer` for many questions in one mode, generated in left-padded batches of up to `batch_size` prompts
    of similar length (greedy, same stop rule); a start all prompts of a batch share (the same documents in
    context) runs once and each row continues from its key/value cache. Rows are those of `answer`; latency_ms is
    the batch's wall time divided among its questions (the cost per question when answering in bulk), `batch` the
    batch's size.
    `documents_each[i]` replaces `documents` for question i (e.g. icl over each question's own paper)."""
    from transformers import StoppingCriteriaList

    from loramem.forward import prefix_kv_cache

    if mode not in MODES:
        raise UserError(f"unknown mode '{mode}'; choose one of {', '.join(MODES)}")
    if batch_size < 1:
        raise UserError("batch_size must be 1 or more")
    cfg = cfg or AnswerConfig()
    tok = base.tokenizer
    rows: list[dict] = []
    t_prep = time.perf_counter()
    for i, q in enumerate(questions):
        docs = documents_each[i] if documents_each is not None else documents
        context, retrieved = gather_context(q, mode, index, docs, k, method)
        ids, cut = build_prompt(q, context, base, cfg, mode)
        rows.append({"question": q, "ids": ids, "cut": cut, "retrieved": retrieved})
    prep_ms = (time.perf_counter() - t_prep) * 1000 / max(1, len(rows))
    model, memory = _memory(mode, base, host)
    model.eval()
    newlines = newline_ids(tok)
    newline_set = set(newlines)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]["ids"]))
    bare = {}
    out: list[dict | None] = [None] * len(rows)
    with memory:
        for s in range(0, len(order), batch_size):
            idx = order[s: s + batch_size]
            t0 = time.perf_counter()
            prompts = [rows[i]["ids"] for i in idx]
            P = _shared_prefix(prompts)
            S = max(len(p) - P for p in prompts)
            T = P + S
            ids = torch.full((len(idx), T), pad, dtype=torch.long)
            att = torch.zeros((len(idx), T), dtype=torch.long)
            for r, p in enumerate(prompts):  # [shared prefix][padding][rest]: every prompt ends at column T
                ids[r, :P], att[r, :P] = torch.tensor(p[:P], dtype=torch.long), 1
                ids[r, T - (len(p) - P):] = torch.tensor(p[P:], dtype=torch.long)
                att[r, T - (len(p) - P):] = 1
            extra = {}
            if P:  # the documents every prompt starts with (icl) run once; each row continues from their cache
                prefix = ids[:1, :P].to(base.device)
                extra["cache"] = prefix_kv_cache(model, prefix, torch.ones_like(prefix), len(idx))
            stop = StoppingCriteriaList([_EndOfLine(T, newlines, base.device)])
            gen = model.generate(input_ids=ids.to(base.device), attention_mask=att.to(base.device),
                                 max_new_tokens=cfg.max_new_tokens, do_sample=False, pad_token_id=pad,
                                 eos_token_id=tok.eos_token_id, stopping_criteria=stop, **extra)
            each_ms = (time.perf_counter() - t0) * 1000 / len(idx) + prep_ms
            for r, i in enumerate(idx):
                row = rows[i]
                new = _cut_line(gen[r, T:].tolist(), newline_set, tok.eos_token_id)
                text = tok.decode(new, skip_special_tokens=True).strip().split("\n")[0].strip()
                if row["question"] not in bare:
                    bare[row["question"]] = len(build_prompt(row["question"], [], base, cfg)[0])
                out[i] = {"answer": text, "mode": mode, "question": row["question"], "prompt_tokens": len(row["ids"]),
                          "context_tokens": len(row["ids"]) - bare[row["question"]], "generated_tokens": len(new),
                          "latency_ms": round(each_ms, 2), "truncated_tokens": row["cut"],
                          "retrieved": row["retrieved"], "batch": len(idx)}
    return out  # type: ignore[return-value]


def answer_choice(question: str, options: Sequence[str], base: Base, mode: str = "base", host=None, index=None,
                  documents=None, cfg: AnswerConfig | None = None, k: int | None = None,
                  method: str | None = None) -> dict:
    """Multiple choice (QuALITY): the option the model finds most likely after the mode's prompt."""
    from loramem.likelihood import option_logprobs

    if mode not in MODES:
        raise UserError(f"unknown mode '{mode}'; choose one of {', '.join(MODES)}")
    if not options:
        raise UserError("a multiple-choice question needs at least one option")
    cfg = cfg or AnswerConfig()
    t0 = time.perf_counter()
    context, retrieved = gather_context(question, mode, index, documents, k, method)
    prompt_ids, cut = build_prompt(question, context, base, cfg, mode)
    model, memory = _memory(mode, base, host)
    with memory:
        scores = option_logprobs(model, base, prompt_ids, options)
    best = max(range(len(options)), key=lambda i: scores[i])
    return {"choice": best, "answer": options[best], "mode": mode, "question": question,
            "prompt_tokens": len(prompt_ids), "generated_tokens": 0, "scores": [round(s, 4) for s in scores],
            "latency_ms": round((time.perf_counter() - t0) * 1000, 2), "truncated_tokens": cut,
            "retrieved": retrieved}
