"""The datasheet on a tiny grid: every section renders, plots are embedded, findings come from the rows,
a failing cell is reported while the rest finish, and a rerun resumes."""

from __future__ import annotations

import json
import re
import time

import pytest
import torch
from recipes_for_tests import SQUARES

from loramem import experiments
from loramem.datasheet import run_datasheet
from loramem.errors import UserError
from loramem.runs.runner import read_rows

TINY_CAPACITY = {"ranks": [1, 4], "entries": [2, 6], "tau": 0.9, "seeds": 1,
                 "writer": {"layers": "0-1", "steps": 3, "eval_every": 3}}


@pytest.fixture
def squares_registered(monkeypatch):
    monkeypatch.setitem(experiments.CUSTOM, "squares", SQUARES)


def test_report_renders_every_section_for_a_tiny_grid(tmp_path, squares_registered, monkeypatch, capfd):
    """Two recipes at once in two worker processes (the default on a 2-core CPU): same rows, same report. Without a
    terminal the parent says how far each recipe is in plain lines (here every loop, not every 30 s)."""
    from loramem.runs import workers

    monkeypatch.setattr(workers, "PLAIN_EVERY_S", 0.0)
    res = run_datasheet("tiny-random", "smoke", tmp_path, only="capacity,squares", progress=True, workers=2,
                        params={"capacity": TINY_CAPACITY, "squares": {"n": 4, "fail": [3]}})
    said = capfd.readouterr().err
    assert "datasheet: 0/2 recipes done, " in said and re.search(r"capacity [0-4]/4 cells \(now ", said), said[-2000:]
    assert "datasheet: squares done in " in said and "(2/2 recipes, " in said
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["workers"] == 2 and set(run["recipes"]) == {"capacity", "squares"}
    logs = list((tmp_path / "logs").glob("worker-*.log"))
    assert len(logs) == 2 and "== squares" in "".join(p.read_text() for p in logs)  # each recipe in a worker
    md = (tmp_path / "report.md").read_text()
    for section in ("## Environment", "## Findings of the paper", "## capacity: Q1-Q3", "## squares: test"):
        assert section in md, section
    assert "Failed cells: x=3" in md  # the failing cell is reported, the other three finished
    assert f"| recipes at once | 2 (worker processes, {run['threads_per_worker']} threads each" in md
    assert "| LoRA training precision | " in md and "| router query encoder | all-MiniLM-L6-v2 " in md
    assert "## Contents" in md and "- [capacity](#capacity-q1-q3" in md and "| loramem git commit | " in md
    assert "| command | `loramem.datasheet(...) from Python` |" in md
    assert "mean accuracy by rank (" in md.lower() and '{"' not in md.split("## Findings")[1].split("\n## ")[0]  # sentences
    assert "[capacity/results.jsonl](capacity/results.jsonl)" in md
    assert "and each question’s answer, gold and scores (`predictions`, read by teacher-forced argmax" in md
    assert "Settings of its cells (from the rows): rank 1, 4;" in md
    assert all(p.with_suffix(".svg").is_file() for p in (tmp_path / "capacity").glob("*.png")) and "([SVG](" in md
    assert md.count("![") >= 4  # capacity's plots
    html = (tmp_path / "report.html").read_text()
    assert "data:image/png;base64," in html and 'src="capacity/' not in html  # self-contained
    assert 'id="capacity-q1-q3' in html  # the contents links land
    rows = read_rows(tmp_path / "results.jsonl")
    assert {r["recipe"] for r in rows} == {"capacity", "squares"}
    assert sum(r["recipe"] == "capacity" for r in rows) == 4
    verdicts = json.loads((tmp_path / "findings.json").read_text())
    assert {"finding", "agrees", "evidence"} <= set(verdicts[0])
    cap = {v["id"]: v for v in verdicts}["capacity-saturates"]
    # measured (two ranks, two sizes): decided, or undecided with the reason (tiny-random may store nothing)
    assert cap["verdict"] in ("agrees", "disagrees", "undecided") and cap["measured"]
    assert "mean_accuracy_by_rank" in cap["evidence"] and {"effect", "ci_low", "ci_high", "margin", "n"} <= set(cap)
    assert "| finding | verdict | effect (A minus B) | 95% interval | margin | n | evidence |" in md
    assert {v["id"]: v for v in verdicts}["qa-beats-raw"]["verdict"] == "not measured"  # not run here
    assert res["recipes"]["squares"]["failed"] == ["x=3"]


