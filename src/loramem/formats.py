"""How a (prompt, answer) example becomes token ids, with the answer span marked.

An `Example` is one fact to store: a prompt and the answer the module must produce after it. Rendering puts
it into one of three text formats and returns token ids with the answer span, which includes the terminator
token: argmax equal to the target over that whole span is exactly "greedy decoding produces the answer and
stops", so a teacher-forced forward pass gives the same verdict as `generate`.
"""

from __future__ import annotations

from dataclasses import dataclass

from loramem.config import Format

_SENTINEL = "\u2063LORAMEM\u2063"


@dataclass(frozen=True)
class Example:
    """One unit of supervision: the module should continue `prompt` with `answer`. Empty prompt = raw text."""

    prompt: str
    answer: str
    key: str = ""  # what routing knows the fact by (e.g. the name of a PhoneBook entry)


@dataclass(frozen=True)
class Rendered:
    ids: tuple[int, ...]
    answer_start: int  # first answer token
    answer_end: int  # one past the terminator token

    @property
    def prompt_ids(self) -> tuple[int, ...]:
        return self.ids[: self.answer_start]

    @property
    def target_ids(self) -> tuple[int, ...]:
        return self.ids[self.answer_start : self.answer_end]


def question_prompt(question: str) -> str:
    """The paper's PhoneBook row prompt: `Question: <q>? Answer:`."""
    q = question.strip()
    if not q.endswith("?"):
        q += "?"
    return f"Question: {q} Answer:"


def terminator(tokenizer) -> str:
    return tokenizer.eos_token or "\n"


def _user_turn_parts(tokenizer) -> tuple[str, str]:
    """Text of the chat template before and after the content of a single user turn."""
    text = tokenizer.apply_chat_template([{"role": "user", "content": _SENTINEL}], tokenize=False)
    cut = text.index(_SENTINEL)
    return text[:cut], text[cut + len(_SENTINEL):]


def render(example: Example, tokenizer, fmt: Format = "plain") -> Rendered:
    """Token ids of one example in a format, with the answer span (answer + terminator token) marked."""
    if fmt == "plain":
        head = example.prompt
        tail = ""
        term_text = terminator(tokenizer)
        add_special = True
    elif fmt == "chat-user":
        head, tail = _user_turn_parts(tokenizer)
        head = head + example.prompt
        term_text, tail = _split_first_token(tokenizer, tail)
        add_special = False
    elif fmt == "chat":
        if tokenizer.chat_template is None:
            from loramem.errors import UserError

            raise UserError("this tokenizer has no chat template; use --format plain")
        msgs = [{"role": "user", "content": example.prompt}]
        head = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        term_text, tail = _assistant_end(tokenizer)
        add_special = False
    else:
        raise ValueError(f"unknown format {fmt}")
    head_ids = tokenizer(head, add_special_tokens=add_special).input_ids if head else (
        [tokenizer.bos_token_id] if add_special and getattr(tokenizer, "add_bos_token", False) else [])
    answer = example.answer
    if fmt != "chat" and example.prompt and not answer[:1].isspace():
        answer = " " + answer  # "Answer: 603-…" as in the paper's rows
    ans_ids = tokenizer(answer, add_special_tokens=False).input_ids
    term_ids = tokenizer(term_text, add_special_tokens=False).input_ids[:1] if term_text else []
    tail_ids = tokenizer(tail, add_special_tokens=False).input_ids if tail else []
    ids = tuple(head_ids) + tuple(ans_ids) + tuple(term_ids) + tuple(tail_ids)
    start = len(head_ids)
    return Rendered(ids=ids, answer_start=start, answer_end=start + len(ans_ids) + len(term_ids))


def _split_first_token(tokenizer, text: str) -> tuple[str, str]:
    """Split template text after the content into (terminator token text, rest)."""
    if not text:
        return terminator(tokenizer), ""
    ids = tokenizer(text, add_special_tokens=False).input_ids
    first = tokenizer.decode(ids[:1])
    return first, text[len(first):] if text.startswith(first) else ""


def _assistant_end(tokenizer) -> tuple[str, str]:
    """What the chat template puts after an assistant message: (terminator, rest)."""
    msgs = [{"role": "user", "content": "q"}, {"role": "assistant", "content": _SENTINEL}]
    text = tokenizer.apply_chat_template(msgs, tokenize=False)
    after = text[text.index(_SENTINEL) + len(_SENTINEL):]
    return _split_first_token(tokenizer, after)


def knowledge_tokens(examples: list[Example], tokenizer, fmt: Format = "plain") -> int:
    """Tokens of the formatted training text (the paper's unit of knowledge size)."""
    return sum(len(render(e, tokenizer, fmt).ids) for e in examples)
