"""The one prompt builder: a question, the format its module was trained in, and any context -> token ids.

    p = build_prompt("What is the phone number of Ann Lee?", tok, fmt="chat-user", context=chunks, budget=2000)
    p.ids, p.stop_ids, p.context_tokens, p.truncated_tokens

Without context the ids are exactly the prompt part of the row the writer trained on (`formats.render`), in every
format, so a module is read as it was written. Context (retrieved chunks, whole documents) goes where the content
of that row starts: after the chat template's opening (or the tokenizer's BOS), before the question.
A context over the budget is a UserError unless `overflow="truncate"` keeps its first tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from loramem.errors import ContextTooLong, UserError
from loramem.formats import Example, question_prompt, render

CONTEXT_SEPARATOR = "\n\n"


@dataclass(frozen=True)
class Prompt:
    """Token ids to feed, and the rule that ends the answer."""

    ids: tuple[int, ...]
    stop_ids: frozenset[int]  # tokens that end an answer: the format's terminator and end-of-sequence
    one_line: bool = False  # plain format: a newline after some answer text ends it too (answers are one line)
    context_tokens: int = 0
    truncated_tokens: int = 0
    stop_texts: tuple[str, ...] = ()  # texts that end the answer (the server's `stop`), left out of it


def prompt_hash(ids) -> str:
    """A short fingerprint of prompt token ids: two roads that built the same prompt print the same hash."""
    import hashlib

    return hashlib.sha256(",".join(map(str, ids)).encode()).hexdigest()[:16]


def question_text(question: str, template: str = "qa") -> str:
    """qa: the paper's 'Question: q? Answer:' (kept as is when already in that form); completion: the text as is."""
    q = question.strip()
    if template == "completion" or q.startswith("Question:"):
        return q
    return question_prompt(q)


@lru_cache(maxsize=4096)
def _frame(tok, text: str, fmt: str, history: tuple = ()) -> tuple[tuple[int, ...], int, int, int]:
    """(prompt ids as trained, where the content starts, the terminator token, content length) for one row."""
    r = render(Example(prompt=text, answer="0"), tok, fmt)  # type: ignore[arg-type]
    ids = _with_history(tok, text, fmt, history) if history else r.prompt_ids
    content = tuple(tok(text, add_special_tokens=False).input_ids)
    start = _find(ids, content)
    if start < 0:  # the template's tokenization merged into the content: put context before the whole prompt
        start = 0
    return ids, start, r.ids[r.answer_end - 1], len(content)


def _with_history(tok, text: str, fmt: str, history: tuple) -> tuple[int, ...]:
    """The row's prompt after earlier turns: the whole conversation through the base model's chat template, the
    last user turn in the module's format (chat: the template's user turn; chat-user: cut after the question, where
    the trained answer starts; plain: the question after the templated earlier turns)."""
    if getattr(tok, "chat_template", None) is None:
        raise UserError("this model has no chat template, so it cannot read system or earlier turns; send one "
                        "user message")
    msgs = [{"role": role, "content": content} for role, content in history]
    if fmt == "plain":
        head = tok.apply_chat_template(msgs, tokenize=False)
        return tuple(tok(head + text, add_special_tokens=False).input_ids)
    sentinel = "\u2063LORAMEM\u2063"
    full = tok.apply_chat_template(msgs + [{"role": "user", "content": sentinel}], tokenize=False,
                                   add_generation_prompt=fmt == "chat")
    before, after = full.split(sentinel)
    return tuple(tok(before + text + (after if fmt == "chat" else ""), add_special_tokens=False).input_ids)


def _find(ids: tuple[int, ...], part: tuple[int, ...]) -> int:
    n = len(part)
    for s in range(len(ids) - n, -1, -1):
        if ids[s : s + n] == part:
            return s
    return -1


def stop_ids(tok, terminator: int | None = None) -> frozenset[int]:
    out = {terminator} if terminator is not None else set()
    if tok.eos_token_id is not None:
        out.add(tok.eos_token_id)
    return frozenset(out)


def build_prompt(question: str, tok, fmt: str = "plain", context: Sequence[str] = (), template: str = "qa",
                 budget: int | None = None, overflow: str = "error", mode: str = "icl",
                 history: Sequence[tuple[str, str]] = ()) -> Prompt:
    """The prompt of one question in the format of its module, with context passages before the question.
    `history`: (role, text) turns before the question (system, earlier user and assistant turns)."""
    text = question_text(question, template)
    ids, start, term, _ = _frame(tok, text, fmt, tuple(history))
    stops = stop_ids(tok, term)
    one_line = fmt == "plain"
    if budget is not None and len(ids) > budget:
        raise ContextTooLong(f"the prompt is {len(ids)} tokens, over the limit of {budget} (the model's context "
                             f"minus the answer's max_tokens); send a shorter prompt or ask for fewer tokens")
    if not context:
        return Prompt(ids, stops, one_line)
    ctx = tuple(tok(CONTEXT_SEPARATOR.join(context) + CONTEXT_SEPARATOR, add_special_tokens=False).input_ids)
    cut = 0
    if budget is not None and len(ids) + len(ctx) > budget:
        room = budget - len(ids)
        if overflow == "error":
            fix = "fewer or shorter chunks (--chunks)" if mode.endswith("rag") else "--mode rag or fewer documents"
            raise UserError(f"the {mode} context is {len(ids) + len(ctx)} prompt tokens, over the budget of "
                            f"{budget}; use {fix}, a larger --context-budget, or --overflow truncate")
        if room <= 0:
            raise UserError(f"the question alone is over the context budget of {budget} tokens; shorten it")
        ctx, cut = ctx[:room], len(ctx) - room
    return Prompt(ids[:start] + ctx + ids[start:], stops, one_line, len(ctx), cut)


def chat_prompt(messages: list[dict], tok) -> Prompt:
    """A conversation in the model's chat template, ready for the assistant's reply (LocalChat)."""
    if getattr(tok, "chat_template", None) is None:
        raise UserError("this model has no chat template; use an instruct model or --generator openai")
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = tuple(tok(text, add_special_tokens=False).input_ids)
    end_of_turn = _frame(tok, "q", "chat")[2]
    return Prompt(ids, stop_ids(tok, end_of_turn), one_line=False)