def test_rerun_resumes_without_redoing_cells(tmp_path, squares_registered):
    run_datasheet("tiny-random", "smoke", tmp_path, only="squares", progress=False,
                  params={"squares": {"n": 3, "fail": [1]}})
    run_datasheet("tiny-random", "smoke", tmp_path, only="squares", progress=False, params={"squares": {"n": 3}})
    rows = read_rows(tmp_path / "squares" / "results.jsonl")
    assert len(rows) == 4 and sum(r["status"] == "ok" for r in rows) == 3
    assert "Failed cells" not in (tmp_path / "report.md").read_text()
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["workers"] == 1 and run["threads_per_worker"] == torch.get_num_threads()
    assert f"| recipes at once | 1 ({torch.get_num_threads()} threads) |" in (tmp_path / "report.md").read_text()
    # the wall time of a datasheet that resumed is every sitting's, not the last one's
    assert [x["finished"] for x in run["sittings"]] == [True, True]
    assert run["wall_s"] == round(sum(x["wall_s"] for x in run["sittings"]), 1) >= run["sitting_wall_s"]
    assert "over 2 sittings" in (tmp_path / "report.md").read_text()
    # the recipe's seconds are this sitting's, which reran only the failed cell: the line says so
    assert run["recipes"]["squares"]["ran"] == 1
    assert "3/3 cells finished; this sitting ran 1 of them in " in (tmp_path / "report.md").read_text()


def test_a_killed_sitting_still_counts_its_wall_time(tmp_path):
    """A sitting that dies mid-run (no run.json written) was still on the clock: sittings.json is rewritten as the
    run goes, so the next sitting adds it."""
    from loramem.datasheet import Sittings

    killed = Sittings(tmp_path / "sittings.json", scale="cpu", model="m", every=0.05)
    time.sleep(0.3)
    killed._done.set()  # the process dies: stop() is never called
    killed._thread.join()
    other = json.loads((tmp_path / "sittings.json").read_text())
    assert other[0]["wall_s"] >= 0.2 and not other[0]["finished"]
    later = Sittings(tmp_path / "sittings.json", scale="cpu", model="m").stop()
    assert len(later) == 2 and later[0]["wall_s"] >= 0.2 and later[1]["finished"]
    elsewhere = Sittings(tmp_path / "sittings.json", scale="smoke", model="m").stop()
    assert len(elsewhere) == 1  # another scale's sittings are not this datasheet's


def test_each_sitting_records_its_machine_and_the_report_names_them_when_they_differ(tmp_path):
    """A datasheet resumed on another machine (another CPU, or bf16 where the first had fp32) says so."""
    import os

    from loramem.datasheet import Sittings, _machines, machine

    first = Sittings(tmp_path / "sittings.json", scale="cpu", model="m").stop()
    assert first[0]["machine"] == machine() and f"{os.cpu_count()} x " in machine()
    assert machine().endswith((", fp32", ", bf16"))
    assert _machines({"sittings": first * 2}) is None  # one machine throughout: nothing to say
    old = {**first[0], "machine": "16 x Other CPU, fp32"}
    assert _machines({"sittings": [old, first[0]]}) == f"sitting 1: 16 x Other CPU, fp32; sitting 2: {machine()}"


def test_recipes_that_share_a_bank_run_in_one_worker_in_order():
    from loramem.runs.workers import plan

    units = plan(["capacity", "routing", "mixes", "multi-lora", "n-modules", "squares"])
    assert ["multi-lora", "routing", "n-modules"] in units  # the Q8-Q11 bank is trained once, by multi-lora
    assert sorted(n for u in units for n in u) == sorted(["capacity", "routing", "mixes", "multi-lora",
                                                          "n-modules", "squares"])
    assert units[0][0] == "multi-lora" and units[-1] == ["squares"]  # longest first, unknown recipes last


