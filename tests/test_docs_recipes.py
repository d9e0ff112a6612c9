"""The Q4-Q7 recipes: findings on hand-made rows (agree, disagree, undecided), rank agreement, level balance."""

from __future__ import annotations

import pytest

from loramem import findings
from loramem.data.documents import Question
from loramem.experiments import docqa
from loramem.experiments.mixes import BASE, spearman


def rows(key: str, values: dict, metric: str = "judge", n: int = 12) -> list[dict]:
    """Two papers per condition, n questions each; question i of a paper scores value + (i % 3 - 1) / 10 under
    every condition (a question's own difficulty), so conditions differ question by question by their gap."""
    out = []
    for k, v in values.items():
        for paper in ("0", "1"):
            preds = [{"i": i, "question": f"p{paper} q{i}", metric: v + (i % 3 - 1) / 10} for i in range(n)]
            out.append({key: k, metric: v, "paper": paper, "budget": 250, "predictions": preds})
    return out


def test_formats_finding_agrees_when_qa_beats_raw_and_keeps_the_synthetic_gaps_as_evidence():
    v = findings.verdict_of("qa-beats-raw", rows("format", {"raw": 1.0, "qa": 4.0, "summary": 3.0, "rewrite": 2.0}))
    assert v["verdict"] == "agrees" and v["effect"] == pytest.approx(0.3)  # judge / 10
    assert v["evidence"]["metric"] == "judge" and v["evidence"]["by_format"]["qa"] == pytest.approx(0.4)
    assert v["evidence"]["qa_minus_summary"]["effect"] == pytest.approx(0.1)
    assert v["evidence"]["rewrite_minus_raw"]["effect"] == pytest.approx(0.1)


@pytest.mark.parametrize("values,why", [
    ({"raw": 3.0, "qa": 2.0, "summary": 3.0}, "raw beats qa"),
    ({"raw": 2.5, "qa": 2.6}, "a gap of 0.01 on the 0-1 scale: inside the margin"),
])
def test_formats_finding_disagrees(values, why):
    assert findings.verdict_of("qa-beats-raw", rows("format", values))["verdict"] == "disagrees", why


def test_formats_finding_undecided_without_raw_or_qa_and_falls_back_to_f1():
    assert findings.verdict_of("qa-beats-raw", rows("format", {"qa": 4.0, "summary": 3.0}))["verdict"] == "undecided"
    v = findings.verdict_of("qa-beats-raw", rows("format", {"raw": 0.1, "qa": 0.3}, metric="f1"))
    assert v["verdict"] == "agrees" and v["evidence"]["metric"] == "f1" and v["effect"] == pytest.approx(0.2)


def test_mixes_finding_agrees_and_disagrees():
    paper_like = {"Original": 3.187, "QA40": 5.893, "Original+QA40": 6.3, "Summary8+QA40": 6.38,
                  "Rewrite4+QA40": 6.65, "All mixed": 6.822}
    v = findings.verdict_of("mixes-beat-single", rows("mix", paper_like) + rows("mix", {BASE: 9.0}))
    assert v["verdict"] == "agrees" and v["evidence"]["best_single"] == "QA40"  # the base row is not a view
    worse = dict(paper_like, **{"Original+QA40": 4.0, "Summary8+QA40": 4.5})
    v = findings.verdict_of("mixes-beat-single", rows("mix", worse))
    assert v["verdict"] == "disagrees" and v["evidence"]["each_mix_minus_best_single"]["All mixed"]["effect"] > 0
    assert findings.verdict_of("mixes-beat-single", rows("mix", {"QA40": 1.0}))["verdict"] == "undecided"


def test_spearman_rank_agreement():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 1, 2], [1, 2, 3]) == pytest.approx(0.8660254)
    assert spearman([1, 2], [1, 2]) is None


def test_questions_are_balanced_over_levels():
    qs = [Question(f"q{i}", "a", lv) for i, lv in enumerate([1, 1, 1, 1, 2, 2, 3, 3])]
    picked = docqa.balanced(qs, 5)
    assert [q.level for q in picked] == [1, 2, 3, 1, 2]
    assert len(docqa.balanced(qs, 50)) == 8


def test_mixes_plot_shows_only_this_runs_scores_with_n(tmp_path):
    from loramem.experiments.mixes import PAPER_JUDGE, summarize
    from loramem.runs.runner import RecipeOptions

    rs = [{**r, "n_questions": 5, "judge_name": "embed"} for r in rows("mix", {"Original": 2.0, "QA40": 4.0})]
    s = summarize(rs, RecipeOptions(model="tiny-random", scale="smoke", out=tmp_path))
    assert (tmp_path / "mixes.png").is_file() and (tmp_path / "mixes.svg").is_file()
    assert not (tmp_path / "mixes_vs_paper.png").exists()  # the paper's incomparable scores are not drawn
    assert s["paper_judge"] == PAPER_JUDGE and str(PAPER_JUDGE["QA40"]) in (tmp_path / "mixes.md").read_text()


def test_docqa_rows_keep_every_question_answer_gold_and_score(tiny_base):
    from loramem.config import JudgeConfig
    from loramem.data.documents import Document, Question
    from loramem.experiments import docqa
    from loramem.judges import make_judge

    doc = Document(id="d", title="t", text="Alpha is a planner.",
                   questions=[Question("What is Alpha", "a planner", 1, "d"), Question("Is Beta slow", "yes", 2, "d")])
    row = docqa.score_base(tiny_base, doc, make_judge(JudgeConfig(kind="embed")), new_tokens=3)
    preds = row["predictions"]
    assert [(p["question"], p["gold"], p["level"]) for p in preds] == [("What is Alpha", "a planner", 1),
                                                                       ("Is Beta slow", "yes", 2)]
    assert all(isinstance(p["prediction"], str) and 0 <= p["f1"] <= 1 and "judge" in p for p in preds)
    assert row["n_questions"] == 2


def test_per_paper_modules_train_together_and_each_answers_as_it_would_alone(tiny_base):
    """Two documents' modules in one pass over the base (write_modules) give each document the answers its own
    module gives when trained alone; every adapter is gone after."""
    from loramem.config import JudgeConfig, WriterConfig
    from loramem.data.documents import Document, Question
    from loramem.judges import make_judge

    docs = [Document(id=f"d{i}", title="t", text=f"{name} is a planner.",
                     questions=[Question(f"What is {name}", "a planner", 1, f"d{i}")]) for i, name in enumerate("AB")]
    rows = [[{"prompt": f"What is {name}?", "answer": "a planner"}] * 4 for name in "AB"]
    cfg = WriterConfig(rank=2, lr=1e-2, steps=3, batch_size=2, target_em=None, progress=False, loss="answer",
                       format="plain", layers="top 1")
    judge = make_judge(JudgeConfig(kind="embed"))
    together = docqa.write_and_score_many(tiny_base, list(zip(docs, rows, strict=True)), cfg, judge, new_tokens=3)
    alone = [docqa.write_and_score(tiny_base, d, r, cfg, judge, new_tokens=3) for d, r in zip(docs, rows, strict=True)]
    assert [t["modules_together"] for t in together] == [2, 2] and [a["modules_together"] for a in alone] == [1, 1]
    for t, a in zip(together, alone, strict=True):
        assert [p["prediction"] for p in t["predictions"]] == [p["prediction"] for p in a["predictions"]]
        assert t["steps"] == a["steps"] == 3
    assert not any(n.startswith("docqa") for n in getattr(tiny_base.model, "peft_config", {}))
