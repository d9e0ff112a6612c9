"""rag-icl: the finding is computed from rows; the bench writes rows and a Markdown table; long-document loaders."""

from __future__ import annotations

import csv
import json

import pytest
from conftest import run_cli

from loramem import findings
from loramem.data.longdocs import read_narrativeqa, read_quality
from loramem.errors import UserError
from loramem.experiments.context_tasks import Question, Task, token_f1


def _row(bench, n=40, **scores):
    """A benchmark's row with n questions per method, the first round(score x n) right."""
    base = dict.fromkeys(("base", "lora", "rag", "icl", "lora+rag", "lora+icl"), 0.0)
    got = {**base, **scores}
    preds = [{"method": m, "i": i, "question": f"{bench} q{i}", "score": float(i < round(v * n))}
             for m, v in got.items() for i in range(n)]
    return {"benchmark": bench, "methods": {m: {"score": v} for m, v in got.items()}, "predictions": preds}


def _verdict(rows):
    return findings.verdict_of("lora-plus-rag-icl", rows)


def test_finding_agrees_when_hybrids_beat_every_single_method():
    rows = [_row("phonebook", lora=0.6, rag=0.5, icl=0.4, **{"lora+rag": 0.9, "lora+icl": 0.7}),
            _row("paperqa", lora=0.2, rag=0.3, icl=0.35, **{"lora+rag": 0.3, "lora+icl": 0.5})]
    v = _verdict(rows)
    assert v["verdict"] == "agrees" and v["agrees"] is True and v["n"] == 80
    assert v["effect"] == pytest.approx(((0.9 - 0.6) + (0.5 - 0.35)) / 2, abs=0.02)
    pq = v["evidence"]["benchmarks"]["paperqa"]
    assert (pq["best_hybrid"], pq["best_single"]) == ("lora+icl", "icl")
    via_registry = {f["id"]: f for f in findings.evaluate({"rag-icl": rows})}["lora-plus-rag-icl"]
    assert via_registry["verdict"] == "agrees"


def test_finding_disagrees_when_a_single_method_wins_and_a_tie_is_no_effect():
    rows = [_row("phonebook", lora=1.0, rag=0.4, icl=0.5, **{"lora+rag": 0.7, "lora+icl": 0.6}),
            _row("counterfact", lora=0.5, rag=0.9, icl=0.9, **{"lora+rag": 0.7, "lora+icl": 0.75})]
    v = _verdict(rows)
    assert v["verdict"] == "disagrees" and v["ci_high"] < 0
    # one benchmark loses, one ties: the benchmarks are drawn first, so two of them cannot decide it
    rows[1] = _row("counterfact", lora=0.5, rag=0.9, icl=0.9, **{"lora+rag": 0.9, "lora+icl": 0.9})
    assert _verdict(rows)["verdict"] == "undecided"
    tied = [_row("phonebook", n=200, lora=1.0, rag=1.0, icl=1.0, **{"lora+rag": 1.0, "lora+icl": 1.0})]
    v = _verdict(tied)
    assert v["verdict"] == "disagrees" and v["effect"] == v["ci_low"] == v["ci_high"] == 0.0  # inside the margin
    assert _verdict([])["verdict"] == "not measured"


def test_token_f1():
    assert token_f1("Monte Carlo Tree Search", "MCTS stands for Monte Carlo Tree Search.") == pytest.approx(8 / 11)  # P 4/4, R 4/7
    assert token_f1("", "anything") == 0.0 and token_f1("the same words", "The same words.") == 1.0