def test_a_worker_that_dies_is_reported_and_the_other_recipes_finish(tmp_path, squares_registered):
    """A worker killed mid-recipe (as by the out-of-memory killer) becomes that recipe's error; the rest finish."""
    from recipes_for_tests import DIES

    experiments.CUSTOM["dies"] = DIES
    try:
        res = run_datasheet("tiny-random", "smoke", tmp_path, only="squares,dies", progress=False, workers=2,
                            params={"squares": {"n": 3}})
    finally:
        experiments.CUSTOM.pop("dies")
    assert "worker process died" in res["recipes"]["dies"]["error"]
    assert res["recipes"]["squares"]["ok"] == 3
    assert "worker process died" in (tmp_path / "report.md").read_text()


def test_workers_that_cannot_start_are_reported_not_restarted_forever(tmp_path, squares_registered):
    import threading

    from recipes_for_tests import Unloadable

    res: dict = {}
    run = threading.Thread(target=lambda: res.update(run_datasheet(
        "tiny-random", "smoke", tmp_path, only="squares,capacity", progress=False, workers=2,
        params={"squares": {"n": 2, "poison": Unloadable()}, "capacity": TINY_CAPACITY})), daemon=True)
    run.start()
    run.join(timeout=180)
    assert not run.is_alive(), "the datasheet kept restarting workers that cannot start"
    assert "could not start" in res["recipes"]["squares"]["error"] and "workers=1" in res["recipes"]["squares"]["error"]
    assert res["recipes"]["capacity"]["ok"] == 4  # units are sent one by one: the one that loads still runs
    assert "could not start" in (tmp_path / "report.md").read_text()


def test_recipes_that_cannot_be_pickled_are_refused_with_the_fix(tmp_path, squares_registered):
    with pytest.raises(UserError, match="--workers 1"):
        run_datasheet("tiny-random", "smoke", tmp_path, only="squares,capacity", progress=False, workers=2,
                      params={"squares": {"n": 2, "unpicklable": lambda: None}, "capacity": TINY_CAPACITY})


def test_demo_reads_the_paper_release_from_paper_data(tmp_path):
    from conftest import run_cli

    missing = tmp_path / "no-release-here"
    proc = run_cli("demo", "--model", "tiny-random", "--only", "counterfact", "--workers", "1", "--paper-data",
                   str(missing), "--out", str(tmp_path / "demo"))
    # the report is written, then the exit says a recipe measured nothing, naming it and its first error
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "measured nothing (counterfact)" in proc.stderr and (tmp_path / "demo" / "report.md").is_file()
    (row,) = read_rows(tmp_path / "demo" / "counterfact" / "results.jsonl")
    assert row["status"] == "error" and str(missing) in row["error"]  # the folder given, not the default one


def test_side_results_call_out_the_base_knowledge_a_counterfact_module_lost(tmp_path):
    from loramem.datasheet import side_results

    (tmp_path / "counterfact").mkdir()
    summary = {"mean_known_retained": 0.346, "per_cell": {"r=4": {"known_before": 26, "known_retained": 0.346}}}
    (tmp_path / "counterfact" / "summary.json").write_text(json.dumps(summary))
    said = side_results(tmp_path, ["counterfact"])
    assert len(said) == 1 and "kept 0.346 of the facts the base model answered right before" in said[0]
    assert "26 such facts" in said[0]
    assert side_results(tmp_path, ["capacity"]) == []


def _graded(n: int, mean: float, spread: float = 1.0) -> list[dict]:
    """n questions' judge scores around `mean` (what a docqa row keeps per question)."""
    return [{"judge": mean + spread * (i % 3 - 1), "f1": 0.5} for i in range(n)]


def _docqa(n_q: int = 6, **fields) -> dict:
    scores = {"judge": 4.0, "f1": 0.3, "rougeL": 0.3, "bleu": 0.1, "em": 0.0}
    return {**scores, "n_questions": n_q, "judge_name": "embed", "tokens_seen": 100, "train_tokens": 100,
            "predictions": _graded(n_q, 4.0), **fields}


