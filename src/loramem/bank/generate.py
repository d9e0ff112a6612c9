"""Greedy answers from bank modules: one question, or a batch whose rows each use their own module
(PEFT mixed-adapter batches: `adapter_names=[...]`, "__base__" for the base model alone)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from loramem.formats import Example, question_prompt, render
from loramem.models import Base

BASE = "__base__"


@dataclass
class Generated:
    text: str
    prompt_tokens: int
    new_tokens: int
    mean_logprob: float


def prompt_ids(question: str, base: Base, fmt: str = "plain") -> tuple[list[int], set[int]]:
    """Token ids of a question as the modules were trained to read it, and the token ids that end an answer."""
    q = question.strip()
    prompt = q if q.startswith("Question:") else question_prompt(q)
    r = render(Example(prompt=prompt, answer="0"), base.tokenizer, fmt)  # type: ignore[arg-type]
    stop = {r.ids[r.answer_end - 1]}
    if base.tokenizer.eos_token_id is not None:
        stop.add(base.tokenizer.eos_token_id)
    return list(r.prompt_ids), stop


@torch.no_grad()
def generate_rows(host, base: Base, questions: list[str], adapter_names: list[str] | None, fmt: str = "plain",
                  max_new_tokens: int = 32) -> list[Generated]:
    """Greedy answers, one per question; row i uses adapter_names[i] (None: whatever adapter is active)."""
    tok = base.tokenizer
    prompts, stops = zip(*(prompt_ids(q, base, fmt) for q in questions), strict=True)
    stop_ids = set().union(*stops)
    T = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), T), tok.pad_token_id, dtype=torch.long)
    att = torch.zeros((len(prompts), T), dtype=torch.long)
    for row, p in enumerate(prompts):  # left padding for generation
        ids[row, T - len(p):] = torch.tensor(p)
        att[row, T - len(p):] = 1
    kw = {} if adapter_names is None else {"adapter_names": list(adapter_names)}
    real = [a for a in adapter_names or [] if a != BASE]
    if real:  # PEFT reads the active adapter's config even for mixed batches; it may have been deleted
        host.set_adapter(real[0])
    host.eval()
    out = host.generate(input_ids=ids.to(base.device), attention_mask=att.to(base.device),
                        max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=sorted(stop_ids),
                        pad_token_id=tok.pad_token_id, output_scores=True, return_dict_in_generate=True, **kw)
    seqs = out.sequences[:, T:]
    logp = torch.stack([torch.log_softmax(s.float(), -1) for s in out.scores], 1)  # [B, steps, V]
    results = []
    for row in range(len(prompts)):
        new = seqs[row].tolist()
        cut = next((j for j, t in enumerate(new) if t in stop_ids), len(new))
        span = min(cut + 1, logp.shape[1])  # the stop token belongs to the answer's confidence
        lp = logp[row, torch.arange(span), seqs[row, :span]].mean().item() if span else float("-inf")
        text = tok.decode(new[:cut], skip_special_tokens=True)
        text = text.split("\n")[0].strip() if fmt == "plain" else text.strip()
        results.append(Generated(text, len(prompts[row]), cut, lp))
    return results


def answer_confidence(host, base: Base, question: str, adapters: list[str], fmt: str = "plain",
                      max_new_tokens: int = 16) -> list[float]:
    """Per adapter: mean log-probability of its own greedy answer to `question` (one mixed-adapter batch)."""
    rows = generate_rows(host, base, [question] * len(adapters), adapters, fmt, max_new_tokens)
    return [r.mean_logprob for r in rows]
