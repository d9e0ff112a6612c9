"""`loramem bench capacity`: the contract files, with numbers computed from the cells."""

from __future__ import annotations

import json
import math

import pytest
from conftest import run_cli

from loramem.experiments.capacity import summarize
from loramem.runs.runner import RecipeOptions, read_rows


def test_bench_capacity_writes_the_contract_files(tmp_path):
    proc = run_cli("bench", "capacity", "--model", "tiny-random", "--ranks", "1,2", "--entries", "2,4",
                   "--layers", "0-1", "--steps", "2", "--tau", "0.9", "--seeds", "1", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = read_rows(tmp_path / "results.jsonl")
    assert len(rows) == 4 and all(r["status"] == "ok" for r in rows)
    for r in rows:
        assert {"rank", "size_tokens", "entries", "accuracy", "n_params", "bits", "bits_per_param", "seconds"} <= set(r)
        assert math.isclose(r["bits_per_param"], r["bits"] / r["n_params"], rel_tol=1e-3)
    assert {r["entries"] for r in rows} == {2, 4}
    n1 = next(r["n_params"] for r in rows if r["rank"] == 1)
    assert next(r["n_params"] for r in rows if r["rank"] == 2) == 2 * n1  # LoRA params grow linearly with rank
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert set(summary["per_rank"]) == {"1", "2"} and "efficiency" in summary["per_rank"]["1"]
    for png in ("accuracy_vs_size", "tmax_vs_rank", "efficiency_vs_rank"):
        assert (tmp_path / f"{png}.png").stat().st_size > 1000
    assert (tmp_path / "results.csv").read_text().startswith("rank,size_tokens,entries,train_seed,accuracy")
    for r in rows:  # every fact's question, gold, prediction and score; together they give the cell's accuracy
        preds = r["predictions"]
        assert len(preds) == r["predictions_of"] == r["entries"] and r["predictions_by"].startswith("teacher-forced")
        assert all({"question", "gold", "prediction", "exact", "token_accuracy"} <= set(p) for p in preds)
        assert all(p["question"].startswith("What is the phone number of ") for p in preds)
        assert sum(p["exact"] for p in preds) / len(preds) == pytest.approx(r["accuracy"])


def test_cells_cached_before_predictions_were_kept_still_resume_and_report(tmp_path):
    from loramem import experiments
    from loramem.datasheet import predictions_note
    from loramem.runs.runner import run_recipe

    opts = RecipeOptions(model="tiny-random", out=tmp_path, progress=False,
                         params={"ranks": [1], "entries": [2, 3], "seeds": 1, "writer": {"layers": "0-1", "steps": 1}})
    run_recipe(experiments.get("capacity"), opts)
    rows = read_rows(tmp_path / "results.jsonl")
    old = [{k: v for k, v in r.items() if not k.startswith("predictions")} if r["entries"] == 2 else r for r in rows]
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in old))
    (tmp_path / "accuracy_vs_size.svg").unlink()
    summary = run_recipe(experiments.get("capacity"), opts)  # both cells cached: nothing reruns, plots redrawn
    assert summary["ok"] == 2 and read_rows(tmp_path / "results.jsonl") == old
    assert (tmp_path / "accuracy_vs_size.svg").is_file()
    note = predictions_note(old)
    assert "each question’s answer, gold and scores" in note and "1 of 2 cells" in note
    assert predictions_note([r for r in old if "predictions" not in r]) == ""  # rows from before predictions: the link says only what is there


def test_tmax_and_efficiency_follow_the_papers_definition(tmp_path):
    rows = [{"rank": 1, "size_tokens": s, "entries": s // 25, "accuracy": a, "n_params": 1000, "bits": 0,
             "bits_per_param": b, "tau": 0.9, "steps": 1, "seconds": 1}
            for s, a, b in ((500, 1.0, 0.5), (1000, 0.95, 0.9), (2000, 0.4, 0.7))]
    rows += [{"rank": 4, "size_tokens": s, "entries": s // 25, "accuracy": a, "n_params": 4000, "bits": 0,
              "bits_per_param": 0.2, "tau": 0.9, "steps": 1, "seconds": 1}
             for s, a in ((500, 1.0), (1000, 1.0), (2000, 0.92))]
    s = summarize(rows, RecipeOptions(out=tmp_path))
    assert s["per_rank"]["1"]["t_max"] == 1000 and s["per_rank"]["4"]["t_max"] == 2000
    assert s["per_rank"]["1"]["efficiency"] == 1000 / 1000 and s["per_rank"]["4"]["efficiency"] == 2000 / 4000
    assert s["peak_efficiency_rank"] == "1"
    assert "| 1 | 1000 |" in (tmp_path / "capacity.md").read_text()