# Result rows as each recipe writes them (the multi-module ones as cached before predictions and intervals were
# kept: the plots must still draw Wilson intervals from the share and n).
HAND_ROWS = {
    "capacity": [{"cell": f"r{r}-e{e}", "rank": r, "size_kind": "entries", "size": e, "size_tokens": 20 * e,
                  "entries": e, "accuracy": a, "correct": round(a * e), "n_params": 1000 * r, "bits": 0,
                  "bits_per_param": round(a * e) * 33.2 / (1000 * r), "tau": 0.9, "steps": 1, "seconds": 1}
                 for r in (1, 4) for e, a in ((20, 1.0), (40, 0.5))],
    "formats": [_docqa(format=f, budget=b, paper="1") for f in ("raw", "qa") for b in (250, 750)],
    "mixes": [_docqa(mix=m, paper="1") for m in ("QA40", "Summary8+QA40")],
    "model-scale": [_docqa(base_model=m, base_params=p, views="qa10", paper="1", base_judge=2.0, base_f1=0.1,
                           base_predictions=_graded(6, 2.0)) for m, p in (("tiny-random", 1), ("smollm2-135m", 2))],
    "generators": [_docqa(generator_name="template", views="qa10", view_tokens=50, generate_s=0.1, qa_short_by=0,
                          prompt_version="v1", paper="1")],
    "multi-lora": [{"cell": s, "system": s, "accuracy": a, "n_eval": 48, "n_facts": 48, "modules": 4,
                    "small_rank": 1, "single_rank": 4, "lora_params": 10}
                   for s, a in (("single", 0.4), ("multi-oracle", 0.9), ("icl", 0.1))],
    "routing": [{"cell": r, "router": r, "answer_accuracy": a, "routing_accuracy": None if r == "single" else 1.0,
                 "route_ms": 0.1, "n_eval": 48, "modules": 4} for r, a in (("single", 0.4), ("oracle", 0.9))],
    "merging": [{"cell": m, "method": m, "weights": "auto", "accuracy": a, "token_accuracy": 0.6, "top_k": 3,
                 "n_eval": 48, "merge_ms": 1.0, "n_merges": 2, "modules": 4}
                for m, a in (("single", 0.4), ("none", 0.9), ("ties", 0.2))],
    "n-modules": [{"cell": f"ties-n{n}", "method": "ties", "n": n, "accuracy": 1 / n, "token_accuracy": 0.5,
                   "token_accuracy_ci": [0.4, 0.6], "n_eval": 48, "modules": 4} for n in (1, 2)],
    "rag-icl": [{"cell": "phonebook", "benchmark": "phonebook", "metric": "exact_match", "n_questions": 8,
                 "methods": {m: {"score": 0.5, "prompt_tokens": 10, "latency_ms": 5, "truncated_tokens": 0,
                                 "storage_bytes": 1, "train_s": 1.0}
                             for m in ("base", "lora", "rag", "icl", "lora+rag", "lora+icl")}}],
    "counterfact": [{"cell": "r4-1K", "rank": 4, "size": "1K", "size_tokens": 1234, "efficacy": 0.65,
                     "n_compared": 40, "known_retained": 0.5}],
}
NO_PER_ITEM_DATA = {"tmax_vs_rank", "efficiency_vs_rank"}  # thresholds on a curve, not means over items


@pytest.mark.parametrize("name", sorted(HAND_ROWS))
def test_every_plot_says_its_n_and_draws_95_intervals_where_items_were_scored(name, tmp_path):
    from conftest import error_bars, svg_text

    from loramem.runs.runner import RecipeOptions

    experiments.get(name).summarize(HAND_ROWS[name], RecipeOptions(model="tiny-random", out=tmp_path))
    plots = sorted(tmp_path.glob("*.svg"))
    assert plots and all(p.with_suffix(".png").is_file() for p in plots)
    for svg in plots:
        words = svg_text(svg)
        assert "n = " in words, (svg.name, words)
        if svg.stem not in NO_PER_ITEM_DATA:
            assert "bars: 95% CI" in words and error_bars(svg) >= 1, (svg.name, words)


