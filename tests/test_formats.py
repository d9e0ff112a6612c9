"""Rendering marks exactly the answer tokens (plus one terminator) in every format."""

from __future__ import annotations

import pytest

from loramem.formats import Example, question_prompt, render

EX = Example(question_prompt("What is the phone number of Ada Quill"), "603-556-7631", key="Ada Quill")


def test_question_prompt_is_the_papers_row_prompt():
    assert EX.prompt == "Question: What is the phone number of Ada Quill? Answer:"


@pytest.mark.parametrize("fmt", ["plain", "chat", "chat-user"])
def test_answer_span_decodes_to_the_answer_and_one_terminator(tiny_base, fmt):
    tok = tiny_base.tokenizer
    r = render(EX, tok, fmt)
    assert 0 < r.answer_start < r.answer_end <= len(r.ids)
    span = tok.decode(r.target_ids[:-1]).strip()
    assert span == "603-556-7631"
    assert len(r.target_ids) == len(tok(" 603-556-7631", add_special_tokens=False).input_ids) + 1 or fmt == "chat"
    assert "Ada Quill" in tok.decode(r.prompt_ids)


def test_plain_row_matches_the_papers_training_text(tiny_base):
    tok = tiny_base.tokenizer
    r = render(EX, tok, "plain")
    text = tok.decode(r.ids[: r.answer_end - 1], skip_special_tokens=True)
    assert text == "Question: What is the phone number of Ada Quill? Answer: 603-556-7631"
    assert r.ids[r.answer_end - 1] == tok.eos_token_id


def test_chat_user_puts_the_row_in_the_user_turn(tiny_base):
    tok = tiny_base.tokenizer
    r = render(EX, tok, "chat-user")
    text = tok.decode(r.ids)
    assert "<|im_start|>user" in text and "Answer: 603-556-7631<|im_end|>" in text
    assert "<|im_start|>assistant" not in text


def test_raw_text_example_supervises_its_text(tiny_base):
    tok = tiny_base.tokenizer
    r = render(Example("", "Paris is the capital of France."), tok, "plain")
    assert tok.decode(r.target_ids[:-1]).strip() == "Paris is the capital of France."