def test_seeds_train_each_cell_on_its_own_phonebook_and_the_summary_uses_their_mean(tmp_path):
    proc = run_cli("bench", "capacity", "--model", "tiny-random", "--ranks", "1,2", "--entries", "3",
                   "--layers", "0-1", "--steps", "1", "--seeds", "2", "--seed", "5", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = read_rows(tmp_path / "results.jsonl")
    assert sorted(r["cell"] for r in rows) == ["r1-entries3-s5", "r1-entries3-s6", "r2-entries3-s5", "r2-entries3-s6"]
    assert {r["train_seed"] for r in rows} == {5, 6}
    md = (tmp_path / "capacity.md").read_text()
    assert "Mean over seeds" in md and "mean of 2 seeds" in md
    assert (tmp_path / "results.csv").read_text().splitlines()[0].split(",")[3] == "train_seed"
    bad = run_cli("bench", "capacity", "--model", "tiny-random", "--seeds", "0", "--out", str(tmp_path / "x"))
    assert bad.returncode != 0 and "--seeds must be >= 1" in bad.stderr and "Traceback" not in bad.stderr


def test_phonebooks_differ_between_seeds():
    from loramem.data import phonebook

    assert [e.name for e in phonebook.generate(5, 0)] != [e.name for e in phonebook.generate(5, 1)]


def test_tmax_uses_the_mean_over_seeds(tmp_path):
    def row(rank, size, seed, acc, tokens):
        return {"rank": rank, "size_kind": "tokens", "size": size, "train_seed": seed, "size_tokens": tokens,
                "entries": size // 30, "accuracy": acc, "n_params": 1000 * rank, "bits": 0, "bits_per_param": 0.1,
                "tau": 0.9, "steps": 1, "seconds": 1}

    # rank 1 at 1000 tokens: seeds 1.0 and 0.7 -> mean 0.85 < tau, so T_max is the 500-token size (mean tokens 490)
    rows = [row(1, 500, 0, 1.0, 480), row(1, 500, 1, 1.0, 500), row(1, 1000, 0, 1.0, 990), row(1, 1000, 1, 0.7, 1010),
            row(2, 500, 0, 1.0, 480), row(2, 500, 1, 1.0, 500), row(2, 1000, 0, 0.9, 990), row(2, 1000, 1, 1.0, 1010)]
    s = summarize(rows, RecipeOptions(out=tmp_path))
    assert s["seeds"] == 2
    assert s["per_rank"]["1"]["t_max"] == 490 and s["per_rank"]["2"]["t_max"] == 1000
    assert "| 1 | 1000 | 33 | 2 | 0.850 | 0.212 | 0.000 to 1.000 | 1.00 / 0.70 |" in (tmp_path / "capacity.md").read_text()


def test_the_memory_law_recovers_a_known_power_and_needs_three_ranks():
    from loramem.experiments.capacity import memory_law

    law = memory_law({1: 300.0, 2: 300.0 * 2**0.7, 4: 300.0 * 4**0.7, 8: 300.0 * 8**0.7, 16: 0})
    assert law["alpha"] == pytest.approx(0.7, abs=1e-4) and law["c"] == pytest.approx(300, abs=0.01)
    assert law["ranks"] == [1, 2, 4, 8] and law["alpha_stderr"] == pytest.approx(0, abs=1e-4)
    noisy = memory_law({1: 500, 2: 1000, 4: 1000, 8: 4000})
    assert noisy["alpha_ci95"][0] < noisy["alpha"] < noisy["alpha_ci95"][1] and noisy["r2"] < 1
    assert memory_law({1: 500, 4: 2000}) is None
