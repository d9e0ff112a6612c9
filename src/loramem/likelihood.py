"""How likely a model finds an answer after a prompt, and the editing metrics built on it (CounterFact).

    lp = answer_logprobs(host, base, ["Lenta.ru is written in"], ["Italian"])
    efficacy(lp_new, lp_old)   # fraction of prompts where the new object beats the old one

Scores are mean log-probabilities per answer token (as ROME compares multi-token objects), computed with one
teacher-forced forward pass over prompt + " " + answer.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from loramem.models import Base

ARTICLES = {"the", "a", "an"}


def _pair_ids(tok, prompt: str, answer: str) -> tuple[list[int], int]:
    """Token ids of prompt + ' ' + answer (with the tokenizer's special prefix) and where the answer starts."""
    head = tok(prompt, add_special_tokens=True).input_ids
    ans = tok(" " + answer.strip(), add_special_tokens=False).input_ids
    return head + ans, len(head)


@torch.no_grad()
def answer_logprobs(model, base: Base, prompts: Sequence[str], answers: Sequence[str],
                    batch_size: int = 32) -> list[float]:
    """Mean log-probability per answer token of each answer after its prompt."""
    tok = base.tokenizer
    pairs = [_pair_ids(tok, p, a) for p, a in zip(prompts, answers, strict=True)]
    out = [0.0] * len(pairs)
    model.eval()
    for s in range(0, len(pairs), batch_size):
        chunk = pairs[s : s + batch_size]
        T = max(len(ids) for ids, _ in chunk)
        ids = torch.full((len(chunk), T), tok.pad_token_id, dtype=torch.long)
        att = torch.zeros((len(chunk), T), dtype=torch.long)
        for row, (seq, _) in enumerate(chunk):
            ids[row, : len(seq)] = torch.tensor(seq)
            att[row, : len(seq)] = 1
        logits = model(input_ids=ids.to(base.device), attention_mask=att.to(base.device)).logits.float()
        logp = torch.log_softmax(logits, -1).cpu()
        for row, (seq, start) in enumerate(chunk):
            targets = torch.tensor(seq[start:])
            picked = logp[row, start - 1 : len(seq) - 1].gather(1, targets[:, None]).squeeze(1)
            out[s + row] = float(picked.mean())
    return out


def efficacy(new_scores: Sequence[float], old_scores: Sequence[float]) -> float:
    """Fraction of prompts where the new object is more likely than the old one (CounterFact efficacy)."""
    pairs = list(zip(new_scores, old_scores, strict=True))
    return sum(n > o for n, o in pairs) / len(pairs) if pairs else float("nan")


def starts_with_answer(generated: str, answer: str) -> bool:
    """Generation accuracy: the greedy continuation begins with the answer (case and punctuation ignored)."""
    import re

    from loramem.evaluate import normalize

    g, a = normalize(generated), normalize(answer)
    return bool(a) and re.match(re.escape(a) + r"(\b|$)", g) is not None


def first_words(text: str, n: int = 3) -> str:
    """The first few words of a continuation: what the base model 'believes' the object is."""
    import re

    words = [w.strip(".,;:!?\"'") for w in re.split(r"\s+", text.strip().split("\n")[0])]
    words = [w for w in words if w]
    while len(words) > n and words[0].lower() in ARTICLES:  # "the Russian Federation" -> "Russian"
        words = words[1:]
    return " ".join(words[:n])


@torch.no_grad()
def option_logprobs(model, base: Base, prompt_ids: Sequence[int], options: Sequence[str]) -> list[float]:
    """Mean log-probability per token of each option continuing one prompt (multiple choice, one batch)."""
    tok = base.tokenizer
    seqs = [list(prompt_ids) + tok(" " + o.strip(), add_special_tokens=False).input_ids for o in options]
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), tok.pad_token_id, dtype=torch.long)
    att = torch.zeros((len(seqs), T), dtype=torch.long)
    for row, s in enumerate(seqs):
        ids[row, : len(s)] = torch.tensor(s)
        att[row, : len(s)] = 1
    model.eval()
    logp = torch.log_softmax(model(input_ids=ids.to(base.device), attention_mask=att.to(base.device)).logits.float(), -1)
    start = len(prompt_ids)
    out = []
    for row, s in enumerate(seqs):
        targets = torch.tensor(s[start:], device=logp.device)
        out.append(float(logp[row, start - 1 : len(s) - 1].gather(1, targets[:, None]).mean()))
    return out
