"""Integration on the real smollm2-135m: memorize 20 entries of the paper's 1K PhoneBook through the CLI, then
read them back with plain PEFT + transformers generate, and check teacher-forced verdicts against generation."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import run_cli

from loramem.data import phonebook

pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def memorized(tmp_path_factory):
    """20 entries of the paper's 1K PhoneBook written through the CLI (a generated PhoneBook of 30 when the
    release is not beside this checkout), and the whole book."""
    from conftest import PAPER

    out = tmp_path_factory.mktemp("real") / "pb20"
    src = PAPER / "pb_cf" / "phonebook_qa_1K.csv"
    if not src.is_file():
        src = phonebook.write(phonebook.generate(30, seed=4), out.parent / "pb30.csv")
    proc = run_cli("write", str(src), "--limit", "20", "--rank", "8", "--lr", "3e-3", "--out", str(out),
                   timeout=1200)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out, phonebook.read(src)


def test_cli_memorizes_twenty_entries(memorized):
    out, book = memorized
    rec = json.loads((out / "loramem.json").read_text())
    assert rec["exact_match"] == 1.0 and rec["n_examples"] == 20
    # the fast path was taken: a shared token prefix, and full checks only once the running estimate said 1.0
    assert rec["stopped"] == "target_em" and rec["shared_prefix"] is True
    assert len(rec["em_history"]) < rec["epochs"] / 2, (rec["em_history"], rec["epochs"])
    first20 = out.parent / "first20.csv"
    phonebook.write(book[:20], first20)
    proc = run_cli("eval", str(out), "--data", str(first20), "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout)["exact_match"] == 1.0


def test_plain_peft_reads_the_same_answers(memorized):
    """No loramem code in the read path: transformers + peft + the saved folder give the gold numbers."""
    import peft

    from loramem.models import load_base

    out, book = memorized
    fresh = load_base("smollm2-135m", cache=False)
    model = peft.PeftModel.from_pretrained(fresh.model, str(out)).eval()
    tok = fresh.tokenizer
    answers = []
    for e in book[:20]:
        prompt = f"Question: What is the phone number of {e.name}? Answer:"
        ids = tok(prompt, return_tensors="pt")
        with torch.no_grad():
            gen = model.generate(**ids, max_new_tokens=24, do_sample=False, eos_token_id=tok.eos_token_id,
                                 pad_token_id=tok.pad_token_id)
        answers.append(tok.decode(gen[0, ids.input_ids.shape[1]:], skip_special_tokens=True).strip())
    assert answers == [e.number for e in book[:20]]


def test_teacher_forced_verdicts_equal_generation_on_seen_and_unseen(memorized, real_base):
    from loramem.adapters import load_adapter
    from loramem.evaluate import generated_em, teacher_forced_em

    out, book = memorized
    host = load_adapter(real_base, out, "real_check")
    facts = [e.example() for e in book[:20] + book[20:30]]  # 20 memorized + 10 never seen
    tf = teacher_forced_em(host, real_base, facts)
    gen = generated_em(host, real_base, facts)
    assert tf == gen
    # both verdicts occur: a check that always says "no" (or always "yes") fails here
    assert all(tf[:20]) and not any(tf[20:])
    host.delete_adapter("real_check")
