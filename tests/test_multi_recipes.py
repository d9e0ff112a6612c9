"""The multi-module recipes (Q8-Q11): their findings on hand-made rows, and one tiny end-to-end run of each."""

from __future__ import annotations

import json

import pytest

from loramem.experiments.merging import finding_ties_most_robust
from loramem.experiments.multi_lora import finding_oracle_beats_single
from loramem.experiments.n_modules import finding_accuracy_falls_with_n
from loramem.experiments.routing import finding_embed_can_fall_below


def test_finding_oracle_beats_single():
    rows = [{"system": "single", "accuracy": 0.4}, {"system": "multi-oracle", "accuracy": 0.9},
            {"system": "icl", "accuracy": 0.2}]
    assert finding_oracle_beats_single(rows)[0] is True
    rows[1]["accuracy"] = 0.3
    assert finding_oracle_beats_single(rows)[0] is False
    assert finding_oracle_beats_single(rows[2:])[0] is None
    unsaturated = [{"system": "single", "accuracy": 1.0}, {"system": "multi-oracle", "accuracy": 1.0}]
    agrees, ev = finding_oracle_beats_single(unsaturated)
    assert agrees is None and "saturate" in ev["why"]


def test_finding_embed_can_fall_below():
    rows = [{"router": "single", "answer_accuracy": 0.5}, {"router": "embed", "answer_accuracy": 0.3,
                                                             "routing_accuracy": 0.4},
            {"router": "oracle", "answer_accuracy": 0.9, "routing_accuracy": 1.0}]
    agrees, ev = finding_embed_can_fall_below(rows)
    assert agrees is True and ev["embed_routing_accuracy"] == 0.4
    rows[1]["answer_accuracy"] = 0.8
    assert finding_embed_can_fall_below(rows)[0] is False
    assert finding_embed_can_fall_below(rows[2:])[0] is None


def test_finding_ties_most_robust():
    rows = [{"method": "single", "accuracy": 1.0}, {"method": "ties", "accuracy": 0.7},
            {"method": "linear", "accuracy": 0.6}, {"method": "cat", "accuracy": 0.1}]
    agrees, ev = finding_ties_most_robust(rows)
    assert agrees is True and ev["best"] == "ties"  # the single LoRA is a reference, not a merge
    rows[2]["accuracy"] = 0.8
    assert finding_ties_most_robust(rows)[0] is False
    assert finding_ties_most_robust(rows[:2])[0] is None
    flat = [{"method": m, "accuracy": 0.0, "token_accuracy": t} for m, t in [("ties", 0.6), ("cat", 0.5)]]
    agrees, ev = finding_ties_most_robust(flat)
    assert agrees is True and ev["metric"] == "token_accuracy"
    flat[1]["token_accuracy"] = 0.7
    assert finding_ties_most_robust(flat)[0] is False


def test_finding_accuracy_falls_with_n():
    rows = [{"method": "ties", "n": n, "accuracy": a} for n, a in [(1, 0.9), (2, 0.6), (3, 0.5)]]
    assert finding_accuracy_falls_with_n(rows)[0] is True
    rows.append({"method": "linear", "n": 1, "accuracy": 0.5})
    rows.append({"method": "linear", "n": 2, "accuracy": 0.7})
    agrees, ev = finding_accuracy_falls_with_n(rows)
    assert agrees is False and ev["accuracy_by_n"]["linear"] == {"1": 0.5, "2": 0.7}
    assert finding_accuracy_falls_with_n([{"method": "ties", "n": 2, "accuracy": 0.1}])[0] is None


@pytest.mark.parametrize("name,table", [("multi-lora", "multi_lora"), ("routing", "routing"),
                                        ("merging", "merging"), ("n-modules", "n_modules")])
def test_recipe_runs_end_to_end_on_a_tiny_bank(name, table, tmp_path_factory, monkeypatch):
    from loramem import experiments
    from loramem.runs.runner import RecipeOptions, read_rows, run_recipe

    monkeypatch.setenv("LORAMEM_HOME", str(tmp_path_factory.getbasetemp() / "home"))  # one bank for all four
    out = tmp_path_factory.mktemp(name)
    params = {"facts": 6, "modules": 3, "top_k": 2, "methods": ["ties", "cat"], "routers": ["oracle", "bm25", "embed"],
              "writer": {"layers": None, "targets": "q_proj,v_proj", "steps": 2, "epochs": None}}
    opts = RecipeOptions(model="tiny-random", scale="smoke", out=out, params=params, progress=False)
    summary = run_recipe(experiments.get(name), opts)
    rows = read_rows(out / "results.jsonl")
    assert summary["ok"] == summary["cells"] == len(rows) and not summary["failed"]
    assert (out / f"{table}.md").is_file() and (out / f"{table}.png").stat().st_size > 1000
    assert json.loads((out / "summary.json").read_text())["recipe"] == name
    for r in rows:  # each fact's question, gold, answering module(s), prediction and score; they give the accuracy
        preds = r["predictions"]
        assert len(preds) == r["predictions_of"] == r["n_eval"] and r["predictions_by"].startswith("teacher-forced")
        assert all({"question", "gold", "gold_module", "modules", "prediction", "exact", "token_accuracy"} <= set(p)
                   for p in preds)
        share = sum(p["exact"] for p in preds) / len(preds)
        assert share == pytest.approx(r["answer_accuracy" if name == "routing" else "accuracy"])
    merged = [r for r in rows if r.get("method") in ("ties", "cat")]
    assert all(len(p["modules"]) == r.get("top_k", r.get("n")) for r in merged for p in r["predictions"])
    if name == "routing":
        assert summary["routing_accuracy"]["oracle"] == 1.0 and summary["routing_accuracy"]["bm25"] == 1.0
        assert "embed" in summary["routing_accuracy"]  # the default router's cell runs (it once failed on options)
        oracle = next(r for r in rows if r["router"] == "oracle")
        assert all(p["modules"] == [p["gold_module"]] for p in oracle["predictions"])
