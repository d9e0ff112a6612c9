"""Every answer metric on hand-checked examples (values worked out by hand in the comments)."""

from __future__ import annotations

import math

import pytest

from loramem.metrics import bleu, exact_match, normalize_answer, rouge_l, score_rows, token_f1


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


PAIRS = [("the cat is on the mat today", "there is a cat on the mat"), ("a b c d e f g", "a b c x e f g h"),
         ("Monte Carlo Tree Diffusion", "tree diffusion for planning"), ("x", "y"), ("", "gold")]


def test_rouge_l_is_rouge_score():
    from rouge_score import rouge_scorer

    ref = rouge_scorer.RougeScorer(["rougeL"])
    for pred, gold in PAIRS:
        assert rouge_l(pred, gold) == pytest.approx(ref.score(gold, pred)["rougeL"].fmeasure, abs=1e-12)
    # by hand: LCS(police killed the gunman, the police kill the gunman) = police the gunman = 3 -> P=3/4, R=3/5
    assert rouge_l("police killed the gunman", "the police kill the gunman") == pytest.approx(2 * 0.75 * 0.6 / 1.35)
    assert rouge_l("y x", "x y") == pytest.approx(0.5)  # order matters, unlike F1


def test_bleu_is_sacrebleu_sentence_bleu():
    import sacrebleu

    for pred, gold in PAIRS:
        assert bleu(pred, gold) == pytest.approx(sacrebleu.sentence_bleu(pred, [gold]).score / 100, abs=1e-12)
    assert bleu("x y z w", "x y z w") == pytest.approx(1.0)
    # pred "x y z w v" vs gold "x y z w u": 1-4 gram precisions 4/5, 3/4, 2/3, 1/2; no brevity penalty
    expected = math.exp((math.log(4 / 5) + math.log(3 / 4) + math.log(2 / 3) + math.log(1 / 2)) / 4)
    assert bleu("x y z w v", "x y z w u") == pytest.approx(expected)


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
