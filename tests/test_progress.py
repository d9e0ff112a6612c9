"""The writer's progress view: an ETA that honours --steps, --max-seconds and the early stop, and plain lines
where there is no terminal (a log file), so `make demo > log` shows the run is alive."""

from __future__ import annotations

import time

from loramem.progress import WriteProgress, eta_text


def test_eta_is_the_sooner_of_steps_and_max_seconds_and_says_it_may_stop_early():
    # 10 of 100 steps in 10 s: 90 s left by steps
    assert eta_text(10, 100, 10.0, None, None) == "0:01:30"
    # --max-seconds 30: only 20 s left, whatever the steps say
    assert eta_text(10, 100, 10.0, 30.0, None) == "0:00:20"
    assert eta_text(10, 100, 10.0, 30.0, 1.0) == "0:00:20 (or sooner, at exact match 1)"
    assert eta_text(0, 100, 0.0, None, None) == "?"


def test_without_a_terminal_a_plain_line_is_printed_every_interval(capsys):
    p = WriteProgress(total=50, enabled=True, max_seconds=60.0, target_em=1.0, plain_every_s=0.05)
    with p:
        p.update(1, 2.5, 100.0, None)  # before the first interval: nothing yet
        time.sleep(0.06)
        p.update(2, 2.0, 120.0, 0.5)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("writing: step 2/50, loss 2.000, 120 tok/s, EM 0.50, elapsed 0:00:00, ETA ")
    assert err[0].endswith("(or sooner, at exact match 1)")
    quiet = WriteProgress(total=5, enabled=False, plain_every_s=0.0)
    quiet.update(1, 1.0, 1.0, None)
    assert capsys.readouterr().err == ""


def test_a_recipe_without_a_terminal_says_each_group_and_cell_and_beats_while_a_long_group_runs(capsys):
    from loramem.runs.runner import _CellProgress

    with _CellProgress("capacity", total=3, done=1, enabled=True, every=0.05) as bar:
        bar.start("r1-tokens500 (+1 together)")
        time.sleep(0.17)  # a long pass that ends no cell: the heartbeat says the run is alive
        bar.advance()
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("capacity: 1/3 cells, starting r1-tokens500 (+1 together), elapsed 0:00:00")
    beats = [line for line in err if "running r1-tokens500" in line]
    assert len(beats) >= 2
    assert err[-1].startswith("capacity: 2/3 cells, last in r1-tokens500")
    time.sleep(0.1)  # the heartbeat stops with the view
    assert capsys.readouterr().err == ""


def test_a_recipe_run_from_the_cli_into_a_log_prints_plain_lines(tmp_path, capsys):
    from recipes_for_tests import SQUARES

    from loramem.runs.runner import RecipeOptions, run_recipe

    run_recipe(SQUARES, RecipeOptions(out=tmp_path, params={"n": 2}))
    err = capsys.readouterr().err
    assert "squares: 0/" in err and "squares: 1/" in err