def test_a_recipe_with_one_x_draws_a_point_with_its_interval_and_its_value(tmp_path):
    """CounterFact at one edit size: a point per rank with its Wilson bar and the value written, not a line."""
    from conftest import error_bars, svg_text

    from loramem.experiments.counterfact import summarize
    from loramem.intervals import wilson
    from loramem.runs.runner import RecipeOptions

    rows = [{"cell": f"r{r}-1K", "rank": r, "size": "1K", "size_tokens": 1234, "efficacy": e, "n_compared": 40,
             "known_retained": 0.5} for r, e in ((4, 0.65), (16, 0.8))]
    summarize(rows, RecipeOptions(out=tmp_path))
    words = svg_text(tmp_path / "efficacy_vs_size.svg").splitlines()
    lo, hi = wilson(26, 40)
    assert f"0.65  [{lo:.3g}, {hi:.3g}]" in words and any(w.startswith("0.8  [") for w in words)
    assert "edit tokens = 1234" in words and {"rank 4", "rank 16"} <= set(words)  # ranks side by side, x named
    assert error_bars(tmp_path / "efficacy_vs_size.svg") == 2


def test_a_disagreement_gets_its_ablation_rerun_and_rescored(tmp_path, squares_registered, monkeypatch):
    """A finding that disagrees runs the ablation declared for it: here a rerun of its recipe with one setting
    changed, which flips the verdict; findings.json, ablations.json and the report carry it beside the verdict.
    A finding that agrees runs none."""
    from loramem import findings

    def check(rows):  # the paper's side is "y grows past 5": the largest y minus 5, on a 0-1 scale
        ys = [r["y"] for r in rows]
        return {"effect": (max(ys) - 5) / 10, "ci_low": (max(ys) - 6) / 10, "ci_high": (max(ys) - 4) / 10, "n": 20,
                "arms": ["largest y", "5"]}, {"ys": ys}

    grows = findings.Finding("y-grows", "y grows past 5", "squares", check, "largest y minus 5", margin=0.0)
    always = findings.Finding("y-positive", "y is positive", "squares", lambda rows: ({
        "effect": 0.5, "ci_low": 0.4, "ci_high": 0.6, "n": 20}, {}), "y", margin=0.0)
    also = findings.Finding("y-grows-too", "y grows past 5 (again)", "squares", check, "largest y minus 5",
                            margin=0.0)
    checked = findings.Finding("y-positive-checked", "y is positive (checked anyway)", "squares", always.check, "y",
                               margin=0.0)
    monkeypatch.setattr(findings, "FINDINGS", [grows, always, also, checked])
    monkeypatch.setattr(findings, "ABLATIONS", {
        "y-grows": findings.Ablation("grid size", "five x values instead of two", params=lambda scale: {"n": 5}),
        "y-positive": findings.Ablation("never", "never run", params=lambda scale: {"n": 9}),
        "y-grows-too": findings.Ablation("grid size", "two x values, again", params=lambda scale: {"n": 2},
                                         key="again"),
        "y-positive-checked": findings.Ablation("one arm", "one x value", params=lambda scale: {"n": 1}, key="one",
                                                always=True)})
    # two reruns, each in its own worker process; the main run's params for the recipe stay under the change
    res = run_datasheet("tiny-random", "smoke", tmp_path, only="squares", progress=False, ablations=True,
                        params={"squares": {"n": 2, "fail": [1]}}, workers=2)
    main, other, third, fourth = res["findings"]
    assert fourth["verdict"] == "agrees" and fourth["ablation"]["verdict"] == "agrees"  # `always`: run anyway
    assert main["verdict"] == "disagrees" and other["verdict"] == "agrees" and "ablation" not in other
    assert third["ablation"]["verdict"] == "disagrees" and third["ablation"]["effect"] == -0.5  # x=1 fails there too
    assert third["ablation"]["rerun"]["failed"] == ["x=1"]
    logs = "".join(p.read_text() for p in (tmp_path / "ablations" / "logs").glob("worker-*.log"))
    assert "== squares@again" in logs and "== squares@y-grows" in logs  # one recipe: its reruns after it, 2 at once
    a = main["ablation"]
    assert a["cause"] == "grid size" and a["verdict"] == "agrees" and a["effect"] == 1.1 and a["n"] == 20
    assert a["folder"] == "ablations/y-grows/squares" and a["params"] == {"n": 5}
    assert len(read_rows(tmp_path / "ablations" / "y-grows" / "squares" / "results.jsonl")) == 5
    assert json.loads((tmp_path / "findings.json").read_text())[0]["ablation"]["verdict"] == "agrees"
    assert [x["name"] for x in json.loads((tmp_path / "ablations.json").read_text())] == [
        "y-grows", "y-grows-too", "y-positive-checked"]
    md = (tmp_path / "report.md").read_text()
    assert "## Ablations of the disagreements" in md
    assert "| y-grows | disagrees -0.500 | grid size | five x values instead of two ([rows](ablations/y-grows/" \
           "squares/results.jsonl)) | **agrees** | +1.100 | +1.000 to +1.200 | 20 |" in md
    # the demo (smoke, no flag) runs none
    res = run_datasheet("tiny-random", "smoke", tmp_path / "demo", only="squares", progress=False,
                        params={"squares": {"n": 2}})
    assert "ablation" not in res["findings"][0] and not (tmp_path / "demo" / "ablations").exists()


