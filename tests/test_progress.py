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
