"""Every answer metric on hand-checked examples (values worked out by hand in the comments)."""

from __future__ import annotations

import math

import pytest

from loramem.metrics import bleu, exact_match, lcs_length, normalize_answer, rouge_l, score_rows, token_f1


def test_normalization_drops_case_punctuation_and_articles():
    assert normalize_answer("The  Cat, sat!") == "cat sat"
    assert exact_match("the cat sat.", "Cat sat") == 1.0
    assert exact_match("cat sat down", "cat sat") == 0.0


def test_token_f1_by_hand():
    # pred: cat sat on mat (4), gold: cat sat (2): common 2 -> P = 2/4, R = 2/2, F1 = 2*.5*1/1.5 = 2/3
    assert token_f1("The cat sat on the mat", "the cat sat") == pytest.approx(2 / 3)
    assert token_f1("dog", "cat") == 0.0
    assert token_f1("", "") == 1.0 and token_f1("", "cat") == 0.0
    # a repeated token matches once: "x x y" vs "x y": common 2 -> P = 2/3, R = 1
    assert token_f1("x x y", "x y") == pytest.approx(2 * (2 / 3) * 1 / (2 / 3 + 1))


def test_rouge_l_by_hand():
    assert lcs_length("a b c d".split(), "a c d e".split()) == 3
    # pred: police killed gunman (3); gold: police kill gunman (3)... LCS = police gunman = 2 -> P=R=2/3 -> F=2/3
    assert rouge_l("police killed the gunman", "the police kill the gunman") == pytest.approx(2 / 3)
    assert rouge_l("x y z", "x y z") == 1.0
    assert rouge_l("x", "y") == 0.0
    # order matters (unlike F1): "y x" vs "x y": LCS 1 -> P=R=1/2
    assert rouge_l("y x", "x y") == pytest.approx(0.5)


def test_bleu_by_hand():
    assert bleu("x y z w", "x y z w") == pytest.approx(1.0)
    assert bleu("p q", "x y") == 0.0
    # pred "x y z w v" vs gold "x y z w u": 1-4 gram matches 4/5, 3/4, 2/3, 1/2; no brevity penalty
    expected = math.exp((math.log(4 / 5) + math.log(3 / 4) + math.log(2 / 3) + math.log(1 / 2)) / 4)
    assert bleu("x y z w v", "x y z w u") == pytest.approx(expected)
    # short hypothesis "x y" vs gold "x y z w": effective order 2, precisions 1, 1; BP = exp(1 - 4/2)
    assert bleu("x y", "x y z w") == pytest.approx(math.exp(1 - 2))
    # a zero bigram match is smoothed: "x z" vs "x y": p1 = 1/2, p2 = 1/(2*1) -> sqrt(1/2 * 1/2) = 1/2
    assert bleu("x z", "x y") == pytest.approx(0.5)


def test_bleu_agrees_with_sacrebleu_sentence_bleu():
    sacrebleu = pytest.importorskip("sacrebleu")
    pairs = [("the cat is on the mat today", "there is a cat on the mat"),
             ("a b c d e f g", "a b c x e f g h"), ("monte carlo tree diffusion", "tree diffusion for planning")]
    from loramem.metrics import tokens

    for pred, gold in pairs:
        ref = sacrebleu.sentence_bleu(" ".join(tokens(pred)), [" ".join(tokens(gold))], tokenize="none").score / 100
        assert bleu(pred, gold) == pytest.approx(ref, abs=1e-9)


def test_score_rows_reports_overall_and_per_level():
    rows = [{"level": 1, "em": 1.0, "f1": 1.0}, {"level": 1, "em": 0.0, "f1": 0.5}, {"level": 3, "em": 0.0, "f1": 0.0},
            {"level": None, "em": 1.0, "f1": 1.0}]
    s = score_rows(rows, ["em", "f1"])
    assert s["overall"] == {"n": 4, "em": 0.5, "f1": 0.625}
    assert s["by_level"] == {"1": {"n": 2, "em": 0.5, "f1": 0.75}, "3": {"n": 1, "em": 0.0, "f1": 0.0}}


def test_unknown_metric_is_a_user_error(tiny_base):
    from loramem.errors import UserError
    from loramem.evaluate import evaluate_questions

    with pytest.raises(UserError, match="unknown metric"):
        evaluate_questions(tiny_base.model, tiny_base, [], "plain", ["em", "meteor"])
