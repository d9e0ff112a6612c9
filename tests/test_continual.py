"""`loramem bench continual` (experiments/continual.py and continual_report.py): the rounds' facts, the findings'
verdicts on rows made by hand, and a small real run through the CLI (tiny-random: mechanics, plots, resume)."""

from __future__ import annotations

import json

import pytest
from test_bank_cli import run_main

from loramem.experiments import continual as c
from loramem.experiments import continual_report as report


def test_corrections_change_earlier_entries_once_each():
    plan = c.rounds_of("corrections", 4, 16, seed=0)
    assert [len(r) for r in plan] == [16] * 4 and all(was is None for _, was in plan[0])
    seen, fixed = {}, set()
    for rnd in plan:
        fixes = [(e, was) for e, was in rnd if was is not None]
        assert len(fixes) == (0 if rnd is plan[0] else 8)
        for e, was in fixes:
            assert e.key in seen and e.key not in fixed and seen[e.key] == was != e.answer
            fixed.add(e.key)
        seen.update({e.key: e.answer for e, _ in rnd})
    latest, old = c.truth_after(plan, 4)
    assert len(latest) == 16 + 3 * 8 and set(old) == fixed and all(latest[k].answer != v for k, v in old.items())
    assert [len(r) for r in c.rounds_of("phonebook", 3, 5, seed=0)] == [5, 5, 5]
    assert all(was is None for r in c.rounds_of("phonebook", 3, 5, seed=0) for _, was in r)
    assert c.wilson(0, 16) == [0.0, 0.1936] and c.wilson(16, 16) == [0.8064, 1.0]


def _row(strategy, k, retention, routed="1111", base_probe=1.0, rank=4, rounds=3, dataset="phonebook"):
    n = len(routed)
    hits = "1" * round(retention * n) + "0" * (n - round(retention * n))
    return {"dataset": dataset, "strategy": strategy, "rank": rank, "round": k, "rounds": rounds, "n_facts": n,
            "retention": retention, "retention_ci": c.wilson(round(retention * n), n), "hits": hits,
            "routed": routed, "routing_accuracy": routed.count("1") / n, "routing_ci": c.wilson(routed.count("1"), n),
            "retention_oracle": 1.0, "modules": k, "base_probe": base_probe,
            "base_probe_ci": c.wilson(round(base_probe * 40), 40), "n_probes": 40}


def test_findings_decide_from_their_intervals():
    from loramem.findings import verdict_of

    def v(fid: str, rows: list[dict]) -> str:
        return verdict_of(fid, rows)["verdict"]

    keeps = [_row("append-replay", k, 1.0, "1" * 60) for k in (1, 2, 3)]
    drops = [_row("append-replay", k, 0.5, "1" * 60) for k in (1, 2, 3)]
    assert v("continual-replay-keeps", keeps) == "agrees" and v("continual-replay-keeps", drops) == "disagrees"
    near = [_row("append-replay", k, 0.9, "1" * 10) for k in (1, 2, 3)]
    assert v("continual-replay-keeps", near) == "undecided"  # 9 of 10: the interval holds tau
    plain = [_row("append-no-replay", 3, 0.5, "1" * 60)]
    gain = report.finding_replay_keeps(keeps + plain)[1]["replay_minus_no_replay_last_round"]
    assert gain["mean"] == 0.5 and gain["ci95"][0] > 0
    grows = [_row("new-module", 1, 1.0, "1" * 40), _row("new-module", 2, 1.0, "1" * 40),
             _row("new-module", 3, 1.0, "0" * 20 + "1" * 20)]
    flat = [_row("new-module", k, 1.0, "1" * 40) for k in (1, 2, 3)]
    assert v("continual-new-module-routing", grows) == "agrees"
    assert v("continual-new-module-routing", flat) == "disagrees"  # not one fact routed worse: no effect
    intact = [_row("append-replay", 3, 1.0, base_probe=1.0, rank=1), _row("append-replay", 3, 1.0, base_probe=0.2)]
    assert v("continual-base-intact", intact) == "agrees"  # decided at the lowest rank
    assert v("continual-base-intact", [_row("append-replay", 3, 1.0, base_probe=0.5, rank=1)]) == "disagrees"
    assert v("continual-base-intact", [_row("append-replay", 3, 1.0, base_probe=0.9, rank=1)]) == "undecided"


