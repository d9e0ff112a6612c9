"""Answer metrics as pure functions of (prediction, gold), each in [0, 1]: exact match, token F1, ROUGE-L, BLEU.

Exact match and F1 compare text after SQuAD normalization (lower case, punctuation and articles removed, spaces
collapsed), as SQuAD's script does. ROUGE-L and BLEU are the maintained libraries' numbers on the raw strings
(`rouge-score`, `sacrebleu`), so a reported score means what a reader who knows those libraries expects.
`score_rows` averages them overall and per question level.
"""

from __future__ import annotations

import functools
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


def rouge_l(pred: str, gold: str) -> float:
    """ROUGE-L F1 as Google's `rouge-score` computes it (its tokenizer: lower case, alphanumeric tokens, no stemming)."""
    return _rouge_scorer().score(gold, pred)["rougeL"].fmeasure


def bleu(pred: str, gold: str) -> float:
    """Sentence BLEU in [0, 1]: `sacrebleu.sentence_bleu` with its defaults (13a tokens, exp smoothing), / 100."""
    import sacrebleu

    return sacrebleu.sentence_bleu(pred, [gold]).score / 100


@functools.cache
def _rouge_scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


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
