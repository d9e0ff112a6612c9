"""The capacity planner (plan.py) on capacity rows made by hand, through `loramem plan` as a user runs it, and on
the rows of a real (tiny) `bench capacity` run."""

from __future__ import annotations

import json

import pytest
from conftest import run_cli
from test_bank_cli import run_main

from loramem import plan
from loramem.errors import UserError

SIZES = [500, 1000, 2000, 4000]
# exact match per rank at each size: T_max(0.9) = 500, 1000, 2000 tokens at ranks 1, 2, 4 (T_max = 500 * rank)
ACCURACY = {1: [0.95, 0.6, 0.3, 0.1], 2: [1.0, 0.92, 0.5, 0.2], 4: [1.0, 1.0, 0.95, 0.6]}


def rows(accuracy=ACCURACY, sizes=SIZES) -> list[dict]:
    return [{"recipe": "capacity", "status": "ok", "cell": f"r{r}-tokens{s}", "rank": r, "size_kind": "tokens",
             "size": s, "size_tokens": s, "entries": s // 25, "accuracy": a, "n_params": 1000 * r, "tau": 0.9}
            for r, accs in accuracy.items() for s, a in zip(sizes, accs, strict=True)]


def test_fit_is_the_power_law_through_the_points():
    fit = plan.fit_power_law({1: 500, 2: 1000, 4: 2000})
    assert fit["a"] == pytest.approx(500) and fit["b"] == pytest.approx(1.0) and fit["b_se"] == pytest.approx(0)
    noisy = plan.fit_power_law({1: 500, 2: 1000, 4: 4000, 8: 0})
    assert noisy["ranks"] == [1, 2, 4] and noisy["b"] == pytest.approx(1.5) and noisy["b_se"] > 0
    lo, hi = plan.predict_interval(noisy, 4)
    assert lo < plan.predict(noisy, 4) < hi
    assert plan.predict_interval(plan.fit_power_law({1: 500, 2: 1000}), 2) is None  # two points: no error


def test_plan_picks_the_fewest_modules_then_the_smallest_rank():
    p = plan.plan(rows(), facts=30, tau=0.9)  # 750 tokens: one module; rank 2 holds 1000
    assert (p["rank"], p["modules"], p["n_params"], p["tokens_per_fact"]) == (2, 1, 2000, 25)
    assert p["expected_exact_match"] == pytest.approx(0.96)  # rank 2's curve between 500 (1.0) and 1000 (0.92)
    p = plan.plan(rows(), facts=200, tau=0.9)  # 5000 tokens: rank 8 (fit: 4000) is the largest within 2x
    assert (p["rank"], p["modules"], p["n_params"]) == (8, 2, 16000)
    assert p["extrapolation"] == {"rank": 2.0, "size": 0.625, "limit": 2.0}
    # rank 4's curve at the same fill: 2500 of rank 8's 4000 is 1250 of rank 4's 2000 -> between 1.0 and 0.95
    assert p["expected_exact_match"] == pytest.approx(0.9875)
    assert plan.plan(rows(), facts=200, tau=0.9, max_extrapolation=1)["modules"] == 3  # rank 4, no reading out


def test_plan_refuses_what_the_rows_cannot_tell():
    with pytest.raises(UserError, match="need 63 modules within 2x"):
        plan.plan(rows(), facts=10000, tau=0.9)
    with pytest.raises(UserError, match=r"reach tau at 1 rank\(s\) \[4\]"):
        plan.plan(rows({1: [0.5] * 4, 2: [0.8] * 4, 4: [0.95] * 4}), facts=10, tau=0.9)
    with pytest.raises(UserError, match="does not grow with rank"):
        plan.plan(rows({1: [1.0, 1.0, 0.5, 0.1], 2: [1.0, 0.5, 0.1, 0.0]}), facts=10, tau=0.9)


def test_cli_plan_json_and_bad_input(tmp_path, capsys, monkeypatch):
    d = tmp_path / "sheet"
    (d / "capacity").mkdir(parents=True)
    (d / "capacity" / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows()))
    r = run_cli("plan", "--facts", "30", "--tau", "0.9", "--datasheet", str(d), "--json", timeout=60)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert {"rank": 2, "modules": 1, "n_params": 2000}.items() <= out.items()
    assert out["expected_exact_match"] == pytest.approx(0.96) and out["fit"]["b"] == pytest.approx(1.0)
    r = run_main(capsys, monkeypatch, "plan", "--facts", "30", "--datasheet", str(d))
    assert r.returncode == 0 and "rank 2 x 1 module(s)" in r.stdout and "limit x2" in r.stdout
    (tmp_path / "empty").mkdir()
    for args in (["--facts", "10000"], ["--facts", "0"], ["--tau", "1.5", "--facts", "3"],
                 ["--facts", "3", "--max-extrapolation", "0.5"]):
        bad = run_main(capsys, monkeypatch, "plan", "--datasheet", str(d), *args)
        assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    for where in (tmp_path / "nowhere", tmp_path / "empty"):
        bad = run_main(capsys, monkeypatch, "plan", "--facts", "3", "--datasheet", str(where))
        assert bad.returncode == 2 and "Traceback" not in bad.stderr and "bench capacity" in bad.stderr


def test_plan_reads_a_real_capacity_run(tmp_path, capsys, monkeypatch):
    """A real `bench capacity` run's rows: tiny-random stores nothing, so the planner says the fit lacks ranks."""
    out = tmp_path / "cap"
    r = run_main(capsys, monkeypatch, "bench", "capacity", "--out", str(out), "--model", "tiny-random", "--ranks",
                 "1,2", "--entries", "2", "--steps", "1", "--seeds", "1", "--layers", "0-1")
    assert r.returncode == 0, r.stderr
    assert len(plan.capacity_rows(out)) == 2
    bad = run_main(capsys, monkeypatch, "plan", "--facts", "3", "--datasheet", str(out))
    assert bad.returncode == 2 and "reach tau at 0 rank(s)" in bad.stderr, bad.stderr