def test_bench_continual_writes_rounds_plots_findings_and_resumes(tmp_path, capsys, monkeypatch):
    out = tmp_path / "cont"
    args = ["bench", "continual", "--model", "tiny-random", "--scale", "smoke", "--out", str(out), "--rounds", "3",
            "--facts", "4", "--replay", "2", "--strategies", "append-replay,new-module", "--probe-ranks", "1",
            "--steps", "2", "--json"]
    r = run_main(capsys, monkeypatch, *args)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(rows) == (2 * 2 + 1) * 3 and all(x["status"] == "ok" for x in rows)
    for x in rows:
        assert {"round", "strategy", "retention", "latest", "base_probe", "retention_ci", "n_facts"} <= x.keys()
        assert x["n_facts"] == (4 * x["round"] if x["dataset"] == "phonebook" else 4 + 2 * (x["round"] - 1))
    fixes = [x for x in rows if x["dataset"] == "corrections" and x["round"] > 1]
    assert all(x["n_corrected"] == 2 * (x["round"] - 1) and x["old_value_rate"] is not None for x in fixes)
    modules = {(x["strategy"], x["round"]): x["modules"] for x in rows if x["dataset"] == "phonebook"}
    assert modules[("new-module", 3)] == 3 and modules[("append-replay", 3)] == 1
    pngs = {p.name for p in out.glob("*.png")}
    assert {"retention_vs_round_phonebook.png", "retention_vs_round_corrections.png",
            "old_value_vs_round_corrections.png", "base_forgetting_vs_rank.png"} <= pngs
    found = json.loads((out / "findings.json").read_text())
    assert [f["id"] for f in found] == [f[0] for f in report.FINDINGS]
    assert "ci95" in json.dumps(found[0]["evidence"]) and "routing_error_growth" in found[1]["evidence"]
    assert json.loads(r.stdout)["findings"] == {f["id"]: f["agrees"] for f in found}
    # a lost row reruns from the bank's saved state and measures the same thing again
    lost = rows.pop(2)
    (out / "results.jsonl").write_text("".join(json.dumps(x) + "\n" for x in rows))
    assert run_main(capsys, monkeypatch, *args).returncode == 0
    again = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()][-1]
    assert again["cell"] == lost["cell"]
    assert {k: again[k] for k in ("retention", "hits", "base_probe", "n_params")} == \
        {k: lost[k] for k in ("retention", "hits", "base_probe", "n_params")}


@pytest.mark.parametrize("bad", [["--rounds", "1"], ["--strategies", "magic"], ["--facts", "0"], ["--replay", "-1"],
                                 ["--probe-ranks", "x"]])
def test_bench_continual_bad_input_is_one_line(tmp_path, capsys, monkeypatch, bad):
    r = run_main(capsys, monkeypatch, "bench", "continual", "--model", "tiny-random", "--out", str(tmp_path / "o"),
                 *bad)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_main_rank_of_a_rerun_that_ran_append_replay_alone():
    # the half-lr ablation runs append-replay at the main rank (4) and at its probe ranks (1, 16) only
    rerun = [_row("append-replay", 1, 1.0, "1" * 10, rank=r) for r in (1, 4, 16)]
    assert report._main_rank(rerun) == 4
    assert report._main_rank([{**r, "main_rank": 16} for r in rerun]) == 16  # the cell's own record wins
    main = rerun + [_row(s, 1, 1.0, "1" * 10, rank=4) for s in ("append-no-replay", "new-module")]
    assert report._main_rank(main) == 4
    from loramem.runs.runner import RecipeOptions

    opts = RecipeOptions(scale="cpu", out="unused", params=c.ablation("cpu", "half-lr"))
    assert {cell["main_rank"] for cell in c.cells(opts)} == {c.SCALES["cpu"]["rank"]}