def test_bench_rag_icl_writes_rows_and_a_table(tmp_path):
    out = tmp_path / "ri"
    r = run_cli("bench", "rag-icl", "--model", "tiny-random", "--benchmarks", "phonebook", "--layers", "0-1",
                "--steps", "2", "--questions", "2", "--out", str(out))
    assert r.returncode == 0, r.stderr[-2000:]
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert rows[0]["status"] == "ok" and rows[0]["benchmark"] == "phonebook"
    methods = rows[0]["methods"]
    assert set(methods) == {"base", "lora", "rag", "icl", "lora+rag", "lora+icl"}
    assert methods["base"]["prompt_tokens"] < methods["rag"]["prompt_tokens"] < methods["icl"]["prompt_tokens"]
    assert methods["lora"]["storage_bytes"] > 0 and methods["lora"]["train_s"] > 0 and methods["base"]["storage_bytes"] == 0
    table = (out / "rag_icl.md").read_text()
    assert "| phonebook | exact_match | lora+rag |" in table and "prompt tokens / q" in table
    assert "Finding" in table and "closed-book lora" in table
    assert "finding_lora_plus_context_best" in json.loads((out / "summary.json").read_text())
    preds = rows[0]["predictions"]  # every question's answer in every method, with gold and score
    assert len(preds) == rows[0]["predictions_of"] == 2 * len(methods)
    for m, v in methods.items():
        mine = [p for p in preds if p["method"] == m]
        assert len(mine) == v["n"] == 2 and all({"question", "gold", "prediction", "score"} <= set(p) for p in mine)
        assert sum(p["score"] for p in mine) / 2 == pytest.approx(v["score"])
    bad = run_cli("bench", "rag-icl", "--model", "tiny-random", "--benchmarks", "wiki", "--out", str(out))
    assert bad.returncode == 2 and "unknown benchmark" in bad.stderr


