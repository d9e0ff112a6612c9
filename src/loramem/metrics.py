"""Answer metrics as pure functions of (prediction, gold), each in [0, 1]: exact match, token F1, ROUGE-L, BLEU.

Text is compared after SQuAD normalization (lower case, punctuation and articles removed, spaces collapsed).
BLEU is sentence BLEU-4 with brevity penalty, exponential smoothing and effective order (sacreBLEU's sentence
defaults, Chen & Cherry 2014 method 3), reported /100. `score_rows` averages them overall and per question level.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Callable, Sequence

_PUNCT = re.compile(f"[{re.escape(string.punctuation)}]")


def normalize_answer(text: str) -> str:
    """SQuAD normalization: lower case, no punctuation, no articles, single spaces."""
    text = _PUNCT.sub(" ", text.lower())
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def tokens(text: str) -> list[str]:
    return normalize_answer(text).split()


def exact_match(pred: str, gold: str) -> float:
    return float(normalize_answer(pred) == normalize_answer(gold))


def token_f1(pred: str, gold: str) -> float:
    """Harmonic mean of token precision and recall (bag of words, SQuAD)."""
    p, g = tokens(pred), tokens(gold)
    if not p or not g:
        return float(p == g)
    common = sum((Counter(p) & Counter(g)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(g)
    return 2 * precision * recall / (precision + recall)


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence (O(len(a) * len(b)) dynamic programme)."""
    if not a or not b:
        return 0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b, start=1):
            cur.append(prev[j - 1] + 1 if x == y else max(prev[j], cur[j - 1]))
        prev = cur
    return prev[-1]


def rouge_l(pred: str, gold: str) -> float:
    """ROUGE-L F1: LCS over tokens, harmonic mean of LCS/len(pred) and LCS/len(gold)."""
    p, g = tokens(pred), tokens(gold)
    if not p or not g:
        return float(p == g)
    lcs = lcs_length(p, g)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(p), lcs / len(g)
    return 2 * precision * recall / (precision + recall)


def _ngrams(toks: list[str], n: int) -> Counter:
    return Counter(tuple(toks[i:i + n]) for i in range(len(toks) - n + 1))


def bleu(pred: str, gold: str, max_order: int = 4) -> float:
    """Sentence BLEU in [0, 1] (same statistics and smoothing as sacrebleu.sentence_bleu, on our tokens)."""
    p, g = tokens(pred), tokens(gold)
    if not p or not g:
        return float(p == g)
    correct = [sum((_ngrams(p, n) & _ngrams(g, n)).values()) for n in range(1, max_order + 1)]
    total = [max(0, len(p) - n + 1) for n in range(1, max_order + 1)]
    if not any(correct):
        return 0.0
    bp = 1.0 if len(p) >= len(g) else math.exp(1 - len(g) / len(p))
    logs, smooth = [], 1.0
    for n in range(max_order):
        if total[n] == 0:
            break  # effective order: a short hypothesis is not punished for n-grams it cannot have
        if correct[n] == 0:
            smooth *= 2
            logs.append(math.log(1 / (smooth * total[n])))
        else:
            logs.append(math.log(correct[n] / total[n]))
    return bp * math.exp(sum(logs) / len(logs))


METRICS: dict[str, Callable[[str, str], float]] = {"em": exact_match, "f1": token_f1, "rougeL": rouge_l,
                                                    "bleu": bleu}


def score_rows(rows: Sequence[dict], metrics: Sequence[str]) -> dict:
    """Mean of each metric column overall and per level: {"overall": {m: v, "n": k}, "by_level": {"1": {...}}}.

    Each row holds the metric values under their names and an optional "level"."""
    def means(sub: Sequence[dict]) -> dict:
        out: dict = {"n": len(sub)}
        for m in metrics:
            vals = [r[m] for r in sub if r.get(m) is not None]
            out[m] = sum(vals) / len(vals) if vals else None
        return out

    levels = sorted({r.get("level") for r in rows if r.get("level") is not None})
    return {"overall": means(rows),
            "by_level": {str(lv): means([r for r in rows if r.get("level") == lv]) for lv in levels}}
