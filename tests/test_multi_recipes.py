"""The multi-module recipes (Q8-Q11): their findings on hand-made rows, and one tiny end-to-end run of each."""

from __future__ import annotations

import json

import pytest
from finding_rows import kept

from loramem import findings


def _verdict(fid: str, rows: list[dict]) -> dict:
    return findings.verdict_of(fid, rows)


def test_finding_oracle_beats_single():
    rows = [{"system": "single", **kept(0.4)}, {"system": "multi-oracle", **kept(0.9)}, {"system": "icl", **kept(0.2)}]
    v = _verdict("oracle-multi-beats-single", rows)
    assert v["verdict"] == "agrees" and v["effect"] == 0.5 and v["n"] == 60
    rows[1].update(kept(0.3))
    assert _verdict("oracle-multi-beats-single", rows)["verdict"] == "disagrees"
    assert _verdict("oracle-multi-beats-single", rows[2:])["verdict"] == "undecided"
    unsaturated = [{"system": "single", **kept(1.0)}, {"system": "multi-oracle", **kept(1.0)}]
    v = _verdict("oracle-multi-beats-single", unsaturated)
    assert v["agrees"] is None and "saturate" in v["evidence"]["why"]


def test_finding_embed_can_fall_below():
    rows = [{"router": "single", "answer_accuracy": 0.5, **kept(0.5)},
            {"router": "embed-module", "answer_accuracy": 0.3, "routing_accuracy": 0.4, **kept(0.3)},
            {"router": "oracle", "answer_accuracy": 0.9, "routing_accuracy": 1.0, **kept(0.9)}]
    v = _verdict("embed-routing-can-fall-below", rows)
    assert v["verdict"] == "agrees" and v["evidence"]["embed_routing_accuracy"] == 0.4 and v["effect"] == 0.2
    rows[1].update(answer_accuracy=0.8, **kept(0.8))
    assert _verdict("embed-routing-can-fall-below", rows)["verdict"] == "disagrees"
    assert _verdict("embed-routing-can-fall-below", rows[2:])["verdict"] == "undecided"


def test_finding_ties_most_robust():
    rows = [{"method": "single", **kept(1.0)}, {"method": "ties", **kept(0.7)},
            {"method": "linear", **kept(0.4)}, {"method": "cat", **kept(0.1)}]
    v = _verdict("ties-most-robust", rows)
    assert v["verdict"] == "agrees" and v["evidence"]["best_other"] == "linear"  # the single LoRA is a reference
    rows[2].update(kept(0.9))
    assert _verdict("ties-most-robust", rows)["verdict"] == "disagrees"
    assert _verdict("ties-most-robust", rows[:2])["verdict"] == "undecided"
    flat = [{"method": m, **kept(0.0), **kept(t, key="token_accuracy"), "token_accuracy": t}
            for m, t in [("ties", 0.6), ("cat", 0.2)]]
    for r in flat:
        r["accuracy"] = 0.0
    v = _verdict("ties-most-robust", flat)
    assert v["verdict"] == "agrees" and v["evidence"]["metric"] == "token_accuracy"
    flat[1].update(kept(0.9, key="token_accuracy"), token_accuracy=0.9, accuracy=0.0)
    assert _verdict("ties-most-robust", flat)["verdict"] == "disagrees"


def test_finding_accuracy_falls_with_n():
    rows = [{"method": "ties", "n": n, **kept(a)} for n, a in [(1, 0.9), (2, 0.6), (3, 0.5)]]
    v = _verdict("merge-n-degrades", rows)
    assert v["verdict"] == "agrees" and v["effect"] == 0.4
    rows += [{"method": "linear", "n": 1, **kept(0.5)}, {"method": "linear", "n": 3, **kept(0.95)}]
    v = _verdict("merge-n-degrades", rows)
    assert v["evidence"]["accuracy_by_n"]["linear"] == {"1": 0.5, "3": 0.95}
    assert v["evidence"]["by_method"]["linear"]["effect"] < 0 and v["verdict"] != "agrees"  # methods disagree
    assert _verdict("merge-n-degrades", [{"method": "ties", "n": 2, **kept(0.1)}])["verdict"] == "undecided"


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
        assert summary["answer_of_oracle"]["oracle"] in (1.0, None) and "answer / oracle's" in (out / "routing.md").read_text()
        oracle = next(r for r in rows if r["router"] == "oracle")
        assert all(p["modules"] == [p["gold_module"]] for p in oracle["predictions"])


def test_each_scale_picks_its_merges_from_its_table(tmp_path):
    """The merge grids per scale: the demo leaves loramem's exact merges out of Q10; cpu keeps exact-linear and
    exact-ties but not exact-dare nor their unscaled sums, and stops Q11's weight-space merges at N = 3; paper runs
    everything to N = 5; an explicit max_n or method list overrides the table."""
    from loramem.experiments import merging, n_modules
    from loramem.runs.runner import RecipeOptions

    def names(mod, scale, **params):
        return [c["cell"] for c in mod.cells(RecipeOptions(model="tiny-random", scale=scale, out=tmp_path,
                                                           params=params))]

    assert not [c for c in names(merging, "smoke") if "exact" in c]
    cpu = names(merging, "cpu")
    assert {"merge-exact-linear", "merge-exact-ties"} <= set(cpu) and not [c for c in cpu if "exact-dare" in c]
    assert not [c for c in cpu if c.startswith("merge-exact") and c.endswith("-sum")] and "merge-linear-sum" in cpu
    assert {"merge-exact-dare", "merge-exact-linear-sum"} <= set(names(merging, "paper"))
    assert "merge-exact-linear-sum" in names(merging, "smoke", methods=["exact-linear"])
    q11 = names(n_modules, "cpu")
    assert "exact-linear-n3" in q11 and "exact-linear-n4" not in q11 and "ties-n5" in q11
    assert "exact-ties-n5" in names(n_modules, "paper") and "exact-ties-n4" in names(n_modules, "cpu", max_n=4)
    assert "linear-n4" not in names(n_modules, "smoke") and "exact-ties-n1" not in names(n_modules, "smoke")