def test_declared_ablations_rescore_the_main_rows_or_name_a_rerun_at_each_scale():
    """Every finding has its ablation declared before any run; a rows-only one recomputes the finding from the
    same rows with another check (here: exact TIES as the TIES arm)."""
    from finding_rows import kept

    from loramem import findings

    assert {f.id for f in findings.FINDINGS} == set(findings.ABLATIONS)
    for a in findings.ABLATIONS.values():
        assert a.params is not None or a.check is not None
        for scale in ("smoke", "cpu"):
            assert a.params is None or isinstance(a.params(scale), dict)
    rows = [{"method": "ties", **kept(0.2)}, {"method": "exact-ties", **kept(0.9)}, {"method": "linear", **kept(0.6)}]
    main = findings.judge(findings.by_id("ties-most-robust"), *findings.by_id("ties-most-robust").check(rows), True)
    assert main["verdict"] == "disagrees" and main["arms"] == ["ties", "linear"]  # the other TIES is not "other"
    abl = findings.ABLATIONS["ties-most-robust"]
    effect, ev = abl.check(rows)
    assert effect["arms"] == ["exact-ties", "linear"] and effect["ci_low"] > 0  # exact TIES does lead


def test_an_ablation_rerun_starts_while_other_recipes_still_run(tmp_path, squares_registered, monkeypatch):
    """The rerun a verdict calls for is queued once its recipe finishes, and runs on the worker that recipe freed,
    beside the recipes still going: here `waits` holds its worker until the rerun's rows exist (60 s at most)."""
    from recipes_for_tests import WAITS

    from loramem import findings

    def check(rows):  # disagrees on the main grid (2 values), agrees on the rerun's (5)
        top = max(r["y"] for r in rows) / 10
        return {"effect": top - 0.5, "ci_low": top - 0.6, "ci_high": top - 0.4, "n": 20}, {}

    monkeypatch.setitem(experiments.CUSTOM, "waits", WAITS)
    monkeypatch.setattr(findings, "FINDINGS", [findings.Finding("y-grows", "y grows", "squares", check, "y",
                                                                margin=0.0)])
    monkeypatch.setattr(findings, "ABLATIONS", {"y-grows": findings.Ablation("grid", "five x", params=lambda s: {"n": 5})})
    rerun_rows = tmp_path / "ablations" / "y-grows" / "squares" / "results.jsonl"
    res = run_datasheet("tiny-random", "smoke", tmp_path, only="squares,waits", progress=False, ablations=True,
                        workers=2, params={"squares": {"n": 2}, "waits": {"n": 1, "until": str(rerun_rows), "wait_s": 300}})
    assert read_rows(tmp_path / "waits" / "results.jsonl")[0]["saw"] is True  # the rerun ran while it waited
    assert res["findings"][0]["verdict"] == "disagrees" and res["findings"][0]["ablation"]["verdict"] == "agrees"
    assert res["recipes"]["waits"]["ok"] == 1 and "squares@y-grows" not in res["recipes"]


def test_a_follow_that_raises_adds_nothing_and_the_recipes_finish(tmp_path, squares_registered, capfd):
    from loramem.runs import workers
    from loramem.runs.runner import RecipeOptions

    def follow(status):
        raise IndexError("follow broke")

    jobs = [(SQUARES, RecipeOptions(model="tiny-random", out=tmp_path / "sq", params={"n": 2}))]
    status = workers.run_parallel(jobs, 2, tmp_path / "logs", progress=False, follow=follow)
    assert status["squares"]["ok"] == 2
    assert "run_parallel: follow failed, no units added" in capfd.readouterr().err