def _narrativeqa(root):
    (root / "third_party" / "wikipedia").mkdir(parents=True)
    (root / "tmp").mkdir()
    with (root / "documents.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["document_id", "set", "kind", "story_url", "story_file_size", "wiki_url", "wiki_title",
                    "story_word_count", "story_start", "story_end"])
        w.writerow(["d1", "test", "gutenberg", "u", "10", "w", "The Lighthouse", "12", "a", "b"])
        w.writerow(["d2", "train", "movie", "u", "10", "w", "Other", "12", "a", "b"])
    with (root / "qaps.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["document_id", "set", "question", "answer1", "answer2", "question_tokenized",
                    "answer1_tokenized", "answer2_tokenized"])
        w.writerow(["d1", "test", "Who keeps the lighthouse?", "Old Tom", "Tom", "who keeps", "old tom", "tom"])
        w.writerow(["d1", "test", "Where is the lighthouse?", "On the cliff", "a cliff", "where", "on", "a"])
        w.writerow(["d2", "train", "What?", "x", "y", "what", "x", "y"])
    with (root / "third_party" / "wikipedia" / "summaries.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["document_id", "set", "summary", "summary_tokenized"])
        w.writerow(["d1", "test", "Old Tom keeps the lighthouse on the cliff above the bay.", "old tom ..."])
        w.writerow(["d2", "train", "Other summary.", "other"])
    (root / "tmp" / "d1.content").write_text("THE LIGHTHOUSE\n\nOld Tom kept the light burning for forty years.")


def test_narrativeqa_reader_reads_the_published_layout(tmp_path):
    _narrativeqa(tmp_path)
    docs = read_narrativeqa(tmp_path, "test")
    assert len(docs) == 1 and docs[0].id == "d1" and docs[0].title == "The Lighthouse"
    assert docs[0].text.startswith("Old Tom keeps") and len(docs[0].questions) == 2
    assert docs[0].questions[0].answers == ("Old Tom", "Tom")
    assert read_narrativeqa(tmp_path, "test", text="story")[0].text.startswith("THE LIGHTHOUSE")
    with pytest.raises(UserError, match="split 'valid'"):
        read_narrativeqa(tmp_path, "valid")
    with pytest.raises(UserError, match="not a NarrativeQA folder"):
        read_narrativeqa(tmp_path / "tmp")


def _quality(path):
    rows = [{"article_id": "20001", "set_unique_id": "20001_X", "batch_num": "1", "writer_id": "1", "source": "x",
             "title": "Star Ship", "year": 1950, "author": "A", "topic": "t",
             "article": "The ship Orion left Mars at dawn. Captain Vega steered it toward Titan.",
             "questions": [{"question": "Where did the ship go?", "question_unique_id": "q1",
                            "options": ["Earth", "Titan", "Venus", "Pluto"], "writer_label": 2, "gold_label": 2,
                            "validation": [], "speed_validation": [], "difficult": 0},
                           {"question": "Unlabelled test question?", "question_unique_id": "q2",
                            "options": ["a", "b", "c", "d"]}],
             "url": "u", "license": "l"}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")


def test_quality_reader_and_multiple_choice_on_long_documents(tmp_path, tiny_base, monkeypatch):
    from loramem.config import AnswerConfig, RetrievalConfig, WriterConfig
    from loramem.experiments.context_tasks import run_methods

    _quality(tmp_path / "QuALITY.v1.0.1.htmlstripped.dev")
    docs = read_quality(tmp_path / "QuALITY.v1.0.1.htmlstripped.dev")
    assert len(docs) == 1 and docs[0].title == "Star Ship" and len(docs[0].questions) == 1
    q = docs[0].questions[0]
    assert q.gold == 1 and q.options[q.gold] == "Titan"
    task = Task("quality", "choice_accuracy", {d.id: d.text for d in docs}, [],
                [Question(q.question, (), docs[0].id, q.options, q.gold)], long=True)
    from loramem.formats import Example

    task.train = [Example("", docs[0].text)]
    res = run_methods(task, tiny_base, WriterConfig(rank=2, steps=2, target_em=None, progress=False),
                      RetrievalConfig(chunk_tokens=8, overlap=2, k=1), AnswerConfig(), tmp_path / "mods",
                      chunk_modules=2)
    assert set(res["methods"]) >= {"base", "lora+icl", "chunk-lora", "chunk-lora+rag"}
    for v in res["methods"].values():
        assert v["score"] in (0.0, 1.0) and v["prompt_tokens"] > 0
    assert res["methods"]["chunk-lora"]["storage_bytes"] > res["methods"]["lora"]["storage_bytes"]
    assert res["methods"]["icl"]["prompt_tokens"] > res["methods"]["base"]["prompt_tokens"]
    host = tiny_base.extra["peft"]
    assert not [a for a in host.peft_config if a.startswith("ragicl_")]  # every module of the cell is gone

    # a cell that fails while answering leaves none of its adapters on the shared base for the next cell
    from loramem.experiments import context_tasks

    calls = []

    def breaks(*args, **kwargs):
        calls.append(1)
        raise RuntimeError("broke while answering")

    monkeypatch.setattr(context_tasks, "_ask_all", breaks)
    with pytest.raises(RuntimeError, match="broke while answering"):
        run_methods(task, tiny_base, WriterConfig(rank=2, steps=2, target_em=None, progress=False),
                    RetrievalConfig(chunk_tokens=8, overlap=2, k=1), AnswerConfig(), tmp_path / "mods2",
                    chunk_modules=2)
    assert calls and not [a for a in host.peft_config if a.startswith("ragicl_")]
    monkeypatch.undo()
    real = context_tasks._ask_all

    def breaks_in_chunks(task, qs, base, mode, host, index, cfg):
        if host.active_adapter.startswith("ragicl_chunk"):
            raise RuntimeError("broke in a chunk module")
        return real(task, qs, base, mode, host, index, cfg)

    monkeypatch.setattr(context_tasks, "_ask_all", breaks_in_chunks)
    with pytest.raises(RuntimeError, match="broke in a chunk module"):
        run_methods(task, tiny_base, WriterConfig(rank=2, steps=2, target_em=None, progress=False),
                    RetrievalConfig(chunk_tokens=8, overlap=2, k=1), AnswerConfig(), tmp_path / "mods3",
                    chunk_modules=2)
    assert not [a for a in host.peft_config if a.startswith("ragicl_")]
